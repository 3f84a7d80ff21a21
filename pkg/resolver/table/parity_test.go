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

// resolvesTo fails t unless qname from each of namespaces resolves to an
// entry with exactly want (nil: forwarded), reached without a search-list
// alias.
func resolvesTo(t *testing.T, tbl *Table, qname string, want []netip.Addr, namespaces ...string) {
	t.Helper()
	for _, ns := range namespaces {
		r := tbl.Resolve(qname, ns)
		switch {
		case want == nil && r.Entry != nil:
			t.Errorf("%s from %q: %s %v (%s), want it forwarded", qname, ns, r.Entry.Name, r.Entry.Addrs, r.Entry.Origin())
		case want == nil:
		case r.Entry == nil:
			t.Errorf("%s from %q: forwarded, want %v", qname, ns, want)
		case r.Alias != "" || r.Entry.Alias != "" || !slices.Equal(r.Entry.Addrs, want):
			t.Errorf("%s from %q: %s %v alias %q CNAME %q (%s), want %v", qname, ns, r.Entry.Name, r.Entry.Addrs,
				r.Alias, r.Entry.Alias, r.Entry.Origin(), want)
		}
	}
}

// istiod keeps one object per namespace and host (the Service, else the
// oldest ServiceEntry, VIP or not) and sends ztunnel only those; ztunnel
// passes over one without a VIP outside .svc.<domain>, to other
// namespaces' and to wildcards. A newer ServiceEntry in the namespace of
// an older one without a VIP never reaches ztunnel: its VIP must not be
// answered, from any namespace.
func TestDiscardedServiceEntryDoesNotAnswer(t *testing.T) {
	// The older one opted out of auto-allocation, the newer one has the
	// VIP istiod wrote in its status: ztunnel knows no address for the
	// host and forwards it.
	tbl, _ := Build(&model.Snapshot{ServiceEntries: []model.ServiceEntry{
		{Namespace: "a", Name: "old", Created: t0, Hosts: []string{"api.example.com"}, Resolution: "DNS", AutoAllocate: false},
		{Namespace: "a", Name: "new", Created: t0.Add(time.Hour), Hosts: []string{"api.example.com"}, Resolution: "DNS", AutoAllocate: true,
			StatusAddresses: status("api.example.com", "240.240.0.5", "2001:2::5")},
	}}, Options{})
	resolvesTo(t, tbl, "api.example.com.", nil, "a", "b", "")
	resolvesTo(t, tbl, "api.example.com.a.svc.cluster.local.", nil, "a")

	// Another namespace's object answers instead, there and everywhere.
	ses := []model.ServiceEntry{
		{Namespace: "a", Name: "old", Created: t0, Hosts: []string{"api.example.com"}, Resolution: "NONE"},
		{Namespace: "a", Name: "new", Created: t0.Add(time.Hour), Hosts: []string{"api.example.com"}, Resolution: "STATIC",
			Addresses: addrs("198.51.100.7")},
		{Namespace: "b", Name: "bee", Created: t0.Add(2 * time.Hour), Hosts: []string{"api.example.com"}, Resolution: "STATIC",
			Addresses: addrs("198.51.100.8")},
	}
	tbl, _ = Build(&model.Snapshot{ServiceEntries: ses}, Options{})
	resolvesTo(t, tbl, "api.example.com.", addrs("198.51.100.8"), "a", "b", "c", "")
	if e := tbl.Find("api.example.com.", "c"); e == nil || !slices.Equal(e.Addrs, addrs("198.51.100.8")) {
		t.Errorf("Find from c: %v, want b/bee", e)
	}
	for _, row := range tbl.Rows("c") {
		if row.Name == "api.example.com." && row.Origin != "ServiceEntry b/bee" {
			t.Errorf("table from c lists %+v, want b/bee's", row)
		}
	}

	// Passed over, it leaves the name to a wildcard covering it.
	ses[2].Hosts = []string{"*.example.com"}
	tbl, _ = Build(&model.Snapshot{ServiceEntries: ses}, Options{})
	resolvesTo(t, tbl, "api.example.com.", addrs("198.51.100.8"), "a", "b", "c")

	// So does a wildcard host without a VIP for a less specific one.
	ses[0].Hosts, ses[1].Hosts = []string{"*.api.example.com"}, []string{"*.api.example.com"}
	tbl, _ = Build(&model.Snapshot{ServiceEntries: ses}, Options{})
	resolvesTo(t, tbl, "v1.api.example.com.", addrs("198.51.100.8"), "a", "c")

	// exportTo does not change which object is its namespace's: the older
	// one is, seen from c or not, and the newer one answers nobody.
	ses = []model.ServiceEntry{
		{Namespace: "a", Name: "old", Created: t0, Hosts: []string{"api.example.com"}, Resolution: "NONE", ExportTo: []string{"."}},
		{Namespace: "a", Name: "new", Created: t0.Add(time.Hour), Hosts: []string{"api.example.com"}, Resolution: "STATIC",
			Addresses: addrs("198.51.100.7")},
	}
	tbl, _ = Build(&model.Snapshot{ServiceEntries: ses}, Options{})
	resolvesTo(t, tbl, "api.example.com.", nil, "a", "c", "")
}

// istiod chooses each namespace's object for a host whatever its
// exportTo (the Service, else the oldest ServiceEntry) and sends ztunnel
// that one alone: exportTo then decides which pods see it. A pod that
// cannot see its namespace's object gets nothing from that namespace,
// not the VIP of a newer ServiceEntry there, which ztunnel has no service
// for: the name is forwarded, unless another namespace's object answers.
func TestHiddenOlderServiceEntryHidesTheNewer(t *testing.T) {
	se := func(name string, created time.Duration, vip string, exportTo ...string) model.ServiceEntry {
		return model.ServiceEntry{Namespace: "a", Name: name, Created: t0.Add(created), Hosts: []string{"hidden.example"},
			Resolution: "DNS", AutoAllocate: true, ExportTo: exportTo,
			StatusAddresses: []model.HostAddress{{Host: "hidden.example", Address: netip.MustParseAddr(vip)}}}
	}
	oldVIP, newVIP := addrs("240.240.0.1"), addrs("240.240.0.2")

	// Exported to nobody: the host is forwarded everywhere.
	snap := &model.Snapshot{ServiceEntries: []model.ServiceEntry{se("old", 0, "240.240.0.1", "~"), se("new", time.Hour, "240.240.0.2")}}
	tbl, warnings := Build(snap, Options{})
	resolvesTo(t, tbl, "hidden.example.", nil, "a", "b", "default", "")
	resolvesTo(t, tbl, "hidden.example.a.svc.cluster.local.", nil, "a")
	for _, row := range tbl.Rows("b") {
		if strings.HasPrefix(row.Name, "hidden.example.") {
			t.Errorf("table from b lists %+v, want no row for hidden.example", row)
		}
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0].Error(), `ServiceEntry a/new: host "hidden.example" is not answered: the older ServiceEntry a/old names it in namespace a too`) {
		t.Errorf("warnings %v, want one naming a/new and a/old", warnings)
	}

	// Exported to b, the newer to its own namespace: b gets the older, a
	// nothing.
	snap.ServiceEntries = []model.ServiceEntry{se("old", 0, "240.240.0.1", "b"), se("new", time.Hour, "240.240.0.2", ".")}
	tbl, _ = Build(snap, Options{})
	resolvesTo(t, tbl, "hidden.example.", oldVIP, "b")
	resolvesTo(t, tbl, "hidden.example.", nil, "a", "c")

	// The same with the mesh's defaultServiceExportTo "." scoping the
	// older: b gets nothing, though the newer is exported to it.
	snap.ServiceEntries = []model.ServiceEntry{se("old", 0, "240.240.0.1"), se("new", time.Hour, "240.240.0.2", "*")}
	snap.DefaultExportTo = []string{"."}
	tbl, _ = Build(snap, Options{})
	resolvesTo(t, tbl, "hidden.example.", oldVIP, "a")
	resolvesTo(t, tbl, "hidden.example.", nil, "b")
	snap.DefaultExportTo = nil

	// Another namespace's object still answers where a's is not seen.
	snap.ServiceEntries = []model.ServiceEntry{se("old", 0, "240.240.0.1", "~"), se("new", time.Hour, "240.240.0.2"),
		{Namespace: "b", Name: "bee", Created: t0.Add(2 * time.Hour), Hosts: []string{"hidden.example"}, Resolution: "STATIC",
			Addresses: addrs("198.51.100.8")}}
	tbl, _ = Build(snap, Options{})
	resolvesTo(t, tbl, "hidden.example.", addrs("198.51.100.8"), "a", "b", "c")

	// Incrementally as in a fresh build: the older one going makes the
	// newer answer, coming back (as old) hides it again.
	bld := NewBuilder(Options{})
	both := []model.ServiceEntry{se("old", 0, "240.240.0.1", "~"), se("new", time.Hour, "240.240.0.2")}
	for i, step := range [][]model.ServiceEntry{both, both[1:], both} {
		tbl, _ := bld.Build(&model.Snapshot{ServiceEntries: slices.Clone(step)})
		var want []netip.Addr
		if len(step) == 1 {
			want = newVIP
		}
		resolvesTo(t, tbl, "hidden.example.", want, "a", "b")
		if t.Failed() {
			t.Fatalf("step %d", i)
		}
	}
}

// A ServiceEntry that never answers, being newer than its namespace's
// object for a host, gets a warning naming both and saying why: the
// operator who adds it sees it ignored otherwise, whatever the older
// one's exportTo. Once per object and host; none for one that has no
// address to answer with anyway, nor in another namespace.
func TestHiddenServiceEntryWarns(t *testing.T) {
	old := func(hosts ...string) model.ServiceEntry {
		return model.ServiceEntry{Namespace: "a", Name: "old", Created: t0, Hosts: hosts, Resolution: "NONE"}
	}
	newer := func(hosts ...string) model.ServiceEntry {
		return model.ServiceEntry{Namespace: "a", Name: "new", Created: t0.Add(time.Hour), Hosts: hosts, Resolution: "STATIC",
			Addresses: addrs("198.51.100.7")}
	}
	const noAddress = `ServiceEntry a/new: host "api.example.com" is not answered: the older ServiceEntry a/old names it in namespace a without an address, ` +
		`and one object per namespace and host is served (as istiod sends ztunnel); give a/old an address or remove the host from it`
	const withAddress = `ServiceEntry a/new: host "api.example.com" is not answered: the older ServiceEntry a/old names it in namespace a too, ` +
		`and one object per namespace and host is served (as istiod sends ztunnel); remove the host from one of them`
	withVIP := old("api.example.com")
	withVIP.Resolution, withVIP.Addresses = "STATIC", addrs("198.51.100.6")
	optedOut := old("api.example.com")
	optedOut.Resolution = "DNS"
	autoNew := newer("api.example.com")
	autoNew.Resolution, autoNew.Addresses, autoNew.AutoAllocate = "DNS", nil, true
	exportedHere := old("api.example.com")
	exportedHere.ExportTo = []string{"."}
	onlyHere := newer("api.example.com")
	onlyHere.ExportTo = []string{"."}
	twice := newer("api.example.com", "API.example.com")
	vipless := newer("api.example.com")
	vipless.Addresses = nil
	elsewhere := newer("api.example.com")
	elsewhere.Namespace = "b"
	same := newer("api.example.com")
	same.Created = t0

	cases := []struct {
		name string
		ses  []model.ServiceEntry
		want []string // substrings of the warnings, in order
	}{
		{"older without an address", []model.ServiceEntry{old("api.example.com"), newer("api.example.com")}, []string{noAddress}},
		{"older opted out, newer auto-allocated", []model.ServiceEntry{optedOut, autoNew}, []string{noAddress}},
		{"older with an address", []model.ServiceEntry{withVIP, newer("api.example.com")}, []string{withAddress}},
		{"as old", []model.ServiceEntry{same, withVIP}, []string{`ServiceEntry a/new names it in namespace a too and was created in the same second`}},
		{"under .svc", []model.ServiceEntry{old("legacy.shop.svc.cluster.local"), newer("legacy.shop.svc.cluster.local")},
			[]string{`ServiceEntry a/new: host "legacy.shop.svc.cluster.local" is not answered: the older ServiceEntry a/old names it in namespace a without an address`}},
		{"wildcard", []model.ServiceEntry{old("*.example.com"), newer("*.example.com")},
			[]string{`ServiceEntry a/new: host "*.example.com" is not answered: the older ServiceEntry a/old names it in namespace a without an address`}},
		{"listed twice", []model.ServiceEntry{old("api.example.com"), twice}, []string{noAddress}},
		{"newer seen only where the older is", []model.ServiceEntry{exportedHere, onlyHere}, []string{noAddress}},
		{"newer seen where the older is not", []model.ServiceEntry{exportedHere, newer("api.example.com")},
			[]string{`without an address, and one object per namespace and host is served (as istiod sends ztunnel, whatever their exportTo: pods outside ServiceEntry a/old's exportTo get neither)`}},
		{"newer without an address either", []model.ServiceEntry{old("api.example.com"), vipless}, nil},
		{"another namespace", []model.ServiceEntry{old("api.example.com"), elsewhere}, nil},
		{"other hosts", []model.ServiceEntry{old("api.example.com"), newer("web.example.com")}, nil},
	}
	for _, c := range cases {
		_, warnings := Build(&model.Snapshot{ServiceEntries: c.ses}, Options{})
		if len(warnings) != len(c.want) {
			t.Errorf("%s: warnings %v, want %d", c.name, warnings, len(c.want))
			continue
		}
		for i, w := range c.want {
			if !strings.Contains(warnings[i].Error(), w) {
				t.Errorf("%s: warning %q, want %q", c.name, warnings[i], w)
			}
		}
	}

	// Kept while nothing changes, gone with the older one, back with it,
	// and once among many namespaces naming the host (more than a short
	// list), incrementally as in a fresh build.
	bld := NewBuilder(Options{})
	ses := []model.ServiceEntry{old("api.example.com"), newer("api.example.com")}
	for i := range 12 {
		ses = append(ses, model.ServiceEntry{Namespace: fmt.Sprintf("ns%02d", i), Name: "se", Created: t0.Add(time.Minute),
			Hosts: []string{"api.example.com"}, Resolution: "STATIC", Addresses: addrs("198.51.100.8")})
	}
	steps := []struct {
		ses  []model.ServiceEntry
		want int
	}{
		{ses[:2], 1}, {ses[:2], 1}, {ses[1:2], 0}, {ses[:2], 1}, {ses, 1}, {ses[1:], 0}, {ses[:3], 1},
	}
	for i, step := range steps {
		snap := &model.Snapshot{ServiceEntries: slices.Clone(step.ses)}
		_, warnings := bld.Build(snap)
		_, fresh := Build(snap, Options{})
		if len(warnings) != step.want || !slices.EqualFunc(warnings, fresh, func(a, b error) bool { return a.Error() == b.Error() }) {
			t.Errorf("step %d: warnings %v, fresh %v, want %d", i, warnings, fresh, step.want)
			continue
		}
		if step.want > 0 && warnings[0].Error() != noAddress {
			t.Errorf("step %d: warning %q, want %q", i, warnings[0], noAddress)
		}
	}
}

// Under .svc.<domain> ztunnel keeps a ServiceEntry host without a VIP (it
// takes it for a headless Service's) and answers it, never another
// namespace's object: ztdns forwards it, as a headless Service without
// endpoints, wherever ztunnel would pick it.
func TestServiceEntryWithoutVIPKeepsClusterName(t *testing.T) {
	tbl, _ := Build(&model.Snapshot{ServiceEntries: []model.ServiceEntry{
		{Namespace: "mesh", Name: "old", Created: t0, Hosts: []string{"legacy.shop.svc.cluster.local"}, Resolution: "NONE"},
		{Namespace: "other", Name: "new", Created: t0.Add(time.Hour), Hosts: []string{"legacy.shop.svc.cluster.local"},
			Resolution: "STATIC", Addresses: addrs("198.51.100.10")},
		{Namespace: "mesh", Name: "wild", Created: t0, Hosts: []string{"*.shop.svc.cluster.local"},
			Resolution: "STATIC", Addresses: addrs("198.51.100.12")},
	}}, Options{})
	resolvesTo(t, tbl, "legacy.shop.svc.cluster.local.", nil, "mesh", "c", "")
	resolvesTo(t, tbl, "legacy.shop.svc.cluster.local.", addrs("198.51.100.10"), "other")
	resolvesTo(t, tbl, "legacy.", nil, "shop")
}

// Many namespaces whose object has no VIP cost no more than a look at
// each, and nothing allocated for a few of them.
func TestManyServiceEntriesWithoutVIP(t *testing.T) {
	var ses []model.ServiceEntry
	for i := range 200 {
		ns := fmt.Sprintf("ns%03d", i)
		ses = append(ses,
			model.ServiceEntry{Namespace: ns, Name: "old", Created: t0.Add(time.Duration(i) * time.Second), Hosts: []string{"api.example.com"}, Resolution: "NONE"},
			model.ServiceEntry{Namespace: ns, Name: "new", Created: t0.Add(time.Hour), Hosts: []string{"api.example.com"}, Resolution: "STATIC",
				Addresses: addrs("198.51.100.7")})
	}
	ses = append(ses, model.ServiceEntry{Namespace: "zz", Name: "last", Created: t0.Add(2 * time.Hour), Hosts: []string{"api.example.com"},
		Resolution: "STATIC", Addresses: addrs("198.51.100.8")})
	tbl, _ := Build(&model.Snapshot{ServiceEntries: ses}, Options{})
	resolvesTo(t, tbl, "api.example.com.", addrs("198.51.100.8"), "ns000", "ns150", "zz", "c", "")

	tbl, _ = Build(&model.Snapshot{ServiceEntries: append(ses[:6:6], ses[len(ses)-1])}, Options{})
	resolvesTo(t, tbl, "api.example.com.", addrs("198.51.100.8"), "ns001", "c")
	if n := testing.AllocsPerRun(100, func() { tbl.Resolve("api.example.com.", "c") }); n != 0 {
		t.Errorf("Resolve allocates %.1f times, want 0", n)
	}
}

// istiod sends ztunnel no ExternalName Service, so ztunnel finds a
// wildcard ServiceEntry covering its name: so does a pod, there and
// through the Service's short forms. Where no wildcard is visible the
// CNAME answers.
func TestWildcardCoversExternalName(t *testing.T) {
	snap := &model.Snapshot{
		Services: []model.Service{{Namespace: "shop", Name: "foo", ExternalName: "foo.example.com"}},
		ServiceEntries: []model.ServiceEntry{{Namespace: "mesh", Name: "wild", Created: t0, Hosts: []string{"*.shop.svc.cluster.local"},
			Addresses: addrs("198.51.100.9"), Resolution: "STATIC"}},
	}
	tbl, _ := Build(snap, Options{})
	want := addrs("198.51.100.9")
	resolvesTo(t, tbl, "foo.shop.svc.cluster.local.", want, "shop", "mesh", "other", "")
	resolvesTo(t, tbl, "foo.", want, "shop")
	resolvesTo(t, tbl, "foo.shop.", want, "mesh")
	if e := tbl.Find("foo.shop.svc.cluster.local.", "other"); e == nil || !slices.Equal(e.Addrs, want) {
		t.Errorf("Find (a CNAME target): %v, want the wildcard's %v", e, want)
	}

	snap.ServiceEntries[0].ExportTo = []string{"."}
	tbl, _ = Build(snap, Options{})
	resolvesTo(t, tbl, "foo.shop.svc.cluster.local.", want, "mesh")
	if e := tbl.Resolve("foo.shop.svc.cluster.local.", "shop").Entry; e == nil || e.Alias != "foo.example.com." {
		t.Errorf("from shop, the wildcard exported to mesh only: %+v, want the CNAME", e)
	}
}

// ztunnel's DNS has no pod records: a headless Service's endpoint name
// (web-0.web.ns1.svc.cluster.local) is no name of its own, and a wildcard
// ServiceEntry covering it answers, wherever the wildcard is visible; the
// Service's own name, which ztunnel has, stays the Service's. Where no
// wildcard is visible the endpoint's address answers, as kube-dns's; its
// PTR still names the endpoint. Before: the endpoint's address everywhere.
func TestWildcardCoversEndpointName(t *testing.T) {
	snap := &model.Snapshot{
		Services: []model.Service{{Namespace: "ns1", Name: "web", Headless: true}},
		EndpointSlices: []model.EndpointSlice{{Namespace: "ns1", Name: "web-x", ServiceName: "web",
			Endpoints: []model.Endpoint{{Hostname: "web-0", Ready: true, Addresses: addrs("10.1.0.10")}, {Ready: true, Addresses: addrs("10.1.0.11")}}}},
		ServiceEntries: []model.ServiceEntry{{Namespace: "ns2", Name: "wild", Created: t0, Hosts: []string{"*.web.ns1.svc.cluster.local"},
			Addresses: addrs("198.51.100.9"), Resolution: "STATIC"}},
	}
	tbl, _ := Build(snap, Options{})
	wild := addrs("198.51.100.9")
	resolvesTo(t, tbl, "web-0.web.ns1.svc.cluster.local.", wild, "ns1", "ns2", "other", "")
	resolvesTo(t, tbl, "10-1-0-11.web.ns1.svc.cluster.local.", wild, "ns1", "ns2")
	resolvesTo(t, tbl, "web.ns1.svc.cluster.local.", addrs("10.1.0.10", "10.1.0.11"), "ns1", "ns2")
	if got := ptrOf(t, tbl, "10.0.1.10.in-addr.arpa.", "ns1"); !slices.Equal(got, []string{"web-0.web.ns1.svc.cluster.local."}) {
		t.Errorf("PTR of 10.1.0.10: %q, want the endpoint's name", got)
	}

	snap.ServiceEntries[0].ExportTo = []string{"."}
	tbl, _ = Build(snap, Options{})
	resolvesTo(t, tbl, "web-0.web.ns1.svc.cluster.local.", wild, "ns2")
	resolvesTo(t, tbl, "web-0.web.ns1.svc.cluster.local.", addrs("10.1.0.10"), "ns1", "other")
}

// A ServiceEntry whose host is a headless Service's endpoint name exactly
// answers it as a wildcard covering it does (TestWildcardCoversEndpointName):
// ztunnel has no record of the endpoint name, so the ServiceEntry's address
// answers wherever it is visible, one in the Service's own namespace
// included, which istiod sends ztunnel as that namespace's object for the
// host (the Service's own name is another). Before: the endpoint's address
// answered everywhere but in another namespace's ServiceEntry's own, and a
// ServiceEntry of the Service's namespace never answered.
func TestServiceEntryNamingEndpointName(t *testing.T) {
	const endpoint = "web-0.web.ns1.svc.cluster.local."
	for _, seNS := range []string{"ns1", "ns2"} {
		t.Run("ServiceEntry in "+seNS, func(t *testing.T) {
			snap := &model.Snapshot{
				Services: []model.Service{{Namespace: "ns1", Name: "web", Headless: true}},
				EndpointSlices: []model.EndpointSlice{{Namespace: "ns1", Name: "web-x", ServiceName: "web",
					Endpoints: []model.Endpoint{{Hostname: "web-0", Ready: true, Addresses: addrs("10.1.0.10")}}}},
				ServiceEntries: []model.ServiceEntry{{Namespace: seNS, Name: "exact", Created: t0, Hosts: []string{strings.TrimSuffix(endpoint, ".")},
					Addresses: addrs("198.51.100.9"), Resolution: "STATIC"}},
			}
			tbl, warnings := Build(snap, Options{})
			if len(warnings) > 0 {
				t.Errorf("warnings %q", warnings)
			}
			resolvesTo(t, tbl, endpoint, addrs("198.51.100.9"), "ns1", "ns2", "other", "")
			resolvesTo(t, tbl, "web.ns1.svc.cluster.local.", addrs("10.1.0.10"), "ns1", "ns2", "other")
			if got := ptrOf(t, tbl, "10.0.1.10.in-addr.arpa.", "ns1"); !slices.Equal(got, []string{endpoint}) {
				t.Errorf("PTR of 10.1.0.10: %q, want the endpoint's name", got)
			}

			snap.ServiceEntries[0].ExportTo = []string{"."}
			tbl, _ = Build(snap, Options{})
			var elsewhere []string
			for _, ns := range []string{"ns1", "ns2", "other"} {
				if ns != seNS {
					elsewhere = append(elsewhere, ns)
				}
			}
			resolvesTo(t, tbl, endpoint, addrs("198.51.100.9"), seNS)
			resolvesTo(t, tbl, endpoint, addrs("10.1.0.10"), elsewhere...)
		})
	}
}

// ztunnel tries the name asked and the wildcards covering it before it
// reads the name as a Kubernetes short form, and then tries the full
// cluster name and the wildcards covering that: one answer however the
// name is asked.
func TestWildcardBeforeShortForm(t *testing.T) {
	tbl, _ := Build(&model.Snapshot{
		Services: []model.Service{{Namespace: "corp", Name: "git", ClusterIPs: addrs("10.96.0.50")}},
		ServiceEntries: []model.ServiceEntry{
			{Namespace: "mesh", Name: "corp", Created: t0, Hosts: []string{"*.corp"}, Addresses: addrs("198.51.100.11"), Resolution: "STATIC"},
			{Namespace: "mesh", Name: "shop", Created: t0, Hosts: []string{"*.shop.svc.cluster.local"}, Addresses: addrs("198.51.100.9"), Resolution: "STATIC"},
		},
	}, Options{})
	resolvesTo(t, tbl, "git.corp.", addrs("198.51.100.11"), "mesh", "corp", "other", "")
	if r := tbl.Resolve("git.corp.mesh.svc.cluster.local.", "mesh"); r.Entry == nil || r.Alias != "git.corp." ||
		!slices.Equal(r.Entry.Addrs, addrs("198.51.100.11")) {
		t.Errorf("search-list form: %+v, want the CNAME to git.corp. and 198.51.100.11", r)
	}
	resolvesTo(t, tbl, "git.corp.svc.", addrs("10.96.0.50"), "mesh")
	resolvesTo(t, tbl, "git.corp.svc.cluster.local.", addrs("10.96.0.50"), "mesh")
	resolvesTo(t, tbl, "git.", addrs("10.96.0.50"), "corp")

	// A short form no object names is the full name's wildcard's.
	resolvesTo(t, tbl, "cart.", addrs("198.51.100.9"), "shop")
	resolvesTo(t, tbl, "cart.shop.", addrs("198.51.100.9"), "other")
	resolvesTo(t, tbl, "cart.shop.svc.", addrs("198.51.100.9"), "other")
	if r := tbl.Resolve("cart.shop.other.svc.cluster.local.", "other"); r.Entry == nil || r.Alias != "cart.shop." ||
		!slices.Equal(r.Entry.Addrs, addrs("198.51.100.9")) {
		t.Errorf("search-list form of cart.shop: %+v, want the CNAME to cart.shop. and 198.51.100.9", r)
	}
	for _, q := range []string{"cart.", "nope.", "git.corp."} {
		if n := testing.AllocsPerRun(100, func() { tbl.Resolve(q, "shop") }); n != 0 {
			t.Errorf("Resolve(%s) allocates %.1f times, want 0", q, n)
		}
	}
}

// A name ztunnel finds without a VIP under .svc.<domain> (a headless
// Service without endpoints, a wildcard ServiceEntry without addresses)
// ends its search, however the name was asked: no less specific wildcard,
// and no later search-list base, answers it.
func TestClaimedNameEndsTheSearch(t *testing.T) {
	snap := &model.Snapshot{
		Services: []model.Service{{Namespace: "shop", Name: "db", Headless: true}},
		ServiceEntries: []model.ServiceEntry{
			{Namespace: "mesh", Name: "shop", Created: t0, Hosts: []string{"*.shop.svc.cluster.local"}, Resolution: "NONE"},
			{Namespace: "mesh", Name: "other", Created: t0, Hosts: []string{"*.other"}, Addresses: addrs("198.51.100.14"), Resolution: "STATIC"},
		},
	}
	tbl, _ := Build(snap, Options{})
	resolvesTo(t, tbl, "db.", nil, "shop")
	resolvesTo(t, tbl, "db.shop.", nil, "other")
	// db.shop, then db.shop.svc.cluster.local: not db.shop.other.
	resolvesTo(t, tbl, "db.shop.other.svc.cluster.local.", nil, "other")

	snap.ServiceEntries = append(snap.ServiceEntries, model.ServiceEntry{Namespace: "mesh", Name: "svc", Created: t0,
		Hosts: []string{"*.svc.cluster.local"}, Addresses: addrs("198.51.100.13"), Resolution: "STATIC"})
	tbl, _ = Build(snap, Options{})
	resolvesTo(t, tbl, "web.other.svc.cluster.local.", addrs("198.51.100.13"), "other")
	resolvesTo(t, tbl, "x.shop.svc.cluster.local.", nil, "shop", "other", "")
	resolvesTo(t, tbl, "x.shop.", nil, "other")
}

// A Service's ClusterIP that a ServiceEntry elsewhere also lists in
// spec.addresses (an alias) has the Service's name for its reverse name,
// from every namespace, the ServiceEntry's own included: kube-dns answers
// it so, and Istio's proxy forwards PTR queries to kube-dns. `ztdns table`
// lists the same.
func TestServicePTRBeforeServiceEntryAddress(t *testing.T) {
	tbl, _ := Build(&model.Snapshot{
		Services: []model.Service{{Namespace: "ns1", Name: "productpage", ClusterIPs: addrs("10.96.9.9")}},
		ServiceEntries: []model.ServiceEntry{{Namespace: "ns2", Name: "alias", Created: t0, Hosts: []string{"alias.example.com"},
			Resolution: "STATIC", Addresses: addrs("10.96.9.9"), HasSpecAddresses: true}},
	}, Options{})
	const want = "productpage.ns1.svc.cluster.local."
	for _, ns := range []string{"ns1", "ns2", "other", ""} {
		if r := tbl.Resolve("9.9.96.10.in-addr.arpa.", ns); r.Entry == nil || r.Entry.Name != want || r.owners.len() != 1 {
			t.Errorf("PTR from %q: %+v, want %s alone", ns, r.Entry, want)
		}
		listed := false
		for _, row := range tbl.Rows(ns) {
			if row.Name == "9.9.96.10.in-addr.arpa." {
				listed = true
				if !slices.Equal(row.Values, []string{want}) {
					t.Errorf("table from %q lists %+v, want %s", ns, row, want)
				}
			}
		}
		if !listed {
			t.Errorf("table from %q lists no reverse name of 10.96.9.9", ns)
		}
	}
	// The alias's name still answers with the address.
	resolvesTo(t, tbl, "alias.example.com.", addrs("10.96.9.9"), "ns1", "ns2")
}
