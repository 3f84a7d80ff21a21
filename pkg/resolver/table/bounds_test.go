package table

import (
	"fmt"
	"net/netip"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/model"
)

// allocated returns the bytes f allocates (the whole process's: the tests
// of this package do not run in parallel).
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// sharedAddrs are n addresses, IPv6 ones first (so that the builder has
// to put the IPv4 ones first).
func sharedAddrs(n int) []netip.Addr {
	var out []netip.Addr
	for i := range n / 2 {
		out = append(out, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)}))
	}
	for i := range n - n/2 {
		out = append(out, netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}))
	}
	return out
}

// bigServiceEntry is one ServiceEntry whose hosts all share its addresses.
func bigServiceEntry(hosts, addrs int) *model.Snapshot {
	se := model.ServiceEntry{Namespace: "tenant", Name: "big", Created: time.Unix(1, 0), Resolution: "STATIC",
		Addresses: sharedAddrs(addrs)}
	for i := range hosts {
		se.Hosts = append(se.Hosts, fmt.Sprintf("h%05d.big.example", hosts-1-i)) // last name first
	}
	// The same addresses again: repeats are dropped.
	se.Addresses = append(se.Addresses, se.Addresses[:addrs/2]...)
	return &model.Snapshot{ServiceEntries: []model.ServiceEntry{se}}
}

// A ServiceEntry with thousands of hosts sharing hundreds of addresses
// builds in time and memory linear in its hosts plus its addresses: every
// host answers every address, and each address's PTR names the first host.
func TestBigServiceEntry(t *testing.T) {
	// Quadratic work (a list per address rebuilt for each of its hosts,
	// or a copy of the addresses per host) allocated 1.4 GB at 1,000 × 200,
	// and would take minutes and many gigabytes at 3,000 × 300: the bound
	// is checked on the smaller one first.
	for _, size := range [][2]int{{1000, 200}, {3000, 300}} {
		hosts, addrs := size[0], size[1]
		s := bigServiceEntry(hosts, addrs)
		n := allocated(func() { Build(s, Options{}) })
		t.Logf("%d hosts × %d addresses: %d bytes allocated", hosts, addrs, n)
		if limit := uint64(2048*(hosts+addrs) + 4<<20); n > limit {
			t.Fatalf("building %d hosts × %d addresses allocated %d bytes, want at most %d", hosts, addrs, n, limit)
		}
	}
	const hosts, addrs = 3000, 300
	tbl, warnings := Build(bigServiceEntry(hosts, addrs), Options{})
	if len(warnings) > 0 {
		t.Fatalf("warnings: %v", warnings[:1])
	}
	want := sharedAddrs(addrs)
	want = append(want[addrs/2:], want[:addrs/2]...) // IPv4 first
	for i := range hosts {
		name := fmt.Sprintf("h%05d.big.example.", i)
		e := tbl.Resolve(name, "tenant").Entry
		if e == nil || !slices.Equal(e.Addrs, want) || e.n4 != uint32(addrs-addrs/2) {
			t.Fatalf("%s: %v", name, e)
		}
	}
	for _, a := range want {
		r := tbl.Resolve(reverseName(a), "tenant")
		if got := answerOf(t, r, reverseName(a), dns.TypePTR); !slices.Equal(got, []string{"h00000.big.example."}) {
			t.Fatalf("PTR %s = %v", a, got)
		}
	}
}

// Linear also in the bigger sizes, where the quadratic builder took hours:
// 20,000 hosts times 1,000 addresses.
func BenchmarkBuildBigServiceEntry(b *testing.B) {
	s := bigServiceEntry(20_000, 1_000)
	b.ReportAllocs()
	for b.Loop() {
		Build(s, Options{})
	}
}

// headless is a headless Service with endpoints made by ep, in slices of
// 100, with ports named ports.
func headless(name string, endpoints int, ports int, ep func(i int) model.Endpoint) (model.Service, []model.EndpointSlice) {
	svc := model.Service{Namespace: "tenant", Name: name, Headless: true}
	var ps []model.Port
	for i := range ports {
		ps = append(ps, model.Port{Name: fmt.Sprintf("p%d", i), Protocol: "TCP", Port: uint16(8000 + i)})
	}
	var out []model.EndpointSlice
	for i := 0; i < endpoints; i += 100 {
		es := model.EndpointSlice{Namespace: "tenant", Name: fmt.Sprintf("%s-%d", name, i), ServiceName: name, Ports: ps}
		for j := i; j < min(i+100, endpoints); j++ {
			es.Endpoints = append(es.Endpoints, ep(j))
		}
		out = append(out, es)
	}
	return svc, out
}

func addr4(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

// Headless Services with tens of thousands of endpoints build in memory
// linear in their endpoints, whether endpoints have names and addresses of
// their own, share one name, or share one address; their answers are all
// there, but a reverse name's, capped at maxPTROwners names.
func TestBigHeadlessServices(t *testing.T) {
	const n = 20_000
	s := &model.Snapshot{}
	add := func(svc model.Service, slices []model.EndpointSlice) {
		s.Services = append(s.Services, svc)
		s.EndpointSlices = append(s.EndpointSlices, slices...)
	}
	// Each endpoint its name and address, 4 named ports: 80,000 SRV records.
	add(headless("own", n, 4, func(i int) model.Endpoint {
		return model.Endpoint{Ready: true, Hostname: fmt.Sprintf("pod-%05d", i), Addresses: []netip.Addr{addr4(i)}}
	}))
	// One hostname for all.
	add(headless("samename", n, 1, func(i int) model.Endpoint {
		return model.Endpoint{Ready: true, Hostname: "same", Addresses: []netip.Addr{addr4(1<<20 + i)}}
	}))
	// One address for all.
	shared := netip.MustParseAddr("10.250.0.1")
	add(headless("sameaddr", n, 1, func(i int) model.Endpoint {
		return model.Endpoint{Ready: true, Hostname: fmt.Sprintf("pod-%05d", n-1-i), Addresses: []netip.Addr{shared}}
	}))
	var tbl *Table
	var warnings []error
	bytes := allocated(func() { tbl, warnings = Build(s, Options{}) })
	if len(warnings) > 0 {
		t.Fatalf("warnings: %v", warnings[:1])
	}
	t.Logf("3 × %d endpoints: %d bytes allocated", n, bytes)
	if limit := uint64(3 * n * 2048); bytes > limit {
		t.Errorf("building allocated %d bytes, want at most %d", bytes, limit)
	}
	const own = ".own.tenant.svc.cluster.local."
	for i := range n {
		name := fmt.Sprintf("pod-%05d", i) + own
		if e := tbl.Resolve(name, "tenant").Entry; e == nil || !slices.Equal(e.Addrs, []netip.Addr{addr4(i)}) {
			t.Fatalf("%s: %v", name, e)
		}
		if i%1000 == 0 {
			r := tbl.Resolve(reverseName(addr4(i)), "tenant")
			if got := answerOf(t, r, reverseName(addr4(i)), dns.TypePTR); !slices.Equal(got, []string{name}) {
				t.Fatalf("PTR %s = %v", addr4(i), got)
			}
		}
	}
	for p := range 4 {
		r := tbl.Resolve(fmt.Sprintf("_p%d._tcp.own.tenant.svc.cluster.local.", p), "tenant")
		if r.srv == nil || len(r.srv.records) != n {
			t.Fatalf("SRV of port p%d: %+v", p, r.srv)
		}
	}
	same := tbl.Resolve("same.samename.tenant.svc.cluster.local.", "tenant").Entry
	if same == nil || len(same.Addrs) != n || !slices.IsSortedFunc(same.Addrs, netip.Addr.Compare) {
		t.Fatalf("same: %v", same)
	}
	if srv := tbl.Resolve("_p0._tcp.samename.tenant.svc.cluster.local.", "tenant").srv; srv == nil ||
		!slices.Equal(srv.records, []SRV{{Port: 8000, Target: "same.samename.tenant.svc.cluster.local."}}) {
		t.Fatalf("SRV of samename: %+v", srv)
	}
	var want []string
	for i := range maxPTROwners {
		want = append(want, fmt.Sprintf("pod-%05d.sameaddr.tenant.svc.cluster.local.", i))
	}
	if got := answerOf(t, tbl.Resolve(reverseName(shared), "tenant"), reverseName(shared), dns.TypePTR); !slices.Equal(got, want) {
		t.Fatalf("PTR %s = %v, want %v", shared, got, want)
	}
	if e := tbl.Resolve("pod-19999.sameaddr.tenant.svc.cluster.local.", "tenant").Entry; e == nil || e.Addrs[0] != shared {
		t.Fatalf("pod-19999: %v", e)
	}
}

// A headless Service whose endpoints times named ports exceed
// maxSRVRecords keeps its names and addresses, not its SRV records, and
// says so.
func TestHeadlessSRVBound(t *testing.T) {
	svc, eps := headless("wide", 1000, maxSRVRecords/1000+1, func(i int) model.Endpoint {
		return model.Endpoint{Ready: true, Addresses: []netip.Addr{addr4(i)}}
	})
	ok, okEps := headless("ok", 10, 2, func(i int) model.Endpoint {
		return model.Endpoint{Ready: true, Addresses: []netip.Addr{addr4(5000 + i)}}
	})
	s := &model.Snapshot{Services: []model.Service{svc, ok}, EndpointSlices: append(eps, okEps...)}
	tbl, warnings := Build(s, Options{})
	if len(warnings) != 1 {
		t.Fatalf("warnings: %v", warnings)
	}
	if e := tbl.Resolve("wide.tenant.svc.cluster.local.", "tenant").Entry; e == nil || len(e.Addrs) != 1000 || e.srv != nil {
		t.Fatalf("wide: %+v", e)
	}
	if e := tbl.Resolve("10-0-0-7.wide.tenant.svc.cluster.local.", "tenant").Entry; e == nil || e.Addrs[0] != addr4(7) {
		t.Fatalf("endpoint of wide: %+v", e)
	}
	if r := tbl.Resolve("_p1._tcp.ok.tenant.svc.cluster.local.", "tenant"); r.srv == nil {
		t.Fatalf("SRV of ok: %+v", r)
	}
}

// An address more than maxPTROwners endpoint names hold keeps the first
// ones in the table and the rest in the builder: when one of the first
// goes, the next moves up, as a fresh build has it. An address's other
// owners are all kept.
func TestPTROwnersCapIncremental(t *testing.T) {
	shared := addrs("203.0.113.9")
	s := &model.Snapshot{}
	for i := range 3 * maxPTROwners {
		ns := []string{"a", "b", "c"}[i%3]
		s.ServiceEntries = append(s.ServiceEntries, model.ServiceEntry{Namespace: ns, Name: fmt.Sprintf("se%02d", i),
			Created: time.Unix(int64(i), 0), Hosts: []string{fmt.Sprintf("h%02d.example", i), fmt.Sprintf("g%02d.example", i)},
			Addresses: shared, Resolution: "STATIC"})
	}
	svc, eps := headless("pods", 3*maxPTROwners, 1, func(i int) model.Endpoint {
		return model.Endpoint{Ready: true, Hostname: fmt.Sprintf("pod-%02d", i), Addresses: addrs("10.9.9.9")}
	})
	s.Services, s.EndpointSlices = []model.Service{svc}, eps
	bld := NewBuilder(Options{})
	check := func(step string) {
		t.Helper()
		inc, _ := bld.Build(s)
		fresh, _ := Build(s, Options{})
		for _, ns := range []string{"", "a", "b", "c", "tenant"} {
			if a, b := inc.Rows(ns), fresh.Rows(ns); !reflect.DeepEqual(a, b) {
				t.Fatalf("%s, namespace %q: incremental table differs from a fresh build\n inc %v\nfresh %v", step, ns, a, b)
			}
		}
		// Every ServiceEntry's owner is kept, the endpoint names up to
		// the cap.
		owners := func(a netip.Addr) int {
			k := keyOf(a)
			return inc.reverse[shardOfAddr(k)].get(k).len()
		}
		if got, want := owners(shared[0]), len(s.ServiceEntries); got != want {
			t.Fatalf("%s: %d owners of %s kept, want %d", step, got, shared[0], want)
		}
		if got, want := owners(netip.MustParseAddr("10.9.9.9")), min(len(s.EndpointSlices[0].Endpoints), maxPTROwners); got != want {
			t.Fatalf("%s: %d owners of 10.9.9.9 kept, want %d", step, got, want)
		}
	}
	check("first")
	for i := 0; len(s.ServiceEntries) > 1; i++ {
		// Drop one near the front: one the table keeps.
		s.ServiceEntries = slices.Delete(slices.Clone(s.ServiceEntries), i%3, i%3+1)
		es := slices.Clone(s.EndpointSlices)
		es[0].Endpoints = slices.Clone(es[0].Endpoints[1:])
		s.EndpointSlices = es
		check(fmt.Sprintf("step %d", i))
	}
	if len(bld.moreOwners) != 0 {
		t.Errorf("owners beyond the cap left: %d", len(bld.moreOwners))
	}
}

// equalSlices finds the slices of a Service in any order, by name when
// there are many.
func TestEqualSlicesManySlices(t *testing.T) {
	_, list := headless("many", 5000, 1, func(i int) model.Endpoint {
		return model.Endpoint{Ready: true, Addresses: []netip.Addr{addr4(i)}}
	})
	var a []*model.EndpointSlice
	for i := range list {
		a = append(a, &list[i])
	}
	b := slices.Clone(a)
	slices.Reverse(b)
	for _, n := range []int{len(a), shortList} {
		if !equalSlices(a[:n], a[:n]) || !equalSlices(a[:n], b[len(b)-n:]) {
			t.Fatalf("%d slices: the same slices are not equal", n)
		}
		changed := *b[len(b)-n]
		changed.Endpoints = slices.Clone(changed.Endpoints)
		changed.Endpoints[0].Ready = false
		c := slices.Clone(b[len(b)-n:])
		c[0] = &changed
		if equalSlices(a[:n], c) || equalSlices(c, a[:n]) {
			t.Fatalf("%d slices: a changed slice is equal", n)
		}
	}
}

// ptrOf is the names a pod in ns gets for the reverse name rev; nil when
// it is forwarded.
func ptrOf(t *testing.T, tbl *Table, rev, ns string) []string {
	t.Helper()
	r := tbl.Resolve(rev, ns)
	if r.Entry == nil {
		return nil
	}
	return answerOf(t, r, rev, dns.TypePTR)
}

// The cap on an address's owners is on endpoint names only: an address that
// more than maxPTROwners ServiceEntries hold, each seen from its own
// namespace, still names each tenant's own host to that tenant, however the
// owners came and went, and as a fresh build does; so with endpoint names
// on the address first, beyond the cap, and then without them.
func TestPTRManyTenants(t *testing.T) {
	const tenants = maxPTROwners + 4
	shared := addrs("203.0.113.9")
	rev := reverseName(shared[0])
	tenant := func(i int, exportTo []string) model.ServiceEntry {
		return model.ServiceEntry{Namespace: fmt.Sprintf("tenant-%02d", i), Name: "api", Created: time.Unix(int64(i), 0),
			Hosts: []string{fmt.Sprintf("api-%02d.example", i)}, Addresses: shared, Resolution: "STATIC", ExportTo: exportTo}
	}
	for _, exportTo := range [][]string{{"."}, nil} {
		s := &model.Snapshot{}
		for i := range tenants {
			s.ServiceEntries = append(s.ServiceEntries, tenant(i, exportTo))
		}
		bld := NewBuilder(Options{})
		check := func(step string, present func(i int) bool, endpoints []string) {
			t.Helper()
			inc, _ := bld.Build(s)
			fresh, _ := Build(s, Options{})
			for i := range tenants + 1 {
				ns := fmt.Sprintf("tenant-%02d", i)
				if a, b := inc.Rows(ns), fresh.Rows(ns); !reflect.DeepEqual(a, b) {
					t.Fatalf("exportTo %q, %s, namespace %q: incremental table differs from a fresh build\n inc %v\nfresh %v",
						exportTo, step, ns, a, b)
				}
				var want []string
				switch {
				case endpoints != nil:
					want = endpoints
				case i < tenants && present(i):
					want = []string{fmt.Sprintf("api-%02d.example.", i)}
				case exportTo == nil:
					for j := range tenants { // the oldest one there
						if present(j) {
							want = []string{fmt.Sprintf("api-%02d.example.", j)}
							break
						}
					}
				}
				if got := ptrOf(t, inc, rev, ns); !slices.Equal(got, want) {
					t.Fatalf("exportTo %q, %s: PTR %s from %s = %v, want %v", exportTo, step, shared[0], ns, got, want)
				}
			}
			k := keyOf(shared[0])
			if b := inc.reverse[shardOfAddr(k)].get(k); b.len() > 0 {
				n := 0
				for n < b.len() && b.at(n).isEndpoint() {
					n++
				}
				if n > maxPTROwners {
					t.Fatalf("exportTo %q, %s: %d endpoint names kept", exportTo, step, n)
				}
			}
		}
		all := func(int) bool { return true }
		check("first", all, nil)
		// Endpoint names on the address, more than the cap: they are the
		// answer, the first maxPTROwners of them by name.
		svc, eps := headless("pods", tenants, 0, func(i int) model.Endpoint {
			return model.Endpoint{Ready: true, Hostname: fmt.Sprintf("pod-%02d", i), Addresses: shared}
		})
		s.Services, s.EndpointSlices = []model.Service{svc}, eps
		var names []string
		for i := range maxPTROwners {
			names = append(names, fmt.Sprintf("pod-%02d.pods.tenant.svc.cluster.local.", i))
		}
		check("with endpoints", all, names)
		s.Services, s.EndpointSlices = nil, nil
		check("endpoints gone", all, nil)
		// Tenants leave from the front, and come back.
		for i := range tenants {
			s.ServiceEntries = slices.Clone(s.ServiceEntries[1:])
			check(fmt.Sprintf("tenant-%02d gone", i), func(j int) bool { return j > i }, nil)
		}
		for i := range tenants {
			s.ServiceEntries = append(slices.Clip(s.ServiceEntries), tenant(tenants-1-i, exportTo))
			check(fmt.Sprintf("tenant-%02d back", tenants-1-i), func(j int) bool { return j >= tenants-1-i }, nil)
		}
		if len(bld.moreOwners) != 0 {
			t.Errorf("exportTo %q: owners beyond the cap left: %d", exportTo, len(bld.moreOwners))
		}
	}
}

// manyOnOneAddress is n ServiceEntries, each in a namespace of its own and
// seen only there, all with the same address.
func manyOnOneAddress(n int) *model.Snapshot {
	s := &model.Snapshot{}
	for i := range n {
		s.ServiceEntries = append(s.ServiceEntries, model.ServiceEntry{Namespace: fmt.Sprintf("t%05d", i), Name: "api",
			Created: time.Unix(int64(i), 0), Hosts: []string{fmt.Sprintf("api-%05d.example", i)},
			Addresses: addrs("203.0.113.9"), Resolution: "STATIC", ExportTo: []string{"."}})
	}
	return s
}

// An address that tens of thousands of ServiceEntries hold keeps them all
// (each tenant's PTR names its own host), and still builds in memory linear
// in them, whether at once or as they come and go: a build copies the
// address's list once, however many of its owners changed.
func TestManyOwnersOneAddress(t *testing.T) {
	for _, n := range []int{2_000, 20_000} {
		s := manyOnOneAddress(n)
		var tbl *Table
		bytes := allocated(func() { tbl, _ = Build(s, Options{}) })
		t.Logf("%d ServiceEntries on one address: %d bytes allocated", n, bytes)
		if limit := uint64(2048*n + 1<<20); bytes > limit {
			t.Fatalf("building %d ServiceEntries on one address allocated %d bytes, want at most %d", n, bytes, limit)
		}
		rev := reverseName(netip.MustParseAddr("203.0.113.9"))
		for i := 0; i < n; i += n / 10 {
			ns := fmt.Sprintf("t%05d", i)
			if got, want := ptrOf(t, tbl, rev, ns), []string{fmt.Sprintf("api-%05d.example.", i)}; !slices.Equal(got, want) {
				t.Fatalf("%d ServiceEntries: PTR from %s = %v, want %v", n, ns, got, want)
			}
		}
	}
	// Incrementally: each build moves a tenth of them to another address,
	// then back.
	const n = 20_000
	s := manyOnOneAddress(n)
	bld := NewBuilder(Options{})
	bld.Build(s)
	for step := range 4 {
		next := *s
		next.ServiceEntries = slices.Clone(s.ServiceEntries)
		for i := step % 2; i < n; i += 10 {
			next.ServiceEntries[i].Addresses = addrs([]string{"203.0.113.10", "203.0.113.11", "203.0.113.9", "203.0.113.9"}[step])
		}
		s = &next
		bytes := allocated(func() { bld.Build(s) })
		t.Logf("step %d: %d bytes allocated", step, bytes)
		if limit := uint64(2048*n + 1<<20); bytes > limit {
			t.Fatalf("step %d: allocated %d bytes, want at most %d", step, bytes, limit)
		}
	}
	inc, _ := bld.Build(s)
	fresh, _ := Build(s, Options{})
	for _, ns := range []string{"", "t00000", "t00001", "t00002", "t19999"} {
		if a, b := inc.Rows(ns), fresh.Rows(ns); !reflect.DeepEqual(a, b) {
			t.Fatalf("namespace %q: incremental table differs from a fresh build\n inc %v\nfresh %v", ns, a, b)
		}
	}
}

// namedPorts are n named ports, every tenth also under its name in upper
// case with another protocol's spelling, which names the same set.
func namedPorts(n int) []model.Port {
	var out []model.Port
	for i := range n {
		out = append(out, model.Port{Name: fmt.Sprintf("p%05d", i), Protocol: "TCP", Port: uint16(i)})
		if i%10 == 0 {
			out = append(out, model.Port{Name: fmt.Sprintf("P%05d", i), Protocol: "tcp", Port: uint16(i + 1)})
		}
	}
	return out
}

// A Service with tens of thousands of named ports (a 2 MiB manifest holds
// about 45,000) builds its SRV sets, all of them right, in memory linear in
// its ports: a ClusterIP Service's ports, and a headless Service's
// addresses times ports. Each port's set is found once, by its prefix:
// searched for among the others, as it was, the sets took no more memory
// but time quadratic in the ports (this test took 15 s, now 0.1 s).
func TestManyNamedPorts(t *testing.T) {
	const ports = 40_000
	clusterIP := model.Service{Namespace: "tenant", Name: "wide", ClusterIPs: addrs("10.96.0.1"), Ports: namedPorts(ports)}
	hl, eps := headless("hwide", 2, 0, func(i int) model.Endpoint {
		return model.Endpoint{Ready: true, Hostname: fmt.Sprintf("pod-%d", i), Addresses: []netip.Addr{addr4(i)}}
	})
	eps[0].Ports = namedPorts(ports)
	s := &model.Snapshot{Services: []model.Service{clusterIP, hl}, EndpointSlices: eps}
	var tbl *Table
	var warnings []error
	bytes := allocated(func() { tbl, warnings = Build(s, Options{}) })
	if len(warnings) > 0 {
		t.Fatalf("warnings: %v", warnings[:1])
	}
	t.Logf("%d named ports, in a ClusterIP and a headless Service of 2 endpoints: %d bytes allocated", ports, bytes)
	if limit := uint64(3*ports*256 + 1<<20); bytes > limit {
		t.Fatalf("building allocated %d bytes, want at most %d", bytes, limit)
	}
	check := func(svc string, i int, want []string) {
		t.Helper()
		q := fmt.Sprintf("_p%05d._tcp.%s.tenant.svc.cluster.local.", i, svc)
		r := tbl.Resolve(q, "tenant")
		if r.srv == nil {
			t.Fatalf("%s: no SRV set", q)
		}
		if got := answerOf(t, r, q, dns.TypeSRV); !slices.Equal(got, want) {
			t.Fatalf("%s = %v, want %v", q, got, want)
		}
	}
	for i := 0; i < ports; i += 997 {
		const wide = "wide.tenant.svc.cluster.local."
		want := []string{fmt.Sprintf("0 100 %d %s", i, wide)}
		if i%10 == 0 {
			want = append(want, fmt.Sprintf("0 100 %d %s", i+1, wide))
		}
		slices.Sort(want)
		check("wide", i, want)
		var hwant []string
		for j := range 2 {
			target := fmt.Sprintf("pod-%d.hwide.tenant.svc.cluster.local.", j)
			hwant = append(hwant, fmt.Sprintf("0 100 %d %s", i, target))
			if i%10 == 0 {
				hwant = append(hwant, fmt.Sprintf("0 100 %d %s", i+1, target))
			}
		}
		slices.Sort(hwant)
		check("hwide", i, hwant)
	}
	for _, svc := range []string{"wide", "hwide"} {
		e := tbl.Resolve(svc+".tenant.svc.cluster.local.", "tenant").Entry
		if e == nil || len(e.srv) != ports || !slices.IsSortedFunc(e.srv, func(a, b srvSet) int { return strings.Compare(a.prefix, b.prefix) }) {
			t.Fatalf("%s: %d SRV sets, want %d, in order", svc, len(e.srv), ports)
		}
	}
}

// TestInternedPrefixesAreBounded: the builder interns SRV prefixes for as
// long as it lives, and port names are the objects' choice: past
// maxInternedPrefixes a prefix is not interned, and still answers.
func TestInternedPrefixesAreBounded(t *testing.T) {
	const ports = maxInternedPrefixes + 1000
	bld := NewBuilder(Options{})
	svc := model.Service{Namespace: "tenant", Name: "wide", ClusterIPs: addrs("10.96.0.1"), Ports: namedPorts(ports)}
	tbl, _ := bld.Build(&model.Snapshot{Services: []model.Service{svc}})
	if n := len(bld.n.prefixes); n > maxInternedPrefixes {
		t.Errorf("%d prefixes interned, want at most %d", n, maxInternedPrefixes)
	}
	q := fmt.Sprintf("_p%05d._tcp.wide.tenant.svc.cluster.local.", ports-1)
	if r := tbl.Resolve(q, "tenant"); r.srv == nil {
		t.Errorf("%s: no SRV set past the interned prefixes", q)
	}
}
