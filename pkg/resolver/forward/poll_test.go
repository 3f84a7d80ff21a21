package forward

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
)

// TestConcurrentExchangesAllAnswered forwards bursts of queries at once,
// each a name of its own, to an upstream that holds each burst's
// replies until every query of it came, then sends half of them at once
// and the rest a little later: the exchanges wait on the Forwarder's
// epoll set together, one leading (udpPoller) and the others following,
// and the first half leave, the lead passing among them, while the
// second half wait on. Every query is answered; followers left with no
// leader would wait for the timeout, longer than the test's guard, and
// get SERVFAIL.
func TestConcurrentExchangesAllAnswered(t *testing.T) {
	const bursts, size = 30, 64
	type burst struct {
		arrived atomic.Int32
		all     chan struct{}
	}
	var current atomic.Pointer[burst]
	up := startUpstream(t, func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
		b := current.Load()
		if b.arrived.Add(1) == size {
			close(b.all)
		}
		select {
		case <-b.all:
		case <-u.stop:
			return
		}
		if strings.HasPrefix(req.Question[0].Name, "late-") {
			select {
			case <-time.After(20 * time.Millisecond):
			case <-u.stop:
				return
			}
		}
		answerA(300, "198.51.100.1")(u, w, req)
	})
	// No resend within the guard: only the wait can answer a query.
	f := newForwarder(t, WithCacheSize(0), WithTimeout(4*guard))
	for b := range bursts {
		current.Store(&burst{all: make(chan struct{})})
		var wg sync.WaitGroup
		errs := make(chan error, size)
		for i := range size {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), guard)
				defer cancel()
				name := fmt.Sprintf("b%d-%d.example.", b, i)
				if i%2 == 1 {
					name = "late-" + name
				}
				out, err := f.Forward(ctx, query(t, name, dns.TypeA), false, []netip.AddrPort{up.addr})
				if err == nil {
					if m := dnstest.Unpack(t, out); m.Rcode != dns.RcodeSuccess || firstA(m) != "198.51.100.1" {
						err = fmt.Errorf("%s: %v", name, m)
					}
				}
				if err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("burst %d: %v", b, err)
		}
	}
}
