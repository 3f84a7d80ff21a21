// Package workload generates the synthetic cluster that `make bench`
// measures: Services, ServiceEntries and EndpointSlices, as ztdns's model
// and as the Kubernetes and Istio API objects they come from, written as
// manifests for `ztdns agent --config-dir` or created in an API server; a
// local zone for unbound that answers the queried names exactly as ztdns
// does; and a dnsperf query file over those names.
//
// unbound's data comes from the same name table the agent builds (package
// table), so both servers hold the same addresses, including the VIPs that
// ztdns allocates for ServiceEntry hosts without addresses, and send replies
// of the same size.
package workload

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"

	"github.com/ztdns/ztdns/pkg/model"
)

// Shapes of the generated data.
const (
	// Namespaces the objects are spread over, as a real cluster would.
	Namespaces = 100
	// dualStackEvery makes every Nth Service dual-stack, so some AAAA
	// queries get an answer and the rest get NODATA.
	dualStackEvery = 10
	// Domain is the cluster domain the names are under.
	Domain = "cluster.local"
	// TTL of every answer, ztdns's and unbound's.
	TTL = 30
	// seed fixes the order of the query file: runs are comparable.
	seed = 53
)

// Address ranges. Service ClusterIPs must fall in the API server's Service
// ranges (ServiceCIDRv4 and ServiceCIDRv6 hold them at MaxServices); the
// others are free for the taking. Nothing is ever sent to any of them:
// they only appear in DNS answers.
var (
	serviceBase4  = netip.MustParseAddr("10.96.0.0")
	serviceBase6  = netip.MustParseAddr("2001:db8:96::")
	entryBase     = netip.MustParseAddr("10.112.0.0")
	endpointBase4 = netip.MustParseAddr("10.128.0.0")
)

// The Service ranges an API server needs for MaxServices ClusterIPs (the
// largest the API server takes: a /12 for IPv4).
const (
	ServiceCIDRv4 = "10.96.0.0/12"
	ServiceCIDRv6 = "2001:db8:96::/108"
)

// Size limits: Service addresses stay inside ServiceCIDRv4 (below
// entryBase) and ServiceEntry addresses inside one /16.
const (
	MaxServices = 1<<20 - 1<<16 // 10.96.0.0 up to 10.111.255.255
	MaxEntries  = 1<<16 - firstOffset
	// firstOffset keeps clear of the first addresses of a range, which are
	// usually reserved (10.96.0.1 is the kubernetes Service).
	firstOffset = 10
)

// Config sizes the cluster and the queries.
type Config struct {
	// Services in the cluster; every HeadlessEvery-th is headless.
	Services int
	// Entries are ServiceEntries with one host each: even ones without
	// addresses (an auto-allocated VIP), odd ones with spec.addresses.
	Entries int
	// Queries are the distinct names queried (and served by unbound): half
	// Services, half ServiceEntry hosts. Zero for none.
	Queries int
	// AAAAEvery makes every Nth query line AAAA instead of A (0: only A).
	AAAAEvery int
	// HeadlessEvery makes every Nth Service headless, its endpoints named
	// (0: none). Headless Services are never queried.
	HeadlessEvery int
	// EndpointsPerService gives every Service one EndpointSlice with this
	// many ready endpoints (0: no EndpointSlices), as a cluster where every
	// Service selects pods has.
	EndpointsPerService int
}

// Validate reports sizes the generator cannot make.
func (c Config) Validate() error {
	switch {
	case c.Services < 0 || c.Entries < 0 || c.Queries < 0 || c.AAAAEvery < 0 || c.HeadlessEvery < 0 || c.EndpointsPerService < 0:
		return errors.New("sizes must not be negative")
	case c.Services > MaxServices:
		return fmt.Errorf("at most %d Services: their ClusterIPs come from %s", MaxServices, ServiceCIDRv4)
	case c.Entries > MaxEntries:
		return fmt.Errorf("at most %d ServiceEntries: their addresses come from one /16", MaxEntries)
	case c.EndpointsPerService > 100:
		return errors.New("at most 100 endpoints per Service: one EndpointSlice holds them")
	case c.Queries > 0 && c.Queries/2 > min(c.queryableServices(), c.Entries):
		return errors.New("at most twice as many queries as the smaller of queryable (not headless) Services and ServiceEntries")
	}
	return nil
}

// Objects is the number of API objects the cluster holds (Namespaces,
// Services, EndpointSlices, ServiceEntries).
func (c Config) Objects() int {
	n := Namespaces + c.Services + c.Entries
	if c.EndpointsPerService > 0 {
		n += c.Services
	}
	return n
}

func (c Config) headless(i int) bool {
	return c.HeadlessEvery > 0 && i%c.HeadlessEvery == c.HeadlessEvery-1
}

func (c Config) queryableServices() int {
	if c.HeadlessEvery == 0 {
		return c.Services
	}
	return c.Services - c.Services/c.HeadlessEvery
}

// Snapshot makes the objects: Services svc-NNNNN in ns-NNN with ClusterIPs
// from 10.96.0.0/12, and ServiceEntries se-NNNNN in ns-NNN, each with one
// host host-NNNNN.bench.internal, the even ones without addresses (an
// allocated VIP), the odd ones with an address from 10.112.0.0/16.
func Snapshot(c Config) *model.Snapshot {
	s := &model.Snapshot{}
	for i := range Namespaces {
		s.Namespaces = append(s.Namespaces, model.Namespace{Name: nsName(i)})
	}
	for i := range c.Services {
		svc := model.Service{
			Namespace: nsName(i),
			Name:      ServiceName(i),
			Ports:     []model.Port{{Name: "http", Protocol: "TCP", Port: 80}},
		}
		if c.headless(i) {
			svc.Headless = true
		} else {
			svc.ClusterIPs = []netip.Addr{offset(serviceBase4, i)}
			if i%dualStackEvery == 0 {
				svc.ClusterIPs = append(svc.ClusterIPs, offset(serviceBase6, i))
			}
		}
		s.Services = append(s.Services, svc)
		if c.EndpointsPerService > 0 {
			s.EndpointSlices = append(s.EndpointSlices, endpointSlice(c, i, &svc))
		}
	}
	for i := range c.Entries {
		se := model.ServiceEntry{
			Namespace:    nsName(i),
			Name:         fmt.Sprintf("se-%05d", i),
			Hosts:        []string{EntryHost(i)},
			Resolution:   model.ResolutionDNS,
			AutoAllocate: true,
			Ports:        []model.Port{{Name: "http", Protocol: "HTTP", Port: 80}},
		}
		if i%2 == 1 {
			se.Addresses = []netip.Addr{offset(entryBase, i)}
			se.Resolution = model.ResolutionStatic
		}
		s.ServiceEntries = append(s.ServiceEntries, se)
	}
	return s
}

// endpointSlice is Service i's one slice: ready endpoints with consecutive
// pod addresses, named after their pods when the Service is headless.
func endpointSlice(c Config, i int, svc *model.Service) model.EndpointSlice {
	es := model.EndpointSlice{
		Namespace:   svc.Namespace,
		Name:        svc.Name + "-1",
		ServiceName: svc.Name,
		Ports:       svc.Ports,
	}
	for j := range c.EndpointsPerService {
		ep := model.Endpoint{Addresses: []netip.Addr{offset(endpointBase4, i*c.EndpointsPerService+j)}, Ready: true}
		if svc.Headless {
			ep.Hostname = fmt.Sprintf("%s-%d", svc.Name, j)
		}
		es.Endpoints = append(es.Endpoints, ep)
	}
	return es
}

func nsName(i int) string { return fmt.Sprintf("ns-%03d", i%Namespaces) }

// ServiceName is the name of Service i.
func ServiceName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// ServiceFQDN is the name Service i answers to, with the final dot.
func ServiceFQDN(i int) string { return ServiceName(i) + "." + nsName(i) + ".svc." + Domain + "." }

// EntryHost is the host of ServiceEntry i, without the final dot.
func EntryHost(i int) string { return fmt.Sprintf("host-%05d.bench.internal", i) }

// offset returns base + firstOffset + i, counting through every byte.
func offset(base netip.Addr, i int) netip.Addr {
	b := base.AsSlice()
	carry := i + firstOffset
	for k := len(b) - 1; k >= 0 && carry > 0; k-- {
		sum := int(b[k]) + carry
		b[k] = byte(sum)
		carry = sum >> 8
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// QueriedNames takes Services (never headless ones) and ServiceEntry hosts
// spread evenly over the cluster, so both VIP kinds appear, up to c.Queries
// fully qualified names, in a fixed random order.
func QueriedNames(c Config) []string {
	var services []int
	for i := range c.Services {
		if !c.headless(i) {
			services = append(services, i)
		}
	}
	half := c.Queries / 2
	names := make([]string, 0, c.Queries)
	for k := range half {
		names = append(names, ServiceFQDN(services[k*len(services)/half]))
	}
	for k := range c.Queries - half {
		names = append(names, EntryHost(k*c.Entries/(c.Queries-half))+".")
	}
	r := rand.New(rand.NewPCG(seed, seed))
	r.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	return names
}
