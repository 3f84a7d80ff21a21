package dnswire

import (
	"bytes"
	"net"
	"slices"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
)

var (
	testCookie = &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "a1a1a1a1a1a1a1a1"}
	testSubnet = &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.ParseIP("203.0.113.0").To4()}
	testNSID   = &dns.EDNS0_NSID{Code: dns.EDNS0NSID}
)

func withOptions(opts ...dns.EDNS0) func(*dns.Msg) {
	return func(m *dns.Msg) {
		m.SetEdns0(4096, true)
		m.IsEdns0().Option = opts
	}
}

// TestRemoveOption: the COOKIE leaves the OPT record, the other options stay
// in their order, and the rest of the message is as it was; a message it
// cannot change safely is returned as it was.
func TestRemoveOption(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		msg     *dns.Msg
		want    []uint16 // the options left
		changed bool
	}{
		{"cookie alone", newMsg("www.example.com.", dns.TypeA, withOptions(testCookie)), nil, true},
		{"cookie among others", newMsg("www.example.com.", dns.TypeA, withOptions(testNSID, testCookie, testSubnet, testCookie)), []uint16{dns.EDNS0NSID, dns.EDNS0SUBNET}, true},
		{"no cookie", newMsg("www.example.com.", dns.TypeA, withOptions(testSubnet)), []uint16{dns.EDNS0SUBNET}, false},
		{"no options", newMsg("www.example.com.", dns.TypeA, withEDNS(false)), nil, false},
		{"OPT not last", newMsg("www.example.com.", dns.TypeA, withOptions(testCookie), records(t, additional, `x. 0 IN TXT "x"`)), []uint16{dns.EDNS0COOKIE}, false},
		{"records before the OPT", newMsg("www.example.com.", dns.TypeA, records(t, authority, "example.com. 60 IN NS ns1.example.com."), withOptions(testCookie, testSubnet)), []uint16{dns.EDNS0SUBNET}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			msg := pack(t, tc.msg)
			out := RemoveOption(slices.Clone(msg), OptionCookie)
			if changed := !bytes.Equal(out, msg); changed != tc.changed {
				t.Fatalf("changed = %v, want %v", changed, tc.changed)
			}
			got := dnstest.Unpack(t, out)
			var codes []uint16
			for _, o := range got.IsEdns0().Option {
				codes = append(codes, o.Option())
			}
			if !slices.Equal(codes, tc.want) {
				t.Errorf("options %v, want %v", codes, tc.want)
			}
			// All else as it was.
			got.IsEdns0().Option, tc.msg.IsEdns0().Option = nil, nil
			if got.String() != tc.msg.String() {
				t.Errorf("the message reads\n%v\nwant\n%v", got, tc.msg)
			}
		})
	}

	msg := pack(t, newMsg("www.example.com.", dns.TypeA, withOptions(testCookie)))
	msg[len(msg)-1-len(testCookie.Cookie)/2]++ // the cookie's length one more than its data
	if out := RemoveOption(slices.Clone(msg), OptionCookie); !bytes.Equal(out, msg) {
		t.Errorf("an option running past the OPT data: changed to %x", out)
	}
}

// FuzzRemoveOption: whatever a client sends that parses, removing its
// COOKIE leaves a message that parses to the same question and the same
// records, without a COOKIE when it had an OPT record last.
func FuzzRemoveOption(f *testing.F) {
	f.Add(pack(f, newMsg("www.example.com.", dns.TypeA, withOptions(testNSID, testCookie, testSubnet))))
	f.Add(pack(f, newMsg("www.example.com.", dns.TypeA, withOptions(testCookie), records(f, additional, `x. 0 IN TXT "x"`))))
	f.Fuzz(func(t *testing.T, msg []byte) {
		var q Query
		if ParseQuery(msg, &q, nil) != nil {
			return
		}
		in := slices.Clone(msg[:q.Len])
		out := RemoveOption(slices.Clone(in), OptionCookie)
		var r Query
		if err := ParseQuery(out, &r, nil); err != nil || r.Header != q.Header || r.Type != q.Type || r.Class != q.Class || r.End != q.End || r.EDNS != q.EDNS || r.UDPSize != q.UDPSize || r.DO != q.DO || r.Len != len(out) {
			t.Fatalf("%x without its cookie is %x, which reads %+v, %v; want %+v", in, out, r, err, q)
		}
		if len(out) < len(in) && !bytes.Equal(out[:r.End], in[:q.End]) {
			t.Fatalf("%x without its cookie is %x: the question changed", in, out)
		}
		if m := new(dns.Msg); len(out) < len(in) && m.Unpack(out) == nil {
			for _, o := range m.IsEdns0().Option {
				if o.Option() == dns.EDNS0COOKIE {
					t.Fatalf("%x without its cookie is %x, which holds one", in, out)
				}
			}
		}
	})
}
