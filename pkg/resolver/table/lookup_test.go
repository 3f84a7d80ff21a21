package table

import (
	"testing"
	"time"
	"unsafe"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/model"
)

// TestEntryTakes72Bytes: below TestEntrySize's bound, an entry takes 72
// bytes on a 64-bit machine, what left room for the fields a lookup reads
// of its object (see Entry).
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
