package forward

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/testenv"
)

// icmpFamily is where an ICMP test runs, in a network namespace of its own:
// the upstream's address and a third one, the forger's.
type icmpFamily struct {
	name             string
	upstream, forger netip.Addr
}

var icmpFamilies = []icmpFamily{
	{"ipv4", netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.99")},
	{"ipv6", netip.MustParseAddr("::1"), netip.MustParseAddr("fd00:7a74:646e::99")},
}

// icmpNetns makes a network namespace for fam: loopback up, with the
// forger's address (127.0.0.0/8 is loopback's already).
func icmpNetns(t *testing.T, fam icmpFamily) *testenv.Netns {
	t.Helper()
	n := testenv.NewNetns(t, testenv.UniqueName("ztdns-icmp-"))
	if fam.forger.Is6() {
		n.AddAddr(t, fam.forger.String()+"/128", "lo")
	}
	return n
}

// forwardIn calls f.ForwardFrom from inside n, so the exchange's sockets
// are n's, and waits for it as awaitForward does.
func forwardIn(t *testing.T, n *testenv.Netns, f *Forwarder, req []byte, up netip.AddrPort) (*dns.Msg, Origin) {
	t.Helper()
	var from Origin
	done := make(chan forwardResult, 1)
	go func() {
		var r forwardResult
		if err := n.Do(func() error {
			r.reply, from, r.err = f.ForwardFrom(context.Background(), req, false, []netip.AddrPort{up})
			return nil
		}); err != nil {
			r.err = err
		}
		done <- r
	}()
	m := awaitForward(t, done, "")
	return m, from
}

// icmpIgnored is f's count of the ICMP errors ignored on exchanges with up.
func icmpIgnored(f *Forwarder, up netip.AddrPort) float64 {
	var m dto.Metric
	_ = f.upstreams.icmp.WithLabelValues(f.upstreams.label(up)).Write(&m)
	return m.GetCounter().GetValue()
}

// TestForgedPortUnreachableIgnored: an ICMP port unreachable about a
// forwarded UDP query, quoting the exchange's addresses and ports (the
// node's address and the forwarding socket's port, the upstream's address
// and port) but sent from another address, as a pod with NET_RAW that
// guessed the port would send it, does not end the exchange: the
// upstream's answer, sent once the forwarder has seen the ICMP, is
// relayed, and the ICMP is counted and logged. So with a thousand of them,
// four times what the socket's receive buffer holds queued (255 with the
// default 208 KiB): each is read off the error queue, which would
// otherwise fill the buffer and crowd out the reply, and one line is
// logged. Before: SERVFAIL as soon as the first
// ICMP came (a 300 ms upstream's answer was lost to it 30 ms in).
func TestForgedPortUnreachableIgnored(t *testing.T) {
	t.Parallel()
	for _, fam := range icmpFamilies {
		for _, forged := range []int{1, 1000} {
			t.Run(fmt.Sprintf("%s/%d", fam.name, forged), func(t *testing.T) {
				t.Parallel()
				testForgedPortUnreachable(t, fam, forged)
			})
		}
	}
}

func testForgedPortUnreachable(t *testing.T, fam icmpFamily, forged int) {
	n := icmpNetns(t, fam)
	var logged testenv.Log
	f := newForwarder(t, WithTimeout(guard), WithLogger(slog.New(slog.NewTextHandler(&logged, nil))))
	forger := rawICMPSocket(t, n, fam.forger)

	// seen waits until the forwarder has ignored want ICMP errors about
	// queries to up, and says whether it has (false: the test ended first).
	seen := func(stop <-chan struct{}, up netip.AddrPort, want float64) bool {
		for icmpIgnored(f, up) < want {
			select {
			case <-stop:
				return false
			case <-time.After(10 * time.Millisecond):
			}
		}
		return true
	}
	up := udpUpstreamWith(t, n.Do, netip.AddrPortFrom(fam.upstream, 0), func(stop <-chan struct{}, pc net.PacketConn, from net.Addr, q []byte, first bool) {
		up := netip.MustParseAddrPort(pc.LocalAddr().String())
		req := new(dns.Msg)
		if err := req.Unpack(q); err != nil {
			t.Errorf("upstream got a bad query: %v", err)
			return
		}
		if first {
			// In batches the socket's buffer holds, each seen before the
			// next goes: what the forwarder may drop does not count.
			const batch = 50
			fwd := from.(*net.UDPAddr).AddrPort()
			for sent := 0; sent < forged; {
				for range min(batch, forged-sent) {
					if err := forger.portUnreachable(fwd, up); err != nil {
						t.Errorf("send a forged ICMP: %v", err)
						return
					}
					sent++
				}
				if !seen(stop, up, float64(sent)) {
					return
				}
			}
		}
		// Answer once the forwarder has seen the ICMP errors: not before,
		// lest the answer come first; nor ever, should the exchange have
		// ended without them.
		if seen(stop, up, float64(forged)) {
			answerWith(t, pc, from, req, "198.51.100.1")
		}
	})

	m, origin := forwardIn(t, n, f, query(t, "www.example.com.", dns.TypeA), up)

	if m.Rcode != dns.RcodeSuccess || firstA(m) != "198.51.100.1" {
		t.Errorf("%s %q (failure %q), want the upstream's answer 198.51.100.1: the forged ICMP ended the exchange", dns.RcodeToString[m.Rcode], firstA(m), origin.Failure)
	}
	if got := icmpIgnored(f, up); got != float64(forged) {
		t.Errorf("ztdns_forward_upstream_icmp_ignored_total{to=%q} = %v, want %d", up, got, forged)
	}
	const line = "ignored an ICMP error about a forwarded query"
	if got := strings.Count(logged.String(), line); got != 1 || !logged.Contains("from="+fam.forger.String()) {
		t.Errorf("log %q: %d lines, want one on the ICMP ignored, from %s", logged.String(), got, fam.forger)
	}
}

// TestRealRefusalServfailsAtOnce: a port unreachable from the upstream's
// own address (nothing listens there), or from a ClusterIP's backend
// (conntrack makes it come from the ClusterIP), still ends the exchange at
// once: SERVFAIL, refused, under a timeout the test never reaches. A
// ClusterIP without endpoints (kube-proxy rejects the datagram on the
// node) fails the send: SERVFAIL at once too, an error.
func TestRealRefusalServfailsAtOnce(t *testing.T) {
	t.Parallel()
	const (
		clusterIP   = "10.96.0.10" // DNAT to a backend where nothing listens
		noEndpoints = "10.96.0.11" // rejected by the node
	)
	listed := func(a string) func(netip.AddrPort) netip.AddrPort {
		return func(netip.AddrPort) netip.AddrPort { return netip.MustParseAddrPort(a + ":53") }
	}
	dead := func(dead netip.AddrPort) netip.AddrPort { return dead }
	for _, tc := range []struct {
		name   string
		family string
		nft    []string // nft commands for the namespace's table t, if any
		up     func(dead netip.AddrPort) netip.AddrPort
		want   string // Origin.Failure
	}{
		{"nothing listens/ipv4", "ipv4", nil, dead, FailureRefused},
		{"nothing listens/ipv6", "ipv6", nil, dead, FailureRefused},
		{"ClusterIP whose backend refuses", "ipv4", []string{
			"add chain ip t out { type nat hook output priority -100 ; }",
			"add rule ip t out ip daddr " + clusterIP + " udp dport 53 dnat to %s",
		}, listed(clusterIP), FailureRefused},
		{"ClusterIP without endpoints", "ipv4", []string{
			"add chain ip t out { type filter hook output priority 0 ; }",
			"add rule ip t out ip daddr " + noEndpoints + " udp dport 53 counter reject",
		}, listed(noEndpoints), FailureError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			i := slices.IndexFunc(icmpFamilies, func(f icmpFamily) bool { return f.name == tc.family })
			fam := icmpFamilies[i]
			n := icmpNetns(t, fam)
			up := tc.up(deadAddrIn(t, n, fam.upstream))
			if tc.nft != nil {
				testenv.LookPath(t, "nft")
				// The ClusterIPs are routed as a node routes them, here
				// through loopback, from the node's address.
				if out, err := n.Output(t, nil, 10*time.Second, "ip", "route", "add", "10.96.0.0/12", "dev", "lo", "src", fam.upstream.String()); err != nil {
					t.Fatalf("ip route add: %v: %s", err, out)
				}
				backend := deadAddrIn(t, n, netip.MustParseAddr("127.0.0.2")) // not the node's own address
				for _, c := range append([]string{"add table ip t"}, tc.nft...) {
					if strings.Contains(c, "%s") {
						c = fmt.Sprintf(c, backend)
					}
					if out, err := n.Output(t, nil, 10*time.Second, "nft", c); err != nil {
						t.Fatalf("nft %s: %v: %s", c, err, out)
					}
				}
			}
			f := newForwarder(t, WithTimeout(guard))

			m, origin := forwardIn(t, n, f, query(t, "www.example.com.", dns.TypeA), up)

			if m.Rcode != dns.RcodeServerFailure || origin.Failure != tc.want {
				t.Errorf("%s (failure %q), want SERVFAIL, %s", dns.RcodeToString[m.Rcode], origin.Failure, tc.want)
			}
			if tc.want == FailureError {
				// The refused send is not tried again.
				if got := nftPackets(t, n); got != "1" {
					t.Errorf("%s datagrams sent to the rejecting rule, want 1", got)
				}
			}
			if got := icmpIgnored(f, up); got != 0 {
				t.Errorf("%v ICMP errors ignored, want none", got)
			}
		})
	}
}

// nftPackets is the packet count of the counter in n's table t.
func nftPackets(t *testing.T, n *testenv.Netns) string {
	t.Helper()
	out, err := n.Output(t, nil, 10*time.Second, "nft", "list", "table", "ip", "t")
	if err != nil {
		t.Fatalf("nft list table ip t: %v: %s", err, out)
	}
	m := regexp.MustCompile(`counter packets (\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no counter in table t: %s", out)
	}
	return m[1]
}

// deadAddrIn is a UDP port of addr inside n where nothing listens.
func deadAddrIn(t *testing.T, n *testenv.Netns, addr netip.Addr) netip.AddrPort {
	t.Helper()
	var dead netip.AddrPort
	if err := n.Do(func() error {
		pc, err := net.ListenPacket("udp", netip.AddrPortFrom(addr, 0).String())
		if err != nil {
			return err
		}
		dead = netip.MustParseAddrPort(pc.LocalAddr().String())
		return pc.Close()
	}); err != nil {
		t.Fatalf("find a dead port in %s: %v", n.Name, err)
	}
	return dead
}

// answerWith answers req with one A record, addr.
func answerWith(t *testing.T, pc net.PacketConn, to net.Addr, req *dns.Msg, addr string) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP(addr)}}
	b, err := m.Pack()
	if err != nil {
		t.Errorf("pack: %v", err)
		return
	}
	if _, err := pc.WriteTo(b, to); err != nil {
		t.Errorf("answer: %v", err)
	}
}

// icmpForger is a raw ICMP (ICMPv6) socket inside a namespace, bound to
// the address it forges from.
type icmpForger struct {
	fd   int
	from netip.Addr
}

func rawICMPSocket(t *testing.T, n *testenv.Netns, from netip.Addr) *icmpForger {
	t.Helper()
	s := &icmpForger{fd: -1, from: from}
	err := n.Do(func() error {
		var err error
		if from.Is4() {
			s.fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
			if err == nil {
				err = unix.Bind(s.fd, &unix.SockaddrInet4{Addr: from.As4()})
			}
		} else {
			// The kernel fills in an ICMPv6 raw socket's checksum.
			s.fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
			if err == nil {
				err = unix.Bind(s.fd, &unix.SockaddrInet6{Addr: from.As16()})
			}
		}
		return err
	})
	// Closed at cleanup as soon as it is open, the Bind failing too.
	if s.fd >= 0 {
		t.Cleanup(func() { unix.Close(s.fd) })
	}
	if err != nil {
		t.Fatalf("raw ICMP socket in %s: %v", n.Name, err)
	}
	return s
}

// portUnreachable sends the node at fwd's address an ICMP (ICMPv6) port
// unreachable quoting a UDP datagram from fwd to up, as the kernel sends
// one for a datagram to a port where nothing listens.
func (s *icmpForger) portUnreachable(fwd, up netip.AddrPort) error {
	udp := binary.BigEndian.AppendUint16(nil, fwd.Port())
	udp = binary.BigEndian.AppendUint16(udp, up.Port())
	udp = binary.BigEndian.AppendUint16(udp, 8)
	udp = append(udp, 0, 0) // no checksum
	if fwd.Addr().Is4() {
		ip := []byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, unix.IPPROTO_UDP, 0, 0}
		ip = append(ip, fwd.Addr().AsSlice()...)
		ip = append(ip, up.Addr().AsSlice()...)
		binary.BigEndian.PutUint16(ip[10:], inetChecksum(ip))
		msg := append([]byte{3, 3, 0, 0, 0, 0, 0, 0}, ip...) // destination unreachable, port unreachable
		msg = append(msg, udp...)
		binary.BigEndian.PutUint16(msg[2:], inetChecksum(msg))
		return unix.Sendto(s.fd, msg, 0, &unix.SockaddrInet4{Addr: fwd.Addr().As4()})
	}
	ip := []byte{0x60, 0, 0, 0, 0, 8, unix.IPPROTO_UDP, 64}
	ip = append(ip, fwd.Addr().AsSlice()...)
	ip = append(ip, up.Addr().AsSlice()...)
	msg := append([]byte{1, 4, 0, 0, 0, 0, 0, 0}, ip...) // destination unreachable, port unreachable
	msg = append(msg, udp...)
	return unix.Sendto(s.fd, msg, 0, &unix.SockaddrInet6{Addr: fwd.Addr().As16()})
}

// inetChecksum is the Internet checksum of b (RFC 1071).
func inetChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
