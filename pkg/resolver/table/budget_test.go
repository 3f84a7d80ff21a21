package table

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
)

// hostsEntry is a STATIC ServiceEntry of ns whose hosts share one address.
func hostsEntry(ns, name string, created int64, hosts int, addr string) model.ServiceEntry {
	se := model.ServiceEntry{Namespace: ns, Name: name, Created: time.Unix(created, 0), Resolution: "STATIC",
		Addresses: addrs(addr)}
	for i := range hosts {
		se.Hosts = append(se.Hosts, fmt.Sprintf("h%d.%s.%s.example", i, name, ns))
	}
	return se
}

// budgetFixture: namespace other within any budget; namespace tenant of
// 30 names, over a budget of 20: a Service (3: name, ClusterIP, port),
// ServiceEntries a (6: five hosts, an address), b (6), c (11) and d (4),
// made in that order, c listed first.
func budgetFixture() *model.Snapshot {
	return &model.Snapshot{
		Services: []model.Service{
			{Namespace: "other", Name: "web", ClusterIPs: addrs("10.96.0.10"), Ports: []model.Port{{Name: "http", Protocol: "TCP", Port: 80}}},
			{Namespace: "tenant", Name: "api", Created: time.Unix(10, 0), ClusterIPs: addrs("10.96.0.20"),
				Ports: []model.Port{{Name: "http", Protocol: "TCP", Port: 80}}},
		},
		ServiceEntries: []model.ServiceEntry{
			hostsEntry("tenant", "c", 30, 10, "198.51.100.3"),
			hostsEntry("other", "ext", 5, 1, "198.51.100.9"),
			hostsEntry("tenant", "a", 20, 5, "198.51.100.1"),
			hostsEntry("tenant", "b", 20, 5, "198.51.100.2"),
			hostsEntry("tenant", "d", 40, 3, "198.51.100.4"),
		},
	}
}

// TestNamespaceBudget: a namespace whose objects make more names than its
// budget keeps its oldest objects that fit, answered; the newest that do
// not fit are left out whole, with one warning naming the namespace and
// them, and counted; other namespaces are untouched. (Before: no budget,
// every object of every namespace built, whatever it cost.)
func TestNamespaceBudget(t *testing.T) {
	s := budgetFixture()
	bld := NewBuilder(Options{MaxNamesPerNamespace: 20})
	tbl, warnings := bld.Build(s)
	for _, ns := range []string{"other", "tenant", ""} {
		resolvesTo(t, tbl, "web.other.svc.cluster.local.", addrs("10.96.0.10"), ns)
		resolvesTo(t, tbl, "h0.ext.other.example.", addrs("198.51.100.9"), ns)
		resolvesTo(t, tbl, "api.tenant.svc.cluster.local.", addrs("10.96.0.20"), ns)
		for i := range 5 {
			resolvesTo(t, tbl, fmt.Sprintf("h%d.a.tenant.example.", i), addrs("198.51.100.1"), ns)
			resolvesTo(t, tbl, fmt.Sprintf("h%d.b.tenant.example.", i), addrs("198.51.100.2"), ns)
		}
		for i := range 10 {
			resolvesTo(t, tbl, fmt.Sprintf("h%d.c.tenant.example.", i), nil, ns) // left out: forwarded
		}
		for i := range 3 { // newer than c, and fits beside a, b and api
			resolvesTo(t, tbl, fmt.Sprintf("h%d.d.tenant.example.", i), addrs("198.51.100.4"), ns)
		}
	}
	if got := ptrOf(t, tbl, reverseName(netip.MustParseAddr("198.51.100.3")), "tenant"); got != nil {
		t.Errorf("c's address has a reverse name: %q", got)
	}
	if got := ptrOf(t, tbl, reverseName(netip.MustParseAddr("198.51.100.1")), "tenant"); len(got) != 1 {
		t.Errorf("a's address: PTR %q, want a's first host", got)
	}
	if len(warnings) != 1 {
		t.Fatalf("warnings %q, want one", warnings)
	}
	for _, want := range []string{"namespace tenant:", "30 names", "budget of 20", "ServiceEntry c (11 names)"} {
		if !strings.Contains(warnings[0].Error(), want) {
			t.Errorf("warning %q lacks %q", warnings[0], want)
		}
	}
	if ns, objs := bld.OverBudget(); ns != 1 || objs != 1 {
		t.Errorf("OverBudget() = %d namespaces, %d objects; want 1, 1", ns, objs)
	}

	// c gone: nothing over budget, every name of the tenant answered.
	next := *s
	next.ServiceEntries = slices.DeleteFunc(slices.Clone(s.ServiceEntries), func(se model.ServiceEntry) bool { return se.Name == "c" })
	tbl, warnings = bld.Build(&next)
	if len(warnings) > 0 {
		t.Errorf("warnings %q, want none", warnings)
	}
	resolvesTo(t, tbl, "h2.d.tenant.example.", addrs("198.51.100.4"), "tenant")
	if ns, objs := bld.OverBudget(); ns != 0 || objs != 0 {
		t.Errorf("OverBudget() = %d, %d after c went; want 0, 0", ns, objs)
	}

	// c back, and an older entry grown past what is left: the oldest keep
	// their place, whatever the snapshot's order, on every node.
	grown := slices.Clone(s.ServiceEntries)
	grown[2] = hostsEntry("tenant", "a", 20, 8, "198.51.100.1") // 9
	again := *s
	again.ServiceEntries = grown
	tbl, warnings = bld.Build(&again)
	fresh, freshWarnings := Build(&again, Options{MaxNamesPerNamespace: 20})
	if !slices.EqualFunc(warnings, freshWarnings, func(a, b error) bool { return a.Error() == b.Error() }) {
		t.Errorf("warnings %q incrementally, %q fresh", warnings, freshWarnings)
	}
	for _, tb := range []*Table{tbl, fresh} {
		resolvesTo(t, tb, "h7.a.tenant.example.", addrs("198.51.100.1"), "tenant")
		resolvesTo(t, tb, "h4.b.tenant.example.", addrs("198.51.100.2"), "tenant") // 3+9+6 = 18
		resolvesTo(t, tb, "h0.d.tenant.example.", nil, "tenant")                   // 18+4 > 20
		resolvesTo(t, tb, "h0.c.tenant.example.", nil, "tenant")
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0].Error(), "ServiceEntry c (11 names), ServiceEntry d (4 names)") {
		t.Errorf("warnings %q, want one naming c and d", warnings)
	}
}

// TestNamespaceBudgetBoundsTheBuild: the objects of a namespace over its
// budget are not built: a build with one tenant's ServiceEntry of 200,000
// hosts and headless Service of 50,000 endpoints allocates about what a
// build without them does. (Before: the 200,000 hosts and 50,000
// endpoints were built, tens of MB, and served.)
func TestNamespaceBudgetBoundsTheBuild(t *testing.T) {
	base := &model.Snapshot{}
	for i := range 200 {
		ns := fmt.Sprintf("team-%d", i%20)
		base.ServiceEntries = append(base.ServiceEntries, hostsEntry(ns, fmt.Sprintf("se%d", i), int64(i), 3, "198.51.100.7"))
		base.Services = append(base.Services, model.Service{Namespace: ns, Name: fmt.Sprintf("svc%d", i), ClusterIPs: []netip.Addr{addr4(i)}})
	}
	huge := *base
	huge.ServiceEntries = append(slices.Clone(base.ServiceEntries), hostsEntry("greedy", "huge", 1, 200_000, "198.51.100.8"))
	svc, eps := headless("many", 50_000, 1, func(i int) model.Endpoint {
		return model.Endpoint{Addresses: []netip.Addr{addr4(i)}, Ready: true}
	})
	svc.Namespace = "greedy"
	for i := range eps {
		eps[i].Namespace = "greedy"
	}
	huge.Services = append(slices.Clone(base.Services), svc)
	huge.EndpointSlices = eps
	opts := Options{MaxNamesPerNamespace: DefaultMaxNamesPerNamespace}
	Build(&huge, opts) // the first build of each: interned prefixes, lazily made tables
	Build(base, opts)
	without := allocated(func() { Build(base, opts) })
	with := allocated(func() {
		_, warnings := Build(&huge, opts)
		if len(warnings) != 1 || !strings.Contains(warnings[0].Error(), "namespace greedy:") {
			t.Errorf("warnings %q, want one for namespace greedy", warnings)
		}
	})
	t.Logf("a build allocated %d bytes without namespace greedy, %d with it", without, with)
	// The copies of the snapshot's slices without greedy's objects, the
	// costs by namespace, the warning.
	if limit := without + without/2 + 256<<10; with > limit {
		t.Errorf("a build with namespace greedy over its budget allocated %d bytes, want at most %d (%d without it)", with, limit, without)
	}
	tbl, _ := Build(&huge, opts)
	resolvesTo(t, tbl, "h0.huge.greedy.example.", nil, "greedy")
	resolvesTo(t, tbl, "many.greedy.svc.cluster.local.", nil, "greedy")
	resolvesTo(t, tbl, "h2.se199.team-19.example.", addrs("198.51.100.7"), "team-19")
}
