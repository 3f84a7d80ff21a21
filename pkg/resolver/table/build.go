package table

import (
	"cmp"
	"hash/maphash"
	"iter"
	"maps"
	"net/netip"
	"slices"
	"strings"
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
// not as the whole cluster (README, "The targets": a change reaching the
// served table within 100 ms at p90).
//
// Finding what changed costs little more than a look at each object of a
// changed kind: a kind whose slice in the snapshot is the last one's is not
// looked at; an object found at its place in the last snapshot of its kind
// needs no lookup by key; and a ServiceEntry change that leaves every
// auto-allocated VIP where it was does not run the allocator over all of
// them (at 150,000 objects: a Service change in ~10 ms, down from ~110).
//
// What it keeps between builds is the state of each object (which entries
// it made, and the source they share), each kind's states in snapshot order,
// the endpoint names of crowded addresses beyond those the table keeps
// (moreOwners) and, for their capacity, the list of entries that came and
// went in the last build; nothing else outlives a build. None of it
// outlives a deleted object, and what it keeps shrinks with the cluster:
// after a build with far fewer objects, its maps and those of the table
// are made anew at their size (a Go map keeps the room of its largest
// size), so memory follows the cluster now, not the largest one seen.
//
// The builder keeps pointers into the snapshots it is given, so a source
// must not change a snapshot after delivering it. A Builder is not safe for
// concurrent use; the tables it returns are.
type Builder struct {
	n      names
	domain string

	services states[*serviceState]
	ses      states[*seState]
	// The snapshot slices the states point into: a kind whose slices did
	// not change between snapshots costs a build nothing.
	servicesFrom []model.Service
	slicesFrom   []model.EndpointSlice
	sesFrom      []model.ServiceEntry
	walks        uint32 // numbers walks (walker.id)
	// unselected is the last snapshot's IstiodUnselected: a Service of
	// one of them ranks rankUnsent.
	unselected []string
	// vipSource and vipsFrom say where VIPs come from (vipsFrom: as
	// decided for the last build).
	vipSource vip.Source
	vipsFrom  vip.From
	// exportTo is Options.DefaultExportTo: when set, it wins over the
	// snapshots' DefaultExportTo (n.defaultExportTo is the one in force).
	exportTo []string
	// gen counts builds (mark.built).
	gen  uint32
	last *Table
	// warnings are the objects' warnings, for those that have any.
	warnings map[objKey][]error
	// hidden are, for names several entries hold, the warnings of the
	// ServiceEntries among them that never answer (hiddenEntries); nil
	// until one has any.
	hidden map[nameKey][]objWarning
	// added and dropped are this build's changes: the entries of new and
	// changed objects, and those of the last table that go. Kept between
	// builds for their capacity.
	added, dropped []*Entry
	// discarded are entries added and dropped within one build (an object
	// twice in a snapshot: the last one wins). Nearly always empty.
	discarded map[*Entry]bool
	// moreOwners are, for an address more than maxPTROwners endpoint
	// names hold, those beyond the ones the table keeps, in order: the
	// next to move up when one of those goes.
	moreOwners map[addrKey][]*Entry
	// budget leaves out the objects of a namespace past its budget of
	// names before anything is built from them.
	budget nsBudget
	// room is, for each shard of the last table, the most keys its maps
	// have held (see shard.clone).
	room struct {
		names, reverse [numShards]shardRoom
		wildcards      shardRoom
	}
}

// maxPTROwners bounds the endpoint names the table keeps for one address:
// the names its PTR answer gives (Table.ptrOwners), the first in
// compareOwners order. A reverse name with more names than this is of no
// use in a reply. Its other owners (Services, ServiceEntries) are all
// kept: the answer is the one of them that Table.pick chooses for the
// asker, which need not be among the first (a tenant's own ServiceEntry
// that only its namespace sees). They are as many as the objects that
// claim the address (a ServiceEntry's spec.addresses point at one of its
// hosts), and a key's list is made once per build however many of them
// come and go (edits), so keeping them costs no more than the objects.
const maxPTROwners = 16

// leadingEndpoints counts the endpoint names that begin an address's
// owners (compareOwners puts them first).
func leadingEndpoints(owners []*Entry) int {
	n := 0
	for n < len(owners) && owners[n].isEndpoint() {
		n++
	}
	return n
}

// objKey names an object without building a "namespace/name" string.
type objKey struct{ ns, name string }

func (s *source) objKey() objKey { return objKey{s.namespace, s.name} }

// states maps objects to their states by a hash of their key: a slot takes
// 16 bytes where one keyed by objKey takes 40. The rare key whose hash
// another key has already goes to clash, keyed in full.
//
// order lists the states in the order of the last snapshot that changed
// the kind, so that the next build finds an object that kept its place by
// its position, without hashing its key (see walker); nil after a snapshot
// that held an object twice. spare is the order before, emptied and kept
// for its capacity while that is not far above the kind's count.
type states[S state] struct {
	byHash map[uint64]S
	clash  map[objKey]S
	// hash is hashKey; a field so that a test can make keys clash.
	hash         func(objKey) uint64
	order, spare []S
	// most is the most states byHash has held since it was made: a map
	// keeps the room of its largest size (see forget).
	most int
}

// state is what states hold.
type state interface {
	comparable
	objKey() objKey
	mark() *walkMark
}

var stateSeed = maphash.MakeSeed()

func hashKey(k objKey) uint64 { return maphash.Comparable(stateSeed, k) }

func newStates[S state]() states[S] {
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

// forget deletes the states gone. A map never gives back the room of its
// largest size: when fewer than a quarter of the states it has held at
// most are left (a cluster that shrank), the index is copied into maps of
// its size, which costs less than the deletions did.
func (m *states[S]) forget(gone []S) {
	m.most = max(m.most, len(m.byHash))
	for _, st := range gone {
		m.delete(st.objKey())
	}
	if len(m.byHash) >= m.most/4 {
		return
	}
	m.byHash, m.clash = copyMap(m.byHash), copyMap(m.clash)
	m.most = len(m.byHash)
}

// copyMap copies m into a map of its size (maps.Clone copies its room).
func copyMap[K comparable, V any](m map[K]V) map[K]V {
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

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

// walkMark is where the last walk saw an object's state: seen is the walk,
// built the build that made its entries, and pos its index in that walk's
// snapshot (see walker).
type walkMark struct {
	seen, built, pos uint32
}

func (m *walkMark) mark() *walkMark { return m }

// walker goes through one snapshot's objects of a kind in order, finding
// each one's state: by its position when it kept its place in the last
// snapshot (nearly all of them, nearly always), by its key otherwise.
type walker[S state] struct {
	m     *states[S]
	id    uint32 // marks the states this walk saw (mark.seen)
	built uint32 // the build
	last  []S    // m.order
	order []S    // the states in this snapshot's order
	j     int    // where the next object is expected in last
	seen  int    // distinct states found or put
	dup   bool   // an object was in the snapshot twice
}

// walk starts a walk over a snapshot of n objects of the kind of m.
func walk[S state](b *Builder, m *states[S], n int) *walker[S] {
	b.walks++
	order := slices.Grow(m.spare[:0], n)[:n] // empty: see finish and abandon
	return &walker[S]{m: m, id: b.walks, built: b.gen, last: m.order, order: order}
}

// find returns the state of the object k at index i of the snapshot, the
// zero S when it has none.
func (w *walker[S]) find(k objKey, i int) S {
	var st, zero S
	if w.j < len(w.last) && w.last[w.j].objKey() == k {
		st = w.last[w.j]
		w.j++
	} else if st = w.m.get(k); st != zero {
		if p := int(st.mark().pos); p >= w.j && p < len(w.last) && w.last[p] == st {
			w.j = p + 1 // the objects between went
		}
	}
	if st == zero {
		return st
	}
	m := st.mark()
	if m.seen == w.id {
		w.dup = true
	} else {
		m.seen = w.id
		w.seen++
	}
	m.pos = uint32(i)
	w.order[i] = st
	return st
}

// put makes st the state of the object k at index i, built in this build.
func (w *walker[S]) put(k objKey, i int, st S) {
	var zero S
	if old := w.m.get(k); old == zero || old.mark().seen != w.id {
		w.seen++
	}
	*st.mark() = walkMark{seen: w.id, built: w.built, pos: uint32(i)}
	w.order[i] = st
	w.m.put(k, st)
}

// unseen returns the states of objects gone from the snapshot.
func (w *walker[S]) unseen() []S {
	if w.seen == w.m.len() {
		return nil
	}
	var gone []S
	all := slices.Values(w.last)
	if w.last == nil {
		all = func(yield func(S) bool) {
			for _, st := range w.m.all() {
				if !yield(st) {
					return
				}
			}
		}
	}
	for st := range all {
		if st.mark().seen != w.id && w.m.get(st.objKey()) == st {
			gone = append(gone, st)
		}
	}
	return gone
}

// finish ends the walk: the states of objects gone from the snapshot leave
// (and are returned), and this snapshot's order is kept for the next walk.
// The last order becomes the spare, emptied to its capacity: past this
// snapshot's count it names states of objects gone, each of which holds the
// snapshot array it was last built from. A spare far larger than this
// snapshot (a cluster that shrank) goes.
func (w *walker[S]) finish() []S {
	gone := w.unseen()
	w.m.forget(gone)
	spare := w.last[:cap(w.last)]
	clear(spare)
	if len(spare) > keptOrder(len(w.order)) {
		spare = nil
	}
	w.m.spare, w.m.order = spare, w.order
	if w.dup {
		w.m.order = nil // positions that name a replaced state
	}
	return gone
}

// keptOrder bounds the capacity of the spare order kept after a walk over
// n objects: room for the cluster to grow, not for its largest size.
func keptOrder(n int) int { return 2*n + 64 }

// abandon ends a walk that changed no state but their marks, and reports
// false. Its order, the spare, is emptied again.
func (w *walker[S]) abandon() bool {
	clear(w.order)
	return false
}

// sameSlice reports whether a and b are the same slice of the same array.
func sameSlice[T any](a, b []T) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// The state of an object: what it was last built from, and what that made.
type serviceState struct {
	source // what its entries share
	walkMark
	svc *model.Service
	// slices are a headless Service's EndpointSlices; nil for others.
	slices  *[]*model.EndpointSlice
	entries []*Entry
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
	walkMark
	ext seSource
	se  *model.ServiceEntry
	// resolved[i] is what se.Hosts[i] resolved to when built (zero when
	// the host has no VIP); nil when no host has one.
	resolved []hostAddrs
	entries  []*Entry
}

// NewBuilder returns a builder with the given options.
func NewBuilder(opts Options) *Builder {
	if opts.Domain == "" {
		opts.Domain = DefaultDomain
	}
	if opts.TTL == 0 {
		opts.TTL = DefaultTTL
	}
	if opts.ServiceEntryTTL == 0 {
		opts.ServiceEntryTTL = DefaultServiceEntryTTL
	}
	domain := dns.CanonicalName(opts.Domain)
	return &Builder{
		n:          names{svcDomain: ".svc." + domain, ttl: opts.TTL, seTTL: opts.ServiceEntryTTL, defaultExportTo: opts.DefaultExportTo, prefixes: map[string]string{}, mores: map[string]*more{}},
		domain:     domain,
		exportTo:   opts.DefaultExportTo,
		vipSource:  opts.VIPSource,
		services:   newStates[*serviceState](),
		ses:        newStates[*seState](),
		last:       &Table{},
		discarded:  map[*Entry]bool{},
		warnings:   map[objKey][]error{},
		moreOwners: map[addrKey][]*Entry{},
		budget:     nsBudget{max: max(opts.MaxNamesPerNamespace, 0)},
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
// out; everything else is built. The objects the source left out
// (s.IstiodIgnores) come back as one warning per reason. So do ServiceEntries built but never
// answered, an older one of their namespace naming the host (hiddenEntries),
// and the objects of a namespace over its budget of names that do not fit
// (nsBudget), which are not built: one warning per namespace names them.
func (b *Builder) Build(s *model.Snapshot) (*Table, []error) {
	b.gen++
	s = b.budget.apply(s)
	b.buildServices(s)
	b.buildServiceEntries(s)
	t := b.assemble()
	b.last = t
	b.added, b.dropped = reuse(b.added), reuse(b.dropped)
	clear(b.discarded)
	// In the objects' order, not the maps': the agent keeps and shows the
	// first few, which must not change from one build to the next. An
	// object's own warnings keep their order and come before its hidden
	// ones, which are sorted by text.
	var all []objWarning
	for k, ws := range b.warnings {
		for _, err := range ws {
			all = append(all, objWarning{key: k, err: err})
		}
	}
	all = append(all, b.budget.warnings...)
	for _, lo := range s.IstiodIgnores {
		all = append(all, objWarning{err: leftOutWarning(lo)})
	}
	own := len(all)
	for _, ws := range b.hidden {
		all = append(all, ws...)
	}
	slices.SortFunc(all[own:], func(x, y objWarning) int { return strings.Compare(x.err.Error(), y.err.Error()) })
	slices.SortStableFunc(all, func(x, y objWarning) int { return compareObjKeys(x.key, y.key) })
	var warnings []error
	for _, w := range all {
		warnings = append(warnings, w.err)
	}
	return t, warnings
}

func compareObjKeys(x, y objKey) int {
	return cmp.Or(strings.Compare(x.ns, y.ns), strings.Compare(x.name, y.name))
}

// objWarning is a warning about the object key.
type objWarning struct {
	key objKey
	err error
}

// nameKey is a key of the table's names: an exact name, or the suffix of
// a wildcard.
type nameKey struct {
	wildcard bool
	k        string
}

// checkHidden remakes the served lists (shard.serve) and the warnings of
// the hidden ServiceEntries of the names whose lists this build remade:
// only names several entries hold, or held, are in ed, so a build that
// changes none costs nothing here.
func (b *Builder) checkHidden(t *Table, ed *edits[string]) {
	check := func(key editKey[string]) {
		key.sh.serve(key.k)
		k := nameKey{wildcard: key.sh == &t.wildcards, k: key.k}
		delete(b.hidden, k)
		if ws := hiddenEntries(key.sh.many[key.k]); len(ws) > 0 {
			if b.hidden == nil {
				b.hidden = map[nameKey][]objWarning{}
			}
			b.hidden[k] = ws
		}
	}
	for key := range ed.removed {
		if _, added := ed.adds[key]; !added {
			check(key)
		}
	}
	for key := range ed.adds {
		check(key)
	}
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
	slicesKept := sameSlice(s.EndpointSlices, b.slicesFrom)
	// Namespaces that istiod's discoverySelectors select or drop rebuild
	// their Services (rank).
	unselectedKept := slices.Equal(s.IstiodUnselected, b.unselected)
	b.unselected = s.IstiodUnselected
	if b.gen > 1 && slicesKept && unselectedKept && sameSlice(s.Services, b.servicesFrom) {
		return // the states point into these very slices already
	}
	// The headless Services' EndpointSlices, found when first needed: with
	// the same slices as the last build, only a changed headless Service
	// needs them.
	var eps map[objKey][]*model.EndpointSlice
	slicesOf := func(k objKey) []*model.EndpointSlice {
		if eps == nil {
			eps = map[objKey][]*model.EndpointSlice{}
			for i := range s.EndpointSlices {
				es := &s.EndpointSlices[i]
				k := objKey{es.Namespace, es.ServiceName}
				eps[k] = append(eps[k], es)
			}
		}
		return eps[k]
	}
	w := walk(b, &b.services, len(s.Services))
	for i := range s.Services {
		svc := &s.Services[i]
		key := objKey{svc.Namespace, svc.Name}
		st := w.find(key, i)
		var mine []*model.EndpointSlice
		switch {
		case !svc.Headless: // only a headless Service answers from its endpoints
		case slicesKept && st != nil && st.svc.Headless:
			mine = st.endpointSlices() // from these very slices
		default:
			mine = slicesOf(key)
		}
		src := serviceSource(b.n, svc, isUnselected(s.IstiodUnselected, svc.Namespace))
		if st != nil && st.rank == src.rank && equalService(st.svc, svc) && equalSlices(st.endpointSlices(), mine) {
			// Point at the new snapshot, so the old one can be collected.
			st.svc = svc
			if !slicesKept {
				st.slices = slicesRef(mine)
			}
			continue
		}
		if st != nil {
			b.forget(key, st.entries, st.built)
		}
		st = &serviceState{source: src, svc: svc, slices: slicesRef(mine)}
		st.entries = b.made(key, serviceEntries(b.n, &st.source, svc, mine))
		w.put(key, i, st)
	}
	for _, st := range w.finish() {
		b.forget(st.objKey(), st.entries, st.built)
	}
	b.servicesFrom, b.slicesFrom = s.Services, s.EndpointSlices
}

// isUnselected reports whether ns is in unselected (sorted).
func isUnselected(unselected []string, ns string) bool {
	if len(unselected) == 0 {
		return false
	}
	_, found := slices.BinarySearch(unselected, ns)
	return found
}

func (b *Builder) buildServiceEntries(s *model.Snapshot) {
	from := b.vipSource.From(istiodAllocates(s))
	exportTo := b.defaultExportTo(s)
	// A new default rebuilds every entry that takes it.
	newDefault := !slices.Equal(exportTo, b.n.defaultExportTo)
	b.n.defaultExportTo = exportTo
	if b.gen > 1 && from == b.vipsFrom && !newDefault && sameSlice(s.ServiceEntries, b.sesFrom) {
		return
	}
	if b.gen > 1 && from == b.vipsFrom && !newDefault && b.buildChangedServiceEntries(s) {
		return
	}
	// VIPs are decided over all ServiceEntries at once: a host's VIP may
	// move when another entry claims or frees one.
	b.vipsFrom = from
	resolved := resolveHosts(s.ServiceEntries, from)
	w := walk(b, &b.ses, len(s.ServiceEntries))
	for i := range s.ServiceEntries {
		se := &s.ServiceEntries[i]
		key := objKey{se.Namespace, se.Name}
		st := w.find(key, i)
		// Its hosts' VIPs are part of what it answers: one that moved (a
		// collision freed by a deletion, istiod's status arriving) rebuilds it.
		if st != nil && equalServiceEntry(st.se, se) && sameResolved(resolved, se, st.resolved) &&
			(!newDefault || len(se.ExportTo) > 0) {
			st.se = se
			continue
		}
		b.rebuildServiceEntry(w, i, se, st, resolvedOf(resolved, se))
	}
	for _, st := range w.finish() {
		b.forget(st.objKey(), st.entries, st.built)
	}
	b.sesFrom = s.ServiceEntries
}

// buildChangedServiceEntries builds a snapshot whose changes leave every
// VIP where it was: no auto-allocated host comes, goes or changes its
// claim (and, with VIPs from istiod's status or none at all, a changed
// entry's VIPs are its own). Only the changed entries are rebuilt, the VIPs of the others
// kept. It reports false, having changed nothing, for any other snapshot.
func (b *Builder) buildChangedServiceEntries(s *model.Snapshot) bool {
	ses := s.ServiceEntries
	allocating := b.vipsFrom == vip.FromAllocator
	// First only look: a claim that changed needs the whole allocation.
	w := walk(b, &b.ses, len(ses))
	var changed []int
	var newKeys map[objKey]bool // the new objects' keys
	for i := range ses {
		se := &ses[i]
		key := objKey{se.Namespace, se.Name}
		st := w.find(key, i)
		switch {
		case st == nil:
			if allocating && hasClaims(se) {
				return w.abandon()
			}
			// A new object twice (one a namespace's budget lets back in
			// with its copy, say): this walk finds neither, and building
			// both would leave the first one's entries in the table for
			// good. The long way finds the first.
			if newKeys[key] {
				return w.abandon()
			}
			if newKeys == nil {
				newKeys = map[objKey]bool{}
			}
			newKeys[key] = true
			changed = append(changed, i)
		case !equalServiceEntry(st.se, se):
			if allocating && !sameClaims(st, se) {
				return w.abandon()
			}
			changed = append(changed, i)
		}
	}
	if w.dup {
		return w.abandon() // take the long way
	}
	for _, st := range w.unseen() {
		if allocating && st.resolved != nil {
			return w.abandon() // its VIPs go, and may let others move
		}
	}
	// Then build: the kept entries point at the new snapshot; the changed
	// ones keep their claims' VIPs, or take those of their status.
	for i := range ses {
		if st := w.order[i]; st != nil {
			st.se = &ses[i]
		}
	}
	for _, i := range changed {
		se := &ses[i]
		st := w.order[i]
		var own []hostAddrs
		switch {
		case !allocating:
			own = resolvedOf(resolveHosts(ses[i:i+1], b.vipsFrom), se)
		case st != nil:
			own = st.resolved
		}
		b.rebuildServiceEntry(w, i, se, st, own)
	}
	for _, st := range w.finish() {
		b.forget(st.objKey(), st.entries, st.built)
	}
	b.sesFrom = ses
	return true
}

// rebuildServiceEntry replaces the state st (nil: none) of the entry at i
// with one built from se, whose hosts resolve to own (as resolvedOf).
func (b *Builder) rebuildServiceEntry(w *walker[*seState], i int, se *model.ServiceEntry, st *seState, own []hostAddrs) {
	key := objKey{se.Namespace, se.Name}
	if st != nil {
		b.forget(key, st.entries, st.built)
	}
	st = &seState{se: se, resolved: own}
	st.source = serviceEntrySource(b.n, se, &st.ext)
	st.entries = b.made(key, serviceEntryEntries(b.n, &st.source, se, own, b.vipsFrom))
	w.put(key, i, st)
}

// hasClaims reports whether se asks the allocator for a VIP.
func hasClaims(se *model.ServiceEntry) bool {
	return vip.Eligible(se) && slices.ContainsFunc(se.Hosts, func(h string) bool { return vip.HostEligible(se, h) })
}

// sameClaims reports whether se asks the allocator for exactly what the
// entry st was built from asked, host for host in the same places.
func sameClaims(st *seState, se *model.ServiceEntry) bool {
	old := st.se
	if !hasClaims(old) && !hasClaims(se) {
		return st.resolved == nil
	}
	return hasClaims(old) && hasClaims(se) && old.Created.Equal(se.Created) && slices.Equal(old.Hosts, se.Hosts) &&
		old.Resolution == se.Resolution
}

// OverBudget reports, for the last build, the namespaces whose objects
// make more names than Options.MaxNamesPerNamespace, and how many of
// their objects were left out.
func (b *Builder) OverBudget() (namespaces, objects int) {
	return b.budget.namespaces, b.budget.objects
}

// defaultExportTo is the exportTo of s's ServiceEntries that give none:
// Options.DefaultExportTo when set, else s's (Istio's mesh config), else
// nil, every namespace.
func (b *Builder) defaultExportTo(s *model.Snapshot) []string {
	if len(b.exportTo) > 0 {
		return b.exportTo
	}
	return s.DefaultExportTo
}

// DefaultExportTo reports the exportTo the last build gave ServiceEntries
// that give none; nil: every namespace.
func (b *Builder) DefaultExportTo() []string { return b.n.defaultExportTo }

// VIPsFrom reports where the last build took VIPs from.
func (b *Builder) VIPsFrom() vip.From { return b.vipsFrom }

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
		names: last.names, reverse: last.reverse, wildcards: last.wildcards, size: last.size, vipsFrom: b.vipsFrom, vips: last.vips}
	var names, addrs [numShards]bool // copied
	wildcards := false
	name := func(e *Entry) (*shard[string], string) {
		if isWildcard(e.Name) {
			if !wildcards {
				wildcards = true
				t.wildcards = t.wildcards.clone(&b.room.wildcards)
			}
			return &t.wildcards, e.Name[2:]
		}
		i := shardOf(e.Name)
		if !names[i] {
			names[i] = true
			t.names[i] = t.names[i].clone(&b.room.names[i])
		}
		return &t.names[i], e.Name
	}
	addr := func(a netip.Addr) (*shard[addrKey], addrKey) {
		k := keyOf(a)
		i := shardOfAddr(k)
		if !addrs[i] {
			addrs[i] = true
			t.reverse[i] = t.reverse[i].clone(&b.room.reverse[i])
		}
		return &t.reverse[i], k
	}
	// A key that one entry holds, or comes to hold, is changed on the spot;
	// one that several hold is changed once, at the end, however many of
	// its entries come and go.
	var nameEdits edits[string]
	var addrEdits edits[addrKey]
	for _, e := range b.dropped {
		t.vips.count(e, -1)
		sh, k := name(e)
		t.size += nameEdits.remove(sh, k, e)
		for _, a := range ptrAddrs(e) {
			sh, k := addr(a)
			addrEdits.remove(sh, k, e)
		}
	}
	for _, e := range b.added {
		if b.discarded[e] {
			continue
		}
		t.vips.count(e, 1)
		sh, k := name(e)
		t.size += nameEdits.insert(sh, k, e)
		for _, a := range ptrAddrs(e) {
			sh, k := addr(a)
			addrEdits.insert(sh, k, e)
		}
	}
	var gone map[*Entry]bool
	if nameEdits.removed != nil || addrEdits.removed != nil {
		gone = make(map[*Entry]bool, len(b.dropped))
		for _, e := range b.dropped {
			gone[e] = true
		}
	}
	t.size += nameEdits.apply(gone, compareEntries, 0, nil)
	b.checkHidden(t, &nameEdits)
	addrEdits.apply(gone, compareOwners, maxPTROwners, b.moreOwners)
	for i := range numShards {
		if names[i] {
			t.names[i].fit(&b.room.names[i])
		}
		if addrs[i] {
			t.reverse[i].fit(&b.room.reverse[i])
		}
	}
	if wildcards {
		t.wildcards.fit(&b.room.wildcards)
	}
	return t
}

// clone returns a copy of s to change: the last table keeps s. The copy
// has the room of s's maps, which room records.
func (s shard[K]) clone(room *shardRoom) shard[K] {
	s.hold(room)
	c := shard[K]{one: maps.Clone(s.one), many: maps.Clone(s.many), served: maps.Clone(s.served)}
	if c.one == nil {
		c.one = map[K]*Entry{}
	}
	return c
}

// shardRoom is the most keys each map of a shard has held, through the
// copies it was cloned from: a clone has the room of its original, and a
// map never gives back room.
type shardRoom struct{ one, many, served int }

// hold records the keys s's maps hold now.
func (s *shard[K]) hold(r *shardRoom) {
	r.one, r.many, r.served = max(r.one, len(s.one)), max(r.many, len(s.many)), max(r.served, len(s.served))
}

// fit ends a build's changes to the copy s (clone): a map left with fewer
// than a quarter of the keys it has held at most (a cluster that shrank)
// is copied into a map of its size, not kept with the room of its largest.
func (s *shard[K]) fit(room *shardRoom) {
	s.hold(room)
	s.one, room.one = fitMap(s.one, room.one)
	s.many, room.many = fitMap(s.many, room.many)
	s.served, room.served = fitMap(s.served, room.served)
}

// fitMap returns m, or a copy of its size when it has room for more than
// four times its keys (most), and the keys the map returned has room for.
func fitMap[K comparable, V any](m map[K]V, most int) (map[K]V, int) {
	switch {
	case len(m) >= most/4:
		return m, most
	case len(m) == 0:
		return nil, 0
	}
	return copyMap(m), len(m)
}

// edits are one build's changes to the keys of a table's shards that
// several entries hold or come to hold. Each such key's list is made once,
// in apply: inserting into it or removing from it one entry at a time
// would copy it for every entry (lists belong to older tables too), which
// for a key held by thousands of entries is millions of copies.
type edits[K comparable] struct {
	adds    map[editKey[K]][]*Entry // entries joining a key held already
	removed map[editKey[K]]bool     // keys with several entries that one leaves
}

type editKey[K comparable] struct {
	sh *shard[K]
	k  K
}

// insert adds e to k's entries (at once when k has none) and returns how
// the number of keys changed.
func (ed *edits[K]) insert(sh *shard[K], k K, e *Entry) int {
	if _, had := sh.one[k]; !had {
		sh.one[k] = e
		return 1
	}
	if ed.adds == nil {
		ed.adds = map[editKey[K]][]*Entry{}
	}
	key := editKey[K]{sh, k}
	ed.adds[key] = append(ed.adds[key], e)
	return 0
}

// remove takes e out of k's entries (at once when it is the only one) and
// returns how the number of keys changed. It comes before any insert.
func (ed *edits[K]) remove(sh *shard[K], k K, e *Entry) int {
	if _, several := sh.many[k]; several {
		if ed.removed == nil {
			ed.removed = map[editKey[K]]bool{}
		}
		ed.removed[editKey[K]{sh, k}] = true
		return 0
	}
	if sh.one[k] == e {
		delete(sh.one, k)
		return -1
	}
	return 0
}

// apply makes the lists of the keys changed: without the entries in gone,
// with those added, in compare's order. With limit > 0 (an address's
// owners, in compareOwners order), a list keeps its first limit endpoint
// names and every other entry, and more the endpoint names beyond limit
// (more holds those of the last build). It returns how the number of keys
// changed.
func (ed *edits[K]) apply(gone map[*Entry]bool, compare func(a, b *Entry) int, limit int, more map[K][]*Entry) int {
	n := 0
	for key := range ed.removed {
		if _, added := ed.adds[key]; !added {
			n += key.sh.apply(key.k, nil, gone, compare, limit, more)
		}
	}
	for key, add := range ed.adds {
		n += key.sh.apply(key.k, add, gone, compare, limit, more)
	}
	return n
}

// apply makes k's list, as edits.apply.
func (s *shard[K]) apply(k K, add []*Entry, gone map[*Entry]bool, compare func(a, b *Entry) int, limit int, more map[K][]*Entry) int {
	old := s.many[k]
	var one [1]*Entry
	if old == nil {
		one[0] = s.one[k]
		old = one[:]
	}
	// The endpoint names beyond the cap come after those old keeps, before
	// its other owners.
	var rest []*Entry
	capped := len(old)
	if limit > 0 {
		rest = more[k]
		capped = leadingEndpoints(old)
	}
	// Each added entry after the entries it ties with, as a stable sort
	// would put it.
	slices.SortStableFunc(add, compare)
	list := make([]*Entry, 0, len(old)+len(rest)+len(add))
	i := 0
	for _, part := range [3][]*Entry{old[:capped], rest, old[capped:]} {
		for _, x := range part {
			if gone[x] {
				continue
			}
			for i < len(add) && compare(add[i], x) < 0 {
				list = append(list, add[i])
				i++
			}
			list = append(list, x)
		}
	}
	list = append(list, add[i:]...)
	n := 0 // endpoint names, counted when there may be too many
	if limit > 0 && len(list) > limit {
		n = leadingEndpoints(list)
	}
	if n > limit {
		// The first limit endpoint names and every other owner stay.
		kept := make([]*Entry, limit+len(list)-n)
		copy(kept[copy(kept, list[:limit]):], list[n:])
		more[k] = list[limit:n]
		list = kept
	} else if len(rest) > 0 {
		delete(more, k)
	}
	switch len(list) {
	case 0:
		delete(s.one, k)
		delete(s.many, k)
		return -1
	case 1:
		delete(s.many, k)
	default:
		if s.many == nil {
			s.many = map[K][]*Entry{}
		}
		s.many[k] = list
	}
	s.one[k] = list[0]
	return 0
}

func equalService(a, b *model.Service) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && a.Headless == b.Headless && a.ExternalName == b.ExternalName &&
		a.PublishNotReady == b.PublishNotReady && slices.Equal(a.ClusterIPs, b.ClusterIPs) && slices.Equal(a.Ports, b.Ports)
}

// equalSlices reports whether every slice of a has an equal one in b, and
// they are as many. They are nearly always in the same order; otherwise b
// is looked up by name, not searched for each slice of a (a Service with
// thousands of slices).
func equalSlices(a, b []*model.EndpointSlice) bool {
	if len(a) != len(b) {
		return false
	}
	i := 0
	for i < len(a) && equalSlice(a[i], b[i]) {
		i++
	}
	if i == len(a) {
		return true
	}
	has := func(list []*model.EndpointSlice, x *model.EndpointSlice) bool {
		return slices.ContainsFunc(list, func(y *model.EndpointSlice) bool { return equalSlice(x, y) })
	}
	if len(a) <= shortList {
		for _, x := range a[i:] {
			if !has(b, x) {
				return false
			}
		}
		return true
	}
	byName := make(map[objKey][]*model.EndpointSlice, len(b))
	for _, y := range b {
		k := objKey{y.Namespace, y.Name}
		byName[k] = append(byName[k], y)
	}
	for _, x := range a[i:] {
		if !has(byName[objKey{x.Namespace, x.Name}], x) {
			return false
		}
	}
	return true
}

func equalSlice(a, b *model.EndpointSlice) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && a.ServiceName == b.ServiceName && slices.Equal(a.Ports, b.Ports) &&
		slices.EqualFunc(a.Endpoints, b.Endpoints, func(x, y model.Endpoint) bool {
			return x.Hostname == y.Hostname && x.Ready == y.Ready && slices.Equal(x.Addresses, y.Addresses)
		})
}

func equalServiceEntry(a, b *model.ServiceEntry) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && a.Created.Equal(b.Created) && a.Resolution == b.Resolution &&
		a.AutoAllocate == b.AutoAllocate && a.HasSpecAddresses == b.HasSpecAddresses && slices.Equal(a.Hosts, b.Hosts) && a.Folded == b.Folded && slices.Equal(a.Addresses, b.Addresses) &&
		slices.Equal(a.CIDRs, b.CIDRs) && slices.Equal(a.StatusAddresses, b.StatusAddresses) &&
		slices.Equal(a.ExportTo, b.ExportTo) && slices.Equal(a.Ports, b.Ports)
}
