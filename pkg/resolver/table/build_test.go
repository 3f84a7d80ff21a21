package table

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
)

// The incremental builder must produce exactly the table a fresh build
// would, whatever sequence of changes it saw.
func TestIncrementalMatchesFresh(t *testing.T) {
	// Also with a budget of names per namespace that some namespaces go
	// over and come back under as objects come, go and change.
	for _, budget := range []int{0, 40} {
		t.Run(fmt.Sprintf("budget=%d", budget), func(t *testing.T) { incrementalMatchesFresh(t, Options{MaxNamesPerNamespace: budget}) })
	}
}

func incrementalMatchesFresh(t *testing.T, opts Options) {
	rng := rand.New(rand.NewPCG(1, 2))
	s := fixture()
	bld := NewBuilder(opts)
	namespaces := []string{"", "default", "team-a", "team-b", "other"}
	over := 0
	// The last table, and its rows: the next build shares its shards and
	// entries (assemble), and must change neither.
	var last *Table
	var lastRows map[string][]Row
	for step := range 1000 {
		s = mutate(rng, s, step)
		inc, incWarn := bld.Build(s)
		for ns, rows := range lastRows {
			if got := last.Rows(ns); !reflect.DeepEqual(got, rows) {
				t.Fatalf("step %d, namespace %q: building the next table changed the last one\n now %v\n was %v", step, ns, got, rows)
			}
		}
		last, lastRows = inc, map[string][]Row{}
		fresh, freshWarn := Build(s, opts)
		if !slices.EqualFunc(incWarn, freshWarn, func(a, b error) bool { return a.Error() == b.Error() }) {
			t.Fatalf("step %d: warnings differ\n inc %v\nfresh %v", step, incWarn, freshWarn)
		}
		if inc.Len() != fresh.Len() {
			t.Fatalf("step %d: %d names incrementally, %d fresh", step, inc.Len(), fresh.Len())
		}
		for _, ns := range namespaces {
			a, b := inc.Rows(ns), fresh.Rows(ns)
			if !reflect.DeepEqual(a, b) {
				t.Fatalf("step %d, namespace %q: incremental table differs from a fresh build\n inc %v\nfresh %v", step, ns, a, b)
			}
			lastRows[ns] = a
		}
		if n, _ := bld.OverBudget(); n > 0 {
			over++
		}
	}
	t.Logf("%d of 1000 builds had a namespace over its budget", over)
	if opts.MaxNamesPerNamespace > 0 && (over == 0 || over == 1000) {
		t.Errorf("%d of 1000 builds had a namespace over its budget: the budget is not exercised both ways", over)
	}
}

// A new ServiceEntry that comes twice in one snapshot (a namespace's
// budget letting it back in with its copy) and then goes leaves none of
// its names behind. (Before: a build that took only the changed entries
// built both copies, and the first one's names stayed in every later
// table.)
func TestNewObjectTwiceThenGone(t *testing.T) {
	bld := NewBuilder(Options{})
	s := fixture()
	bld.Build(s)
	twice := *s
	x := model.ServiceEntry{Namespace: "team-a", Name: "x", Hosts: []string{"h0.x.team-a.example"}, Addresses: addrs("198.51.100.50"),
		Resolution: "STATIC"}
	twice.ServiceEntries = append(slices.Clone(s.ServiceEntries), x, x)
	tbl, _ := bld.Build(&twice)
	resolvesTo(t, tbl, "h0.x.team-a.example.", addrs("198.51.100.50"), "team-a")
	tbl, _ = bld.Build(s)
	resolvesTo(t, tbl, "h0.x.team-a.example.", nil, "team-a", "")
	if fresh, _ := Build(s, Options{}); tbl.Len() != fresh.Len() {
		t.Errorf("%d names incrementally, %d fresh", tbl.Len(), fresh.Len())
	}
}

// Tables handed out earlier never change when the builder moves on.
func TestOldTablesStayPut(t *testing.T) {
	s := fixture()
	bld := NewBuilder(Options{})
	first, _ := bld.Build(s)
	before := first.Rows("default")
	next := *s
	next.ServiceEntries = slices.Clone(s.ServiceEntries)
	next.ServiceEntries[0].Addresses = addrs("203.0.113.200")
	next.Services = s.Services[1:]
	second, _ := bld.Build(&next)
	if !reflect.DeepEqual(first.Rows("default"), before) {
		t.Fatal("building a new table changed an old one")
	}
	if e := second.Resolve("address.internal.", "default").Entry; e == nil || e.Addrs[0] != netip.MustParseAddr("203.0.113.200") {
		t.Fatalf("new table did not take the change: %+v", e)
	}
}

// mutate returns a copy of s with one random change. The kinds it does not
// change are s's own slices, as a source shares them between snapshots.
func mutate(rng *rand.Rand, s *model.Snapshot, step int) *model.Snapshot {
	n := *s
	n.Services = slices.Clone(s.Services)
	n.ServiceEntries = slices.Clone(s.ServiceEntries)
	n.EndpointSlices = slices.Clone(s.EndpointSlices)
	defer func() { // share what did not change
		if slices.EqualFunc(n.Services, s.Services, func(a, b model.Service) bool { return reflect.DeepEqual(a, b) }) {
			n.Services = s.Services
		}
		if slices.EqualFunc(n.ServiceEntries, s.ServiceEntries, func(a, b model.ServiceEntry) bool { return reflect.DeepEqual(a, b) }) {
			n.ServiceEntries = s.ServiceEntries
		}
		if slices.EqualFunc(n.EndpointSlices, s.EndpointSlices, func(a, b model.EndpointSlice) bool { return reflect.DeepEqual(a, b) }) {
			n.EndpointSlices = s.EndpointSlices
		}
	}()
	ns := []string{"default", "team-a", "team-b"}[rng.IntN(3)]
	switch rng.IntN(15) {
	case 0: // add a Service
		n.Services = append(n.Services, model.Service{Namespace: ns, Name: fmt.Sprintf("s%d", step),
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 97, byte(step >> 8), byte(step)})},
			Ports:      []model.Port{{Name: "p", Protocol: "TCP", Port: uint16(step)}}})
	case 1: // remove one
		if len(n.Services) > 0 {
			i := rng.IntN(len(n.Services))
			n.Services = slices.Delete(n.Services, i, i+1)
		}
	case 2: // change a ClusterIP
		if len(n.Services) > 0 {
			i := rng.IntN(len(n.Services))
			n.Services[i].ClusterIPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 98, byte(step >> 8), byte(step)})}
			n.Services[i].Headless, n.Services[i].ExternalName = false, ""
		}
	case 3: // add a ServiceEntry, sometimes reusing a host
		host := fmt.Sprintf("h%d.example", rng.IntN(20))
		se := model.ServiceEntry{Namespace: ns, Name: fmt.Sprintf("se%d", step), Created: t0.Add(time.Duration(rng.IntN(100)) * time.Second),
			Hosts: []string{host}, Resolution: "DNS", AutoAllocate: rng.IntN(4) != 0}
		switch rng.IntN(4) {
		case 0:
			se.Addresses = []netip.Addr{netip.AddrFrom4([4]byte{198, 51, 100, byte(step)})}
		case 1:
			se.ExportTo = []string{"."}
		case 2:
			se.StatusAddresses = []model.HostAddress{{Host: host, Address: netip.AddrFrom4([4]byte{240, 240, 9, byte(step%250 + 1)})}}
		}
		n.ServiceEntries = append(n.ServiceEntries, se)
	case 4: // remove one
		if len(n.ServiceEntries) > 0 {
			i := rng.IntN(len(n.ServiceEntries))
			n.ServiceEntries = slices.Delete(n.ServiceEntries, i, i+1)
		}
	case 5: // opt one out or in
		if len(n.ServiceEntries) > 0 {
			i := rng.IntN(len(n.ServiceEntries))
			n.ServiceEntries[i].AutoAllocate = !n.ServiceEntries[i].AutoAllocate
		}
	case 6: // flip an endpoint's readiness
		if len(n.EndpointSlices) > 0 {
			i := rng.IntN(len(n.EndpointSlices))
			eps := slices.Clone(n.EndpointSlices[i].Endpoints)
			if len(eps) > 0 {
				j := rng.IntN(len(eps))
				eps[j].Ready = !eps[j].Ready
			}
			n.EndpointSlices[i].Endpoints = eps
		}
	case 7: // add a wildcard
		n.ServiceEntries = append(n.ServiceEntries, model.ServiceEntry{Namespace: ns, Name: fmt.Sprintf("w%d", step),
			Hosts: []string{fmt.Sprintf("*.w%d.example", rng.IntN(5))}, Addresses: []netip.Addr{netip.AddrFrom4([4]byte{203, 0, 113, byte(step)})}, AutoAllocate: true})
	case 8: // a headless Service for the slice
		n.Services = append(n.Services, model.Service{Namespace: "default", Name: "db", Headless: true, PublishNotReady: rng.IntN(2) == 0})
	case 9: // move an object: the builder finds it by its key
		list := n.ServiceEntries
		if rng.IntN(2) == 0 && len(n.Services) > 1 {
			i, j := rng.IntN(len(n.Services)), rng.IntN(len(n.Services))
			n.Services[i], n.Services[j] = n.Services[j], n.Services[i]
		} else if len(list) > 1 {
			i, j := rng.IntN(len(list)), rng.IntN(len(list))
			list[i], list[j] = list[j], list[i]
		}
	case 10: // an object twice, or once again
		if rng.IntN(2) == 0 && len(n.ServiceEntries) > 0 {
			se := n.ServiceEntries[rng.IntN(len(n.ServiceEntries))]
			n.ServiceEntries = slices.Insert(n.ServiceEntries, rng.IntN(len(n.ServiceEntries)+1), se)
		} else {
			n.ServiceEntries = slices.CompactFunc(n.ServiceEntries, func(a, b model.ServiceEntry) bool { return a.Key() == b.Key() })
		}
	case 11: // change a ServiceEntry's address, or its hosts
		if len(n.ServiceEntries) > 0 {
			se := &n.ServiceEntries[rng.IntN(len(n.ServiceEntries))]
			if rng.IntN(3) == 0 {
				se.Hosts = append(slices.Clip(se.Hosts), fmt.Sprintf("h%d.example", rng.IntN(20)))
			} else if len(se.Addresses) > 0 {
				se.Addresses = []netip.Addr{netip.AddrFrom4([4]byte{198, 51, 101, byte(step)})}
			} else {
				se.ExportTo = []string{[]string{".", "*"}[rng.IntN(2)]}
			}
		}
	case 12: // a newer creation time: a VIP collision may resolve otherwise
		if len(n.ServiceEntries) > 0 {
			se := &n.ServiceEntries[rng.IntN(len(n.ServiceEntries))]
			se.Created = se.Created.Add(time.Duration(rng.IntN(100)-50) * time.Second)
		}
	case 13: // istiod's status arrives, or goes
		if len(n.ServiceEntries) > 0 {
			se := &n.ServiceEntries[rng.IntN(len(n.ServiceEntries))]
			if len(se.StatusAddresses) > 0 {
				se.StatusAddresses = nil
			} else if len(se.Hosts) > 0 {
				se.StatusAddresses = []model.HostAddress{{Host: se.Hosts[0], Address: netip.AddrFrom4([4]byte{240, 240, 10, byte(step%250 + 1)})}}
			}
		}
	case 14: // a new EndpointSlice, or one less
		if rng.IntN(2) == 0 || len(n.EndpointSlices) == 0 {
			n.EndpointSlices = append(n.EndpointSlices, model.EndpointSlice{Namespace: "default", Name: fmt.Sprintf("db-%d", step), ServiceName: "db",
				Endpoints: []model.Endpoint{{Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, 99, byte(step >> 8), byte(step)})}, Hostname: fmt.Sprintf("db-%d", step), Ready: true}}})
		} else {
			i := rng.IntN(len(n.EndpointSlices))
			n.EndpointSlices = slices.Delete(n.EndpointSlices, i, i+1)
		}
	}
	return &n
}

// TestStatesClash runs the builder's state index with every key hashing
// alike, as two keys rarely do: it must still find, replace and forget each
// state by its own key.
func TestStatesClash(t *testing.T) {
	m := newStates[*serviceState]()
	m.hash = func(objKey) uint64 { return 1 }
	st := func(ns, name string) *serviceState { return &serviceState{source: source{namespace: ns, name: name}} }
	a, b, c := st("n", "a"), st("n", "b"), st("n", "c")
	for _, s := range []*serviceState{a, b, c} {
		m.put(s.objKey(), s)
	}
	b2 := st("n", "b")
	m.put(b2.objKey(), b2)
	if m.get(a.objKey()) != a || m.get(b.objKey()) != b2 || m.get(c.objKey()) != c || m.len() != 3 {
		t.Fatalf("get after puts: %p %p %p, len %d", m.get(a.objKey()), m.get(b.objKey()), m.get(c.objKey()), m.len())
	}
	m.delete(a.objKey()) // the one in byHash
	if m.get(a.objKey()) != nil || m.get(b.objKey()) != b2 || m.get(c.objKey()) != c || m.len() != 2 {
		t.Fatalf("after deleting a: %p %p %p, len %d", m.get(a.objKey()), m.get(b.objKey()), m.get(c.objKey()), m.len())
	}
	m.put(c.objKey(), c) // moves into the free hash slot
	var keys []string
	for k, s := range m.all() {
		if s.objKey() != k {
			t.Errorf("all yields %v for %v", s.objKey(), k)
		}
		keys = append(keys, k.name)
	}
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"b", "c"}) || m.len() != 2 {
		t.Errorf("all = %v, len %d; want [b c]", keys, m.len())
	}
	m.delete(b.objKey())
	m.delete(c.objKey())
	if m.len() != 0 || m.get(c.objKey()) != nil {
		t.Errorf("len %d after deleting all", m.len())
	}
}
