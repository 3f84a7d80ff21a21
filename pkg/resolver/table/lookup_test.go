package table

import (
	"net/netip"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/model"
)

// TestEntryTakes72Bytes keeps Entry at 72 bytes on a 64-bit machine: the
// table holds one per name (56,000 in make bench's workload), so 8 bytes
// more cost about 0.45 MB on every node, and the packed layouts (pack) are
// sized with it. A new one-byte field belongs in a byte that is already
// there (as addrNoVIP shows), not after the last one.
func TestEntryTakes72Bytes(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		return
	}
	if n := unsafe.Sizeof(Entry{}); n > 72 {
		t.Fatalf("Entry is %d bytes, want at most 72", n)
	}
}

// TestCommonLookupReadsNoSource: answering the usual query (an exact name
// of one entry that every namespace sees, A or AAAA, as the server's fast
// path asks it) reads nothing of the entry's object (src, its seSource):
// each is a cache miss when the table is cold between queries.
func TestCommonLookupReadsNoSource(t *testing.T) {
	tbl, warnings := Build(&model.Snapshot{
		Services: []model.Service{{Namespace: "shop", Name: "web", ClusterIPs: addrs("10.96.0.10", "fd00::a"),
			Ports: []model.Port{{Name: "http", Protocol: "TCP", Port: 80}}}},
		ServiceEntries: []model.ServiceEntry{
			{Namespace: "shop", Name: "pay", Created: time.Unix(1, 0), Hosts: []string{"pay.example.com"},
				Addresses: addrs("198.51.100.1"), Resolution: "STATIC"},
			{Namespace: "shop", Name: "mail", Created: time.Unix(2, 0), Hosts: []string{"mail.example.com"},
				Resolution: "DNS", AutoAllocate: true},
		},
	}, Options{})
	if len(warnings) > 0 {
		t.Fatal(warnings)
	}
	for _, name := range []string{"web.shop.svc.cluster.local.", "pay.example.com.", "mail.example.com."} {
		e := tbl.lookup(name).one
		if e == nil {
			t.Fatalf("%s: not in the table", name)
		}
		src := e.src
		e.src = nil // a read of it panics
		for _, f := range []Families{0, IPv4, BothFamilies} {
			for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
				r := tbl.Resolve(name, "other")
				r.Restrict(f)
				if r.Entry != e || r.Alias != "" || r.Chases(qtype) || r.Forwards(qtype) {
					t.Fatalf("%s %s: not answered from its entry", name, dns.TypeToString[qtype])
				}
				out, _ := r.AppendAnswer(make([]byte, 12, 512), 0, qtype, 0, 512)
				if len(out) == 12 {
					t.Fatalf("%s %s: no answer", name, dns.TypeToString[qtype])
				}
			}
		}
		e.src = src
	}
}

// TestEntriesArePacked: an entry's name, and its addresses when it has
// one or two, are in the entry's own allocation, right after it (pack), so
// that the map key a lookup compares, the entry and its answer are
// adjacent; a longer name or more addresses are apart. The table answers
// the same either way (the other tests).
func TestEntriesArePacked(t *testing.T) {
	long := strings.Repeat("l", 63) + "." + strings.Repeat("o", 63) + ".example.com."
	tbl, warnings := Build(&model.Snapshot{
		Services: []model.Service{
			{Namespace: "shop", Name: "web", ClusterIPs: addrs("10.96.0.10")},
			{Namespace: "shop", Name: "dual", ClusterIPs: addrs("fd00::b", "10.96.0.11")},
			{Namespace: "shop", Name: "db", Headless: true},
			{Namespace: "shop", Name: "alias", ExternalName: "db.example.com"},
		},
		EndpointSlices: []model.EndpointSlice{{Namespace: "shop", Name: "db-1", ServiceName: "db",
			Endpoints: []model.Endpoint{{Addresses: addrs("10.1.0.1"), Hostname: "db-0", Ready: true}}}},
		ServiceEntries: []model.ServiceEntry{
			{Namespace: "shop", Name: "pay", Created: time.Unix(1, 0), Hosts: []string{"Pay.Example.com", long},
				Addresses: addrs("198.51.100.1"), Resolution: "STATIC"},
			{Namespace: "shop", Name: "three", Created: time.Unix(2, 0), Hosts: []string{"three.example.com"},
				Addresses: addrs("198.51.100.2", "198.51.100.3", "198.51.100.4"), Resolution: "STATIC"},
			{Namespace: "shop", Name: "mail", Created: time.Unix(3, 0), Hosts: []string{"mail.example.com"},
				Resolution: "DNS", AutoAllocate: true},
		},
	}, Options{})
	if len(warnings) > 0 {
		t.Fatal(warnings)
	}
	const entrySize, addrSize = 72, unsafe.Sizeof(netip.Addr{})
	for _, c := range []struct {
		name   string
		addrs  int  // packed addresses
		packed bool // the name
	}{
		{"web.shop.svc.cluster.local.", 1, true},
		{"dual.shop.svc.cluster.local.", 2, true},
		{"db.shop.svc.cluster.local.", 0, true}, // its addresses come from its endpoints, later
		{"db-0.db.shop.svc.cluster.local.", 0, true},
		{"alias.shop.svc.cluster.local.", 0, true},
		{"pay.example.com.", 1, true},
		{long, 0, false},
		{"three.example.com.", 0, true},
		{"mail.example.com.", 2, true},
	} {
		e := tbl.lookup(c.name).one
		if e == nil || e.Name != c.name {
			t.Fatalf("%s: not in the table", c.name)
		}
		at := uintptr(unsafe.Pointer(e))
		name := uintptr(unsafe.Pointer(unsafe.StringData(e.Name)))
		if got := name == at+entrySize+uintptr(c.addrs)*addrSize; got != c.packed {
			t.Errorf("%s: name packed after the entry and %d addresses: %v, want %v", c.name, c.addrs, got, c.packed)
		}
		if c.addrs > 0 && (len(e.Addrs) != c.addrs || uintptr(unsafe.Pointer(&e.Addrs[0])) != at+entrySize || cap(e.Addrs) != c.addrs) {
			t.Errorf("%s: addresses %v not packed after the entry", c.name, e.Addrs)
		}
	}
}
