package forward

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/dnswire"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// forwardPointingReply is the reply to query q (a.example. A, no EDNS)
// that a hostile nameserver sends: two addresses of a.example., the first
// owned by a compression pointer forward, to the second's owner, spelled
// out. miekg/dns reads it whole; cut to its first record, the pointer
// leads past the message.
func forwardPointingReply(q []byte) []byte {
	const questionEnd = dnswire.HeaderLen + 11 + 4
	out := append([]byte(nil), q[:questionEnd]...)
	binary.BigEndian.PutUint16(out[2:], dnswire.FlagQR|dnswire.FlagRD|1<<7) // RA
	dnswire.SetANCount(out, 2)
	const rrLen = 2 + 10 + 4
	rr := func(owner []byte, addr byte) []byte { // A, IN, TTL 60, 10.0.0.addr
		return append(owner, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, addr)
	}
	out = append(out, rr([]byte{0xC0, questionEnd + rrLen}, 1)...)
	return append(out, rr(append([]byte(nil), q[dnswire.HeaderLen:questionEnd-4]...), 2)...)
}

// TestForwardPointingReplyIsNotServedCut: a pod's nameserver's reply whose
// owner names point forward is relayed as it came, and what a later
// client is served of it, its first record read for a small buffer (the
// offline pass's read), parses: the reply is not cached, so there is none
// (before, it was cached, and its first record alone read as a name past
// the message).
func TestForwardPointingReplyIsNotServedCut(t *testing.T) {
	var asked atomic.Int32
	u := rawUDPUpstream(t, func(pc net.PacketConn, from net.Addr, q []byte) {
		asked.Add(1)
		_, _ = pc.WriteTo(forwardPointingReply(q), from)
	})
	f := newForwarder(t)
	ups := []netip.AddrPort{u}
	req := query(t, "a.example.", dns.TypeA)
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	got, err := f.Forward(ctx, req, false, ups)
	if err != nil {
		t.Fatal(err)
	}
	if want := forwardPointingReply(req); !bytes.Equal(got, want) {
		t.Fatalf("relayed %x, want it as it came: %x", got, want)
	}
	src := new(quota.Source)
	if out, _, ok := f.AppendCachedFirst(nil, req, ups, src, 1, 512); ok {
		if err := new(dns.Msg).Unpack(out); err != nil {
			t.Errorf("served from the cache, cut to its first record: %x, which does not parse: %v", out, err)
		}
	}
	if _, err := f.Forward(ctx, req, false, ups); err != nil {
		t.Fatal(err)
	}
	if n := asked.Load(); n != 2 {
		t.Errorf("the nameserver asked %d times for two queries, want 2: such a reply is not to be cached", n)
	}
}
