//go:build linux

package forward

import (
	"context"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// TestNoSocketLeftOpenAfterFailures forwards queries that fail every way an
// upstream can make them fail, the pod's own nameserver perhaps (nothing
// listens there, it never answers, it answers junk, its reply does not fit
// the budget, it is a broadcast address), and checks that the agent holds
// no more descriptors after than before: each exchange's socket is closed
// on its way out, not left to the garbage collector's finalizer, which is
// held off for the test.
func TestNoSocketLeftOpenAfterFailures(t *testing.T) {
	dead := deadLoopbackPort(t)
	silent := silentUpstream(t).addr
	junk := rawUDPUpstream(t, func(pc net.PacketConn, from net.Addr, q []byte) {
		_, _ = pc.WriteTo([]byte{0, 1, 2}, from) // shorter than a header
		r := append([]byte(nil), q...)
		r[0] ^= 0xff // another ID
		r[2] |= 0x80 // QR
		_, _ = pc.WriteTo(r, from)
	})
	answers := startUpstream(t, answerA(300, "198.51.100.1")).addr
	broadcast := netip.MustParseAddrPort("255.255.255.255:53")
	f := newForwarder(t, WithCacheSize(0), WithTimeout(100*time.Millisecond))
	tight := newForwarder(t, WithCacheSize(0), WithBudget(quota.NewBudget(dns.MinMsgSize/16, 0)))
	for _, tc := range []struct {
		name string
		f    *Forwarder
		up   netip.AddrPort
	}{
		{"nothing listens", f, dead},
		{"never answers", f, silent},
		{"answers junk", f, junk},
		{"reply over the budget", tight, answers},
		{"broadcast", f, broadcast},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer debug.SetGCPercent(debug.SetGCPercent(-1))
			before := testenv.OpenFDs(t, os.Getpid())
			const n = 20
			for range n {
				ctx, cancel := context.WithTimeout(context.Background(), guard)
				b, err := tc.f.Forward(ctx, query(t, "www.example.com.", dns.TypeA), false, []netip.AddrPort{tc.up})
				cancel()
				if err == nil && dnstest.Unpack(t, b).Rcode != dns.RcodeServerFailure {
					t.Fatalf("Forward to %v: an answer, want a failure", tc.up)
				}
			}
			if after := testenv.OpenFDs(t, os.Getpid()); after > before {
				t.Errorf("%d descriptors open after %d failed queries, %d before", after, n, before)
			}
		})
	}
}

// deadLoopbackPort is a loopback UDP port where nothing listens: the
// kernel answers a datagram to it with a port unreachable.
func deadLoopbackPort(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(pc.LocalAddr().String())
	pc.Close()
	return addr
}
