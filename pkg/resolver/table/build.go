package table

import (
	"maps"
	"slices"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/model"
)

// Builder makes tables from snapshots, incrementally: it remembers what every
// object contributed to the last table, rebuilds only the objects that
// changed, and copies only the shards of the table whose names changed. A
// snapshot that differs from the last one in one object costs about as much
// as that object, not as the whole cluster (the bound: an update at
// 10,000 objects visible within 100 ms). A Builder is not safe for concurrent
// use; the tables it returns are.
type Builder struct {
	n      names
	domain string

	services map[objKey]*serviceState
	ses      map[objKey]*seState
	// resolved are the auto-allocating hosts' addresses of the last build.
	resolved map[string]hostAddrs
	// gen counts builds; an object whose state was not touched by this
	// build's generation is gone from the snapshot.
	gen uint64
	// contrib holds every entry of every object by name: the source of a
	// name's entry list when one of its objects changes.
	contrib map[string][]*Entry
	wild    map[string][]*Entry
	last    *Table
}

// objKey names an object without building a "namespace/name" string.
type objKey struct{ ns, name string }

type serviceState struct {
	svc    model.Service
	slices []model.EndpointSlice
	set    entrySet
	gen    uint64
}

type seState struct {
	se model.ServiceEntry
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
		n:        names{svcDomain: ".svc." + domain, ttl: opts.TTL},
		domain:   domain,
		services: map[objKey]*serviceState{},
		ses:      map[objKey]*seState{},
		contrib:  map[string][]*Entry{},
		wild:     map[string][]*Entry{},
	}
}

// Build makes a table from a snapshot in one go.
func Build(s *model.Snapshot, opts Options) (*Table, []error) {
	return NewBuilder(opts).Build(s)
}

// Build returns the table for s. Problems with single objects (a host that
// is not a valid DNS name, say) come back as warnings and leave that object
// out; everything else is built.
func (b *Builder) Build(s *model.Snapshot) (*Table, []error) {
	dirty := map[string]bool{} // names whose entry lists changed
	b.gen++
	b.buildServices(s, dirty)
	b.buildServiceEntries(s, dirty)
	t := b.assemble(dirty)
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

func (b *Builder) buildServices(s *model.Snapshot, dirty map[string]bool) {
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
		if st != nil && equalService(&st.svc, svc) && equalSlices(st.slices, mine) {
			st.gen = b.gen
			continue
		}
		if st != nil {
			b.drop(st.set.entries, dirty)
		}
		st = &serviceState{svc: *svc, set: serviceEntries(b.n, svc, mine), gen: b.gen}
		for _, es := range mine {
			st.slices = append(st.slices, *es)
		}
		b.services[key] = st
		b.put(st.set.entries, dirty)
	}
	for key, st := range b.services {
		if st.gen != b.gen {
			b.drop(st.set.entries, dirty)
			delete(b.services, key)
		}
	}
}

func (b *Builder) buildServiceEntries(s *model.Snapshot, dirty map[string]bool) {
	// VIPs are decided over all ServiceEntries at once; that is only needed
	// again when one of them changed.
	changed := b.resolved == nil || len(s.ServiceEntries) != len(b.ses)
	for i := 0; i < len(s.ServiceEntries) && !changed; i++ {
		se := &s.ServiceEntries[i]
		st := b.ses[objKey{se.Namespace, se.Name}]
		changed = st == nil || !equalServiceEntry(&st.se, se)
	}
	if changed {
		b.resolved = resolveHosts(s.ServiceEntries)
	}
	for i := range s.ServiceEntries {
		se := &s.ServiceEntries[i]
		key := objKey{se.Namespace, se.Name}
		st := b.ses[key]
		// Its hosts' VIPs are part of what it answers: one that moved (a
		// collision freed by a deletion, istiod's status arriving) rebuilds it.
		if st != nil && equalServiceEntry(&st.se, se) && b.sameResolved(se.Hosts, st.resolved) {
			st.gen = b.gen
			continue
		}
		if st != nil {
			b.drop(st.set.entries, dirty)
		}
		st = &seState{se: *se, set: serviceEntryEntries(b.n, se, b.resolved), gen: b.gen}
		for _, h := range se.Hosts {
			st.resolved = append(st.resolved, b.resolved[h])
		}
		b.ses[key] = st
		b.put(st.set.entries, dirty)
	}
	for key, st := range b.ses {
		if st.gen != b.gen {
			b.drop(st.set.entries, dirty)
			delete(b.ses, key)
		}
	}
}

func (b *Builder) sameResolved(hosts []string, was []hostAddrs) bool {
	if len(hosts) != len(was) {
		return false
	}
	for i, h := range hosts {
		if !b.resolved[h].equal(was[i]) {
			return false
		}
	}
	return true
}

// bucket returns the map an entry's name lives in, and its key there.
func (b *Builder) bucket(e *Entry) (map[string][]*Entry, string) {
	if len(e.Name) > 2 && e.Name[0] == '*' && e.Name[1] == '.' {
		return b.wild, e.Name[2:]
	}
	return b.contrib, e.Name
}

func (b *Builder) put(entries []*Entry, dirty map[string]bool) {
	for _, e := range entries {
		m, k := b.bucket(e)
		m[k] = append(m[k], e)
		dirty[e.Name] = true
	}
}

func (b *Builder) drop(entries []*Entry, dirty map[string]bool) {
	for _, e := range entries {
		m, k := b.bucket(e)
		rest := slices.DeleteFunc(m[k], func(x *Entry) bool { return x == e })
		if len(rest) == 0 {
			delete(m, k)
		} else {
			m[k] = rest
		}
		dirty[e.Name] = true
	}
}

// assemble makes the next table: the last one's shards, with fresh copies of
// the shards that hold a dirty name.
func (b *Builder) assemble(dirty map[string]bool) *Table {
	t := &Table{domain: b.domain, svcDomain: b.n.svcDomain, ttl: b.n.ttl}
	if b.last != nil {
		t.shards = b.last.shards
		t.wildcards = b.last.wildcards
	}
	copied := map[uint32]bool{}
	wildDirty := false
	for name := range dirty {
		if len(name) > 2 && name[0] == '*' && name[1] == '.' {
			wildDirty = true
			continue
		}
		i := shardOf(name)
		if !copied[i] {
			copied[i] = true
			t.shards[i] = maps.Clone(t.shards[i])
			if t.shards[i] == nil {
				t.shards[i] = map[string][]*Entry{}
			}
		}
		entries := b.contrib[name]
		if len(entries) == 0 {
			delete(t.shards[i], name)
			continue
		}
		// A fresh, sorted slice: the table never shares one the builder
		// will change.
		list := slices.Clone(entries)
		slices.SortStableFunc(list, compareEntries)
		t.shards[i][name] = list
	}
	if wildDirty {
		t.wildcards = make(map[string][]*Entry, len(b.wild))
		for k, entries := range b.wild {
			list := slices.Clone(entries)
			slices.SortStableFunc(list, compareEntries)
			t.wildcards[k] = list
		}
	}
	t.size = len(b.contrib) + len(b.wild)
	return t
}

func equalService(a, b *model.Service) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && a.Headless == b.Headless && a.ExternalName == b.ExternalName &&
		a.PublishNotReady == b.PublishNotReady && slices.Equal(a.ClusterIPs, b.ClusterIPs) && slices.Equal(a.Ports, b.Ports)
}

func equalSlices(a []model.EndpointSlice, b []*model.EndpointSlice) bool {
	return len(a) == len(b) && !slices.ContainsFunc(a, func(x model.EndpointSlice) bool {
		return !slices.ContainsFunc(b, func(y *model.EndpointSlice) bool { return equalSlice(&x, y) })
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
		a.AutoAllocate == b.AutoAllocate && slices.Equal(a.Hosts, b.Hosts) && slices.Equal(a.Addresses, b.Addresses) &&
		slices.Equal(a.CIDRs, b.CIDRs) && slices.Equal(a.StatusAddresses, b.StatusAddresses) &&
		slices.Equal(a.ExportTo, b.ExportTo) && slices.Equal(a.Ports, b.Ports)
}
