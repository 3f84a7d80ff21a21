package table

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/model/kubeapi"
)

// An ExternalName Service and a ServiceEntry naming it: istiod sends
// ztunnel no ExternalName Service, so ztunnel routes the ServiceEntry's
// address from every namespace, the Service's own included. A pod must get
// that address, not the CNAME that takes its traffic past the ServiceEntry.
// Alone, the ExternalName still answers its CNAME.
func TestExternalNameYieldsToServiceEntry(t *testing.T) {
	snap := &model.Snapshot{
		Services: []model.Service{
			{Namespace: "shop", Name: "foo", ExternalName: "foo.example.com"},
			{Namespace: "shop", Name: "bar", ExternalName: "bar.example.com"},
		},
		ServiceEntries: []model.ServiceEntry{
			{Namespace: "mesh", Name: "foo", Created: t0, Hosts: []string{"foo.shop.svc.cluster.local"},
				Addresses: addrs("198.51.100.70"), Resolution: "STATIC"},
		},
	}
	tbl, warnings := Build(snap, Options{})
	if len(warnings) > 0 {
		t.Fatal(warnings)
	}
	for _, ns := range []string{"shop", "mesh", "other", ""} {
		e := tbl.Resolve("foo.shop.svc.cluster.local.", ns).Entry
		if e == nil || e.Alias != "" || !slices.Equal(e.Addrs, addrs("198.51.100.70")) {
			t.Errorf("foo from %q: %+v, want the ServiceEntry's 198.51.100.70", ns, e)
		}
		if e := tbl.Resolve("bar.shop.svc.cluster.local.", ns).Entry; e == nil || e.Alias != "bar.example.com." {
			t.Errorf("bar from %q: %+v, want the CNAME to bar.example.com.", ns, e)
		}
	}
	if e := tbl.Resolve("foo.", "shop").Entry; e == nil || !slices.Equal(e.Addrs, addrs("198.51.100.70")) {
		t.Errorf("short form foo from shop: %+v, want the ServiceEntry", e)
	}
	// A ServiceEntry the asker cannot see leaves it the CNAME.
	snap.ServiceEntries[0].ExportTo = []string{"."}
	tbl, _ = Build(snap, Options{})
	if e := tbl.Resolve("foo.shop.svc.cluster.local.", "shop").Entry; e == nil || e.Alias != "foo.example.com." {
		t.Errorf("foo from shop, ServiceEntry exported to mesh only: %+v, want the CNAME", e)
	}
}

// A headless Service without a ready endpoint has no records (kube-dns
// says NXDOMAIN), but it still claims its name: ztunnel picks the Service
// over another namespace's ServiceEntry naming it, and answers nothing. So
// the name is forwarded for every namespace but the ServiceEntry's own
// (whose object ztunnel prefers there), never answered with the
// ServiceEntry's address elsewhere. With a ready endpoint it answers.
func TestEmptyHeadlessServiceKeepsItsName(t *testing.T) {
	snap := &model.Snapshot{
		Services: []model.Service{{Namespace: "shop", Name: "db", Headless: true}},
		EndpointSlices: []model.EndpointSlice{{Namespace: "shop", Name: "db-1", ServiceName: "db",
			Endpoints: []model.Endpoint{{Addresses: addrs("10.1.0.9"), Hostname: "db-0"}}}}, // not ready
		ServiceEntries: []model.ServiceEntry{
			{Namespace: "mesh", Name: "db", Created: t0, Hosts: []string{"db.shop.svc.cluster.local"},
				Addresses: addrs("198.51.100.71"), Resolution: "STATIC"},
		},
	}
	tbl, warnings := Build(snap, Options{})
	if len(warnings) > 0 {
		t.Fatal(warnings)
	}
	for _, ns := range []string{"shop", "other", ""} {
		for _, q := range []string{"db.shop.svc.cluster.local.", "db.shop.", "db.shop.svc."} {
			if r := tbl.Resolve(q, ns); r.Entry != nil {
				t.Errorf("%s from %q: %+v, want it forwarded", q, ns, r.Entry)
			}
		}
		if e := tbl.Find("db.shop.svc.cluster.local.", ns); e != nil {
			t.Errorf("Find from %q: %+v, want none", ns, e)
		}
	}
	if e := tbl.Resolve("db.", "shop").Entry; e != nil {
		t.Errorf("short form db from shop: %+v, want it forwarded", e)
	}
	if e := tbl.Resolve("db.shop.svc.cluster.local.", "mesh").Entry; e == nil || !slices.Equal(e.Addrs, addrs("198.51.100.71")) {
		t.Errorf("from the ServiceEntry's namespace: %+v, want its 198.51.100.71", e)
	}
	var db []Row
	for _, row := range tbl.Rows("other") {
		if row.Name == "db.shop.svc.cluster.local." {
			db = append(db, row)
		}
	}
	if len(db) != 1 || !db[0].Forwarded || db[0].Origin != "Service shop/db" {
		t.Errorf("table from other lists %+v, want the name forwarded, held by Service shop/db", db)
	}

	snap.EndpointSlices[0].Endpoints[0].Ready = true
	tbl, _ = Build(snap, Options{})
	if e := tbl.Resolve("db.shop.svc.cluster.local.", "other").Entry; e == nil || !slices.Equal(e.Addrs, addrs("10.1.0.9")) {
		t.Errorf("with a ready endpoint: %+v, want 10.1.0.9", e)
	}
}

// exportTo lists Istio's validation rejects get a warning naming the entry
// and the value (with --config-dir no webhook refuses them), and mean what
// the README says: "" matches no namespace, "*" with others is everyone,
// "~" with others those others.
func TestInvalidExportToWarns(t *testing.T) {
	cases := []struct {
		exportTo []string
		warning  string
		sees     map[string]bool
	}{
		{[]string{""}, `exportTo "" is not`, map[string]bool{"a": false, "b": false}},
		{[]string{"*", "b"}, `has "*" and other values`, map[string]bool{"a": true, "b": true, "c": true}},
		{[]string{"~", "b"}, `has "~" and other values`, map[string]bool{"a": false, "b": true}},
		{[]string{"B"}, `exportTo "B" is not`, map[string]bool{"a": false, "b": false}},
		{[]string{"b", "b"}, `lists "b" twice`, map[string]bool{"a": false, "b": true}},
	}
	for _, c := range cases {
		snap := &model.Snapshot{ServiceEntries: []model.ServiceEntry{
			{Namespace: "a", Name: "se", Created: t0, Hosts: []string{"x.example"}, ExportTo: c.exportTo,
				Addresses: addrs("198.51.100.72"), Resolution: "STATIC"},
			{Namespace: "a", Name: "fine", Created: t0, Hosts: []string{"y.example"}, ExportTo: []string{".", "b"},
				Addresses: addrs("198.51.100.73"), Resolution: "STATIC"},
		}}
		tbl, warnings := Build(snap, Options{})
		if len(warnings) != 1 || !strings.Contains(warnings[0].Error(), "ServiceEntry a/se") || !strings.Contains(warnings[0].Error(), c.warning) {
			t.Errorf("exportTo %q: warnings %v, want one for a/se saying %s", c.exportTo, warnings, c.warning)
		}
		for ns, want := range c.sees {
			if got := tbl.Resolve("x.example.", ns).Entry != nil; got != want {
				t.Errorf("exportTo %q: seen from %s = %v, want %v", c.exportTo, ns, got, want)
			}
		}
	}
}

// ParseExportTo reads --default-service-export-to as Istio's MeshConfig
// defaultServiceExportTo lists it.
func TestParseExportTo(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"*", []string{"*"}},
		{".", []string{"."}},
		{"~", []string{"~"}},
		{" ., shared ,.", []string{".", "shared"}},
	} {
		got, err := ParseExportTo(c.in)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("ParseExportTo(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", ".,", "Team-A", "*,.", "~,team-b", "a.b"} {
		if got, err := ParseExportTo(in); err == nil {
			t.Errorf("ParseExportTo(%q) = %q, want an error", in, got)
		}
	}
}

// A Service of a namespace istiod's discoverySelectors do not select
// (Snapshot.IstiodUnselected): istiod sees no Service there, so it sends
// ztunnel the ServiceEntry naming its host alone, and a pod of any
// namespace, the Service's own included, gets the ServiceEntry's address;
// a wildcard covering the name wins too. Alone, the Service answers its
// ClusterIP, as kube-dns does, and its ClusterIP's PTR stays its own. The
// same Builder follows the namespace as it is selected and dropped.
func TestUnselectedServiceYieldsToServiceEntry(t *testing.T) {
	snap := &model.Snapshot{
		Services: []model.Service{
			{Namespace: "legacy", Name: "db", ClusterIPs: addrs("10.96.0.40")},
			{Namespace: "legacy", Name: "web", ClusterIPs: addrs("10.96.0.41")},
			{Namespace: "legacy", Name: "cache", ClusterIPs: addrs("10.96.0.42")},
		},
		ServiceEntries: []model.ServiceEntry{
			{Namespace: "team-a", Name: "db-se", Created: t0, Hosts: []string{"db.legacy.svc.cluster.local"},
				Addresses: addrs("10.96.0.40", "198.51.100.80"), Resolution: "STATIC"},
			{Namespace: "team-a", Name: "legacy-wild", Created: t0, Hosts: []string{"*.legacy.svc.cluster.local"},
				Addresses: addrs("198.51.100.81"), Resolution: "STATIC", ExportTo: []string{"team-b"}},
		},
	}
	b := NewBuilder(Options{})
	check := func(step string, unselected bool) {
		t.Helper()
		tbl, warnings := b.Build(snap)
		if len(warnings) > 0 {
			t.Fatalf("%s: %v", step, warnings)
		}
		for _, ns := range []string{"legacy", "team-a", "team-b", ""} {
			want := addrs("10.96.0.40")
			if unselected || ns == "team-a" { // team-a's own ServiceEntry wins there
				want = addrs("10.96.0.40", "198.51.100.80")
			}
			if e := tbl.Resolve("db.legacy.svc.cluster.local.", ns).Entry; e == nil || !slices.Equal(e.Addrs, want) {
				t.Errorf("%s: db from %q: %+v, want %v", step, ns, e, want)
			}
			want = addrs("10.96.0.42")
			if unselected && ns == "team-b" {
				want = addrs("198.51.100.81") // the wildcard team-b sees
			}
			if e := tbl.Resolve("cache.legacy.svc.cluster.local.", ns).Entry; e == nil || !slices.Equal(e.Addrs, want) {
				t.Errorf("%s: cache from %q: %+v, want %v", step, ns, e, want)
			}
			if e := tbl.Resolve("40.0.96.10.in-addr.arpa.", ns).Entry; e == nil || e.Name != "db.legacy.svc.cluster.local." || e.Origin().Kind != KindService {
				t.Errorf("%s: PTR of db's ClusterIP from %q: %+v, want the Service", step, ns, e)
			}
		}
		if e := tbl.Resolve("web.legacy.svc.cluster.local.", "team-a").Entry; e == nil || !slices.Equal(e.Addrs, addrs("10.96.0.41")) {
			t.Errorf("%s: web (no ServiceEntry names it): %+v, want its ClusterIP", step, e)
		}
	}
	check("selected", false)
	snap.IstiodUnselected = []string{"legacy"}
	check("unselected", true)
	snap.IstiodUnselected = nil
	check("selected again", false)
}

// Two ServiceEntries of one namespace naming one host, created in the same
// second (creationTimestamp counts whole seconds: `kubectl apply -f dir/`,
// Helm, Argo CD): istiod sends ztunnel one of them, picked at random (the
// order of a Go map), and may change it; ztdns answers the first by name,
// the same on every node, and warns of the other that its answer may not
// be what ztunnel routes, and what to do. Before: the warning said the
// first by name was served "as istiod sends ztunnel".
func TestTiedServiceEntriesWarn(t *testing.T) {
	se := func(name string, addr ...string) model.ServiceEntry {
		s := model.ServiceEntry{Namespace: "shop", Name: name, Created: t0, Hosts: []string{"api.example.com"}, Resolution: "STATIC",
			Addresses: addrs(addr...)}
		if len(addr) == 0 {
			s.Resolution = "NONE"
		}
		return s
	}
	const tied = `host "api.example.com" may not be answered as ztunnel routes it: ServiceEntry shop/a names it in namespace shop too and was created in the same second ` +
		`(creationTimestamp counts whole seconds); istiod sends ztunnel one object per namespace and host, picks one of those as old at random, ` +
		`and may pick another whenever it recomputes or restarts, where ztdns answers ServiceEntry shop/a, first by name`
	const fix = `; delete one of them, or recreate one so that the other is older`
	cases := []struct {
		name string
		ses  []model.ServiceEntry
		want string
		addr []netip.Addr // what shop/a answers; none: forwarded
	}{
		{"both with addresses", []model.ServiceEntry{se("b", "198.51.100.2"), se("a", "198.51.100.1")},
			"ServiceEntry shop/b: " + tied + fix, addrs("198.51.100.1")},
		{"the first by name without", []model.ServiceEntry{se("b", "198.51.100.2"), se("a")},
			"ServiceEntry shop/b: " + tied + ", which has no address" + fix, nil},
	}
	for _, c := range cases {
		tbl, warnings := Build(&model.Snapshot{ServiceEntries: c.ses}, Options{})
		if len(warnings) != 1 || warnings[0].Error() != c.want {
			t.Errorf("%s: warnings %q, want %q", c.name, warnings, c.want)
		}
		e := tbl.Resolve("api.example.com.", "other").Entry
		switch {
		case c.addr == nil && e != nil && len(e.Addrs) > 0:
			t.Errorf("%s: api.example.com answered by %s with %v, want forwarded (shop/a, first by name, has no address)", c.name, e.Origin(), e.Addrs)
		case c.addr != nil && (e == nil || e.Origin().Name != "a" || !slices.Equal(e.Addrs, c.addr)):
			t.Errorf("%s: api.example.com answered by %+v, want shop/a (first by name) with %v", c.name, e, c.addr)
		}
	}
}

// Hosts that differ only by case or a trailing dot: istiod sends ztunnel
// each as written, and ztunnel matches the name a pod asks exactly, so
// the object naming it as asked (lower case, no trailing dot) answers,
// from every namespace, whatever the ages and namespaces of those written
// otherwise; each of those gets a warning. Alone, a host written otherwise
// answers as any other.
func TestHostWrittenAsAskedWins(t *testing.T) {
	// se names api.example.com asked times as a pod asks for it, then
	// folded times written otherwise.
	se := func(ns, name string, created time.Time, addr string, asked, folded int) model.ServiceEntry {
		return model.ServiceEntry{Namespace: ns, Name: name, Created: created, Hosts: slices.Repeat([]string{"api.example.com"}, asked+folded),
			Folded: uint32(folded), Resolution: "STATIC", Addresses: addrs(addr)}
	}
	upper := se("a", "upper", t0, "198.51.100.1", 0, 1)
	lower := se("a", "lower", t0.Add(time.Hour), "198.51.100.2", 1, 0)
	otherNS := se("b", "upper", t0, "198.51.100.3", 0, 1)
	both := se("c", "both", t0, "198.51.100.4", 1, 1)
	const warned = `ServiceEntry a/upper: host "api.example.com" is not answered: it is written in upper case or with a trailing dot, and ServiceEntry a/lower names it as pods ask for it`
	cases := []struct {
		name string
		ses  []model.ServiceEntry
		want map[string]string // asker's namespace → the answer
		warn []string
	}{
		{"older of one namespace", []model.ServiceEntry{upper, lower},
			map[string]string{"a": "198.51.100.2", "b": "198.51.100.2", "": "198.51.100.2"}, []string{warned}},
		{"older of the asker's namespace", []model.ServiceEntry{otherNS, lower},
			map[string]string{"a": "198.51.100.2", "b": "198.51.100.2"}, []string{`ServiceEntry b/upper: host "api.example.com" is not answered`}},
		{"alone", []model.ServiceEntry{upper}, map[string]string{"a": "198.51.100.1", "b": "198.51.100.1"}, nil},
		{"one object, both ways", []model.ServiceEntry{both}, map[string]string{"c": "198.51.100.4", "b": "198.51.100.4"}, nil},
	}
	for _, c := range cases {
		tbl, warnings := Build(&model.Snapshot{ServiceEntries: c.ses}, Options{})
		if len(warnings) != len(c.warn) {
			t.Errorf("%s: warnings %q, want %d", c.name, warnings, len(c.warn))
		}
		for i, w := range c.warn {
			if i < len(warnings) && !strings.HasPrefix(warnings[i].Error(), w) {
				t.Errorf("%s: warning %q, want %q", c.name, warnings[i], w)
			}
		}
		for ns, want := range c.want {
			if e := tbl.Resolve("api.example.com.", ns).Entry; e == nil || !slices.Equal(e.Addrs, addrs(want)) {
				t.Errorf("%s: api.example.com from %q: %+v, want %s", c.name, ns, e, want)
			}
		}
	}

	// A Service's name, which a ServiceEntry of its namespace writes in
	// upper case: the Service answers there too.
	tbl, _ := Build(&model.Snapshot{
		Services:       []model.Service{{Namespace: "shop", Name: "db", ClusterIPs: addrs("10.96.0.50")}},
		ServiceEntries: []model.ServiceEntry{{Namespace: "shop", Name: "db", Created: t0, Hosts: []string{"db.shop.svc.cluster.local"}, Folded: 1, Resolution: "STATIC", Addresses: addrs("198.51.100.5")}},
	}, Options{})
	if e := tbl.Resolve("db.shop.svc.cluster.local.", "shop").Entry; e == nil || !slices.Equal(e.Addrs, addrs("10.96.0.50")) {
		t.Errorf("db from shop: %+v, want the Service's 10.96.0.50", e)
	}

	// Rewritten as asked, the entry answers: the builder sees the change.
	b := NewBuilder(Options{})
	snap := &model.Snapshot{ServiceEntries: []model.ServiceEntry{upper, lower}}
	b.Build(snap)
	fixed := upper
	fixed.Folded = 0
	snap = &model.Snapshot{ServiceEntries: []model.ServiceEntry{fixed, lower}}
	tbl, warnings := b.Build(snap)
	if e := tbl.Resolve("api.example.com.", "b").Entry; e == nil || !slices.Equal(e.Addrs, addrs("198.51.100.1")) || len(warnings) != 1 {
		t.Errorf("rewritten: %+v, warnings %q; want the older a/upper's 198.51.100.1, a/lower hidden", e, warnings)
	}
}

// TestStatusVIPOfEachSpelling: istiod's allocator gives each spelling of a
// host in spec.hosts a VIP of its own, status.addresses naming the
// spelling, and ztunnel matches the name a pod asks exactly: one
// ServiceEntry with hosts API.corp.example and api.corp.example answers
// `A api.corp.example` with the VIP of the host so written, not both. A
// host written otherwise answers, alone, with its own spelling's VIP, and
// with none when status names only another spelling (istiod has not
// allocated for it). The objects are read as the API server serves them.
// Before: status hosts were lower-cased, and every spelling's VIP answered.
func TestStatusVIPOfEachSpelling(t *testing.T) {
	se := func(hosts, status string) model.ServiceEntry {
		t.Helper()
		var obj kubeapi.ServiceEntry
		doc := `{"metadata": {"name": "api", "namespace": "corp"}, "spec": {"hosts": ` + hosts + `, "resolution": "DNS"},
			"status": {"addresses": ` + status + `}}`
		if err := json.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		m, err := obj.Model()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	for _, c := range []struct {
		name, hosts, status string
		want                []netip.Addr // nil: forwarded
	}{
		{"both ways", `["API.corp.example", "api.corp.example"]`,
			`[{"host": "API.corp.example", "value": "240.240.0.1"}, {"host": "api.corp.example", "value": "240.240.0.2"}]`, addrs("240.240.0.2")},
		{"a trailing dot too", `["api.corp.example.", "api.corp.example"]`,
			`[{"host": "api.corp.example.", "value": "240.240.0.1"}, {"host": "api.corp.example", "value": "240.240.0.2"}]`, addrs("240.240.0.2")},
		{"alone", `["API.corp.example"]`, `[{"host": "API.corp.example", "value": "240.240.0.1"}]`, addrs("240.240.0.1")},
		{"another spelling's status", `["API.corp.example"]`, `[{"host": "api.corp.example", "value": "240.240.0.2"}]`, nil},
	} {
		tbl, _ := Build(&model.Snapshot{ServiceEntries: []model.ServiceEntry{se(c.hosts, c.status)}}, Options{})
		for _, ns := range []string{"corp", "other"} {
			r := tbl.Resolve("api.corp.example.", ns)
			if r.Entry == nil {
				if c.want != nil {
					t.Errorf("%s: api.corp.example from %s forwarded, want %s", c.name, ns, c.want)
				}
				continue
			}
			if got := answerOf(t, r, "api.corp.example.", dns.TypeA); !slices.Equal(got, addrText(c.want)) {
				t.Errorf("%s: A api.corp.example from %s: %q, want %q", c.name, ns, got, addrText(c.want))
			}
		}
	}
}

// addrText is the A records' values answerOf gives for addrs.
func addrText(addrs []netip.Addr) []string {
	var out []string
	for _, a := range addrs {
		out = append(out, a.String())
	}
	return out
}
