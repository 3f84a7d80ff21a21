package dnswire

import (
	"bytes"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
)

func TestParseQuery(t *testing.T) {
	t.Parallel()
	ednsVersion1 := func(m *dns.Msg) { m.SetEdns0(4096, false); m.IsEdns0().SetVersion(1) }
	cases := []struct {
		name string
		msg  *dns.Msg
		want Query // Name and Plain are checked through wantName
		// wantName is the folded name in presentation form; it is plain
		// when nothing in it is escaped.
		wantName string
	}{
		{"plain", newMsg("www.example.com.", dns.TypeA),
			Query{Header: Header{ID: 0xBEEF, Flags: FlagRD, QDCount: 1}, Question: Question{Type: dns.TypeA, Class: dns.ClassINET, NameEnd: 29, End: 33}},
			"www.example.com."},
		{"case folded, EDNS with DO", newMsg("WwW.ExAmple.COM.", dns.TypeAAAA, withEDNS(true)),
			Query{Header: Header{ID: 0xBEEF, Flags: FlagRD, QDCount: 1, ARCount: 1}, Question: Question{Type: dns.TypeAAAA, Class: dns.ClassINET, NameEnd: 29, End: 33},
				EDNS: true, UDPSize: 1232, DO: true},
			"www.example.com."},
		{"EDNS version 1", newMsg("a.example.", dns.TypeMX, ednsVersion1),
			Query{Header: Header{ID: 0xBEEF, Flags: FlagRD, QDCount: 1, ARCount: 1}, Question: Question{Type: dns.TypeMX, Class: dns.ClassINET, NameEnd: 23, End: 27},
				EDNS: true, UDPSize: 4096, EDNSVersion: 1},
			"a.example."},
		{"root", newMsg(".", dns.TypeNS),
			Query{Header: Header{ID: 0xBEEF, Flags: FlagRD, QDCount: 1}, Question: Question{Type: dns.TypeNS, Class: dns.ClassINET, NameEnd: 13, End: 17}},
			"."},
		{"NOTIFY with an SOA in the answer section", newMsg("example.com.", dns.TypeSOA, func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }, records(t, answer, testSOA)),
			Query{Header: Header{ID: 0xBEEF, Flags: FlagRD | dns.OpcodeNotify<<11, QDCount: 1, ANCount: 1}, Question: Question{Type: dns.TypeSOA, Class: dns.ClassINET, NameEnd: 25, End: 29}},
			"example.com."},
		{"a label holding a dot is not plain", newMsg(`a\.b.example.`, dns.TypeA),
			Query{Header: Header{ID: 0xBEEF, Flags: FlagRD, QDCount: 1}, Question: Question{Type: dns.TypeA, Class: dns.ClassINET, NameEnd: 25, End: 29}},
			`a\.b.example.`},
		{"a backslash, a space, control and non-ASCII octets are escaped", newMsg(`X\\\032\027[2k\010\255.example.`, dns.TypeA),
			Query{Header: Header{ID: 0xBEEF, Flags: FlagRD, QDCount: 1}, Question: Question{Type: dns.TypeA, Class: dns.ClassINET, NameEnd: 31, End: 35}},
			`x\\\032\027[2k\010\255.example.`},
		{"OPT not owned by the root is no EDNS", newMsg("a.example.", dns.TypeA, withEDNS(true), func(m *dns.Msg) { m.Extra[0].Header().Name = "x." }),
			Query{Header: Header{ID: 0xBEEF, Flags: FlagRD, QDCount: 1, ARCount: 1}, Question: Question{Type: dns.TypeA, Class: dns.ClassINET, NameEnd: 23, End: 27}},
			"a.example."},
		{"glue before OPT", newMsg("a.example.", dns.TypeA, records(t, additional, "ns.example. 60 IN A 198.51.100.1"), withEDNS(false)),
			Query{Header: Header{ID: 0xBEEF, Flags: FlagRD, QDCount: 1, ARCount: 2}, Question: Question{Type: dns.TypeA, Class: dns.ClassINET, NameEnd: 23, End: 27},
				EDNS: true, UDPSize: 1232},
			"a.example."},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			msg := pack(t, tc.msg)
			var q Query
			var buf NameBuf
			if err := ParseQuery(msg, &q, &buf); err != nil {
				t.Fatalf("ParseQuery: %v", err)
			}
			if q.Plain != !strings.Contains(tc.wantName, `\`) || string(q.Name) != tc.wantName {
				t.Errorf("name %q (plain %v), want %q", q.Name, q.Plain, tc.wantName)
			}
			if q.Len != len(msg) {
				t.Errorf("Len %d, want the whole message of %d", q.Len, len(msg))
			}
			got := q
			got.Name, got.Plain, got.Len = nil, false, 0
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
			// Without a buffer: the same but the name.
			var bare Query
			if err := ParseQuery(msg, &bare, nil); err != nil {
				t.Fatalf("ParseQuery without a buffer: %v", err)
			}
			if bare.Name != nil || !bare.Plain {
				t.Errorf("without a buffer: name %q, plain %v; want nil, true", bare.Name, bare.Plain)
			}
			bare.Plain, bare.Len = false, 0
			if !reflect.DeepEqual(bare, tc.want) {
				t.Errorf("without a buffer:\ngot  %+v\nwant %+v", bare, tc.want)
			}
		})
	}
}

// TestParseQueryTrailingBytes: octets after the last record are not part
// of the message: Len says where it ends.
func TestParseQueryTrailingBytes(t *testing.T) {
	msg := pack(t, newMsg("www.example.com.", dns.TypeA, withEDNS(true)))
	var q Query
	if err := ParseQuery(append(slices.Clone(msg), "garbage"...), &q, nil); err != nil {
		t.Fatalf("ParseQuery with trailing octets: %v", err)
	}
	if q.Len != len(msg) || !q.EDNS {
		t.Errorf("Len %d (EDNS %v), want %d, the message without what follows it", q.Len, q.EDNS, len(msg))
	}
}

// longName is a name of n octets in wire form (n ≥ 3), in presentation form.
func longName(n int) string {
	var labels []string
	for rest := n - 1; rest > 0; { // the root label takes one
		l := min(rest, 64) // a label takes its length octet too
		if rest-l == 1 {   // leave the last label two octets at least
			l--
		}
		labels = append(labels, strings.Repeat("a", l-1))
		rest -= l
	}
	return strings.Join(labels, ".") + "."
}

func TestParseQueryNameLength(t *testing.T) {
	t.Parallel()
	for _, n := range []int{3, 64, 66, 200, 254, maxNameLen} {
		name := longName(n)
		msg := pack(t, newMsg(name, dns.TypeA))
		if got := len(msg) - HeaderLen - 4; got != n {
			t.Fatalf("test name is %d octets, want %d", got, n)
		}
		var q Query
		var buf NameBuf
		if err := ParseQuery(msg, &q, &buf); err != nil {
			t.Errorf("%d-octet name: %v", n, err)
		} else if string(q.Name) != name {
			t.Errorf("%d-octet name read as %q", n, q.Name)
		}
	}
	// miekg/dns will not pack a longer name: write one by hand, one octet
	// too long (labels of 63, 63, 63 and 62 octets).
	msg := pack(t, newMsg("a.", dns.TypeA))[:HeaderLen]
	for _, l := range []int{63, 63, 63, 62} {
		msg = append(msg, byte(l))
		msg = append(msg, bytes.Repeat([]byte{'a'}, l)...)
	}
	msg = append(msg, 0, 0, 1, 0, 1)
	var q Query
	if err := ParseQuery(msg, &q, new(NameBuf)); err == nil {
		t.Errorf("a %d-octet name parsed", len(msg)-HeaderLen-4)
	}
}

func TestParseQueryRejectsMalformed(t *testing.T) {
	t.Parallel()
	good := pack(t, newMsg("www.example.com.", dns.TypeA, withEDNS(false)))
	twoQuestions := newMsg("a.", dns.TypeA, func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) })
	withRecord := func(b []byte, section int, rr ...byte) []byte {
		b = append(slices.Clone(b), rr...)
		b[5+2*section]++
		return b
	}
	question := good[:HeaderLen+len("www.example.com.")+1+4]
	cases := []struct {
		name string
		msg  []byte
		// wantEnd is where the question ends in what ParseQuery leaves
		// behind (0: it did not parse).
		wantEnd int
	}{
		{"no question", good[:HeaderLen], 0},
		{"two questions", pack(t, twoQuestions), 0},
		{"question cut short", good[:HeaderLen+5], 0},
		{"type and class cut short", good[:HeaderLen+len("www.example.com.")+1+2], 0},
		{"pointer in question", append(slices.Clone(good[:HeaderLen]), 0xC0, 0x00, 0, 1, 0, 1), 0},
		{"obsolete label type", append(slices.Clone(good[:HeaderLen]), 0x40, 0, 0, 1, 0, 1), 0},
		{"OPT cut short", good[:len(good)-2], len(question)},
		{"two OPT records", withRecord(good, 3, good[len(question):]...), len(question)},
		{"answer record past the end", withRecord(question, 1, 0, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 1), len(question)},
		{"bad label in a record owner", withRecord(question, 2, 0x80, 0, 1, 0, 1, 0, 0, 0, 60, 0, 0), len(question)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var q Query
			if err := ParseQuery(tc.msg, &q, new(NameBuf)); err == nil {
				t.Fatal("ParseQuery accepted a malformed query")
			}
			if q.ID != 0xBEEF || q.End != tc.wantEnd {
				t.Errorf("left ID %#x, question end %d; want 0xbeef, %d (for the error reply)", q.ID, q.End, tc.wantEnd)
			}
		})
	}
	for _, short := range [][]byte{nil, good[:HeaderLen-1]} {
		q := Query{Header: Header{ID: 1}}
		if err := ParseQuery(short, &q, nil); err == nil || !reflect.DeepEqual(q, Query{}) {
			t.Errorf("%d octets: error %v, query %+v; want an error and nothing", len(short), err, q)
		}
	}
}

// TestParseQueryWithoutOneQuestion: a query with no question or two fails
// with ErrQDCount, but its OPT record is read, so that the FORMERR has one
// for an EDNS client (RFC 6891 6.1.1) and an EDNS version other than 0
// gets BADVERS; no question is echoed. A count of questions the message
// cannot hold fails at its end, whatever the count.
func TestParseQueryWithoutOneQuestion(t *testing.T) {
	t.Parallel()
	noQuestion := func(m *dns.Msg) { m.Question = nil }
	twoQuestions := func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }
	version1 := func(m *dns.Msg) { m.IsEdns0().SetVersion(1) }
	hostile := pack(t, newMsg("a.", dns.TypeA, noQuestion, withEDNS(true)))
	hostile[5] = 0xFF // 255 questions, none there: the OPT record read as ones
	for _, tc := range []struct {
		name    string
		msg     []byte
		err     error
		edns    bool
		version uint8
	}{
		{"no question, EDNS", pack(t, newMsg("a.", dns.TypeA, noQuestion, withEDNS(true))), ErrQDCount, true, 0},
		{"no question, EDNS version 1", pack(t, newMsg("a.", dns.TypeA, noQuestion, withEDNS(false), version1)), ErrQDCount, true, 1},
		{"two questions, EDNS", pack(t, newMsg("a.example.", dns.TypeA, twoQuestions, withEDNS(true))), ErrQDCount, true, 0},
		{"no question, no EDNS", pack(t, newMsg("a.", dns.TypeA, noQuestion)), ErrQDCount, false, 0},
		{"more questions than the message holds", hostile, errShort, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var q Query
			err := ParseQuery(tc.msg, &q, new(NameBuf))
			if err != tc.err || q.ID != 0xBEEF || q.End != 0 || q.Len != 0 || q.EDNS != tc.edns || q.EDNSVersion != tc.version || tc.edns && (q.UDPSize != 1232 || q.DO != (tc.version == 0)) {
				t.Fatalf("%v, ID %#x, question end %d, length %d, EDNS %v version %d size %d DO %v; want %v, 0xbeef, 0, 0, EDNS %v version %d",
					err, q.ID, q.End, q.Len, q.EDNS, q.EDNSVersion, q.UDPSize, q.DO, tc.err, tc.edns, tc.version)
			}
			opts := 0
			if tc.edns {
				opts = 1
			}
			for rcode, reply := range map[int][]byte{dns.RcodeFormatError: AppendErrorReply(nil, tc.msg, &q, RcodeFormErr), dns.RcodeBadVers: AppendBadVers(nil, tc.msg, &q)} {
				m := dnstest.Unpack(t, reply)
				if !tc.edns && rcode == dns.RcodeBadVers {
					rcode = dns.RcodeSuccess // BADVERS needs the OPT record to carry it
				}
				if m.Id != 0xBEEF || m.Rcode != rcode || len(m.Question) != 0 || (m.IsEdns0() != nil) != tc.edns || len(m.Extra) != opts {
					t.Errorf("reply %v: want %s, no question, an OPT record %v and nothing else", m, dns.RcodeToString[rcode], tc.edns)
				}
			}
		})
	}
}

func TestUDPLimit(t *testing.T) {
	t.Parallel()
	cases := []struct {
		q    Query
		want int
	}{
		{Query{}, 512},
		{Query{EDNS: true, UDPSize: 100}, 512},
		{Query{EDNS: true, UDPSize: 1232}, 1232},
		{Query{EDNS: true, UDPSize: 65535}, 4096},
		{Query{UDPSize: 4096}, 512},
	}
	for _, tc := range cases {
		if got := tc.q.UDPLimit(); got != tc.want {
			t.Errorf("EDNS %v size %d: limit %d, want %d", tc.q.EDNS, tc.q.UDPSize, got, tc.want)
		}
	}
}

func TestSameQuestion(t *testing.T) {
	t.Parallel()
	sent := pack(t, newMsg("www.example.com.", dns.TypeA))
	var q Question
	if err := readQuestion(sent, &q, nil); err != nil {
		t.Fatal(err)
	}
	reply := func(name string, qtype uint16) []byte {
		return pack(t, newMsg(name, qtype, func(m *dns.Msg) { m.Response = true }, records(t, answer, "www.example.com. 60 IN A 198.51.100.1")))
	}
	cases := []struct {
		name  string
		reply []byte
		want  bool
	}{
		{"same", reply("www.example.com.", dns.TypeA), true},
		{"other case (0x20)", reply("WWW.examPle.com.", dns.TypeA), true},
		{"other name", reply("wwx.example.com.", dns.TypeA), false},
		{"other type", reply("www.example.com.", dns.TypeAAAA), false},
		{"cut short", sent[:q.End-1], false},
	}
	for _, tc := range cases {
		if got := SameQuestion(tc.reply, sent, q); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
