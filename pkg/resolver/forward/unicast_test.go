//go:build linux

package forward

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// TestNoBroadcastOrMulticastUpstream forwards, from a node namespace whose
// default route leads across a veth pair, queries to the limited broadcast
// address, the veth subnet's broadcast address and the all-hosts group: a
// pod can make the agent forward to whatever nameserver it addressed. A
// listener on port 53 at the far end of the veth (a host on the node's
// network) must get none of them, and each query a SERVFAIL at once (the
// exchange's error, counted as such), not after the timeout.
func TestNoBroadcastOrMulticastUpstream(t *testing.T) {
	node := testenv.NewNode(t)
	far := node.AddPod(t, testenv.PodConfig{})
	if out, err := node.Output(t, nil, 10*time.Second, "ip", "route", "add", "default", "via", far.IPv4.String()); err != nil {
		t.Fatalf("ip route add default: %v\n%s", err, out)
	}
	var pc net.PacketConn
	if err := far.Do(func() (err error) {
		pc, err = net.ListenPacket("udp4", "0.0.0.0:53")
		return err
	}); err != nil {
		t.Fatalf("listen in %s: %v", far.Name, err)
	}
	t.Cleanup(func() { pc.Close() })

	// received returns the datagrams the listener got before a sentinel the
	// node sends it now, by unicast over the same veth.
	received := func(t *testing.T) int {
		t.Helper()
		sentinel := []byte("sentinel " + testenv.UniqueName(""))
		if err := node.Do(func() error {
			c, err := net.Dial("udp4", netip.AddrPortFrom(far.IPv4, 53).String())
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write(sentinel)
			return err
		}); err != nil {
			t.Fatalf("send sentinel: %v", err)
		}
		_ = pc.SetReadDeadline(time.Now().Add(guard))
		buf := make([]byte, 65535)
		for n := 0; ; n++ {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				t.Fatalf("listener: %v (waiting for the sentinel)", err)
			}
			if string(buf[:k]) == string(sentinel) {
				return n
			}
			t.Logf("the listener got %d octets from %s", k, from)
		}
	}

	subnetBroadcast := far.IPv4.As4()
	subnetBroadcast[3] = 255
	f := newForwarder(t)
	for _, dst := range []netip.Addr{
		netip.MustParseAddr("255.255.255.255"),
		netip.AddrFrom4(subnetBroadcast),
		netip.MustParseAddr("224.0.0.1"),
	} {
		t.Run(dst.String(), func(t *testing.T) {
			up := netip.AddrPortFrom(dst, 53)
			req := query(t, testenv.UniqueName("bcast")+".example.", dns.TypeA)
			var reply []byte
			var origin Origin
			// One upstream: the exchange runs on the calling goroutine,
			// so its socket is made in the node's namespace.
			if err := node.Do(func() (err error) {
				ctx, cancel := context.WithTimeout(context.Background(), guard)
				defer cancel()
				reply, origin, err = f.ForwardFrom(ctx, req, false, []netip.AddrPort{up})
				return err
			}); err != nil {
				t.Fatalf("ForwardFrom: %v", err)
			}
			if m := dnstest.Unpack(t, reply); m.Rcode != dns.RcodeServerFailure {
				t.Errorf("rcode %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
			}
			if origin.Failure != FailureError || origin.Upstream != up {
				t.Errorf("origin %+v, want failure %q from %s: the send refused at once, not a %q", origin, FailureError, up, FailureTimeout)
			}
			if got := counterValue(t, f.upstreams.queries.WithLabelValues(up.String(), resultError)); got != 1 {
				t.Errorf("upstream_queries_total{to=%q,result=%q} = %v, want 1", up, resultError, got)
			}
			if n := received(t); n != 0 {
				t.Errorf("a host on the node's network got %d datagrams sent to %s, want none", n, up)
			}
		})
	}
}
