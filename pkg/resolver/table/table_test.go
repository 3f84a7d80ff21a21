package table

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/model"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func fixture() *model.Snapshot {
	return &model.Snapshot{
		Services: []model.Service{
			{Namespace: "default", Name: "web", ClusterIPs: addrs("10.96.0.10", "fd00:10:96::a"),
				Ports: []model.Port{{Name: "http", Protocol: "TCP", Port: 80}, {Protocol: "TCP", Port: 81}}},
			{Namespace: "other", Name: "web", ClusterIPs: addrs("10.96.1.10")},
			{Namespace: "default", Name: "db", Headless: true},
			{Namespace: "default", Name: "ext", ExternalName: "Example.COM"},
			{Namespace: "external-1", Name: "tcp-echo", ClusterIPs: addrs("10.96.2.1")},
		},
		EndpointSlices: []model.EndpointSlice{{
			Namespace: "default", Name: "db-abc", ServiceName: "db",
			Ports: []model.Port{{Name: "pg", Protocol: "TCP", Port: 5432}},
			Endpoints: []model.Endpoint{
				{Addresses: addrs("10.1.0.1"), Hostname: "db-0", Ready: true},
				{Addresses: addrs("10.1.0.2"), Ready: true},
				{Addresses: addrs("10.1.0.3"), Hostname: "db-2", Ready: false},
			},
		}},
		ServiceEntries: []model.ServiceEntry{
			{Namespace: "default", Name: "external-address", Created: t0, Hosts: []string{"address.internal"},
				Addresses: addrs("198.51.100.1"), Resolution: "STATIC", AutoAllocate: true},
			{Namespace: "default", Name: "external-auto", Created: t0, Hosts: []string{"auto.internal"}, Resolution: "DNS", AutoAllocate: true},
			{Namespace: "default", Name: "optout", Created: t0, Hosts: []string{"optout.internal"}, Resolution: "DNS", AutoAllocate: false},
			{Namespace: "default", Name: "none", Created: t0, Hosts: []string{"none.internal"}, Resolution: "NONE", AutoAllocate: true},
			{Namespace: "default", Name: "wild", Created: t0, Hosts: []string{"*.example.org", "*.deep.example.org"},
				Addresses: addrs("203.0.113.7"), Resolution: "STATIC", AutoAllocate: true},
			{Namespace: "default", Name: "deeper", Created: t0, Hosts: []string{"*.x.deep.example.org"},
				Addresses: addrs("203.0.113.8"), Resolution: "STATIC", AutoAllocate: true},
			{Namespace: "default", Name: "wild-noaddr", Created: t0, Hosts: []string{"*.noaddr.test"}, Resolution: "DNS", AutoAllocate: true},
			{Namespace: "default", Name: "external-svc-1", Created: t0, Hosts: []string{"tcp-echo.external-1.svc.cluster.local"}, Resolution: "DNS", AutoAllocate: true},
			{Namespace: "default", Name: "external-svc-2", Created: t0, Hosts: []string{"tcp-echo.external-2.svc.cluster.local"}, Resolution: "DNS", AutoAllocate: true},
			{Namespace: "team-a", Name: "private", Created: t0, Hosts: []string{"private.internal"}, ExportTo: []string{"."},
				Addresses: addrs("198.51.100.20"), AutoAllocate: true},
			{Namespace: "team-a", Name: "listed", Created: t0, Hosts: []string{"listed.internal"}, ExportTo: []string{"team-b", "."},
				Resolution: "DNS", AutoAllocate: true},
			{Namespace: "team-a", Name: "hidden", Created: t0, Hosts: []string{"hidden.internal"}, ExportTo: []string{"~"},
				Addresses: addrs("198.51.100.21"), AutoAllocate: true},
			{Namespace: "default", Name: "cidr", Created: t0, Hosts: []string{"cidr.internal"}, CIDRs: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
				Resolution: "STATIC", AutoAllocate: true},
		},
	}
}

func build(t *testing.T) *Table {
	t.Helper()
	tbl, warnings := Build(fixture(), Options{})
	if len(warnings) > 0 {
		t.Fatalf("warnings: %v", warnings)
	}
	return tbl
}

// replyOf is the reply the fast path makes of r: a header and the
// question, then AppendAnswer.
func replyOf(t *testing.T, r Result, qname string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(qname, qtype)
	head, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	wire, _ := r.AppendAnswer(head, 0, qtype, 0, dns.MaxMsgSize)
	if err := m.Unpack(wire); err != nil {
		t.Fatalf("prepared answer does not parse: %v", err)
	}
	return m
}

// answerOf returns the sorted rdata of the records answered for qtype.
func answerOf(t *testing.T, r Result, qname string, qtype uint16) []string {
	t.Helper()
	var out []string
	for _, rr := range replyOf(t, r, qname, qtype).Answer {
		out = append(out, strings.TrimPrefix(rr.String(), rr.Header().String()))
	}
	slices.Sort(out)
	return out
}

func TestResolve(t *testing.T) {
	tbl := build(t)
	cases := []struct {
		name, qname, ns string
		qtype           uint16
		want            []string // nil with wantMiss means forwarded
		wantMiss        bool
		wantAlias       string
		wantOrigin      string
	}{
		{name: "service fqdn", qname: "web.default.svc.cluster.local.", ns: "default", qtype: dns.TypeA, want: []string{"10.96.0.10"}, wantOrigin: "Service default/web"},
		{name: "service aaaa by family", qname: "web.default.svc.cluster.local.", ns: "default", qtype: dns.TypeAAAA, want: []string{"fd00:10:96::a"}},
		{name: "short name own namespace", qname: "web.", ns: "default", qtype: dns.TypeA, want: []string{"10.96.0.10"}},
		{name: "short name other namespace's own", qname: "web.", ns: "other", qtype: dns.TypeA, want: []string{"10.96.1.10"}},
		{name: "short name unknown asker", qname: "web.", ns: "", qtype: dns.TypeA, wantMiss: true},
		{name: "svc.ns", qname: "web.other.", ns: "default", qtype: dns.TypeA, want: []string{"10.96.1.10"}},
		{name: "svc.ns unknown asker", qname: "web.other.", ns: "", qtype: dns.TypeA, want: []string{"10.96.1.10"}},
		{name: "svc.ns.svc", qname: "web.other.svc.", ns: "default", qtype: dns.TypeA, want: []string{"10.96.1.10"}},
		{name: "nodata for known name", qname: "web.other.svc.cluster.local.", ns: "default", qtype: dns.TypeAAAA, want: []string{}},
		{name: "headless ready only", qname: "db.default.svc.cluster.local.", ns: "default", qtype: dns.TypeA, want: []string{"10.1.0.1", "10.1.0.2"}},
		{name: "headless hostname", qname: "db-0.db.default.svc.cluster.local.", ns: "default", qtype: dns.TypeA, want: []string{"10.1.0.1"}},
		{name: "headless dashed", qname: "10-1-0-2.db.default.svc.cluster.local.", ns: "default", qtype: dns.TypeA, want: []string{"10.1.0.2"}},
		{name: "headless not ready hostname", qname: "db-2.db.default.svc.cluster.local.", ns: "default", qtype: dns.TypeA, wantMiss: true},
		{name: "headless srv", qname: "_pg._tcp.db.default.svc.cluster.local.", ns: "default", qtype: dns.TypeSRV,
			want: []string{"0 100 5432 10-1-0-2.db.default.svc.cluster.local.", "0 100 5432 db-0.db.default.svc.cluster.local."}},
		{name: "clusterip srv named port only", qname: "_http._tcp.web.default.svc.cluster.local.", ns: "other", qtype: dns.TypeSRV,
			want: []string{"0 100 80 web.default.svc.cluster.local."}},
		// CoreDNS answers a Service's addresses at the SRV name of a port
		// it has (and NODATA for the other types).
		{name: "clusterip a at srv name", qname: "_http._tcp.web.default.svc.cluster.local.", ns: "other", qtype: dns.TypeA, want: []string{"10.96.0.10"}},
		{name: "clusterip aaaa at srv name", qname: "_http._tcp.web.default.svc.cluster.local.", ns: "other", qtype: dns.TypeAAAA, want: []string{"fd00:10:96::a"}},
		{name: "headless a at srv name", qname: "_pg._tcp.db.default.svc.cluster.local.", ns: "default", qtype: dns.TypeA, want: []string{"10.1.0.1", "10.1.0.2"}},
		{name: "headless aaaa at srv name", qname: "_pg._tcp.db.default.svc.cluster.local.", ns: "default", qtype: dns.TypeAAAA, want: []string{}},
		{name: "txt at srv name", qname: "_pg._tcp.db.default.svc.cluster.local.", ns: "default", qtype: dns.TypeTXT, want: []string{}},
		{name: "a at srv name of a port it lacks", qname: "_pg._udp.db.default.svc.cluster.local.", ns: "default", qtype: dns.TypeA, wantMiss: true},
		{name: "externalname cname", qname: "ext.default.svc.cluster.local.", ns: "default", qtype: dns.TypeCNAME, want: []string{"example.com."}},
		{name: "ptr clusterip", qname: "10.0.96.10.in-addr.arpa.", ns: "default", qtype: dns.TypePTR, want: []string{"web.default.svc.cluster.local."}},
		{name: "ptr se address", qname: "1.100.51.198.in-addr.arpa.", ns: "default", qtype: dns.TypePTR, want: []string{"address.internal."}},
		{name: "se spec address", qname: "address.internal.", ns: "default", qtype: dns.TypeA, want: []string{"198.51.100.1"}, wantOrigin: "ServiceEntry default/external-address"},
		{name: "se opted out forwarded", qname: "optout.internal.", ns: "default", qtype: dns.TypeA, wantMiss: true},
		{name: "se resolution none forwarded", qname: "none.internal.", ns: "default", qtype: dns.TypeA, wantMiss: true},
		{name: "se with only a cidr forwarded, no vip", qname: "cidr.internal.", ns: "default", qtype: dns.TypeA, wantMiss: true},
		{name: "se over service same name", qname: "tcp-echo.external-1.svc.cluster.local.", ns: "default", qtype: dns.TypeA, wantOrigin: "ServiceEntry default/external-svc-1"},
		{name: "wildcard", qname: "a.example.org.", ns: "default", qtype: dns.TypeA, want: []string{"203.0.113.7"}},
		{name: "wildcard most specific", qname: "a.x.deep.example.org.", ns: "default", qtype: dns.TypeA, want: []string{"203.0.113.8"}},
		{name: "wildcard apex not covered", qname: "example.org.", ns: "default", qtype: dns.TypeA, wantMiss: true},
		{name: "wildcard without address forwarded", qname: "a.noaddr.test.", ns: "default", qtype: dns.TypeA, wantMiss: true},
		{name: "exportTo dot own ns", qname: "private.internal.", ns: "team-a", qtype: dns.TypeA, want: []string{"198.51.100.20"}},
		{name: "exportTo dot other ns", qname: "private.internal.", ns: "team-b", qtype: dns.TypeA, wantMiss: true},
		{name: "exportTo dot unknown asker", qname: "private.internal.", ns: "", qtype: dns.TypeA, wantMiss: true},
		{name: "exportTo list member", qname: "listed.internal.", ns: "team-b", qtype: dns.TypeA},
		{name: "exportTo list non member", qname: "listed.internal.", ns: "team-c", qtype: dns.TypeA, wantMiss: true},
		{name: "exportTo tilde", qname: "hidden.internal.", ns: "team-a", qtype: dns.TypeA, wantMiss: true},
		{name: "ptr hidden by exportTo", qname: "20.100.51.198.in-addr.arpa.", ns: "team-b", qtype: dns.TypePTR, wantMiss: true},
		{name: "expansion ns.svc", qname: "address.internal.default.svc.cluster.local.", ns: "default", qtype: dns.TypeA,
			want: []string{"198.51.100.1"}, wantAlias: "address.internal."},
		{name: "expansion svc", qname: "address.internal.svc.cluster.local.", ns: "default", qtype: dns.TypeA,
			want: []string{"198.51.100.1"}, wantAlias: "address.internal."},
		{name: "expansion domain", qname: "address.internal.cluster.local.", ns: "", qtype: dns.TypeA,
			want: []string{"198.51.100.1"}, wantAlias: "address.internal."},
		{name: "no expansion of a service fqdn", qname: "web.default.svc.cluster.local.default.svc.cluster.local.", ns: "default", qtype: dns.TypeA, wantMiss: true},
		{name: "no expansion of another namespace's fqdn", qname: "web.other.svc.cluster.local.default.svc.cluster.local.", ns: "default", qtype: dns.TypeA, wantMiss: true},
		{name: "no expansion of a ServiceEntry host in the cluster domain", qname: "tcp-echo.external-1.svc.cluster.local.default.svc.cluster.local.", ns: "default", qtype: dns.TypeA, wantMiss: true},
		{name: "expansion svc.ns under own namespace", qname: "web.other.default.svc.cluster.local.", ns: "default", qtype: dns.TypeA,
			want: []string{"10.96.1.10"}, wantAlias: "web.other."},
		{name: "expansion svc.ns.svc under own namespace", qname: "web.other.svc.default.svc.cluster.local.", ns: "default", qtype: dns.TypeA,
			want: []string{"10.96.1.10"}, wantAlias: "web.other.svc."},
		{name: "no short-form expansion under svc.domain", qname: "web.other.svc.cluster.local.cluster.local.", ns: "default", qtype: dns.TypeA, wantMiss: true},
		{name: "no short-form expansion under domain", qname: "web.other.cluster.local.", ns: "default", qtype: dns.TypeA, wantMiss: true},
		{name: "wildcard expansion", qname: "a.example.org.default.svc.cluster.local.", ns: "default", qtype: dns.TypeA,
			want: []string{"203.0.113.7"}, wantAlias: "a.example.org."},
		{name: "expansion of invisible name", qname: "private.internal.team-b.svc.cluster.local.", ns: "team-b", qtype: dns.TypeA, wantMiss: true},
		{name: "unknown", qname: "nope.example.net.", ns: "default", qtype: dns.TypeA, wantMiss: true},
		{name: "unknown under cluster domain", qname: "nope.default.svc.cluster.local.", ns: "default", qtype: dns.TypeA, wantMiss: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := tbl.Resolve(tc.qname, tc.ns)
			if tc.wantMiss {
				if r.Entry != nil {
					t.Fatalf("Resolve(%q, %q) = %s %v, want a miss", tc.qname, tc.ns, r.Entry.Name, r.Entry.Addrs)
				}
				return
			}
			if r.Entry == nil {
				t.Fatalf("Resolve(%q, %q) missed", tc.qname, tc.ns)
			}
			if r.Alias != tc.wantAlias {
				t.Errorf("alias = %q, want %q", r.Alias, tc.wantAlias)
			}
			if tc.wantOrigin != "" && r.Entry.Origin().String() != tc.wantOrigin {
				t.Errorf("origin = %s, want %s", r.Entry.Origin(), tc.wantOrigin)
			}
			if tc.want != nil {
				got := answerOf(t, r, tc.qname, tc.qtype)
				if !slices.Equal(got, tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
					t.Errorf("answers = %q, want %q", got, tc.want)
				}
			}
		})
	}
}

func TestSeedVIPs(t *testing.T) {
	tbl := build(t)
	auto := tbl.Resolve("auto.internal.", "default").Entry
	e1 := tbl.Resolve("tcp-echo.external-1.svc.cluster.local.", "default").Entry
	e2 := tbl.Resolve("tcp-echo.external-2.svc.cluster.local.", "default").Entry
	for _, e := range []*Entry{auto, e1, e2} {
		if e == nil || e.AddrSource() != FromAllocated || len(e.Addrs) != 2 {
			t.Fatalf("want an allocated v4+v6 VIP pair, got %+v", e)
		}
		if !strings.HasPrefix(e.Addrs[0].String(), "240.240.") || !strings.HasPrefix(e.Addrs[1].String(), "2001:2::") {
			t.Errorf("%s: VIPs %v not in 240.240.0.0/16 and 2001:2::/48", e.Name, e.Addrs)
		}
	}
	if e1.Addrs[0] == e2.Addrs[0] {
		t.Errorf("tcp-echo ServiceEntries share VIP %v", e1.Addrs[0])
	}
	// The PTR of a VIP names its host.
	ptr := tbl.Resolve(reverseName(auto.Addrs[0]), "default")
	if got := answerOf(t, ptr, reverseName(auto.Addrs[0]), dns.TypePTR); !slices.Equal(got, []string{"auto.internal."}) {
		t.Errorf("PTR of %v = %q, want auto.internal.", auto.Addrs[0], got)
	}
}

func TestSameHostSeveralServiceEntries(t *testing.T) {
	snap := &model.Snapshot{ServiceEntries: []model.ServiceEntry{
		{Namespace: "a", Name: "one", Created: t0, Hosts: []string{"db.example"}, Resolution: "DNS", AutoAllocate: true, ExportTo: []string{"."}},
		{Namespace: "b", Name: "two", Created: t0.Add(time.Hour), Hosts: []string{"db.example"}, Resolution: "DNS", AutoAllocate: true, ExportTo: []string{"."}},
	}}
	tbl, _ := Build(snap, Options{})
	a := tbl.Resolve("db.example.", "a").Entry
	b := tbl.Resolve("db.example.", "b").Entry
	if a == nil || b == nil {
		t.Fatal("each namespace should see its own ServiceEntry")
	}
	if a.Origin().Namespace != "a" || b.Origin().Namespace != "b" {
		t.Errorf("own-namespace ServiceEntry should win: a got %s, b got %s", a.Origin(), b.Origin())
	}
	// As istiod allocates: a VIP per ServiceEntry, not per host.
	if a.Addrs[0] == b.Addrs[0] {
		t.Errorf("two ServiceEntries share the VIP %v", a.Addrs[0])
	}
}

func TestRows(t *testing.T) {
	tbl := build(t)
	rows := tbl.Rows("team-b")
	var names []string
	for _, r := range rows {
		names = append(names, r.Name)
	}
	if !slices.Contains(names, "listed.internal.") {
		t.Errorf("team-b should see listed.internal: %v", names)
	}
	for _, leak := range []string{"private.internal.", "hidden.internal."} {
		if slices.Contains(names, leak) {
			t.Errorf("%s leaked into the table for team-b", leak)
		}
	}
	var auto *Row
	for i := range rows {
		if rows[i].Name == "auto.internal." && rows[i].Type == "A" {
			auto = &rows[i]
		}
	}
	if auto == nil || auto.Origin != "ServiceEntry default/external-auto" || auto.AddrSource != FromAllocated {
		t.Errorf("auto.internal row = %+v", auto)
	}
}

func TestBuildWarnsAndKeepsRest(t *testing.T) {
	snap := &model.Snapshot{ServiceEntries: []model.ServiceEntry{
		{Namespace: "a", Name: "bad", Hosts: []string{"bad host!"}, Addresses: addrs("198.51.100.9"), AutoAllocate: true},
		{Namespace: "a", Name: "good", Hosts: []string{"good.example"}, Addresses: addrs("198.51.100.10"), AutoAllocate: true},
	}}
	tbl, warnings := Build(snap, Options{})
	if len(warnings) != 1 || !strings.Contains(warnings[0].Error(), "bad host!") {
		t.Errorf("warnings = %v, want one naming the bad host", warnings)
	}
	if tbl.Resolve("good.example.", "a").Entry == nil {
		t.Error("the good ServiceEntry was dropped with the bad one")
	}
}

// An ExternalName that is an IP address is no CNAME target: CoreDNS keeps
// such a Service out of its answers (NXDOMAIN), so the table leaves its
// name to the cluster's nameserver, with a warning.
func TestExternalNameAddressIsSkipped(t *testing.T) {
	snap := &model.Snapshot{Services: []model.Service{
		{Namespace: "a", Name: "ip4", ExternalName: "1.2.3.4"},
		{Namespace: "a", Name: "ip6", ExternalName: "2001:db8::1"},
		{Namespace: "a", Name: "name", ExternalName: "www.example.com"},
	}}
	tbl, warnings := Build(snap, Options{})
	if len(warnings) != 2 || !strings.Contains(warnings[0].Error(), "1.2.3.4") || !strings.Contains(warnings[1].Error(), "2001:db8::1") {
		t.Errorf("warnings = %v, want one for each address", warnings)
	}
	for _, name := range []string{"ip4", "ip6"} {
		if r := tbl.Resolve(name+".a.svc.cluster.local.", "a"); r.Entry != nil {
			t.Errorf("%s: answered with CNAME %q, want it forwarded", name, r.Entry.Alias)
		}
	}
	if r := tbl.Resolve("name.a.svc.cluster.local.", "a"); r.Entry == nil || r.Entry.Alias != "www.example.com." {
		t.Errorf("the ExternalName that is a name: %+v", r.Entry)
	}
}

func TestCustomDomainAndTTL(t *testing.T) {
	tbl, _ := Build(&model.Snapshot{Services: []model.Service{{Namespace: "n", Name: "s", ClusterIPs: addrs("10.0.0.1")}}},
		Options{Domain: "Corp.Example", TTL: 7})
	e := tbl.Resolve("s.n.svc.corp.example.", "n").Entry
	if e == nil {
		t.Fatal("service under custom domain not found")
	}
	if a := replyOf(t, Result{Entry: e}, "s.n.svc.corp.example.", dns.TypeA).Answer; len(a) != 1 || a[0].Header().Ttl != 7 {
		t.Errorf("answer %v, want one record with TTL 7", a)
	}
}

func BenchmarkResolveHit(b *testing.B) {
	snap := &model.Snapshot{}
	for i := range 10000 {
		snap.Services = append(snap.Services, model.Service{Namespace: "ns", Name: fmt.Sprintf("svc%d", i),
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})}})
	}
	tbl, _ := Build(snap, Options{})
	b.ReportAllocs()
	for b.Loop() {
		if tbl.Resolve("svc1234.ns.svc.cluster.local.", "ns").Entry == nil {
			b.Fatal("miss")
		}
	}
}

func BenchmarkResolveMiss(b *testing.B) {
	tbl, _ := Build(fixture(), Options{})
	b.ReportAllocs()
	for b.Loop() {
		if tbl.Resolve("www.example.com.default.svc.cluster.local.", "default").Entry != nil {
			b.Fatal("hit")
		}
	}
}

// TestEndpointRecords: a headless Service's endpoint names hold every
// address, the PTRs of those addresses name the endpoints (in every
// headless Service that has them), SRV records appear once with each
// slice's port, and a Service without a ready endpoint is not answered.
func TestEndpointRecords(t *testing.T) {
	ready := func(host string, a ...string) model.Endpoint {
		return model.Endpoint{Hostname: host, Addresses: addrs(a...), Ready: true}
	}
	web := []model.Port{{Name: "web", Protocol: "TCP", Port: 80}}
	snap := &model.Snapshot{
		Services: []model.Service{
			{Namespace: "default", Name: "nginx", Headless: true},
			{Namespace: "default", Name: "nginx-all", Headless: true},
			{Namespace: "default", Name: "empty", Headless: true},
		},
		EndpointSlices: []model.EndpointSlice{
			{Namespace: "default", Name: "v4", ServiceName: "nginx", Ports: web,
				Endpoints: []model.Endpoint{ready("web-0", "10.0.0.10"), ready("web-1", "10.0.0.11")}},
			{Namespace: "default", Name: "v6", ServiceName: "nginx", Ports: []model.Port{{Name: "web", Protocol: "TCP", Port: 8080}},
				Endpoints: []model.Endpoint{ready("web-0", "fd00::10"), ready("web-1", "fd00::11")}},
			{Namespace: "default", Name: "again", ServiceName: "nginx", Ports: web,
				Endpoints: []model.Endpoint{ready("web-0", "10.0.0.10")}},
			{Namespace: "default", Name: "all", ServiceName: "nginx-all", Endpoints: []model.Endpoint{ready("", "10.0.0.10")}},
			{Namespace: "default", Name: "empty", ServiceName: "empty", Endpoints: []model.Endpoint{{Addresses: addrs("10.0.0.99")}}},
		},
	}
	tbl, warnings := Build(snap, Options{})
	if len(warnings) > 0 {
		t.Fatal(warnings)
	}
	ask := func(qname string, qtype uint16) []string {
		t.Helper()
		r := tbl.Resolve(qname, "default")
		if r.Entry == nil {
			return nil
		}
		return answerOf(t, r, qname, qtype)
	}
	const svc = ".nginx.default.svc.cluster.local."
	for _, tc := range []struct {
		qname string
		qtype uint16
		want  []string
	}{
		{"web-0" + svc, dns.TypeA, []string{"10.0.0.10"}},
		{"web-0" + svc, dns.TypeAAAA, []string{"fd00::10"}},
		{"_web._tcp.nginx.default.svc.cluster.local.", dns.TypeSRV, []string{
			"0 100 80 web-0" + svc, "0 100 80 web-1" + svc, "0 100 8080 web-0" + svc, "0 100 8080 web-1" + svc}},
		{reverseName(netip.MustParseAddr("10.0.0.11")), dns.TypePTR, []string{"web-1" + svc}},
		{reverseName(netip.MustParseAddr("fd00::10")), dns.TypePTR, []string{"web-0" + svc}},
		{reverseName(netip.MustParseAddr("10.0.0.10")), dns.TypePTR, []string{"10-0-0-10.nginx-all.default.svc.cluster.local.", "web-0" + svc}},
		{"empty.default.svc.cluster.local.", dns.TypeA, nil},
	} {
		if got := ask(tc.qname, tc.qtype); !slices.Equal(got, tc.want) {
			t.Errorf("%s %s = %q, want %q", tc.qname, dns.TypeToString[tc.qtype], got, tc.want)
		}
	}
}

// TestNegativeAnswerSOA: NODATA carries the SOA of the name's zone, its
// owner and names compressed into the question.
func TestNegativeAnswerSOA(t *testing.T) {
	tbl := build(t)
	for qname, zone := range map[string]string{
		"Web.Default.svc.cluster.local.": "cluster.local.",
		"10.0.96.10.in-addr.arpa.":       "in-addr.arpa.",
		"address.internal.":              "address.internal.",
		"web.":                           "web.",
	} {
		r := tbl.Resolve(strings.ToLower(qname), "default")
		m := replyOf(t, r, qname, dns.TypeTXT)
		if len(m.Answer) != 0 || len(m.Ns) != 1 {
			t.Fatalf("%s TXT: %v", qname, m)
		}
		soa, ok := m.Ns[0].(*dns.SOA)
		if !ok || !strings.EqualFold(soa.Hdr.Name, zone) || !strings.EqualFold(soa.Ns, "ns.dns."+zone) ||
			!strings.EqualFold(soa.Mbox, "hostmaster."+zone) || soa.Minttl != DefaultTTL || soa.Hdr.Ttl != DefaultTTL {
			t.Errorf("%s TXT: authority %v, want the SOA of %s", qname, m.Ns, zone)
		}
		if want := tbl.SOA(qname, r.Entry.TTL()).String(); want != soa.String() {
			t.Errorf("slow path SOA %s, fast path %s", want, soa)
		}
	}
}

// TestAddressesRotate: the query's ID picks the first of several addresses.
func TestAddressesRotate(t *testing.T) {
	tbl, _ := Build(&model.Snapshot{ServiceEntries: []model.ServiceEntry{{Namespace: "a", Name: "x", Hosts: []string{"x.example"},
		Addresses: addrs("198.51.100.1", "198.51.100.2", "198.51.100.3")}}}, Options{})
	r := tbl.Resolve("x.example.", "a")
	m := new(dns.Msg)
	m.SetQuestion("x.example.", dns.TypeA)
	head, _ := m.Pack()
	for rot, first := range []string{"198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.1"} {
		wire, _ := r.AppendAnswer(slices.Clone(head), 0, dns.TypeA, uint16(rot), dns.MaxMsgSize)
		if err := m.Unpack(wire); err != nil {
			t.Fatal(err)
		}
		if len(m.Answer) != 3 || m.Answer[0].(*dns.A).A.String() != first {
			t.Errorf("rot %d: %v, want 3 records from %s", rot, m.Answer, first)
		}
		if got := r.Records("x.example.", dns.TypeA, 30, uint16(rot)); got[0].(*dns.A).A.String() != first {
			t.Errorf("rot %d: slow path starts with %v, want %s", rot, got[0], first)
		}
	}
}

// TestTruncatedAddressesRotate: an answer cut to the records that fit (100
// addresses in 512 bytes) starts at the query's rotation point too, and
// wraps around: a client without EDNS gets a different first address for
// each ID, as it does from a set that fits. Before: the first that fit,
// unrotated, the same 29 addresses for every query.
func TestTruncatedAddressesRotate(t *testing.T) {
	var as []netip.Addr
	for i := range 100 {
		as = append(as, netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)}))
	}
	tbl, _ := Build(&model.Snapshot{ServiceEntries: []model.ServiceEntry{{Namespace: "a", Name: "x", Hosts: []string{"x.example"},
		Addresses: as}}}, Options{})
	r := tbl.Resolve("x.example.", "a")
	m := new(dns.Msg)
	m.SetQuestion("x.example.", dns.TypeA)
	head, _ := m.Pack()
	const room = 512
	fit := (room - len(head)) / (rrFixed + 4)
	firsts := map[string]bool{}
	for rot := range 10 {
		wire, truncated := r.AppendAnswer(slices.Clone(head), 0, dns.TypeA, uint16(95+rot), room)
		if err := m.Unpack(wire); err != nil {
			t.Fatal(err)
		}
		if !truncated || !m.Truncated || len(m.Answer) != fit || len(wire) > room {
			t.Fatalf("rot %d: truncated %v, TC %v, %d records in %d bytes; want TC and the %d that fit in %d",
				95+rot, truncated, m.Truncated, len(m.Answer), len(wire), fit, room)
		}
		// In order from the rotation point, wrapping past the last.
		for i, rr := range m.Answer {
			if want := as[(95+rot+i)%len(as)]; rr.(*dns.A).A.String() != want.String() {
				t.Fatalf("rot %d: record %d is %v, want %s", 95+rot, i, rr, want)
			}
		}
		firsts[m.Answer[0].(*dns.A).A.String()] = true
	}
	if len(firsts) != 10 {
		t.Errorf("10 rotations start at %d distinct addresses, want 10", len(firsts))
	}
}
