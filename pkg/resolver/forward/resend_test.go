package forward

import (
	"context"
	"maps"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/testenv"
)

// lossyAddr is what a lossy upstream answers with.
const lossyAddr = "198.51.100.7"

// startLossyUpstream starts an upstream that loses the first query for
// each name (as a datagram lost on its way, to the conntrack race or a
// full queue) and answers every later one with lossyAddr.
func startLossyUpstream(t *testing.T) *testUpstream {
	t.Helper()
	var mu sync.Mutex
	seen := map[string]bool{}
	answer := answerA(60, lossyAddr)
	return startUpstream(t, func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
		name := strings.ToLower(req.Question[0].Name)
		mu.Lock()
		lost := !seen[name]
		seen[name] = true
		mu.Unlock()
		if !lost {
			answer(u, w, req)
		}
	})
}

// resendCounts reads f's resend counter: value by (to, reason).
func resendCounts(t *testing.T, f *Forwarder) map[[2]string]float64 {
	t.Helper()
	return counterVecValues(t, f.upstreams.resends, "to", "reason")
}

// resendTotal is the sum of f's resend counter. A resend is counted once
// its write returned, which may be after its reply reached the exchange.
func resendTotal(t *testing.T, f *Forwarder) float64 {
	t.Helper()
	var n float64
	for _, v := range resendCounts(t, f) {
		n += v
	}
	return n
}

// wantResends waits until f counted a resend, then checks its resend
// counter is want.
func wantResends(t *testing.T, f *Forwarder, want map[[2]string]float64) {
	t.Helper()
	testenv.Eventually(t, guard, "the resend is counted", func() bool { return resendTotal(t, f) >= 1 })
	if got := resendCounts(t, f); !maps.Equal(got, want) {
		t.Errorf("resends %v, want %v", got, want)
	}
}

// TestClientRetryAnsweredWhenTheFirstQueryIsLost: a client tuned against
// lost datagrams (glibc's "options timeout:1 attempts:2", dig +time=1
// +tries=2) asks again after a second. Its retry joins the exchange of its
// first query, whose datagram the upstream lost; the query goes out again,
// and both are answered. (Before, the retry sent nothing: the upstream
// saw one query, and both got SERVFAIL at the timeout, where a client
// asking the upstream itself got its answer in a second.) The clock is
// the test's and the timeout a minute: the exchange's own resend, half-way
// through, does not come while the test runs, so only the retry's can
// answer.
func TestClientRetryAnsweredWhenTheFirstQueryIsLost(t *testing.T) {
	t.Parallel()
	up := startLossyUpstream(t)
	clock := newFakeClock()
	f := newForwarder(t, WithNow(clock.Now), WithTimeout(time.Minute))
	ups := []netip.AddrPort{up.addr}
	first := startForward(context.Background(), f, query(t, "lost.example.com.", dns.TypeA, withID(1)), false, ups)
	testenv.Eventually(t, guard, "the first query reaches the upstream", func() bool { return up.queries.Load() >= 1 })
	clock.Advance(time.Second) // the client's wait before it asks again
	retry := startForward(context.Background(), f, query(t, "lost.example.com.", dns.TypeA, withID(2)), false, ups)
	for i, done := range []<-chan forwardResult{first, retry} {
		m := awaitForward(t, done, "")
		if m.Id != uint16(i+1) || m.Rcode != dns.RcodeSuccess || firstA(m) != lossyAddr {
			t.Errorf("query %d: ID %d, %s %q; want ID %d, NOERROR %s", i+1, m.Id, dns.RcodeToString[m.Rcode], firstA(m), i+1, lossyAddr)
		}
	}
	if n := up.queries.Load(); n != 2 {
		t.Errorf("the upstream got %d queries, want 2: the lost one, and the one sent again", n)
	}
	wantResends(t, f, map[[2]string]float64{{up.addr.String(), resendJoined}: 1})
}

// TestExchangeResendsOnceOnItsOwn: a query alone, whose datagram the
// upstream lost, is sent again half-way through the timeout, and
// answered: a client that waits longer than the timeout (glibc's default
// 5 s) gets its answer, not SERVFAIL. To an upstream that never answers
// it is sent twice in all. (Before: SERVFAIL, one query sent.)
func TestExchangeResendsOnceOnItsOwn(t *testing.T) {
	t.Parallel()
	t.Run("lost", func(t *testing.T) {
		t.Parallel()
		up := startLossyUpstream(t)
		f := newForwarder(t)
		m := forwardGuarded(t, f, query(t, "lost.example.com.", dns.TypeA), false, up.addr)
		if m.Rcode != dns.RcodeSuccess || firstA(m) != lossyAddr {
			t.Errorf("got %s %q, want NOERROR %s", dns.RcodeToString[m.Rcode], firstA(m), lossyAddr)
		}
		if n := up.queries.Load(); n != 2 {
			t.Errorf("the upstream got %d queries, want 2", n)
		}
		wantResends(t, f, map[[2]string]float64{{up.addr.String(), resendTimer}: 1})
	})
	t.Run("silent", func(t *testing.T) {
		t.Parallel()
		up := silentUpstream(t)
		f := newForwarder(t, WithTimeout(time.Second))
		m := forwardGuarded(t, f, query(t, "down.example.com.", dns.TypeA), false, up.addr)
		if m.Rcode != dns.RcodeServerFailure {
			t.Errorf("got %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
		}
		// The second went out half a second before Forward returned.
		testenv.Eventually(t, guard, "the upstream gets the query sent again", func() bool { return up.queries.Load() >= 2 })
		if n := up.queries.Load(); n != 2 {
			t.Errorf("the silent upstream got %d queries, want 2", n)
		}
	})
}

// TestJoinersResendAtMostOncePerInterval: queries joining a UDP exchange
// send its query again, to every upstream it asked, only once it has been
// out resendInterval, and then once per interval however many join, so
// what joiners cost the upstreams stays bounded. A TCP exchange is never
// sent again (the kernel retransmits). The clock is the test's: no
// exchange ends, or sends on its own, while it runs.
func TestJoinersResendAtMostOncePerInterval(t *testing.T) {
	t.Parallel()
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			ups := []*testUpstream{silentUpstream(t), silentUpstream(t)}
			addrs := []netip.AddrPort{ups[0].addr, ups[1].addr}
			clock := newFakeClock()
			f := newForwarder(t, WithNow(clock.Now), WithTimeout(time.Minute))
			var results []<-chan forwardResult
			ask := func() {
				t.Helper()
				before := joined(f)
				results = append(results, startForward(context.Background(), f, query(t, "slow.example.com.", dns.TypeA), p.tcp, addrs))
				if len(results) > 1 {
					testenv.Eventually(t, guard, "the query joins the exchange", func() bool { return joined(f) > before })
				}
			}
			// check: each upstream has got sent queries, resent of them
			// sent again (counted for each upstream: twice as many in all).
			check := func(step string, sent int, resent float64) {
				t.Helper()
				if p.tcp {
					sent, resent = 1, 0
				}
				for _, u := range ups {
					testenv.Eventually(t, guard, step+": the upstream gets what was sent", func() bool { return u.queries.Load() >= int64(sent) })
				}
				for _, u := range ups {
					if n := u.queries.Load(); n != int64(sent) {
						t.Errorf("%s: upstream %s got %d queries, want %d", step, u.addr, n, sent)
					}
				}
				if got := resendTotal(t, f); got != 2*resent {
					t.Errorf("%s: resends counted %v, want %v (%v)", step, got, 2*resent, resendCounts(t, f))
				}
			}

			ask() // leads the exchange
			check("sent", 1, 0)
			ask()
			check("joined at once", 1, 0)
			clock.Advance(resendInterval - time.Nanosecond)
			ask()
			check("joined just before the interval", 1, 0)
			clock.Advance(time.Nanosecond)
			ask()
			check("joined after the interval", 2, 1)
			ask()
			ask()
			check("joined at once after the resend", 2, 1)
			clock.Advance(resendInterval)
			ask()
			check("joined an interval after the resend", 3, 2)
			if !p.tcp {
				want := map[[2]string]float64{{ups[0].addr.String(), resendJoined}: 2, {ups[1].addr.String(), resendJoined}: 2}
				if got := resendCounts(t, f); !maps.Equal(got, want) {
					t.Errorf("resends %v, want %v", got, want)
				}
			}

			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			for i, done := range results {
				if m := awaitForward(t, done, "Close"); m.Rcode != dns.RcodeServerFailure {
					t.Errorf("query %d: %s after Close, want SERVFAIL", i, dns.RcodeToString[m.Rcode])
				}
			}
		})
	}
}
