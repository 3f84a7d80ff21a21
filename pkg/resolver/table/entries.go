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

// names says under which suffixes objects live and how answers are made.
type names struct {
	svcDomain string // ".svc.cluster.local."
	ttl       uint32
}

// entrySet collects what one object contributes to the table.
type entrySet struct {
	entries  []*Entry
	warnings []error
}

func (s *entrySet) warn(format string, args ...any) {
	s.warnings = append(s.warnings, fmt.Errorf(format, args...))
}

// add prepares e's answers and keeps it.
func (s *entrySet) add(n names, e *Entry) {
	e.prepare(n.ttl)
	s.entries = append(s.entries, e)
}

// addPTRs makes the reverse names of e's addresses point at e.Name.
func (s *entrySet) addPTRs(n names, e *Entry) {
	for _, a := range e.Addrs {
		s.add(n, &Entry{Name: reverseName(a), Origin: e.Origin, PTR: e.Name, exportTo: e.exportTo, created: e.created, rank: e.rank})
	}
}

// serviceEntries is what a Service (with its EndpointSlices, for a headless
// one) puts in the table.
func serviceEntries(n names, svc *model.Service, eps []*model.EndpointSlice) entrySet {
	var out entrySet
	origin := Origin{Kind: KindService, Namespace: svc.Namespace, Name: svc.Name}
	fqdn := svc.Name + "." + svc.Namespace + n.svcDomain
	if !validName(fqdn) {
		out.warn("%s: %q is not a valid DNS name", origin, fqdn)
		return out
	}
	e := &Entry{Name: fqdn, Origin: origin, rank: rankService}
	var srvPorts []model.Port
	var targets []SRV // SRV targets: the service, or each endpoint of a headless one
	switch {
	case svc.ExternalName != "":
		alias := dns.CanonicalName(svc.ExternalName)
		if !validName(alias) {
			out.warn("%s: externalName %q is not a valid DNS name", origin, svc.ExternalName)
			return out
		}
		e.Alias = alias
	case svc.Headless:
		e.AddrSource = FromEndpoints
		seen := map[netip.Addr]bool{}
		for _, es := range eps {
			srvPorts = append(srvPorts, es.Ports...)
			for _, ep := range es.Endpoints {
				if (!ep.Ready && !svc.PublishNotReady) || len(ep.Addresses) == 0 {
					continue
				}
				for _, a := range ep.Addresses {
					if !seen[a] {
						seen[a] = true
						e.Addrs = append(e.Addrs, a)
					}
				}
				// Each endpoint is reachable by name: its hostname, or its
				// dashed IP as kube-dns names it; SRV records point there.
				label := ep.Hostname
				if label == "" {
					label = dashed(ep.Addresses[0])
				}
				epName := label + "." + fqdn
				if !validName(epName) {
					out.warn("%s: endpoint name %q is not a valid DNS name", origin, epName)
					continue
				}
				epEntry := &Entry{Name: epName, Origin: origin, AddrSource: FromEndpoints, Addrs: ep.Addresses, rank: rankService}
				out.add(n, epEntry)
				out.addPTRs(n, epEntry)
				targets = append(targets, SRV{Target: epName})
			}
		}
		slices.SortFunc(e.Addrs, func(x, y netip.Addr) int { return x.Compare(y) })
	default:
		e.AddrSource = FromClusterIP
		e.Addrs = svc.ClusterIPs
		srvPorts = svc.Ports
		targets = []SRV{{Target: fqdn}}
		out.addPTRs(n, e)
	}
	out.add(n, e)
	addSRV(n, &out, origin, fqdn, srvPorts, targets)
	return out
}

// dashed is an address as a DNS label: 10-0-0-1, 2001-db8--1.
func dashed(a netip.Addr) string {
	return strings.NewReplacer(".", "-", ":", "-").Replace(a.String())
}

// addSRV adds _port._proto.<fqdn> for every named port.
func addSRV(n names, out *entrySet, origin Origin, fqdn string, ports []model.Port, targets []SRV) {
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
		out.add(n, e)
	}
}

// hostAddrs is where an auto-allocating host's addresses come from.
type hostAddrs struct {
	source string // FromStatus or FromAllocated
	addrs  []netip.Addr
}

func (h hostAddrs) equal(o hostAddrs) bool {
	return h.source == o.source && slices.Equal(h.addrs, o.addrs)
}

// resolveHosts decides the VIP of every host that auto-allocates, from all
// ServiceEntries at once: istiod's status.addresses (the oldest entry's)
// win, the allocator fills in the rest around them.
func resolveHosts(ses []model.ServiceEntry) map[string]hostAddrs {
	order := make([]*model.ServiceEntry, 0, len(ses))
	for i := range ses {
		if autoAllocates(&ses[i]) {
			order = append(order, &ses[i])
		}
	}
	slices.SortFunc(order, func(a, c *model.ServiceEntry) int {
		return cmp.Or(a.Created.Compare(c.Created), cmp.Compare(a.Namespace, c.Namespace), cmp.Compare(a.Name, c.Name))
	})
	out := map[string]hostAddrs{}
	var taken []netip.Addr
	var claims []vip.Claim
	for _, se := range order {
		for _, ha := range se.StatusAddresses {
			taken = append(taken, ha.Address)
		}
		for _, h := range se.Hosts {
			if strings.HasPrefix(h, "*") {
				continue
			}
			if _, ok := out[h]; !ok {
				var addrs []netip.Addr
				for _, ha := range se.StatusAddresses {
					if ha.Host == h {
						addrs = append(addrs, ha.Address)
					}
				}
				if len(addrs) > 0 {
					out[h] = hostAddrs{source: FromStatus, addrs: addrs}
				}
			}
			claims = append(claims, vip.Claim{Host: h, Owner: se.Key(), Created: se.Created})
		}
	}
	unallocated := claims[:0:0]
	for _, c := range claims {
		if _, ok := out[c.Host]; !ok {
			unallocated = append(unallocated, c)
		}
	}
	for h, p := range vip.Allocate(unallocated, taken) {
		out[h] = hostAddrs{source: FromAllocated, addrs: []netip.Addr{p.V4, p.V6}}
	}
	return out
}

// serviceEntryEntries is what a ServiceEntry puts in the table, given the
// addresses of its auto-allocating hosts.
func serviceEntryEntries(n names, se *model.ServiceEntry, resolved map[string]hostAddrs) entrySet {
	var out entrySet
	origin := Origin{Kind: KindServiceEntry, Namespace: se.Namespace, Name: se.Name}
	exportTo := exportSet(se.Namespace, se.ExportTo)
	for _, h := range se.Hosts {
		name := dns.CanonicalName(h)
		if !validName(strings.TrimPrefix(name, "*.")) {
			out.warn("%s: host %q is not a valid DNS name", origin, h)
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
		default:
			r, ok := resolved[h]
			if !ok {
				out.warn("%s: no VIP left for host %q", origin, h)
				continue
			}
			e.AddrSource, e.Addrs = r.source, r.addrs
		}
		out.add(n, e)
		if !strings.HasPrefix(name, "*.") {
			out.addPTRs(n, e)
		}
	}
	return out
}

// autoAllocates reports whether a ServiceEntry's hosts get VIPs: no
// addresses of any kind, resolution other than NONE (a VIP would hide the
// address the app asked for), and not opted out by label.
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

// compareEntries orders the entries of one name: rank, then age, then key.
func compareEntries(a, c *Entry) int {
	return cmp.Or(cmp.Compare(a.rank, c.rank), a.created.Compare(c.created),
		cmp.Compare(a.Origin.Namespace, c.Origin.Namespace), cmp.Compare(a.Origin.Name, c.Origin.Name))
}

// validName accepts a fully qualified name of LDH-ish labels (underscores
// allowed for SRV), 1 to 63 bytes each, 254 in all.
func validName(fqdn string) bool {
	if len(fqdn) < 2 || len(fqdn) > 254 || fqdn[len(fqdn)-1] != '.' {
		return false
	}
	label := 0
	for i := 0; i < len(fqdn); i++ {
		switch c := fqdn[i]; {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_', 'A' <= c && c <= 'Z':
			label++
			if label > 63 {
				return false
			}
		default:
			return false
		}
	}
	return true
}
