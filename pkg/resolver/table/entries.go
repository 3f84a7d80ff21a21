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

// serviceEntries is what a Service (with its EndpointSlices, for a headless
// one) puts in the table.
func serviceEntries(n names, svc *model.Service, eps []*model.EndpointSlice) entrySet {
	var out entrySet
	src := &source{origin: Origin{Kind: KindService, Namespace: svc.Namespace, Name: svc.Name}, rank: rankService}
	fqdn := svc.Name + "." + svc.Namespace + n.svcDomain
	if !validName(fqdn) {
		out.warn("%s: %q is not a valid DNS name", src.origin, fqdn)
		return out
	}
	e := &Entry{Name: fqdn, src: src}
	var srvPorts []model.Port
	var targets []string // SRV targets: the service, or each endpoint of a headless one
	switch {
	case svc.ExternalName != "":
		alias := dns.CanonicalName(svc.ExternalName)
		if !validName(alias) {
			out.warn("%s: externalName %q is not a valid DNS name", src.origin, svc.ExternalName)
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
					out.warn("%s: endpoint name %q is not a valid DNS name", src.origin, epName)
					continue
				}
				out.add(n, &Entry{Name: epName, src: src, AddrSource: FromEndpoints, Addrs: ep.Addresses})
				targets = append(targets, epName)
			}
		}
		slices.SortFunc(e.Addrs, func(x, y netip.Addr) int { return x.Compare(y) })
	default:
		e.AddrSource = FromClusterIP
		e.Addrs = svc.ClusterIPs
		srvPorts = svc.Ports
		targets = []string{fqdn}
	}
	e.srv = srvSets(srvPorts, targets)
	out.add(n, e)
	return out
}

// srvSets makes the SRV answers of _port._proto.<name> for every named
// port: one record per target.
func srvSets(ports []model.Port, targets []string) []srvSet {
	var out []srvSet
	for _, p := range ports {
		if p.Name == "" {
			continue
		}
		prefix := "_" + strings.ToLower(p.Name) + "._" + strings.ToLower(p.Protocol) + "."
		if slices.ContainsFunc(out, func(s srvSet) bool { return s.prefix == prefix }) || !validName(prefix) {
			continue
		}
		set := srvSet{prefix: prefix}
		for _, t := range targets {
			set.records = append(set.records, SRV{Port: p.Port, Target: t})
		}
		out = append(out, set)
	}
	return out
}

// dashed is an address as a DNS label: 10-0-0-1, 2001-db8--1.
func dashed(a netip.Addr) string {
	return strings.NewReplacer(".", "-", ":", "-").Replace(a.String())
}

// hostAddrs is where an auto-allocating host's addresses come from.
type hostAddrs struct {
	source string // FromStatus or FromAllocated
	addrs  []netip.Addr
}

func (h hostAddrs) equal(o hostAddrs) bool {
	return h.source == o.source && slices.Equal(h.addrs, o.addrs)
}

// resolveHosts decides the VIP of every host that auto-allocates (istiod's
// rules: vip.Eligible, vip.HostEligible), per ServiceEntry and host as istiod
// allocates them. fromStatus: from each entry's own status.addresses only,
// so a host istiod has not allocated yet has none (it is forwarded until
// istiod writes it); otherwise from vip.Allocate, status ignored.
func resolveHosts(ses []model.ServiceEntry, fromStatus bool) map[vip.Key]hostAddrs {
	out := map[vip.Key]hostAddrs{}
	var claims []vip.Claim
	for i := range ses {
		se := &ses[i]
		if !vip.Eligible(se) {
			continue
		}
		for _, h := range se.Hosts {
			if !vip.HostEligible(se, h) {
				continue
			}
			if !fromStatus {
				claims = append(claims, vip.Claim{Host: h, Owner: se.Key(), Created: se.Created})
				continue
			}
			var addrs []netip.Addr
			for _, ha := range se.StatusAddresses {
				if ha.Host == h && !slices.Contains(addrs, ha.Address) {
					addrs = append(addrs, ha.Address)
				}
			}
			if len(addrs) > 0 {
				slices.SortFunc(addrs, netip.Addr.Compare)
				out[vip.Key{Owner: se.Key(), Host: h}] = hostAddrs{source: FromStatus, addrs: addrs}
			}
		}
	}
	for k, p := range vip.Allocate(claims) {
		out[k] = hostAddrs{source: FromAllocated, addrs: []netip.Addr{p.V4, p.V6}}
	}
	return out
}

// istiodAllocates reports whether istiod's allocator is at work: the source
// saw its leader lock, or some ServiceEntry carries status.addresses (the
// only sign in standalone mode).
func istiodAllocates(s *model.Snapshot) bool {
	return s.IstiodAllocates || slices.ContainsFunc(s.ServiceEntries, func(se model.ServiceEntry) bool { return len(se.StatusAddresses) > 0 })
}

// serviceEntryEntries is what a ServiceEntry puts in the table, given the
// addresses of its auto-allocating hosts (fromStatus: as resolveHosts).
func serviceEntryEntries(n names, se *model.ServiceEntry, resolved map[vip.Key]hostAddrs, fromStatus bool) entrySet {
	var out entrySet
	src := &source{origin: Origin{Kind: KindServiceEntry, Namespace: se.Namespace, Name: se.Name},
		exportTo: exportSet(se.Namespace, se.ExportTo), created: se.Created, rank: rankServiceEntry}
	for _, h := range se.Hosts {
		name := dns.CanonicalName(h)
		if !validName(strings.TrimPrefix(name, "*.")) {
			out.warn("%s: host %q is not a valid DNS name", src.origin, h)
			continue
		}
		e := &Entry{Name: name, src: src}
		switch {
		case len(se.Addresses) > 0:
			e.AddrSource, e.Addrs = FromSpec, se.Addresses
		case se.HasSpecAddresses || len(se.CIDRs) > 0:
			continue // ranges route traffic but answer no query: forwarded
		case !vip.Eligible(se) || !vip.HostEligible(se, h):
			continue // nothing to answer: the name is forwarded
		default:
			r, ok := resolved[vip.Key{Owner: se.Key(), Host: h}]
			if !ok {
				// With istiod allocating, a host it has not written yet
				// is forwarded (what kube-dns answers) until it does.
				if !fromStatus {
					out.warn("%s: no VIP left for host %q", src.origin, h)
				}
				continue
			}
			e.AddrSource, e.Addrs = r.source, r.addrs
		}
		out.add(n, e)
	}
	return out
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

// compareEntries orders the entries of one key: rank, then age, then
// object, then name (one object's entries sharing an address).
func compareEntries(a, c *Entry) int {
	return cmp.Or(cmp.Compare(a.src.rank, c.src.rank), a.src.created.Compare(c.src.created),
		cmp.Compare(a.src.origin.Namespace, c.src.origin.Namespace), cmp.Compare(a.src.origin.Name, c.src.origin.Name),
		cmp.Compare(a.Name, c.Name))
}

// isWildcard reports whether an entry's name is "*.suffix".
func isWildcard(name string) bool { return len(name) > 2 && name[0] == '*' && name[1] == '.' }

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
