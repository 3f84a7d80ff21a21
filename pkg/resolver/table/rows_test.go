package table

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/vip"
)

// rowsFixture holds objects whose names the choice among entries decides
// in tricky ways: an ExternalName under a wildcard (visible everywhere, or
// from its own namespace only, or a wildcard held without VIP), names held
// without records (a headless Service without a ready endpoint, a
// ServiceEntry host under .svc.<domain> without a VIP), a ServiceEntry
// without a VIP outside .svc.<domain> with a newer one in its namespace
// (under a wildcard and not), short forms, nested wildcards, exportTo.
func rowsFixture() *model.Snapshot {
	later := t0.Add(time.Hour)
	static := func(ns, name string, created time.Time, host, addr string, exportTo ...string) model.ServiceEntry {
		return model.ServiceEntry{Namespace: ns, Name: name, Created: created, Hosts: []string{host}, Resolution: "STATIC",
			Addresses: addrs(addr), ExportTo: exportTo}
	}
	none := func(ns, name, host string) model.ServiceEntry {
		return model.ServiceEntry{Namespace: ns, Name: name, Created: t0, Hosts: []string{host}, Resolution: "NONE", AutoAllocate: true}
	}
	http := []model.Port{{Name: "http", Protocol: "TCP", Port: 80}}
	return &model.Snapshot{
		Services: []model.Service{
			{Namespace: "shop", Name: "foo", ExternalName: "foo.example.com"},
			{Namespace: "shop", Name: "db", Headless: true},
			{Namespace: "shop", Name: "pg", Headless: true},
			{Namespace: "shop", Name: "cart", ClusterIPs: addrs("10.96.3.1", "fd00:10:96::3:1"), Ports: http},
			{Namespace: "corp", Name: "git", ClusterIPs: addrs("10.96.3.2"), Ports: http},
			{Namespace: "corp", Name: "docs", ExternalName: "docs.example.com"},
			{Namespace: "legacy", Name: "ext", ExternalName: "ext.example.com"},
			{Namespace: "other", Name: "lone", ExternalName: "lone.example.com"},
		},
		EndpointSlices: []model.EndpointSlice{{
			Namespace: "shop", Name: "pg-1", ServiceName: "pg",
			Ports:     []model.Port{{Name: "pg", Protocol: "TCP", Port: 5432}},
			Endpoints: []model.Endpoint{{Addresses: addrs("10.1.0.5"), Hostname: "pg-0", Ready: true}},
		}},
		ServiceEntries: []model.ServiceEntry{
			static("mesh", "wild", t0, "*.shop.svc.cluster.local", "198.51.100.9"),
			none("mesh", "novip", "bar.shop.svc.cluster.local"),
			static("mesh", "db", t0, "db.shop.svc.cluster.local", "198.51.100.71"),
			none("a", "old", "api.example.com"),
			static("a", "new", later, "api.example.com", "198.51.100.7"),
			static("b", "bee", later, "*.example.com", "198.51.100.8"),
			none("a", "old2", "solo.example.net"),
			static("a", "new2", later, "solo.example.net", "198.51.100.6"),
			static("corp", "wild-corp", t0, "*.corp", "198.51.100.20"),
			static("corp", "wcorp", t0, "*.corp.svc.cluster.local", "198.51.100.21", "."),
			none("mesh", "wnone", "*.legacy.svc.cluster.local"),
			static("mesh", "wsvc", t0, "*.svc.cluster.local", "198.51.100.40", "."),
			static("team-a", "private", t0, "private.internal", "198.51.100.30", "."),
		},
	}
}

// tableReading is what an operator reads for qname in rows (`ztdns table -n
// ns`): the name's own rows, else those of the most specific wildcard row
// covering it, else the same for the full name of a Kubernetes short form
// ("svc" from ns, "svc.ns", "svc.ns.svc"); "forwarded" when a row says so or
// none applies.
func tableReading(rows []Row, qname, ns string) string {
	byName := map[string][]Row{}
	for _, r := range rows {
		byName[r.Name] = append(byName[r.Name], r)
	}
	find := func(name string) (string, bool) {
		if rs := byName[name]; len(rs) > 0 {
			return rowsText(rs), true
		}
		for s := name; ; {
			_, rest, ok := strings.Cut(s, ".")
			if !ok || rest == "" {
				return "", false
			}
			if rs := byName["*."+rest]; len(rs) > 0 {
				return rowsText(rs), true
			}
			s = rest
		}
	}
	if s, ok := find(qname); ok {
		return s
	}
	full := ""
	switch labels := strings.Split(strings.TrimSuffix(qname, "."), "."); {
	case len(labels) == 1 && ns != "":
		full = qname + ns + ".svc.cluster.local."
	case len(labels) == 2:
		full = qname + "svc.cluster.local."
	case len(labels) == 3 && labels[2] == "svc":
		full = qname + "cluster.local."
	}
	if full != "" {
		if s, ok := find(full); ok {
			return s
		}
	}
	return "forwarded"
}

// rowsText is one name's rows as "origin: TYPE values; ...", or "forwarded".
func rowsText(rows []Row) string {
	var parts []string
	origins := map[string]bool{}
	for _, r := range rows {
		if r.Forwarded {
			if len(rows) != 1 || r.Type != ForwardedType || !slices.Equal(r.Values, []string{ForwardedValue}) || r.Origin == "" {
				return fmt.Sprintf("a forwarded row among others or malformed: %+v", rows)
			}
			return "forwarded"
		}
		origins[r.Origin] = true
		parts = append(parts, r.Type+" "+strings.Join(r.Values, ","))
	}
	slices.Sort(parts)
	return strings.Join(slices.Sorted(maps.Keys(origins)), "+") + ": " + strings.Join(parts, "; ")
}

// srvText is set's answer, as rowsText writes it.
func srvText(set *srvSet, e *Entry) string {
	var vals []string
	for _, s := range set.recordsOf(e) {
		vals = append(vals, fmt.Sprintf("0 100 %d %s", s.Port, s.Target))
	}
	return "SRV " + strings.Join(vals, ",")
}

// answerText is what Resolve gives, as rowsText writes it.
func answerText(r Result) string {
	e := r.Entry
	if e == nil {
		return "forwarded"
	}
	var parts []string
	switch {
	case r.owners.one != nil:
		var names []string
		for i := range r.owners.len() {
			names = append(names, r.owners.at(i).Name)
		}
		parts = append(parts, "PTR "+strings.Join(names, ","))
	case r.srv != nil:
		parts = append(parts, srvText(r.srv, e))
	default:
		if set := e.ownSRV(); set != nil { // an endpoint's name
			parts = append(parts, srvText(set, e))
		}
		var v4, v6 []string
		for _, a := range e.Addrs {
			if a.Is4() {
				v4 = append(v4, a.String())
			} else {
				v6 = append(v6, a.String())
			}
		}
		if len(v4) > 0 {
			parts = append(parts, "A "+strings.Join(v4, ","))
		}
		if len(v6) > 0 {
			parts = append(parts, "AAAA "+strings.Join(v6, ","))
		}
		if e.Alias != "" {
			parts = append(parts, "CNAME "+e.Alias)
		}
	}
	slices.Sort(parts)
	return e.Origin().String() + ": " + strings.Join(parts, "; ")
}

// `ztdns table -n NS` is how an operator sees what a pod in NS gets: for
// every name the table knows (exact, under each wildcard, SRV, PTR, short
// forms) and every namespace, what the rows say is what the resolver
// answers. A search-list expansion is no row of its own: the name it
// aliases must read as the entry it answers.
func TestRowsShowWhatPodsGet(t *testing.T) {
	tbl, warnings := Build(rowsFixture(), Options{})
	// Only those of the ServiceEntries their namespace's older one without
	// a VIP hides.
	if len(warnings) != 2 || !strings.HasPrefix(warnings[0].Error(), "ServiceEntry a/new: ") ||
		!strings.HasPrefix(warnings[1].Error(), "ServiceEntry a/new2: ") {
		t.Fatal(warnings)
	}
	namespaces := []string{"", "shop", "mesh", "a", "b", "corp", "legacy", "team-a", "other"}
	names := map[string]bool{
		"api.example.com.": true, "solo.example.net.": true, "bar.": true, "foo.": true, "db.": true, "git.corp.": true,
		"cart.shop.svc.": true, "pg-0.pg.shop.svc.cluster.local.": true,
	}
	short := func(name string) {
		if base, ok := strings.CutSuffix(name, ".svc.cluster.local."); ok && strings.Count(base, ".") == 1 {
			svc, _, _ := strings.Cut(base, ".")
			names[svc+"."], names[base+"."], names[base+".svc."] = true, true, true
		}
	}
	for i := range tbl.names {
		for k := range tbl.names[i].one {
			names[k] = true
			short(k)
		}
	}
	for k := range tbl.wildcards.one {
		names["*."+k], names["zz."+k], names["_http._tcp.zz."+k] = true, true, true
		short("zz." + k)
	}
	for i := range tbl.reverse {
		for k := range tbl.reverse[i].one {
			names[reverseName(netip.AddrFrom16(k).Unmap())] = true
		}
	}
	for _, ns := range namespaces {
		for _, r := range tbl.Rows(ns) {
			names[r.Name] = true
		}
	}
	for _, ns := range namespaces {
		rows := tbl.Rows(ns)
		for _, q := range slices.Sorted(func(yield func(string) bool) {
			for n := range names {
				if !yield(n) {
					return
				}
			}
		}) {
			r := tbl.Resolve(q, ns)
			read := q
			if r.Alias != "" {
				read = r.Alias
			}
			if got, want := tableReading(rows, read, ns), answerText(r); got != want {
				t.Errorf("%s from %q: table reads %q, pods get %q", read, ns, got, want)
			}
		}
	}
}

// The two cases an operator met: an ExternalName under a wildcard lists
// the wildcard's address the pods get, not the CNAME; a name held without
// records is listed as forwarded, with the object holding it, where the
// table used to show only the wildcard it blocks.
func TestRowsListHeldAndYieldingNames(t *testing.T) {
	tbl, _ := Build(rowsFixture(), Options{})
	for _, ns := range []string{"", "shop", "other"} {
		var foo, bar, db []Row
		for _, r := range tbl.Rows(ns) {
			switch r.Name {
			case "foo.shop.svc.cluster.local.":
				foo = append(foo, r)
			case "bar.shop.svc.cluster.local.":
				bar = append(bar, r)
			case "db.shop.svc.cluster.local.":
				db = append(db, r)
			}
		}
		wantFoo := []Row{{Name: "foo.shop.svc.cluster.local.", Type: "A", Values: []string{"198.51.100.9"}, Origin: "ServiceEntry mesh/wild", AddrSource: FromSpec}}
		if !slices.EqualFunc(foo, wantFoo, rowEqual) {
			t.Errorf("table -n %q: foo rows %+v, want %+v", ns, foo, wantFoo)
		}
		wantBar := []Row{{Name: "bar.shop.svc.cluster.local.", Type: "-", Values: []string{"(forwarded)"}, Origin: "ServiceEntry mesh/novip", Forwarded: true,
			Reason: "no VIP: resolution NONE gets none"}}
		if !slices.EqualFunc(bar, wantBar, rowEqual) {
			t.Errorf("table -n %q: bar rows %+v, want %+v", ns, bar, wantBar)
		}
		wantDB := []Row{{Name: "db.shop.svc.cluster.local.", Type: "-", Values: []string{"(forwarded)"}, Origin: "Service shop/db", Forwarded: true,
			Reason: "no ready endpoint"}}
		if !slices.EqualFunc(db, wantDB, rowEqual) {
			t.Errorf("table -n %q: db rows %+v, want %+v", ns, db, wantDB)
		}
	}
}

func rowEqual(a, b Row) bool {
	return a.Name == b.Name && a.Type == b.Type && slices.Equal(a.Values, b.Values) && a.Origin == b.Origin &&
		a.AddrSource == b.AddrSource && a.Forwarded == b.Forwarded && a.Reason == b.Reason
}

// A ServiceEntry host without a VIP, which pods pass over, is listed as
// they get it, with why it has none: forwarded, or answered by the
// wildcard covering it; not left out, as exportTo leaves out what a
// namespace cannot see, which is another cause. With --vip-source=istiod,
// a host istiod has not written status.addresses for yet is the usual one.
func TestRowsListHostsWithoutVIP(t *testing.T) {
	snap := &model.Snapshot{ServiceEntries: []model.ServiceEntry{
		{Namespace: "a", Name: "pending", Created: t0, Hosts: []string{"pending.example"}, Resolution: "DNS", AutoAllocate: true},
		{Namespace: "a", Name: "optout", Created: t0, Hosts: []string{"optout.example"}, Resolution: "DNS"},
		{Namespace: "a", Name: "static-wild", Created: t0, Hosts: []string{"*.static.example"}, Resolution: "STATIC", AutoAllocate: true},
		{Namespace: "a", Name: "covered", Created: t0, Hosts: []string{"api.covered.example"}, Resolution: "DNS", AutoAllocate: true},
		{Namespace: "b", Name: "wild", Created: t0, Hosts: []string{"*.covered.example"}, Resolution: "STATIC", Addresses: addrs("198.51.100.8")},
	}}
	tbl, _ := Build(snap, Options{VIPSource: vip.SourceIstiod})
	for _, ns := range []string{"", "a", "b"} {
		want := []Row{
			{Name: "*.covered.example.", Type: "A", Values: []string{"198.51.100.8"}, Origin: "ServiceEntry b/wild", AddrSource: FromSpec},
			{Name: "*.static.example.", Type: "-", Values: []string{"(forwarded)"}, Origin: "ServiceEntry a/static-wild", Forwarded: true,
				Reason: "no VIP: a wildcard host gets one only with resolution DYNAMIC_DNS"},
			{Name: "api.covered.example.", Type: "A", Values: []string{"198.51.100.8"}, Origin: "ServiceEntry b/wild", AddrSource: FromSpec,
				Reason: "ServiceEntry a/covered passed over: no VIP: istiod has not allocated one (no status.addresses)"},
			{Name: "optout.example.", Type: "-", Values: []string{"(forwarded)"}, Origin: "ServiceEntry a/optout", Forwarded: true,
				Reason: "no VIP: auto-allocation is off (networking.istio.io/enable-autoallocate-ip)"},
			{Name: "pending.example.", Type: "-", Values: []string{"(forwarded)"}, Origin: "ServiceEntry a/pending", Forwarded: true,
				Reason: "no VIP: istiod has not allocated one (no status.addresses)"},
		}
		if got := tbl.Rows(ns); !slices.EqualFunc(got, want, rowEqual) {
			t.Errorf("table -n %q:\n%s\nwant\n%s", ns, rowLines(got), rowLines(want))
		}
	}
	// --vip-source=none: the host waits for no one, and says so.
	none, _ := Build(&model.Snapshot{ServiceEntries: snap.ServiceEntries[:1]}, Options{VIPSource: vip.SourceNone})
	want := []Row{{Name: "pending.example.", Type: "-", Values: []string{"(forwarded)"}, Origin: "ServiceEntry a/pending", Forwarded: true,
		Reason: "no VIP: --vip-source=none"}}
	if got := none.Rows(""); !slices.EqualFunc(got, want, rowEqual) {
		t.Errorf("table with --vip-source=none:\n%s\nwant\n%s", rowLines(got), rowLines(want))
	}
}

func rowLines(rows []Row) string {
	var b strings.Builder
	for _, r := range rows {
		fmt.Fprintf(&b, "  %+v\n", r)
	}
	return b.String()
}
