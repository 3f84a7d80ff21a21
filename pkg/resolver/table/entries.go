package table

import (
	"cmp"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/vip"
)

// Ranks order entries that claim the same name as istiod does for ambient
// mode: a Kubernetes Service before ServiceEntries (then the oldest first).
// With choose's own-namespace rule, a pod gets the object ztunnel routes:
// its own namespace's (so the seed's tcp-echo.external-1 ServiceEntry in the
// client's namespace still wins), else the Service. A Service istiod sends
// ztunnel nothing of comes last and is no own-namespace choice, so a
// ServiceEntry naming it is what ztunnel routes, from every namespace: an
// ExternalName Service (serviceServiceBuilder drops them), or one of a
// namespace istiod's discoverySelectors do not select (its Services pass
// the same filter as its ServiceEntries). So does a headless Service's
// endpoint name (Entry.rank): ztunnel's DNS has no pod records. Alone, it
// answers as kube-dns.
const (
	rankService = iota
	rankServiceEntry
	rankUnsent
)

// names says under which suffixes objects live and how answers are made.
type names struct {
	svcDomain string // ".svc.cluster.local."
	ttl       uint32 // of a Service's records
	seTTL     uint32 // of a ServiceEntry's
	// defaultExportTo is the exportTo of a ServiceEntry without one, as
	// the last build decided it (Builder.defaultExportTo).
	defaultExportTo []string
	// prefixes interns SRV prefixes ("_http._tcp."): most Services share a
	// handful. At most maxInternedPrefixes: it lives as long as the
	// builder, and port names are the objects' choice. mores interns the
	// more of entries (moreOf), as bounded.
	prefixes map[string]string
	mores    map[string]*more
}

// maxInternedPrefixes bounds names.prefixes, and names.mores; a prefix
// past it is its own string, as it would be without interning, and the
// SRV sets of an entry its own more.
const maxInternedPrefixes = 4096

// maxInternedSets bounds the SRV sets of an interned more: the ports of
// the usual Service, not those of one with hundreds.
const maxInternedSets = 4

// moreOf returns the more of an entry with the SRV sets srv (no alias):
// none without any; one shared by every entry with the same sets when
// these name no records of their own (a Service's ports, an endpoint's
// single port: nearly all, and nearly all alike), so that the usual
// Service costs no allocation here and its lookup no miss; otherwise
// one of its own.
func (n names) moreOf(srv []srvSet) *more {
	if len(srv) == 0 {
		return none
	}
	if n.mores == nil || len(srv) > maxInternedSets {
		return &more{srv: srv}
	}
	// Each set as its prefix's length, the prefix and the port: no two
	// lists of sets make one key.
	var buf [4 * (1 + 255 + 2)]byte
	key := buf[:0]
	for _, set := range srv {
		if set.records != nil {
			return &more{srv: srv}
		}
		key = append(append(append(key, byte(len(set.prefix))), set.prefix...), byte(set.port>>8), byte(set.port))
	}
	if m, ok := n.mores[string(key)]; ok {
		return m
	}
	m := &more{srv: srv}
	if len(n.mores) < maxInternedPrefixes {
		n.mores[string(key)] = m
	}
	return m
}

// entrySet collects what one object contributes to the table.
type entrySet struct {
	entries  []*Entry
	warnings []error
}

func (s *entrySet) warn(format string, args ...any) {
	s.warnings = append(s.warnings, fmt.Errorf(format, args...))
}

// add keeps e. ptr says whether e's addresses point back to it (reverse
// lookups).
func (s *entrySet) add(e *Entry, ptr bool) {
	e.Addrs, e.n4 = v4First(e.Addrs)
	s.keep(e, ptr)
}

// keep is add for an entry whose Addrs are IPv4 first already, n4 set.
func (s *entrySet) keep(e *Entry, ptr bool) {
	e.ptr = ptr
	s.entries = append(s.entries, e)
}

// v4First returns addrs with the IPv4 ones first, each family in its order
// (addrs itself when it is so already: nearly always), and how many are
// IPv4, so that an answer is a part of the list.
func v4First(addrs []netip.Addr) ([]netip.Addr, uint32) {
	n4, sorted := 0, true
	for i, a := range addrs {
		if a.Is4() {
			sorted = sorted && n4 == i
			n4++
		}
	}
	if sorted {
		return addrs, uint32(n4)
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if a.Is4() {
			out = append(out, a)
		}
	}
	for _, a := range addrs {
		if !a.Is4() {
			out = append(out, a)
		}
	}
	return out, uint32(n4)
}

// serviceSource is what a Service's entries share; unselected says that
// istiod's discoverySelectors do not select its namespace.
func serviceSource(n names, svc *model.Service, unselected bool) source {
	rank := uint8(rankService)
	if svc.ExternalName != "" || unselected {
		rank = rankUnsent
	}
	return source{namespace: svc.Namespace, name: svc.Name, ttl: n.ttl, kind: kindService, rank: rank}
}

// serviceEntries is what a Service (with its EndpointSlices, for a headless
// one) puts in the table; src is its serviceSource.
func serviceEntries(n names, src *source, svc *model.Service, eps []*model.EndpointSlice) entrySet {
	var out entrySet
	var ips []netip.Addr // only a ClusterIP Service answers its own
	var n4 uint32
	if svc.ExternalName == "" && !svc.Headless {
		ips, n4 = v4First(uniqueAddrs(svc.ClusterIPs))
	}
	e := pack(src, ips, n4, svc.Name, ".", svc.Namespace, n.svcDomain)
	if !validName(e.Name) {
		out.warn("%s: %q is not a valid DNS name", originOf(src), e.Name)
		return out
	}
	switch {
	case svc.ExternalName != "":
		if net.ParseIP(svc.ExternalName) != nil {
			// CoreDNS keeps an ExternalName only when it is a name (no
			// CNAME to an address): the Service has no records, NXDOMAIN.
			out.warn("%s: externalName %q is an IP address, not a DNS name", originOf(src), svc.ExternalName)
			return out
		}
		alias := dns.CanonicalName(svc.ExternalName)
		if !validName(alias) {
			out.warn("%s: externalName %q is not a valid DNS name", originOf(src), svc.ExternalName)
			return out
		}
		e.more = &more{Alias: alias}
		out.add(e, false)
	case svc.Headless:
		headlessEntries(n, &out, e, svc, eps)
	default:
		e.addrSource = addrClusterIP
		var srv srvRecords
		srv.expect(len(svc.Ports))
		for _, p := range svc.Ports {
			if i := srv.setOf(n, p); i >= 0 {
				srv.add(i, SRV{Port: p.Port, Target: e.Name})
			}
		}
		e.more = n.moreOf(srv.sets(e.Name))
		out.keep(e, true)
	}
	return out
}

// headlessEntries adds a headless Service's records (specification 2.4): the
// Service's name answers every ready endpoint address; each endpoint has a
// name of its own (its hostname, else its dashed address, one per address as
// kube-dns names them) that holds all of its addresses, whichever slices
// list them (a dual-stack pod's hostname is in an IPv4 and an IPv6 slice),
// and that its addresses' PTR records name; SRV records point at those
// names, with each slice's own port numbers. An endpoint's name has SRV
// records of its own, as kube-dns gives them: one per port of the slices
// that list it, named or not, each pointing at the name itself. Without a
// ready endpoint the name does not exist (NXDOMAIN): it is left to the
// cluster's nameserver, and still claimed (Entry.forward), so that another
// namespace's ServiceEntry naming it does not answer: ztunnel picks the
// Service, and answers nothing.
func headlessEntries(n names, out *entrySet, e *Entry, svc *model.Service, eps []*model.EndpointSlice) {
	e.addrSource = addrEndpoints
	byName := map[string]*Entry{} // nil for a name that is not valid
	var srv srvRecords
	// One object cannot make the table hold more than twice maxSRVRecords
	// SRV records: endpoints times ports multiply. k counts each ready
	// address times its slice's ports, all of them (each makes a record at
	// the endpoint's name, and a named one another at the port's name):
	// past the bound, those built so far are dropped and no more are
	// built.
	k, srvOK := 0, true
	own := map[*Entry][]uint16{} // the ports of each endpoint name's own SRV records
	endpoint := func(label string) *Entry {
		var buf [256]byte
		b := append(append(append(buf[:0], label...), '.'), e.Name...)
		ee, seen := byName[string(b)]
		if !seen {
			if name := unsafe.String(unsafe.SliceData(b), len(b)); validName(name) { // b: pack copies it
				ee = pack(e.src, nil, 0, name)
				ee.addrSource = addrEndpointName
				byName[ee.Name] = ee
			} else {
				bad := string(b) // kept by the warning and byName
				out.warn("%s: endpoint name %q is not a valid DNS name", originOf(e.src), bad)
				byName[bad] = nil
			}
		}
		return ee
	}
	var sets []int // of the slice's ports (setOf), once it has a record
	for _, es := range eps {
		sets = sets[:0]
		for _, ep := range es.Endpoints {
			if !ep.Ready && !svc.PublishNotReady {
				continue
			}
			for _, a := range ep.Addresses {
				if k += len(es.Ports); k > maxSRVRecords && srvOK {
					srvOK, srv, own = false, srvRecords{}, nil
				}
				e.Addrs = append(e.Addrs, a) // repeats go below
				label := ep.Hostname
				if label == "" {
					label = dashed(a)
				}
				ee := endpoint(label)
				if ee == nil {
					continue
				}
				ee.Addrs = append(ee.Addrs, a) // repeats go below
				if !srvOK {
					continue
				}
				if len(sets) == 0 {
					srv.expect(len(es.Ports))
					for _, p := range es.Ports {
						sets = append(sets, srv.setOf(n, p))
					}
				}
				for j, p := range es.Ports {
					if sets[j] >= 0 {
						srv.add(sets[j], SRV{Port: p.Port, Target: ee.Name})
					}
					if !slices.Contains(own[ee], p.Port) {
						own[ee] = append(own[ee], p.Port)
					}
				}
			}
		}
	}
	if !srvOK {
		out.warn("%s: %d SRV records (endpoint addresses × ports) exceed %d: its SRV names are left to the cluster's nameserver",
			originOf(e.src), k, maxSRVRecords)
	}
	if len(e.Addrs) == 0 {
		e.forward = true
		out.add(e, false)
		return
	}
	onePort := map[uint16][]srvSet{} // the sets of one port, which endpoints share
	for _, name := range slices.Sorted(maps.Keys(byName)) {
		if ee := byName[name]; ee != nil {
			slices.SortFunc(ee.Addrs, netip.Addr.Compare)
			ee.Addrs = compacted(ee.Addrs)
			ee.more = n.moreOf(ownSRVSets(ee.Name, own[ee], onePort))
			out.add(ee, true)
		}
	}
	slices.SortFunc(e.Addrs, netip.Addr.Compare)
	e.Addrs = compacted(e.Addrs)
	e.more = n.moreOf(srv.sets(e.Name))
	out.add(e, false) // its addresses' PTRs name the endpoints
}

// ownSRVSets returns the SRV record set at an endpoint's own name: one record
// per port, pointing at the name (none when ports is empty). The set of a
// single port keeps only its number, in a list that the endpoints with that
// port share (onePort).
func ownSRVSets(name string, ports []uint16, onePort map[uint16][]srvSet) []srvSet {
	if len(ports) == 0 {
		return nil
	}
	slices.Sort(ports) // each port once already
	if len(ports) == 1 {
		set, ok := onePort[ports[0]]
		if !ok {
			set = []srvSet{{port: ports[0]}}
			onePort[ports[0]] = set
		}
		return set
	}
	records := make([]SRV, len(ports))
	for i, p := range ports {
		records[i] = SRV{Port: p, Target: name}
	}
	return []srvSet{{records: records}}
}

// maxSRVRecords bounds the ready endpoint addresses times ports of one
// headless Service, half the SRV records it may have (before repeats are
// removed: one at the endpoint's name, and for a named port one at the
// port's name): 20,000 endpoints with 4 ports each fit; an object that
// multiplies thousands of endpoints by thousands of ports does not.
const maxSRVRecords = 100_000

// srvRecords collects the SRV record sets of one name, deduplicated (RFC
// 2181 5: a record set holds no record twice) when sets sorts them. A port's
// set is found once (setOf), then given its records (add): a headless
// Service's addresses times ports cost no search each. Names have few
// ports, searched in order; past shortList sets, a port's set is found by
// its prefix in index, so that a Service of tens of thousands of named
// ports costs time linear in them.
type srvRecords struct {
	list  []srvSet
	index map[string]int // prefix: position in list; nil up to shortList sets
}

// expect makes room for n sets, when it has none yet: a Service's ports
// are nearly all named, each its own set.
func (r *srvRecords) expect(n int) {
	if r.list == nil && n > 0 {
		r.list = make([]srvSet, 0, n)
	}
}

// setOf returns the position of the set of port p, added when new; -1 when
// p is not named or its set would have no valid name.
func (r *srvRecords) setOf(n names, p model.Port) int {
	if p.Name == "" {
		return -1
	}
	if r.index == nil {
		for i := range r.list {
			if isPrefixOf(r.list[i].prefix, p) {
				return i
			}
		}
	}
	// "_<name>._<protocol>.", lower case, in a buffer: looking it up
	// allocates nothing.
	var buf [64]byte
	b := append(appendLower(append(buf[:0], '_'), p.Name), '.', '_')
	b = append(appendLower(b, p.Protocol), '.')
	if r.index != nil {
		if i, ok := r.index[string(b)]; ok {
			return i
		}
	}
	prefix, interned := n.prefixes[string(b)]
	if !interned {
		prefix = string(b)
		if !validName(prefix) {
			return -1
		}
		if n.prefixes != nil && len(n.prefixes) < maxInternedPrefixes {
			n.prefixes[prefix] = prefix
		}
	}
	r.list = append(r.list, srvSet{prefix: prefix})
	i := len(r.list) - 1
	switch {
	case r.index != nil:
		r.index[prefix] = i
	case len(r.list) > shortList:
		r.index = make(map[string]int, max(2*len(r.list), cap(r.list)))
		for j := range r.list {
			r.index[r.list[j].prefix] = j
		}
	}
	return i
}

// add puts rec in the set at position i (setOf's); repeats go in sets.
func (r *srvRecords) add(i int, rec SRV) {
	r.list[i].records = append(r.list[i].records, rec)
}

// appendCanonical appends host as dns.CanonicalName writes it: lower case,
// fully qualified.
func appendCanonical(b []byte, host string) []byte {
	b = appendLower(b, host)
	if !dns.IsFqdn(host) {
		b = append(b, '.')
	}
	return b
}

// appendLower appends s in lower case, as strings.ToLower has it.
func appendLower(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return append(b, strings.ToLower(s)...)
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	return b
}

// isPrefixOf reports whether prefix is "_<name>._<protocol>." of p, without
// building that string.
func isPrefixOf(prefix string, p model.Port) bool {
	n := len(p.Name)
	return len(prefix) == n+len(p.Protocol)+4 && prefix[0] == '_' && strings.EqualFold(prefix[1:1+n], p.Name) &&
		prefix[1+n:3+n] == "._" && strings.EqualFold(prefix[3+n:len(prefix)-1], p.Protocol)
}

// sets returns the record sets of the entry called owner, in a stable
// order; a set of one record pointing at owner keeps only its port.
func (r *srvRecords) sets(owner string) []srvSet {
	for i := range r.list {
		set := &r.list[i]
		if len(set.records) > 1 {
			slices.SortFunc(set.records, func(a, b SRV) int { return cmp.Or(cmp.Compare(a.Target, b.Target), cmp.Compare(a.Port, b.Port)) })
			set.records = compacted(set.records)
		}
		if len(set.records) == 1 && set.records[0].Target == owner {
			set.port, set.records = set.records[0].Port, nil
		}
	}
	slices.SortFunc(r.list, func(a, b srvSet) int { return cmp.Compare(a.prefix, b.prefix) })
	return slices.Clip(r.list)
}

// compacted returns sorted without repeats, in an array of its own when it
// had some: the table keeps no room for the repeats.
func compacted[T comparable](sorted []T) []T {
	if c := slices.Compact(sorted); len(c) < len(sorted) {
		return slices.Clone(c)
	}
	return sorted
}

// shortList is the length up to which a list is searched in order: for
// the usual one to four addresses, cheaper than a map.
const shortList = 8

// uniqueAddrs returns addrs without repeats, in their order; addrs itself
// when it has none (the usual case: nothing is copied).
func uniqueAddrs(addrs []netip.Addr) []netip.Addr {
	if len(addrs) <= shortList {
		for i := 1; i < len(addrs); i++ {
			if slices.Contains(addrs[:i], addrs[i]) {
				return appendNew(slices.Clone(addrs[:i]), addrs[i+1:])
			}
		}
		return addrs
	}
	seen := make(map[netip.Addr]struct{}, len(addrs))
	for i, a := range addrs {
		if _, dup := seen[a]; dup {
			return appendNew(slices.Clone(addrs[:i]), addrs[i+1:])
		}
		seen[a] = struct{}{}
	}
	return addrs
}

// appendNew appends to list, whose addresses are distinct, those of addrs
// it does not hold yet, in their order.
func appendNew(list, addrs []netip.Addr) []netip.Addr {
	seen := make(map[netip.Addr]struct{}, len(list)+len(addrs))
	for _, a := range list {
		seen[a] = struct{}{}
	}
	for _, a := range addrs {
		if _, dup := seen[a]; !dup {
			seen[a] = struct{}{}
			list = append(list, a)
		}
	}
	return list
}

// dashed is an address as a DNS label, as kube-dns names an endpoint
// without a hostname: 10-0-0-1, 2001-db8--1, and 2001-db8--0 for 2001:db8::
// (a label cannot end with a dash).
func dashed(a netip.Addr) string {
	s := strings.NewReplacer(".", "-", ":", "-").Replace(a.String())
	if strings.HasSuffix(s, "-") {
		s += "0"
	}
	return s
}

// hostAddrs is where an auto-allocating host's addresses come from.
type hostAddrs struct {
	// addrSource is addrStatus or addrAllocated, as Entry.addrSource;
	// addrNone for none.
	addrSource addrSource
	addrs      []netip.Addr
}

func (h hostAddrs) equal(o hostAddrs) bool {
	return h.addrSource == o.addrSource && slices.Equal(h.addrs, o.addrs)
}

// resolveHosts decides the VIP of every host that auto-allocates (istiod's
// rules: vip.Eligible, vip.HostEligible), per ServiceEntry and host as istiod
// allocates them. vip.FromStatus: from each entry's own status.addresses
// only, so a host istiod has not allocated yet has none (it is forwarded
// until istiod writes it); vip.FromAllocator: from vip.Allocate, status
// ignored; vip.FromNowhere: none, every host forwarded.
func resolveHosts(ses []model.ServiceEntry, from vip.From) map[vip.Key]hostAddrs {
	out := map[vip.Key]hostAddrs{}
	if from == vip.FromNowhere {
		return out
	}
	fromStatus := from == vip.FromStatus
	var claims []vip.Claim
	for i := range ses {
		se := &ses[i]
		if !vip.Eligible(se) {
			continue
		}
		// A status with many addresses is grouped by host once, not
		// searched for every host.
		var byHost map[string][]netip.Addr
		if fromStatus && len(se.StatusAddresses) > shortList {
			byHost = map[string][]netip.Addr{}
			for _, ha := range se.StatusAddresses {
				byHost[ha.Host] = append(byHost[ha.Host], ha.Address)
			}
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
			if byHost != nil {
				addrs = slices.Clone(byHost[h])
			} else {
				for _, ha := range se.StatusAddresses {
					if ha.Host == h {
						addrs = append(addrs, ha.Address)
					}
				}
			}
			if len(addrs) > 0 {
				slices.SortFunc(addrs, netip.Addr.Compare)
				addrs = compacted(addrs)
				out[vip.Key{Owner: se.Key(), Host: h}] = hostAddrs{addrSource: addrStatus, addrs: addrs}
			}
		}
	}
	for k, p := range vip.Allocate(claims) {
		out[k] = hostAddrs{addrSource: addrAllocated, addrs: []netip.Addr{p.V4, p.V6}}
	}
	return out
}

// istiodAllocates reports whether istiod's allocator is at work: the source
// saw its leader lock, or some ServiceEntry carries status.addresses (the
// only sign in standalone mode).
func istiodAllocates(s *model.Snapshot) bool {
	return s.IstiodAllocates || slices.ContainsFunc(s.ServiceEntries, func(se model.ServiceEntry) bool { return len(se.StatusAddresses) > 0 })
}

// serviceEntrySource is what a ServiceEntry's entries share.
func serviceEntrySource(n names, se *model.ServiceEntry, ext *seSource) source {
	exportTo := se.ExportTo
	if len(exportTo) == 0 {
		exportTo = n.defaultExportTo // Istio's serviceExportTo
	}
	*ext = seSource{exportTo: exportSet(se.Namespace, exportTo), created: se.Created,
		noVIP: noVIPOf(se), dynamicDNS: se.Resolution == model.ResolutionDynamicDNS}
	return source{namespace: se.Namespace, name: se.Name, se: ext, ttl: n.seTTL, kind: kindServiceEntry, rank: rankServiceEntry}
}

// noVIPOf says why se's hosts get no VIP whatever the allocator does, as
// serviceEntryEntries decides it: "" when they may get one.
func noVIPOf(se *model.ServiceEntry) string {
	switch {
	case len(se.Addresses) > 0:
		return ""
	case se.HasSpecAddresses || len(se.CIDRs) > 0:
		return "no VIP: its spec.addresses are ranges, which answer no query"
	case se.Resolution == model.ResolutionNone:
		return "no VIP: resolution NONE gets none"
	case !se.AutoAllocate:
		return "no VIP: auto-allocation is off (networking.istio.io/enable-autoallocate-ip)"
	}
	return ""
}

// serviceEntryEntries is what a ServiceEntry puts in the table, given the
// addresses of its auto-allocating hosts: own[i] is se.Hosts[i]'s (as
// resolvedOf; nil when none has any), from as resolveHosts. src is
// its serviceEntrySource.
//
// A host without addresses answers nothing, but istiod still sends it to
// ztunnel, as its namespace's object for the name when it is the oldest
// there: it gets an entry without records (vipless), so that a newer
// ServiceEntry of its namespace, which ztunnel never sees, does not answer.
//
// spec.addresses are made once: more than two are shared by all its
// hosts; one or two are copied into each host's own allocation (pack), at
// most 48 bytes a host. Their reverse names point at one host only, the
// first by name: a PTR answer for a ServiceEntry's address names one host
// (Table.ptrOwners), the one that comes first among those visible to the
// asker, and every host of one entry is visible to the same pods. So an
// entry's hosts times its addresses cost no more than the hosts plus the
// addresses.
func serviceEntryEntries(n names, src *source, se *model.ServiceEntry, own []hostAddrs, from vip.From) entrySet {
	var out entrySet
	var spec []netip.Addr
	var spec4 uint32
	var ptrHost *Entry // the first host by name that owns spec's PTRs (written as asked, of one name written both ways: those come first)
	var folded *source // src, for the hosts written otherwise (se.HostFolded)
	if len(se.Addresses) > 0 {
		spec, spec4 = v4First(uniqueAddrs(se.Addresses))
	}
	checkExportTo(&out, src, se.ExportTo)
	for i, h := range se.Hosts {
		var buf [256]byte
		b := appendCanonical(buf[:0], h)
		name := unsafe.String(unsafe.SliceData(b), len(b)) // on this frame: pack copies it
		if !validName(strings.TrimPrefix(name, "*.")) {
			out.warn("%s: host %q is not a valid DNS name", originOf(src), h)
			continue
		}
		hostSrc := src
		if se.HostFolded(i) {
			if folded == nil {
				folded = new(source)
				*folded, folded.folded = *src, true
			}
			hostSrc = folded
		}
		var addrs []netip.Addr
		var n4 uint32
		addrFrom := addrNone
		switch {
		case len(se.Addresses) > 0:
			addrFrom, addrs, n4 = addrSpec, spec, spec4
		case se.HasSpecAddresses || len(se.CIDRs) > 0:
			// Ranges route traffic but answer no query.
		case vip.Eligible(se) && vip.HostEligible(se, h):
			addrFrom = addrNoVIP
			if i < len(own) && own[i].addrSource != addrNone {
				addrFrom = own[i].addrSource
				addrs, n4 = v4First(own[i].addrs)
			} else if from == vip.FromAllocator {
				// With istiod allocating, a host it has not written
				// yet has no VIP in ztunnel either, until it does;
				// with none, no host has one.
				out.warn("%s: no VIP left for host %q", originOf(src), h)
			}
		}
		e := pack(hostSrc, addrs, n4, name)
		e.addrSource = addrFrom
		switch {
		case addrFrom == addrSpec:
			if !isWildcard(e.Name) && (ptrHost == nil || e.Name < ptrHost.Name) {
				ptrHost = e
			}
			out.keep(e, false)
		case e.autoVIPs():
			// The state keeps the entry's copy: the builder holds no
			// other (resolvedOf's is dropped).
			own[i].addrs = e.Addrs
			out.keep(e, !isWildcard(e.Name))
		default:
			out.keep(vipless(n, e), false)
		}
	}
	if ptrHost != nil {
		ptrHost.ptr = true
	}
	return out
}

// vipless makes e, a ServiceEntry host without addresses, the entry
// ztunnel's find_server makes of it: under .svc.<domain> it keeps the name
// (taken for a headless Service's, answered from endpoints ztdns does not
// have: forwarded), elsewhere it is passed over.
func vipless(n names, e *Entry) *Entry {
	if strings.HasSuffix(e.Name, n.svcDomain) {
		e.forward = true
	} else {
		e.passed = true
	}
	return e
}

// hiddenEntries warns of the ServiceEntries among the entries of one name
// (in compareEntries order) that no pod gets: istiod keeps one object per
// namespace and host, its Service, else its oldest ServiceEntry with or
// without an address, whatever their exportTo (servedOf), so a newer
// ServiceEntry there with addresses never answers; nor does a host
// written otherwise than asked (shadowsFolded). One warning per object
// and name; none for one hidden by a Service.
func hiddenEntries(list []*Entry) []objWarning {
	if len(list) < 2 {
		return nil
	}
	first := map[string]*Entry{} // per namespace, its first entry
	var out []objWarning
	shadow := shadowsFolded(list)
	for j, e := range list {
		if shadow && e.src.folded {
			if (j == 0 || list[j-1].src != e.src) && !e.passed && !e.forward && seenBySome(e) && !asAskedToo(list, e) {
				out = append(out, objWarning{key: e.src.objKey(), err: foldedWarning(e, list[0])})
			}
			continue
		}
		by, ok := first[e.src.namespace]
		if !ok {
			first[e.src.namespace] = e
			continue
		}
		if j > 0 && list[j-1].src == e.src {
			continue // a host the object lists twice: warned of once
		}
		if e.kind == kindServiceEntry && by.kind == kindServiceEntry && !e.passed && !e.forward && seenBySome(e) {
			out = append(out, objWarning{key: e.src.objKey(), err: hiddenWarning(e, by)})
		}
	}
	return out
}

// shadowsFolded reports whether list, one name's entries in
// compareEntries order, starts with one that ztunnel finds by the name a
// pod asks: a Service, or a ServiceEntry host written in lower case
// without a trailing dot. Its folded entries then never answer: istiod
// sends ztunnel each host as written, and ztunnel matches the name asked
// exactly, so `API.example.com` never answers `api.example.com` while
// another object names it so, whatever their namespaces or ages. Without
// such an entry, the folded ones answer as any other (a pod's own
// namespace first, then the oldest).
func shadowsFolded(list []*Entry) bool {
	return len(list) > 1 && !list[0].src.folded && list[0].rank() != rankUnsent
}

// asAskedToo reports whether e's object also names e's host as asked.
func asAskedToo(list []*Entry, e *Entry) bool {
	return slices.ContainsFunc(list, func(x *Entry) bool { return !x.src.folded && x.src.objKey() == e.src.objKey() })
}

// foldedWarning says why e, a host written otherwise than asked, never
// answers: by names it as asked.
func foldedWarning(e, by *Entry) error {
	return fmt.Errorf("%s: host %q is not answered: it is written in upper case or with a trailing dot, and %s names it as pods ask for it "+
		"(lower case, no trailing dot); istiod sends ztunnel each as written, and ztunnel matches the name asked exactly; "+
		"write the host in lower case without a trailing dot, or remove it from one of them",
		originOf(e.src), strings.TrimSuffix(e.Name, "."), originOf(by.src))
}

// exportToOf is e's exportSet: nil when every namespace sees it.
func exportToOf(e *Entry) []string {
	if e.src.se == nil {
		return nil
	}
	return e.src.se.exportTo
}

// seenBySome reports whether some pod sees e.
func seenBySome(e *Entry) bool {
	ns := exportToOf(e)
	return ns == nil || slices.ContainsFunc(ns, func(n string) bool { return n != "" })
}

// coversExport reports whether every namespace that sees e sees x.
func coversExport(x, e *Entry) bool {
	xs, es := exportToOf(x), exportToOf(e)
	if xs == nil {
		return true
	}
	if es == nil {
		return false
	}
	for _, n := range es {
		if _, found := slices.BinarySearch(xs, n); !found { // exportSet sorts
			return false
		}
	}
	return true
}

// hiddenWarning says why e never answers, by being its namespace's
// object for the name.
func hiddenWarning(e, by *Entry) error {
	host := strings.TrimSuffix(e.Name, ".")
	if !by.src.created().Before(e.src.created()) {
		return tiedWarning(e, by, host)
	}
	older := "the older " + originOf(by.src).String()
	served := "(as istiod sends ztunnel)"
	if !coversExport(by, e) {
		served = "(as istiod sends ztunnel, whatever their exportTo: pods outside " + originOf(by.src).String() + "'s exportTo get neither)"
	}
	if by.passed || by.forward {
		return fmt.Errorf("%s: host %q is not answered: %s names it in namespace %s without an address, and one object per namespace and host is served %s; give %s/%s an address or remove the host from it",
			originOf(e.src), host, older, by.src.namespace, served, by.src.namespace, by.src.name)
	}
	return fmt.Errorf("%s: host %q is not answered: %s names it in namespace %s too, and one object per namespace and host is served %s; remove the host from one of them",
		originOf(e.src), host, older, by.src.namespace, served)
}

// tiedWarning says why e, as old as by (creationTimestamp counts whole
// seconds: `kubectl apply -f dir/`, Helm and Argo CD create many objects
// in one), may answer otherwise than ztunnel routes. istiod keeps the
// first of them it iterates unless another is strictly older
// (selectWorkloadServices' isBetter), in the order of a Go map: one at
// random, which may change whenever it recomputes or restarts, and which
// nothing ztdns can read tells (no condition marks the one it keeps
// unless a waypoint is bound). ztdns keeps the first by name, the same on
// every node.
func tiedWarning(e, by *Entry, host string) error {
	ours := originOf(by.src).String() + ", first by name"
	if by.passed || by.forward {
		ours += ", which has no address"
	}
	return fmt.Errorf("%s: host %q may not be answered as ztunnel routes it: %s names it in namespace %s too and was created in the same second "+
		"(creationTimestamp counts whole seconds); istiod sends ztunnel one object per namespace and host, picks one of those as old at random, "+
		"and may pick another whenever it recomputes or restarts, where ztdns answers %s; delete one of them, or recreate one so that the other is older",
		originOf(e.src), host, originOf(by.src), by.src.namespace, ours)
}

// exportSet turns spec.exportTo into the namespaces that see an entry; nil
// means all. "." is the entry's own namespace, "*" everyone, "~" nobody.
// A list Istio's validation rejects (checkExportTo) still means something:
// "*" with others is everyone, "~" with others those others, a value that
// is no namespace name ("" included) matches no namespace.
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

// ParseExportTo parses a comma-separated exportTo list, as Istio's
// MeshConfig defaultServiceExportTo holds it: "*" (every namespace), "."
// (the object's own), "~" (none) or namespace names. "*" and "~" stand
// alone, as Istio's validation wants them in an object's exportTo.
func ParseExportTo(s string) ([]string, error) {
	var out []string
	for _, v := range strings.Split(s, ",") {
		v = strings.TrimSpace(v)
		switch {
		case v == "." || v == "*" || v == "~" || isLabel(v):
		case v == "":
			return nil, fmt.Errorf("%q: an empty value matches no namespace", s)
		default:
			return nil, fmt.Errorf("%q: %q is not \".\", \"*\", \"~\" or a namespace name", s, v)
		}
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	if len(out) > 1 && (slices.Contains(out, "*") || slices.Contains(out, "~")) {
		return nil, fmt.Errorf("%q: \"*\" and \"~\" cannot be combined with other values", s)
	}
	return out, nil
}

// checkExportTo warns of what Istio's validation (validateExportTo)
// rejects: with --config-dir no webhook stands between a typo and the
// table, and an exportTo of [""] hides the entry from every namespace.
func checkExportTo(out *entrySet, src *source, exportTo []string) {
	var all, none bool
	for i, v := range exportTo {
		switch {
		case v == "*":
			all = true
		case v == "~":
			none = true
		case v != "." && !isLabel(v):
			out.warn("%s: exportTo %q is not \".\", \"*\", \"~\" or a namespace name: no namespace matches it", originOf(src), v)
		}
		if slices.Contains(exportTo[:i], v) {
			out.warn("%s: exportTo lists %q twice", originOf(src), v)
		}
	}
	switch {
	case all && len(exportTo) > 1:
		out.warn("%s: exportTo %q has \"*\" and other values: every namespace sees it", originOf(src), exportTo)
	case none && len(exportTo) > 1:
		out.warn("%s: exportTo %q has \"~\" and other values: only the others see it", originOf(src), exportTo)
	}
}

// isLabel reports whether s can be a namespace's name (an RFC 1123 label).
func isLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// compareEntries orders the entries of one key: rank, then a host written
// as a pod asks for it before one written otherwise (folded: istiod sends
// ztunnel both, each under its own hostname, and ztunnel matches the name
// asked exactly, lower case without a trailing dot), then age, then
// object, then name (one object's entries sharing an address).
func compareEntries(a, c *Entry) int {
	return cmp.Or(cmp.Compare(a.rank(), c.rank()), cmp.Compare(boolInt(a.src.folded), boolInt(c.src.folded)),
		a.src.created().Compare(c.src.created()),
		cmp.Compare(a.src.namespace, c.src.namespace), cmp.Compare(a.src.name, c.src.name),
		cmp.Compare(a.Name, c.Name))
}

// created is when a ServiceEntry was made; zero for a Service.
func (s *source) created() time.Time {
	if s.se == nil {
		return time.Time{}
	}
	return s.se.created
}

// originOf names the object of src, for warnings.
func originOf(src *source) Origin {
	return Origin{Kind: kinds[src.kind], Namespace: src.namespace, Name: src.name}
}

// compareOwners orders the entries that hold one address: endpoint names
// first, then Services (see Table.ptrOwners: a Service istiod does not see
// still owns its ClusterIP's PTR, as kube-dns answers it), then as
// compareEntries.
func compareOwners(a, c *Entry) int {
	return cmp.Or(-cmp.Compare(boolInt(a.isEndpoint()), boolInt(c.isEndpoint())),
		cmp.Compare(a.kind, c.kind), compareEntries(a, c))
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
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
