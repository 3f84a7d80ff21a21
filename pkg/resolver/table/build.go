package table

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/vip"
)

// Ranks order entries that claim the same name: an explicit ServiceEntry
// beats a Service of the same name (the seed's tcp-echo.external-1 example).
const (
	rankServiceEntry = iota
	rankService
)

// Build makes a table from a snapshot. Problems with single objects (a host
// that is not a valid DNS name, say) come back as warnings and leave that
// object out; everything else is built.
func Build(s *model.Snapshot, opts Options) (*Table, []error) {
	if opts.Domain == "" {
		opts.Domain = DefaultDomain
	}
	if opts.TTL == 0 {
		opts.TTL = DefaultTTL
	}
	domain := dns.CanonicalName(opts.Domain)
	b := &builder{
		t: &Table{
			domain:    domain,
			svcDomain: ".svc." + domain,
			names:     make(map[string][]*Entry, 2*(len(s.Services)+len(s.ServiceEntries))),
			wildcards: map[string][]*Entry{},
			ttl:       opts.TTL,
		},
		slices: map[string][]*model.EndpointSlice{},
	}
	for i := range s.EndpointSlices {
		es := &s.EndpointSlices[i]
		k := es.Namespace + "/" + es.ServiceName
		b.slices[k] = append(b.slices[k], es)
	}
	for i := range s.Services {
		b.addService(&s.Services[i])
	}
	b.addServiceEntries(s.ServiceEntries)
	b.finish()
	return b.t, b.warnings
}

type builder struct {
	t        *Table
	slices   map[string][]*model.EndpointSlice
	warnings []error
}

func (b *builder) warn(format string, args ...any) {
	b.warnings = append(b.warnings, fmt.Errorf(format, args...))
}

func (b *builder) add(e *Entry) {
	if wild, ok := strings.CutPrefix(e.Name, "*."); ok {
		b.t.wildcards[wild] = append(b.t.wildcards[wild], e)
		return
	}
	b.t.names[e.Name] = append(b.t.names[e.Name], e)
}

// addPTRs makes the reverse names of e's addresses point at e.Name.
func (b *builder) addPTRs(e *Entry) {
	for _, a := range e.Addrs {
		b.add(&Entry{Name: reverseName(a), Origin: e.Origin, PTR: e.Name, exportTo: e.exportTo, created: e.created, rank: e.rank})
	}
}

func (b *builder) addService(svc *model.Service) {
	origin := Origin{Kind: KindService, Namespace: svc.Namespace, Name: svc.Name}
	fqdn := svc.Name + "." + svc.Namespace + b.t.svcDomain
	if !validName(fqdn) {
		b.warn("%s: %q is not a valid DNS name", origin, fqdn)
		return
	}
	e := &Entry{Name: fqdn, Origin: origin, rank: rankService}
	var srvPorts []model.Port
	var targets []SRV // per endpoint, for headless SRV
	switch {
	case svc.ExternalName != "":
		alias := dns.CanonicalName(svc.ExternalName)
		if !validName(alias) {
			b.warn("%s: externalName %q is not a valid DNS name", origin, svc.ExternalName)
			return
		}
		e.Alias = alias
	case svc.Headless:
		e.AddrSource = FromEndpoints
		seen := map[netip.Addr]bool{}
		for _, es := range b.slices[svc.Key()] {
			srvPorts = append(srvPorts, es.Ports...)
			for _, ep := range es.Endpoints {
				if !ep.Ready && !svc.PublishNotReady {
					continue
				}
				for _, a := range ep.Addresses {
					if !seen[a] {
						seen[a] = true
						e.Addrs = append(e.Addrs, a)
					}
				}
				if len(ep.Addresses) == 0 {
					continue
				}
				// Each endpoint is reachable by name: its hostname, or its
				// dashed IP as kube-dns names it; SRV records point there.
				label := ep.Hostname
				if label == "" {
					label = strings.NewReplacer(".", "-", ":", "-").Replace(ep.Addresses[0].String())
				}
				epName := label + "." + fqdn
				if !validName(epName) {
					b.warn("%s: endpoint name %q is not a valid DNS name", origin, epName)
					continue
				}
				epEntry := &Entry{Name: epName, Origin: origin, AddrSource: FromEndpoints, Addrs: ep.Addresses, rank: rankService}
				b.add(epEntry)
				b.addPTRs(epEntry)
				targets = append(targets, SRV{Target: epName})
			}
		}
		sortAddrs(e.Addrs)
	default:
		e.AddrSource = FromClusterIP
		e.Addrs = svc.ClusterIPs
		srvPorts = svc.Ports
		targets = []SRV{{Target: fqdn}}
		b.addPTRs(e)
	}
	b.add(e)
	b.addSRV(origin, fqdn, srvPorts, targets)
}

// addSRV adds _port._proto.<fqdn> for every named port.
func (b *builder) addSRV(origin Origin, fqdn string, ports []model.Port, targets []SRV) {
	done := map[string]bool{}
	for _, p := range ports {
		if p.Name == "" {
			continue
		}
		name := "_" + strings.ToLower(p.Name) + "._" + strings.ToLower(p.Protocol) + "." + fqdn
		if done[name] || !validName(name) {
			continue
		}
		done[name] = true
		e := &Entry{Name: name, Origin: origin, rank: rankService}
		for _, t := range targets {
			e.SRV = append(e.SRV, SRV{Port: p.Port, Target: t.Target})
		}
		b.add(e)
	}
}

func (b *builder) addServiceEntries(ses []model.ServiceEntry) {
	// istiod's status.addresses win: collect them per host first, oldest
	// ServiceEntry first, and keep the allocator away from them.
	order := make([]*model.ServiceEntry, len(ses))
	for i := range ses {
		order[i] = &ses[i]
	}
	slices.SortFunc(order, func(a, c *model.ServiceEntry) int {
		return cmp.Or(a.Created.Compare(c.Created), cmp.Compare(a.Key(), c.Key()))
	})
	status := map[string][]netip.Addr{}
	var taken []netip.Addr
	var claims []vip.Claim
	for _, se := range order {
		if !autoAllocates(se) {
			continue
		}
		for _, ha := range se.StatusAddresses {
			taken = append(taken, ha.Address)
		}
		byHost := map[string][]netip.Addr{}
		for _, ha := range se.StatusAddresses {
			byHost[ha.Host] = append(byHost[ha.Host], ha.Address)
		}
		for _, h := range se.Hosts {
			if strings.HasPrefix(h, "*") {
				continue
			}
			if _, ok := status[h]; !ok && len(byHost[h]) > 0 {
				status[h] = byHost[h]
			}
			claims = append(claims, vip.Claim{Host: h, Owner: se.Key(), Created: se.Created})
		}
	}
	var unallocated []vip.Claim
	for _, c := range claims {
		if _, ok := status[c.Host]; !ok {
			unallocated = append(unallocated, c)
		}
	}
	allocated := vip.Allocate(unallocated, taken)

	for _, se := range order {
		origin := Origin{Kind: KindServiceEntry, Namespace: se.Namespace, Name: se.Name}
		exportTo := exportSet(se.Namespace, se.ExportTo)
		for _, h := range se.Hosts {
			name := dns.CanonicalName(h)
			if !validName(strings.TrimPrefix(name, "*.")) {
				b.warn("%s: host %q is not a valid DNS name", origin, h)
				continue
			}
			e := &Entry{Name: name, Origin: origin, exportTo: exportTo, created: se.Created, rank: rankServiceEntry}
			switch {
			case len(se.Addresses) > 0:
				e.AddrSource, e.Addrs = FromSpec, se.Addresses
			case len(se.CIDRs) > 0:
				continue // ranges route traffic but answer no query: forwarded
			case !autoAllocates(se) || strings.HasPrefix(h, "*"):
				continue // nothing to answer: the name is forwarded
			case len(status[h]) > 0:
				e.AddrSource, e.Addrs = FromStatus, status[h]
			default:
				p, ok := allocated[h]
				if !ok {
					b.warn("%s: no VIP left for host %q", origin, h)
					continue
				}
				e.AddrSource, e.Addrs = FromAllocated, []netip.Addr{p.V4, p.V6}
			}
			b.add(e)
			if !strings.HasPrefix(name, "*.") {
				b.addPTRs(e)
			}
		}
	}
}

// autoAllocates reports whether a ServiceEntry's hosts get VIPs when it has
// no spec.addresses: resolution other than NONE (a VIP would hide the
// address the app asked for) and not opted out by label.
func autoAllocates(se *model.ServiceEntry) bool {
	return len(se.Addresses) == 0 && len(se.CIDRs) == 0 && se.AutoAllocate && se.Resolution != model.ResolutionNone
}

// exportSet turns spec.exportTo into the namespaces that see an entry; nil
// means all. "." is the entry's own namespace, "*" everyone, "~" nobody.
func exportSet(own string, exportTo []string) []string {
	if len(exportTo) == 0 {
		return nil
	}
	out := make([]string, 0, len(exportTo))
	for _, n := range exportTo {
		switch n {
		case "*":
			return nil
		case "~":
		case ".":
			out = append(out, own)
		default:
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// finish orders each name's entries and prepares their answers.
func (b *builder) finish() {
	for _, m := range []map[string][]*Entry{b.t.names, b.t.wildcards} {
		for _, entries := range m {
			slices.SortStableFunc(entries, func(a, c *Entry) int {
				return cmp.Or(cmp.Compare(a.rank, c.rank), a.created.Compare(c.created),
					cmp.Compare(a.Origin.Namespace, c.Origin.Namespace), cmp.Compare(a.Origin.Name, c.Origin.Name))
			})
			for _, e := range entries {
				e.prepare(b.t.ttl)
			}
		}
	}
}

func validName(fqdn string) bool {
	if _, ok := dns.IsDomainName(fqdn); !ok || len(fqdn) > 254 {
		return false
	}
	for label := range strings.SplitSeq(strings.TrimSuffix(fqdn, "."), ".") {
		if label == "" || len(label) > 63 || strings.ContainsAny(label, " *\\\"()@;$") {
			return false
		}
	}
	return true
}

func sortAddrs(a []netip.Addr) {
	slices.SortFunc(a, func(x, y netip.Addr) int { return x.Compare(y) })
}
