//go:build linux

package testenv

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
)

// TestProbeKeepsWithinInFlight: a probe whose answers come late (100 ms,
// five times its pace) waits for room instead of asking on: its
// nameserver never holds more than InFlight of its queries unanswered, and
// every query the probe sent is answered.
func TestProbeKeepsWithinInFlight(t *testing.T) {
	for _, tcp := range []bool{false, true} {
		t.Run(map[bool]string{false: "udp", true: "tcp"}[tcp], func(t *testing.T) {
			ns := &heldNameserver{next: dnstest.Delayed(100*time.Millisecond, dnstest.Marker(netip.MustParseAddr("192.0.2.1"), netip.IPv6Unspecified()))}
			srv := dnstest.Start(t, "127.0.0.1:0", ns)
			l := newFloodLoad(FloodConfig{Mode: "probe", Server: srv.Addr.String(), Name: "probe.example", TCP: tcp,
				Every: 20 * time.Millisecond, Timeout: 10 * time.Second, InFlight: 2, For: 500 * time.Millisecond})
			l.probe()
			r, most := l.res, ns.mostHeld()
			t.Logf("%d sent, %d answered; at most %d unanswered at once", r.Sent, r.Answered, most)
			if most > 2 {
				t.Errorf("the nameserver held %d of the probe's queries at once, want at most InFlight (2)", most)
			}
			if r.Sent == 0 || r.Answered != r.Sent {
				t.Errorf("%d of %d probes answered (%d timed out, %d failed, replies %v), want all", r.Answered, r.Sent, r.Timeouts, r.Errors, r.Rcodes)
			}
		})
	}
}

// heldNameserver answers every query as next (a dnstest.Delayed) does,
// and records the most queries it held unanswered at once.
type heldNameserver struct {
	next dnstest.Responder

	mu         sync.Mutex
	held, most int
}

func (s *heldNameserver) Reply(req *dns.Msg, local netip.AddrPort) *dns.Msg {
	s.mu.Lock()
	s.held++
	s.most = max(s.most, s.held)
	s.mu.Unlock()
	reply := s.next.Reply(req, local)
	// Let go before the reply leaves: the probe cannot see it earlier.
	s.mu.Lock()
	s.held--
	s.mu.Unlock()
	return reply
}

func (s *heldNameserver) mostHeld() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.most
}
