package dnswire

import (
	"encoding/binary"
	"slices"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
)

// rotationSamples are replies RotateAnswers is to rotate, or to leave
// alone, by name.
func rotationSamples(tb testing.TB) map[string][]byte {
	tb.Helper()
	response := func(m *dns.Msg) { m.Response = true }
	compressed := func(m *dns.Msg) { m.Compress = true }
	out := map[string][]byte{
		"four A": pack(tb, newMsg("www.example.com.", dns.TypeA, response, records(tb, answer,
			"www.example.com. 30 IN A 10.0.0.11", "www.example.com. 30 IN A 10.0.0.12",
			"www.example.com. 30 IN A 10.0.0.13", "www.example.com. 30 IN A 10.0.0.14"))),
		"CNAME, three AAAA, RRSIGs, OPT": pack(tb, newMsg("www.example.com.", dns.TypeAAAA, response, compressed, withEDNS(true), records(tb, answer,
			"www.example.com. 30 IN CNAME cdn.example.net.",
			"cdn.example.net. 30 IN AAAA 2001:db8::1", "cdn.example.net. 30 IN AAAA 2001:db8::2", "cdn.example.net. 30 IN AAAA 2001:db8::3",
			"cdn.example.net. 30 IN RRSIG AAAA 13 3 30 20260101000000 20250101000000 1 example.net. AAAA",
			"cdn.example.net. 30 IN RRSIG A 13 3 30 20260101000000 20250101000000 1 example.net. AAAA"))),
	}
	// The same, its ID (an upstream's, random) reading as a pointer into
	// the set: no decoder reads a pointer in the header, which holds no
	// name. Left alone, one reply in some hundreds would be served in
	// the upstream's order to every client asking while it is cached.
	idPointer := slices.Clone(out["four A"])
	answers, err := skipQuestions(idPointer, HeaderLen, 1)
	if err != nil {
		tb.Fatal(err)
	}
	binary.BigEndian.PutUint16(idPointer, Pointer(answers+2))
	out["four A, its ID a pointer into them"] = idPointer
	// Two A records whose data reads as a name ("a" and a pointer to the
	// question's), and a TXT record owned by the first one's data: moving
	// the records would rename the TXT record.
	m := AppendHeader(nil, &Query{Header: Header{ID: 1}}, 0, false, 1, 2, 1)
	m = append(m, AppendName(nil, "www.example.com.")...)
	m = binary.BigEndian.AppendUint32(m, uint32(dns.TypeA)<<16|dns.ClassINET)
	first := len(m) + 2 + rrFixedLen // the first A record's data
	m = appendRR(m, QuestionPointer, dns.TypeA, dns.ClassINET, 30, []byte{1, 'a', 0xC0, 12})
	m = appendRR(m, QuestionPointer, dns.TypeA, dns.ClassINET, 30, []byte{1, 'b', 0xC0, 12})
	m = appendRR(m, Pointer(first), dns.TypeTXT, dns.ClassINET, 30, []byte{1, 'x'})
	out["a pointer into the set"] = m
	return out
}

// sections returns the records of m's sections as text, sorted, and its
// header: what a rotation must not change.
func sections(m *dns.Msg) [4][]string {
	var out [4][]string
	out[0] = []string{m.MsgHdr.String()}
	for i, s := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range s {
			out[i+1] = append(out[i+1], rr.String())
		}
		slices.Sort(out[i+1])
	}
	return out
}

func TestRotateAnswers(t *testing.T) {
	t.Parallel()
	samples := rotationSamples(t)
	cases := []struct {
		name string
		// want is the first answer record's data for IDs 0, 1, 2, …
		want []string
	}{
		{"four A", []string{"10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14", "10.0.0.11"}},
		{"four A, its ID a pointer into them", []string{"10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14"}},
		{"CNAME, three AAAA, RRSIGs, OPT", []string{"2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8::1"}},
		{"a pointer into the set", []string{"1.97.192.12", "1.97.192.12"}}, // "\x01a" and a pointer: left as it is
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			msg := samples[c.name]
			before := dnstest.Unpack(t, msg)
			for id, want := range c.want {
				out := slices.Clone(msg)
				RotateAnswers(out, uint16(id))
				after := dnstest.Unpack(t, out)
				if got, want := sections(after), sections(before); !slices.EqualFunc(got[:], want[:], slices.Equal) {
					t.Fatalf("ID %d: rotated reply reads\n%v\nwant\n%v", id, after, before)
				}
				var first string
				for _, rr := range after.Answer {
					switch rr := rr.(type) {
					case *dns.A:
						first = rr.A.String()
					case *dns.AAAA:
						first = rr.AAAA.String()
					default:
						continue
					}
					break
				}
				if first != want {
					t.Errorf("ID %d: first address %s, want %s", id, first, want)
				}
				if len(out) != len(msg) {
					t.Fatalf("ID %d: %d octets, was %d", id, len(out), len(msg))
				}
			}
		})
	}
}

// TestRotateAnswersAllocatesNothing: the rotation runs on every cache hit.
func TestRotateAnswersAllocatesNothing(t *testing.T) {
	msg := rotationSamples(t)["CNAME, three AAAA, RRSIGs, OPT"]
	id := uint16(0)
	if n := testing.AllocsPerRun(100, func() { id++; RotateAnswers(msg, id) }); n != 0 {
		t.Errorf("%v allocations per rotation, want none", n)
	}
}
