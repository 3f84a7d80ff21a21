package table

import (
	"cmp"
	"hash/maphash"
	"iter"
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
// What it keeps between builds is the state of each object (which entries
// it made, and the source they share) and, for its capacity, the list of
// entries that came and went in the last build; nothing else outlives a
// build.
//
// The builder keeps pointers into the snapshots it is given, so a source
// must not change a snapshot after delivering it. A Builder is not safe for
// concurrent use; the tables it returns are.
type Builder struct {
	n      names
	domain string

	services states[*serviceState]
	ses      states[*seState]
	// vipSource and fromStatus say where VIPs come from (fromStatus: as
	// decided for the last build).
	vipSource  vip.Source
	fromStatus bool
	// gen counts builds; an object whose state was not touched by this
	// build's generation is gone from the snapshot.
	gen  uint32
	last *Table
	// warnings are the objects' warnings, for those that have any.
	warnings map[objKey][]error
	// added and dropped are this build's changes: the entries of new and
	// changed objects, and those of the last table that go. Kept between
	// builds for their capacity.
	added, dropped []*Entry
	// discarded are entries added and dropped within one build (an object
	// twice in a snapshot: the last one wins). Nearly always empty.
	discarded map[*Entry]bool
}

// objKey names an object without building a "namespace/name" string.
type objKey struct{ ns, name string }

func (s *source) objKey() objKey { return objKey{s.namespace, s.name} }

// states maps objects to their states by a hash of their key: a slot takes
// 16 bytes where one keyed by objKey takes 40. The rare key whose hash
// another key has already goes to clash, keyed in full.
type states[S interface {
	comparable
	objKey() objKey
}] struct {
	byHash map[uint64]S
	clash  map[objKey]S
	hash   func(objKey) uint64
}

var stateSeed = maphash.MakeSeed()

func hashKey(k objKey) uint64 { return maphash.Comparable(stateSeed, k) }

func newStates[S interface {
	comparable
	objKey() objKey
}]() states[S] {
	return states[S]{byHash: map[uint64]S{}, clash: map[objKey]S{}, hash: hashKey}
}

func (m states[S]) get(k objKey) S {
	if s, ok := m.byHash[m.hash(k)]; ok && s.objKey() == k {
		return s
	}
	return m.clash[k]
}

func (m states[S]) put(k objKey, s S) {
	h := m.hash(k)
	if cur, ok := m.byHash[h]; ok && cur.objKey() != k {
		m.clash[k] = s
		return
	}
	m.byHash[h] = s
	delete(m.clash, k) // in case it moved here when its hash was free
}

func (m states[S]) delete(k objKey) {
	h := m.hash(k)
	if cur, ok := m.byHash[h]; ok && cur.objKey() == k {
		delete(m.byHash, h)
	}
	delete(m.clash, k)
}

func (m states[S]) len() int { return len(m.byHash) + len(m.clash) }

// all yields every state with its key; deleting while iterating is safe.
func (m states[S]) all() iter.Seq2[objKey, S] {
	return func(yield func(objKey, S) bool) {
		for _, s := range m.byHash {
			if !yield(s.objKey(), s) {
				return
			}
		}
		for k, s := range m.clash {
			if !yield(k, s) {
				return
			}
		}
	}
}

// The state of an object: what it was last built from, and what that made.
// gen is the last build that saw the object; built the one that made its
// entries.
type serviceState struct {
	source // what its entries share
	svc    *model.Service
	// slices are a headless Service's EndpointSlices; nil for others.
	slices  *[]*model.EndpointSlice
	entries []*Entry
	gen     uint32
	built   uint32
}

// slicesRef is what serviceState.slices holds for slices.
func slicesRef(slices []*model.EndpointSlice) *[]*model.EndpointSlice {
	if slices == nil {
		return nil
	}
	p := new([]*model.EndpointSlice) // only here: a moved parameter is allocated on entry
	*p = slices
	return p
}

// endpointSlices are a headless Service's EndpointSlices.
func (st *serviceState) endpointSlices() []*model.EndpointSlice {
	if st.slices == nil {
		return nil
	}
	return *st.slices
}

type seState struct {
	source // what its entries share
	ext    seSource
	se     *model.ServiceEntry
	// resolved[i] is what se.Hosts[i] resolved to when built (zero when
	// the host has no VIP); nil when no host has one.
	resolved []hostAddrs
	entries  []*Entry
	gen      uint32
	built    uint32
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
		n:         names{svcDomain: ".svc." + domain, ttl: opts.TTL, prefixes: map[string]string{}},
		domain:    domain,
		vipSource: opts.VIPSource,
		services:  newStates[*serviceState](),
		ses:       newStates[*seState](),
		last:      &Table{},
		discarded: map[*Entry]bool{},
		warnings:  map[objKey][]error{},
	}
}

// Build makes a table from a snapshot in one go.
func Build(s *model.Snapshot, opts Options) (*Table, []error) {
	return NewBuilder(opts).Build(s)
}

// put records that entries join the table.
func (b *Builder) put(entries []*Entry) { b.added = append(b.added, entries...) }

// drop records that the entries an object's state made in build built
// leave the table.
func (b *Builder) drop(entries []*Entry, built uint32) {
	if built != b.gen {
		b.dropped = append(b.dropped, entries...)
		return
	}
	for _, e := range entries { // added in this build: they never reach a table
		b.discarded[e] = true
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
	b.gen++
	b.buildServices(s)
	b.buildServiceEntries(s)
	t := b.assemble()
	b.last = t
	b.added, b.dropped = reuse(b.added), reuse(b.dropped)
	clear(b.discarded)
	var warnings []error
	for _, w := range b.warnings {
		warnings = append(warnings, w...)
	}
	return t, warnings
}

// keptEntries bounds the capacity of a list of changed entries kept for the
// next build: enough for a burst of changes, not the first build's every
// entry.
const keptEntries = 1024

// reuse empties a list of entries for the next build.
func reuse(list []*Entry) []*Entry {
	if cap(list) > keptEntries {
		return nil
	}
	clear(list)
	return list[:0]
}

// made records what an object's entries are and returns them.
func (b *Builder) made(key objKey, set entrySet) []*Entry {
	if len(set.warnings) > 0 {
		b.warnings[key] = set.warnings
	}
	b.put(set.entries)
	return set.entries
}

// forget drops what the state of the object key made.
func (b *Builder) forget(key objKey, entries []*Entry, built uint32) {
	b.drop(entries, built)
	delete(b.warnings, key)
}

func (b *Builder) buildServices(s *model.Snapshot) {
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
		st := b.services.get(key)
		if st != nil && equalService(st.svc, svc) && equalSlices(st.endpointSlices(), mine) {
			// Point at the new snapshot, so the old one can be collected.
			st.svc, st.slices, st.gen = svc, slicesRef(mine), b.gen
			continue
		}
		if st != nil {
			b.forget(key, st.entries, st.built)
		}
		st = &serviceState{source: serviceSource(b.n, svc), svc: svc, slices: slicesRef(mine), gen: b.gen, built: b.gen}
		st.entries = b.made(key, serviceEntries(b.n, &st.source, svc, mine))
		b.services.put(key, st)
	}
	for key, st := range b.services.all() {
		if st.gen != b.gen {
			b.forget(key, st.entries, st.built)
			b.services.delete(key)
		}
	}
}

func (b *Builder) buildServiceEntries(s *model.Snapshot) {
	// VIPs are decided over all ServiceEntries at once; that is only needed
	// when one of them changed (or where VIPs come from did).
	fromStatus := b.vipSource.FromStatus(istiodAllocates(s))
	changed := b.gen == 1 || len(s.ServiceEntries) != b.ses.len() || fromStatus != b.fromStatus
	for i := 0; i < len(s.ServiceEntries) && !changed; i++ {
		se := &s.ServiceEntries[i]
		st := b.ses.get(objKey{se.Namespace, se.Name})
		changed = st == nil || !equalServiceEntry(st.se, se)
	}
	if !changed {
		for i := range s.ServiceEntries {
			se := &s.ServiceEntries[i]
			st := b.ses.get(objKey{se.Namespace, se.Name})
			st.se, st.gen = se, b.gen // point at the new snapshot
		}
		return
	}
	b.fromStatus = fromStatus
	resolved := resolveHosts(s.ServiceEntries, fromStatus)
	for i := range s.ServiceEntries {
		se := &s.ServiceEntries[i]
		key := objKey{se.Namespace, se.Name}
		st := b.ses.get(key)
		// Its hosts' VIPs are part of what it answers: one that moved (a
		// collision freed by a deletion, istiod's status arriving) rebuilds it.
		if st != nil && equalServiceEntry(st.se, se) && sameResolved(resolved, se, st.resolved) {
			st.se, st.gen = se, b.gen
			continue
		}
		if st != nil {
			b.forget(key, st.entries, st.built)
		}
		st = &seState{se: se, resolved: resolvedOf(resolved, se), gen: b.gen, built: b.gen}
		st.source = serviceEntrySource(b.n, se, &st.ext)
		st.entries = b.made(key, serviceEntryEntries(&st.source, se, resolved, b.fromStatus))
		b.ses.put(key, st)
	}
	for key, st := range b.ses.all() {
		if st.gen != b.gen {
			b.forget(key, st.entries, st.built)
			b.ses.delete(key)
		}
	}
}

// VIPsFromStatus reports whether the last build took VIPs from istiod's
// status.addresses (true) or from vip.Allocate.
func (b *Builder) VIPsFromStatus() bool { return b.fromStatus }

// resolvedOf is what se's hosts resolved to, nil when none has a VIP.
func resolvedOf(resolved map[vip.Key]hostAddrs, se *model.ServiceEntry) []hostAddrs {
	var out []hostAddrs
	for i, h := range se.Hosts {
		r, ok := resolved[vip.Key{Owner: se.Key(), Host: h}]
		if !ok {
			continue
		}
		if out == nil {
			out = make([]hostAddrs, len(se.Hosts))
		}
		out[i] = r
	}
	return out
}

func sameResolved(resolved map[vip.Key]hostAddrs, se *model.ServiceEntry, was []hostAddrs) bool {
	if was != nil && len(se.Hosts) != len(was) {
		return false
	}
	for i, h := range se.Hosts {
		var w hostAddrs
		if was != nil {
			w = was[i]
		}
		if !resolved[vip.Key{Owner: se.Key(), Host: h}].equal(w) {
			return false
		}
	}
	return true
}

// assemble makes the next table: the last one's shards, with fresh copies of
// the shards that hold a changed key, the entries that go taken out and
// those that come put in.
func (b *Builder) assemble() *Table {
	last := b.last
	t := &Table{domain: b.domain, svcDomain: b.n.svcDomain, ttl: b.n.ttl, serial: uint32(time.Now().Unix()),
		names: last.names, reverse: last.reverse, wildcards: last.wildcards, size: last.size}
	var names, addrs [numShards]bool // copied
	wildcards := false
	name := func(e *Entry) (*shard[string], string) {
		if isWildcard(e.Name) {
			if !wildcards {
				wildcards = true
				t.wildcards = t.wildcards.clone()
			}
			return &t.wildcards, e.Name[2:]
		}
		i := shardOf(e.Name)
		if !names[i] {
			names[i] = true
			t.names[i] = t.names[i].clone()
		}
		return &t.names[i], e.Name
	}
	addr := func(a netip.Addr) (*shard[addrKey], addrKey) {
		k := keyOf(a)
		i := shardOfAddr(k)
		if !addrs[i] {
			addrs[i] = true
			t.reverse[i] = t.reverse[i].clone()
		}
		return &t.reverse[i], k
	}
	for _, e := range b.dropped {
		sh, k := name(e)
		t.size += sh.remove(k, e)
		for _, a := range ptrAddrs(e) {
			sh, k := addr(a)
			sh.remove(k, e)
		}
	}
	for _, e := range b.added {
		if b.discarded[e] {
			continue
		}
		sh, k := name(e)
		t.size += sh.insert(k, e, compareEntries)
		for _, a := range ptrAddrs(e) {
			sh, k := addr(a)
			sh.insert(k, e, compareOwners)
		}
	}
	return t
}

// clone returns a copy of s to change: the last table keeps s.
func (s shard[K]) clone() shard[K] {
	c := shard[K]{one: maps.Clone(s.one), many: maps.Clone(s.many)}
	if c.one == nil {
		c.one = map[K]*Entry{}
	}
	return c
}

// insert adds e to k's entries, in order, and returns how the number of
// keys changed. Lists are made anew: the old ones belong to older tables.
func (s *shard[K]) insert(k K, e *Entry, compare func(a, b *Entry) int) int {
	first, had := s.one[k]
	if !had {
		s.one[k] = e
		return 1
	}
	old := s.many[k]
	if old == nil {
		old = []*Entry{first}
	}
	// After the entries it ties with, as a stable sort would put it.
	i, _ := slices.BinarySearchFunc(old, e, func(x, e *Entry) int { return cmp.Or(compare(x, e), -1) })
	list := slices.Insert(slices.Clip(old), i, e)
	if s.many == nil {
		s.many = map[K][]*Entry{}
	}
	s.many[k], s.one[k] = list, list[0]
	return 0
}

// remove takes e out of k's entries and returns how the number of keys
// changed.
func (s *shard[K]) remove(k K, e *Entry) int {
	old, several := s.many[k]
	if !several {
		if s.one[k] == e {
			delete(s.one, k)
			return -1
		}
		return 0
	}
	list := make([]*Entry, 0, len(old)-1)
	for _, x := range old {
		if x != e {
			list = append(list, x)
		}
	}
	if len(list) == 1 {
		delete(s.many, k)
	} else {
		s.many[k] = list
	}
	s.one[k] = list[0]
	return 0
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
