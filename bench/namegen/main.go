// Command namegen writes the inputs of `make bench`'s resolver comparison:
// manifests for a ztdns agent (Services and ServiceEntries), a local zone
// for unbound that answers the queried names exactly as ztdns does, and a
// dnsperf query file over those names.
//
// unbound's data comes from the same name table the agent builds (package
// table), so both servers hold the same addresses, including the VIPs that
// ztdns allocates for ServiceEntry hosts without addresses, and send replies
// of the same size.
//
// Usage: go run ./bench/namegen -out DIR [-services N] [-entries N] [-queries N]
package main

import (
	"bufio"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// Sizes and shapes of the generated data.
const (
	namespaces = 100
	// dualStackEvery makes every Nth Service dual-stack, so some AAAA
	// queries get an answer and the rest get NODATA.
	dualStackEvery = 10
	domain         = "cluster.local"
	ttl            = 30
	// seed fixes the order of the query file: runs are comparable.
	seed = 53
)

type config struct {
	out       string
	services  int
	entries   int
	queries   int
	aaaaEvery int
}

func main() {
	var c config
	flag.StringVar(&c.out, "out", "", "directory to write manifests/, unbound-zone.conf and queries.txt into")
	flag.IntVar(&c.services, "services", 10000, "Services in the manifests")
	flag.IntVar(&c.entries, "entries", 10000, "ServiceEntries (one host each) in the manifests; even ones auto-allocate a VIP, odd ones carry spec.addresses")
	flag.IntVar(&c.queries, "queries", 10000, "distinct names queried (and served by unbound): half Services, half ServiceEntry hosts")
	flag.IntVar(&c.aaaaEvery, "aaaa-every", 10, "make every Nth query line AAAA instead of A (0: only A)")
	flag.Parse()
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "namegen:", err)
		os.Exit(1)
	}
}

func run(c config) error {
	switch {
	case c.out == "":
		return fmt.Errorf("-out is required")
	case c.services <= 0 || c.entries <= 0:
		return fmt.Errorf("-services and -entries must be positive")
	case c.services > 60000 || c.entries > 60000:
		return fmt.Errorf("at most 60000 Services and ServiceEntries: their addresses come from one /16 each")
	case c.queries <= 0 || c.queries/2 > min(c.services, c.entries):
		return fmt.Errorf("-queries must be positive and at most twice the smaller of -services and -entries")
	}
	snap := snapshot(c)
	if err := os.MkdirAll(filepath.Join(c.out, "manifests"), 0o755); err != nil {
		return err
	}
	if err := writeManifests(filepath.Join(c.out, "manifests"), snap); err != nil {
		return err
	}
	tbl, warnings := table.Build(snap, table.Options{Domain: domain, TTL: ttl})
	if len(warnings) > 0 {
		return fmt.Errorf("the name table left things out: %v", warnings[0])
	}
	names := queriedNames(c, snap)
	if err := writeZone(filepath.Join(c.out, "unbound-zone.conf"), tbl, names); err != nil {
		return err
	}
	return writeQueries(filepath.Join(c.out, "queries.txt"), names, c.aaaaEvery)
}

// snapshot makes the objects: Services svc-NNNNN in ns-NNN with ClusterIPs
// from 10.96.0.0/16, and ServiceEntries se-NNNNN in ns-NNN, each with one host
// host-NNNNN.bench.internal, the even ones without addresses (an allocated
// VIP), the odd ones with an address from 10.112.0.0/16.
func snapshot(c config) *model.Snapshot {
	s := &model.Snapshot{}
	for i := range namespaces {
		s.Namespaces = append(s.Namespaces, model.Namespace{Name: nsName(i)})
	}
	for i := range c.services {
		ips := []netip.Addr{addrIn(netip.MustParseAddr("10.96.0.0"), i)}
		if i%dualStackEvery == 0 {
			ips = append(ips, addrIn(netip.MustParseAddr("2001:db8:96::"), i))
		}
		s.Services = append(s.Services, model.Service{
			Namespace:  nsName(i),
			Name:       fmt.Sprintf("svc-%05d", i),
			ClusterIPs: ips,
			Ports:      []model.Port{{Name: "http", Protocol: "TCP", Port: 80}},
		})
	}
	for i := range c.entries {
		se := model.ServiceEntry{
			Namespace:    nsName(i),
			Name:         fmt.Sprintf("se-%05d", i),
			Hosts:        []string{entryHost(i)},
			Resolution:   model.ResolutionDNS,
			AutoAllocate: true,
			Ports:        []model.Port{{Name: "http", Protocol: "HTTP", Port: 80}},
		}
		if i%2 == 1 {
			se.Addresses = []netip.Addr{addrIn(netip.MustParseAddr("10.112.0.0"), i)}
			se.Resolution = model.ResolutionStatic
		}
		s.ServiceEntries = append(s.ServiceEntries, se)
	}
	return s
}

func nsName(i int) string    { return fmt.Sprintf("ns-%03d", i%namespaces) }
func entryHost(i int) string { return fmt.Sprintf("host-%05d.bench.internal", i) }
func serviceFQDN(s *model.Service) string {
	return s.Name + "." + s.Namespace + ".svc." + domain + "."
}

// addrIn returns base + 10 + i, for a base whose last two bytes are zero
// and i below 65526: the first few addresses of a range are usually
// reserved, and 10 keeps clear of them.
func addrIn(base netip.Addr, i int) netip.Addr {
	b := base.AsSlice()
	n := i + 10
	b[len(b)-1] += byte(n)
	b[len(b)-2] += byte(n >> 8)
	a, _ := netip.AddrFromSlice(b)
	return a
}

func writeManifests(dir string, s *model.Snapshot) error {
	err := writeFile(filepath.Join(dir, "services.yaml"), func(w *bufio.Writer) {
		for _, ns := range s.Namespaces {
			fmt.Fprintf(w, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n---\n", ns.Name)
		}
		for _, svc := range s.Services {
			fmt.Fprintf(w, "apiVersion: v1\nkind: Service\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n  type: ClusterIP\n",
				svc.Name, svc.Namespace)
			fmt.Fprintf(w, "  clusterIP: %s\n  clusterIPs:\n", svc.ClusterIPs[0])
			for _, ip := range svc.ClusterIPs {
				fmt.Fprintf(w, "  - %s\n", ip)
			}
			if len(svc.ClusterIPs) > 1 {
				fmt.Fprintf(w, "  ipFamilyPolicy: PreferDualStack\n  ipFamilies:\n  - IPv4\n  - IPv6\n")
			}
			fmt.Fprintf(w, "  ports:\n  - name: http\n    port: 80\n    protocol: TCP\n---\n")
		}
	})
	if err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, "serviceentries.yaml"), func(w *bufio.Writer) {
		for _, se := range s.ServiceEntries {
			fmt.Fprintf(w, "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n  hosts:\n  - %s\n",
				se.Name, se.Namespace, se.Hosts[0])
			if len(se.Addresses) > 0 {
				fmt.Fprintf(w, "  addresses:\n")
			}
			for _, a := range se.Addresses {
				fmt.Fprintf(w, "  - %s\n", a)
			}
			fmt.Fprintf(w, "  ports:\n  - name: http\n    number: 80\n    protocol: HTTP\n  resolution: %s\n---\n", se.Resolution)
		}
	})
}

// writeFile creates path and fills it through a buffer.
func writeFile(path string, fill func(*bufio.Writer)) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	fill(w)
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// queriedNames takes every other Service and every other ServiceEntry host
// (so both VIP kinds appear) up to c.queries names, in a fixed random order.
func queriedNames(c config, s *model.Snapshot) []string {
	var names []string
	half := c.queries / 2
	for i := 0; len(names) < half; i++ {
		names = append(names, serviceFQDN(&s.Services[i*len(s.Services)/half]))
	}
	for i := 0; len(names) < c.queries; i++ {
		names = append(names, entryHost(i*len(s.ServiceEntries)/(c.queries-half))+".")
	}
	r := rand.New(rand.NewPCG(seed, seed))
	r.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	return names
}

// writeZone writes unbound local-data for every queried name: the same A and
// AAAA records ztdns answers with, as seen by a client that is not a known pod.
func writeZone(path string, tbl *table.Table, names []string) error {
	var missing string
	err := writeFile(path, func(w *bufio.Writer) {
		fmt.Fprintf(w, "# Generated by bench/namegen: the queried names, answered as ztdns does.\n")
		for _, n := range names {
			e := tbl.Resolve(n, "").Entry
			if e == nil {
				missing = n
				continue
			}
			for _, a := range e.Addrs {
				rr := "A"
				if a.Is6() {
					rr = "AAAA"
				}
				fmt.Fprintf(w, "  local-data: \"%s %d IN %s %s\"\n", n, ttl, rr, a)
			}
		}
	})
	if err == nil && missing != "" {
		err = fmt.Errorf("%s is not in the name table", missing)
	}
	return err
}

// writeQueries writes the dnsperf data file: one "name type" a line.
func writeQueries(path string, names []string, aaaaEvery int) error {
	return writeFile(path, func(w *bufio.Writer) {
		for i, n := range names {
			t := "A"
			if aaaaEvery > 0 && i%aaaaEvery == aaaaEvery-1 {
				t = "AAAA"
			}
			fmt.Fprintf(w, "%s %s\n", strings.TrimSuffix(n, "."), t)
		}
	})
}
