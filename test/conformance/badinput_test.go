package conformance

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// header builds a 12-byte DNS header.
func header(id, flags, qd, an, ns, ar uint16) []byte {
	var b []byte
	for _, v := range []uint16{id, flags, qd, an, ns, ar} {
		b = binary.BigEndian.AppendUint16(b, v)
	}
	return b
}

// question is "a.example." A IN in wire form.
var question = []byte{1, 'a', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0, 0, 1, 0, 1}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func TestBadInput(t *testing.T) {
	up := upstream(t)
	r := startAgent(t, agentOpts{upstreams: []netip.AddrPort{up.Addr}}, manifests)
	const formerr, noReply = dns.RcodeFormatError, -1
	cases := []struct {
		name  string
		pkt   []byte
		rcode int
	}{
		{name: "empty", pkt: nil, rcode: noReply},
		{name: "shorter than a header", pkt: []byte{1, 2, 3, 4, 5}, rcode: noReply},
		{name: "a response, not a query", pkt: cat(header(7, 0x8000, 1, 0, 0, 0), question), rcode: noReply},
		{name: "no question", pkt: header(7, 0x0100, 0, 0, 0, 0), rcode: formerr},
		{name: "two questions", pkt: cat(header(7, 0x0100, 2, 0, 0, 0), question, question), rcode: formerr},
		{name: "question cut short", pkt: cat(header(7, 0x0100, 1, 0, 0, 0), question[:6]), rcode: formerr},
		{name: "type and class missing", pkt: cat(header(7, 0x0100, 1, 0, 0, 0), question[:11]), rcode: formerr},
		{name: "label longer than 63", pkt: cat(header(7, 0x0100, 1, 0, 0, 0), []byte{64}, make([]byte, 64), []byte{0, 0, 1, 0, 1}), rcode: formerr},
		{name: "name longer than 255", pkt: cat(header(7, 0x0100, 1, 0, 0, 0), longName(), []byte{0, 1, 0, 1}), rcode: formerr},
		{name: "compression pointer in question", pkt: cat(header(7, 0x0100, 1, 0, 0, 0), []byte{0xc0, 0x0c, 0, 1, 0, 1}), rcode: formerr},
		{name: "additional count beyond the packet", pkt: cat(header(7, 0x0100, 1, 0, 0, 5), question), rcode: formerr},
		{name: "two OPT records", pkt: cat(header(7, 0x0100, 1, 0, 0, 2), question, opt(), opt()), rcode: formerr},
		{name: "EDNS version 1: BADVERS", pkt: cat(header(7, 0x0100, 1, 0, 0, 1), question, optVersion(1)), rcode: dns.RcodeBadVers},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.rcode == noReply {
				r.requireNoReply(t, tc.pkt)
				return
			}
			reply := r.sendRaw(t, tc.pkt)
			m := new(dns.Msg)
			if err := m.Unpack(reply); err != nil {
				t.Fatalf("unparseable reply %x: %v", reply, err)
			}
			if m.Id != 7 || !m.Response || m.Rcode != tc.rcode {
				t.Errorf("reply id=%d qr=%v rcode=%s, want id 7, a response, %s", m.Id, m.Response, dns.RcodeToString[m.Rcode], dns.RcodeToString[tc.rcode])
			}
		})
	}
	// Still serving after all that.
	if resp := r.query(t, "udp", fromDefault, "address.internal.", dns.TypeA, false); len(resp.Answer) != 1 {
		t.Fatalf("resolver broken after bad input: %v", resp)
	}
}

func TestBadTCPInput(t *testing.T) {
	up := upstream(t)
	r := startAgent(t, agentOpts{upstreams: []netip.AddrPort{up.Addr}}, manifests)
	dial := func(t *testing.T) net.Conn {
		c, err := net.Dial("tcp", r.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	t.Run("truncated frame closes the connection", func(t *testing.T) {
		c := dial(t)
		c.Write([]byte{0, 100, 1, 2, 3}) // promises 100 bytes, sends 3
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Fatalf("want the server to close the connection, got %v", err)
		}
	})
	t.Run("garbage frame gets FORMERR, connection stays usable", func(t *testing.T) {
		c := dial(t)
		bad := cat(header(9, 0x0100, 2, 0, 0, 0), question)
		c.Write(cat(binary.BigEndian.AppendUint16(nil, uint16(len(bad))), bad))
		m := readFrame(t, c)
		if m.Id != 9 || m.Rcode != dns.RcodeFormatError {
			t.Fatalf("reply %v", m)
		}
		q := new(dns.Msg)
		q.SetQuestion("address.internal.", dns.TypeA)
		wire, _ := q.Pack()
		c.Write(cat(binary.BigEndian.AppendUint16(nil, uint16(len(wire))), wire))
		if m := readFrame(t, c); len(m.Answer) != 1 {
			t.Fatalf("second query on the connection: %v", m)
		}
	})
	t.Run("largest frame of junk", func(t *testing.T) {
		c := dial(t)
		junk := make([]byte, 0xffff)
		c.Write(cat([]byte{0xff, 0xff}, junk))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var lenBuf [2]byte
		if _, err := io.ReadFull(c, lenBuf[:]); err != nil {
			t.Fatalf("no reply to a 64KiB zero frame (ID 0, a query with no question deserves FORMERR): %v", err)
		}
	})
	if resp := r.query(t, "tcp", fromDefault, "address.internal.", dns.TypeA, false); len(resp.Answer) != 1 {
		t.Fatalf("resolver broken after bad input: %v", resp)
	}
}

func readFrame(t *testing.T, c net.Conn) *dns.Msg {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var lenBuf [2]byte
	if _, err := io.ReadFull(c, lenBuf[:]); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, binary.BigEndian.Uint16(lenBuf[:]))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	m := new(dns.Msg)
	if err := m.Unpack(buf); err != nil {
		t.Fatal(err)
	}
	return m
}

func longName() []byte {
	var b []byte
	for range 5 {
		b = append(b, 60)
		b = append(b, make([]byte, 60)...)
	}
	for i := range b {
		if b[i] == 0 {
			b[i] = 'x'
		}
	}
	return append(b, 0)
}

func opt() []byte { return optVersion(0) }

func optVersion(v byte) []byte {
	return []byte{0, 0, 41, 0x04, 0xd0, 0, v, 0, 0, 0, 0}
}
