package table

import (
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/vip"
)

// Builder makes tables from snapshots, incrementally: it remembers what every
// object contributed to the last table, rebuilds only the objects that
// changed, and copies only the shards of the table whose keys changed; the
// rest are shared with the last table, which never changes. A snapshot that
// differs from the last one in one object costs about as much as that object,
// not as the whole cluster (the bound: an update at 10,000 objects
// visible within 100 ms).
//
// The builder keeps pointers into the snapshots it is given, so a source
// must not change a snapshot after delivering it. A Builder is not safe for
// concurrent use; the tables it returns are.
type Builder struct {
	n      names
	domain string

	services map[objKey]*serviceState
	ses      map[objKey]*seState
	// vipSource and fromStatus say where VIPs come from (fromStatus: as
	// decided for the last build).
	vipSource  vip.Source
	fromStatus bool
	// resolved are the auto-allocating hosts' addresses of the last build.
	resolved map[vip.Key]hostAddrs
	// gen counts builds; an object whose state was not touched by this
	// build's generation is gone from the snapshot.
	gen  uint64
	last *Table
}

// objKey names an object without building a "namespace/name" string.
type objKey struct{ ns, name string }

type serviceState struct {
	svc    *model.Service
	slices []*model.EndpointSlice
	set    entrySet
	gen    uint64
}

type seState struct {
	se *model.ServiceEntry
	// resolved[i] is what se.Hosts[i] resolved to when built (zero when
	// the host has no VIP).
	resolved []hostAddrs
	set      entrySet
	gen      uint64
}

// NewBuilder returns a builder with the given options.
func NewBuilder(opts Options) *Builder {
	if opts.Domain == "" {
		opts.Domain = DefaultDomain
	}
	if opts.TTL == 0 {
		opts.TTL = DefaultTTL
	}
	domain := dns.CanonicalName(opts.Domain)
	return &Builder{
		n:         names{svcDomain: ".svc." + domain, ttl: opts.TTL},
		domain:    domain,
		vipSource: opts.VIPSource,
		services:  map[objKey]*serviceState{},
		ses:       map[objKey]*seState{},
		last:      &Table{},
	}
}

// Build makes a table from a snapshot in one go.
func Build(s *model.Snapshot, opts Options) (*Table, []error) {
	return NewBuilder(opts).Build(s)
}

// changes collects, for one build, which entries leave and join each key.
type changes struct {
	names map[string]*delta
	wild  map[string]*delta
	addrs map[netip.Addr]*delta
}

type delta struct{ drop, add []*Entry }

func deltaOf[K comparable](m map[K]*delta, k K) *delta {
	d := m[k]
	if d == nil {
		d = &delta{}
		m[k] = d
	}
	return d
}

func (c *changes) put(entries []*Entry) {
	for _, e := range entries {
		if isWildcard(e.Name) {
			d := deltaOf(c.wild, e.Name[2:])
			d.add = append(d.add, e)
			continue
		}
		d := deltaOf(c.names, e.Name)
		d.add = append(d.add, e)
		for _, a := range ptrAddrs(e) {
			d := deltaOf(c.addrs, a)
			d.add = append(d.add, e)
		}
	}
}

func (c *changes) drop(entries []*Entry) {
	for _, e := range entries {
		if isWildcard(e.Name) {
			d := deltaOf(c.wild, e.Name[2:])
			d.drop = append(d.drop, e)
			continue
		}
		d := deltaOf(c.names, e.Name)
		d.drop = append(d.drop, e)
		for _, a := range ptrAddrs(e) {
			d := deltaOf(c.addrs, a)
			d.drop = append(d.drop, e)
		}
	}
}

// ptrAddrs are the addresses whose reverse names point at e.
func ptrAddrs(e *Entry) []netip.Addr {
	if !e.ownsPTR() {
		return nil
	}
	return e.Addrs
}

// Build returns the table for s. Problems with single objects (a host that
// is not a valid DNS name, say) come back as warnings and leave that object
// out; everything else is built.
func (b *Builder) Build(s *model.Snapshot) (*Table, []error) {
	c := &changes{names: map[string]*delta{}, wild: map[string]*delta{}, addrs: map[netip.Addr]*delta{}}
	b.gen++
	b.buildServices(s, c)
	b.buildServiceEntries(s, c)
	t := b.assemble(c)
	b.last = t
	var warnings []error
	for _, st := range b.services {
		warnings = append(warnings, st.set.warnings...)
	}
	for _, st := range b.ses {
		warnings = append(warnings, st.set.warnings...)
	}
	return t, warnings
}

func (b *Builder) buildServices(s *model.Snapshot, c *changes) {
	eps := map[objKey][]*model.EndpointSlice{}
	for i := range s.EndpointSlices {
		es := &s.EndpointSlices[i]
		k := objKey{es.Namespace, es.ServiceName}
		eps[k] = append(eps[k], es)
	}
	for i := range s.Services {
		svc := &s.Services[i]
		key := objKey{svc.Namespace, svc.Name}
		var mine []*model.EndpointSlice
		if svc.Headless { // only a headless Service answers from its endpoints
			mine = eps[key]
		}
		st := b.services[key]
		if st != nil && equalService(st.svc, svc) && equalSlices(st.slices, mine) {
			// Point at the new snapshot, so the old one can be collected.
			st.svc, st.slices, st.gen = svc, mine, b.gen
			continue
		}
		if st != nil {
			c.drop(st.set.entries)
		}
		st = &serviceState{svc: svc, slices: mine, set: serviceEntries(b.n, svc, mine), gen: b.gen}
		b.services[key] = st
		c.put(st.set.entries)
	}
	for key, st := range b.services {
		if st.gen != b.gen {
			c.drop(st.set.entries)
			delete(b.services, key)
		}
	}
}

func (b *Builder) buildServiceEntries(s *model.Snapshot, c *changes) {
	// VIPs are decided over all ServiceEntries at once; that is only needed
	// again when one of them changed.
	fromStatus := b.vipSource.FromStatus(istiodAllocates(s))
	changed := b.resolved == nil || len(s.ServiceEntries) != len(b.ses) || fromStatus != b.fromStatus
	for i := 0; i < len(s.ServiceEntries) && !changed; i++ {
		se := &s.ServiceEntries[i]
		st := b.ses[objKey{se.Namespace, se.Name}]
		changed = st == nil || !equalServiceEntry(st.se, se)
	}
	if changed {
		b.fromStatus = fromStatus
		b.resolved = resolveHosts(s.ServiceEntries, fromStatus)
	}
	for i := range s.ServiceEntries {
		se := &s.ServiceEntries[i]
		key := objKey{se.Namespace, se.Name}
		st := b.ses[key]
		// Its hosts' VIPs are part of what it answers: one that moved (a
		// collision freed by a deletion, istiod's status arriving) rebuilds it.
		if st != nil && equalServiceEntry(st.se, se) && b.sameResolved(se, st.resolved) {
			st.se, st.gen = se, b.gen
			continue
		}
		if st != nil {
			c.drop(st.set.entries)
		}
		st = &seState{se: se, set: serviceEntryEntries(b.n, se, b.resolved, b.fromStatus), gen: b.gen}
		for _, h := range se.Hosts {
			st.resolved = append(st.resolved, b.resolved[vip.Key{Owner: se.Key(), Host: h}])
		}
		b.ses[key] = st
		c.put(st.set.entries)
	}
	for key, st := range b.ses {
		if st.gen != b.gen {
			c.drop(st.set.entries)
			delete(b.ses, key)
		}
	}
}

// VIPsFromStatus reports whether the last build took VIPs from istiod's
// status.addresses (true) or from vip.Allocate.
func (b *Builder) VIPsFromStatus() bool { return b.fromStatus }

func (b *Builder) sameResolved(se *model.ServiceEntry, was []hostAddrs) bool {
	if len(se.Hosts) != len(was) {
		return false
	}
	for i, h := range se.Hosts {
		if !b.resolved[vip.Key{Owner: se.Key(), Host: h}].equal(was[i]) {
			return false
		}
	}
	return true
}

// assemble makes the next table: the last one's shards, with fresh copies of
// the shards that hold a changed key.
func (b *Builder) assemble(c *changes) *Table {
	last := b.last
	t := &Table{domain: b.domain, svcDomain: b.n.svcDomain, ttl: b.n.ttl, serial: uint32(time.Now().Unix()),
		names: last.names, reverse: last.reverse, wildcards: last.wildcards, size: last.size}
	copied := map[uint32]bool{}
	for name, d := range c.names {
		i := shardOf(name)
		if !copied[i] {
			copied[i] = true
			t.names[i] = cloneShard(t.names[i])
		}
		t.size += apply(t.names[i], name, d, compareEntries)
	}
	clear(copied)
	for a, d := range c.addrs {
		i := shardOfAddr(a)
		if !copied[i] {
			copied[i] = true
			t.reverse[i] = cloneShard(t.reverse[i])
		}
		apply(t.reverse[i], a, d, compareOwners)
	}
	if len(c.wild) > 0 {
		t.wildcards = cloneShard(t.wildcards)
		for k, d := range c.wild {
			t.size += apply(t.wildcards, k, d, compareEntries)
		}
	}
	return t
}

func cloneShard[K comparable](m map[K][]*Entry) map[K][]*Entry {
	if m == nil {
		return map[K][]*Entry{}
	}
	return maps.Clone(m)
}

// apply replaces m[k] with a fresh, sorted list (the old one belongs to
// older tables) and returns how the number of keys changed.
func apply[K comparable](m map[K][]*Entry, k K, d *delta, compare func(a, b *Entry) int) int {
	old, had := m[k]
	list := make([]*Entry, 0, len(old)+len(d.add))
	for _, e := range slices.Concat(old, d.add) {
		// An entry can be added and dropped in one build (an object twice
		// in a snapshot: the last one wins).
		if !slices.Contains(d.drop, e) {
			list = append(list, e)
		}
	}
	if len(list) == 0 {
		delete(m, k)
		if had {
			return -1
		}
		return 0
	}
	slices.SortStableFunc(list, compare)
	m[k] = list
	if had {
		return 0
	}
	return 1
}

func equalService(a, b *model.Service) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && a.Headless == b.Headless && a.ExternalName == b.ExternalName &&
		a.PublishNotReady == b.PublishNotReady && slices.Equal(a.ClusterIPs, b.ClusterIPs) && slices.Equal(a.Ports, b.Ports)
}

func equalSlices(a, b []*model.EndpointSlice) bool {
	return len(a) == len(b) && !slices.ContainsFunc(a, func(x *model.EndpointSlice) bool {
		return !slices.ContainsFunc(b, func(y *model.EndpointSlice) bool { return equalSlice(x, y) })
	})
}

func equalSlice(a, b *model.EndpointSlice) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && a.ServiceName == b.ServiceName && slices.Equal(a.Ports, b.Ports) &&
		slices.EqualFunc(a.Endpoints, b.Endpoints, func(x, y model.Endpoint) bool {
			return x.Hostname == y.Hostname && x.Ready == y.Ready && slices.Equal(x.Addresses, y.Addresses)
		})
}

func equalServiceEntry(a, b *model.ServiceEntry) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && a.Created.Equal(b.Created) && a.Resolution == b.Resolution &&
		a.AutoAllocate == b.AutoAllocate && a.HasSpecAddresses == b.HasSpecAddresses && slices.Equal(a.Hosts, b.Hosts) && slices.Equal(a.Addresses, b.Addresses) &&
		slices.Equal(a.CIDRs, b.CIDRs) && slices.Equal(a.StatusAddresses, b.StatusAddresses) &&
		slices.Equal(a.ExportTo, b.ExportTo) && slices.Equal(a.Ports, b.Ports)
}
