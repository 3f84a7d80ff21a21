//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
)

// The agent's default --heartbeat-stale: the programs stop redirecting once
// the agent has been silent this long.
const heartbeatStale = 3 * time.Second

// Intervals between the steady clients' queries. timingEvery is the
// resolution of the fail-open times; lossEvery is dense enough that a
// window of a few milliseconds in which queries die shows as lost queries.
const (
	timingEvery = 20 * time.Millisecond
	lossEvery   = 2 * time.Millisecond
)

// TestFailOpen stops the agent under a steady query loop in a marked pod
// whose own nameserver is real (and answers ownMarker, where ztdns answers
// addressVIP), and checks that the pod is answered by its own nameserver
// again, and stays so; how long after the signal that took is logged (the
// README's numbers come from that log).
//
// SIGKILL: nobody says goodbye, so the programs notice the heartbeat is
// stale. The agent beats every second and the bound is 3 s, so that happens
// between 2 and 3 s after the kill; the test waits far longer before it
// gives up.
//
// SIGTERM: the agent makes the heartbeat stale on its way out, so the pod
// fails open at once, and a graceful stop loses no query: every one is
// answered, by ztdns or by the pod's own nameserver. Were the pod left to
// the heartbeat, the queries of those seconds (one every lossEvery) would
// go to an agent that is gone, and be lost.
func TestFailOpen(t *testing.T) {
	// How long the loop may wait for the pod's own nameserver: far past
	// the heartbeat's bound, for a loaded machine, and not a bound on
	// fail-open.
	const failOpenWait = heartbeatStale + 30*time.Second
	// Queries answered before the stop, and by the pod's nameserver after
	// fail-open before the loop stops: the second shows it stays open.
	const answersBefore, answersAfter = 10, 25
	for _, tc := range []struct {
		name     string
		signal   syscall.Signal
		every    time.Duration
		lossless bool
	}{
		{name: "SIGKILL", signal: syscall.SIGKILL, every: timingEvery},
		{name: "SIGTERM", signal: syscall.SIGTERM, every: lossEvery, lossless: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t)
			own := c.serve(t, podNameserver1, ownMarker)
			a := c.startReadyAgent(t)
			p := c.markedPod(t, "fail-open", podNameserver1)
			if got, err := c.dig(t, p, addressHost); err != nil || !slices.Equal(got, []netip.Addr{addressVIP}) {
				t.Fatalf("before the stop: dig %s = %v, %v; want ztdns's %s", addressHost, got, err, addressVIP)
			}

			// The loop runs until stopped below; its own bound is only a
			// backstop.
			l := c.startLoop(t, p, tc.every, 500*time.Millisecond, 2*failOpenWait)
			testenv.Eventually(t, 30*time.Second, fmt.Sprintf("%d queries answered by ztdns before the %s", answersBefore, tc.name),
				func() bool { return l.answered(addressVIP) >= answersBefore })
			stoppedAt := signal(t, a, tc.signal)
			err := a.Wait(t, 10*time.Second)
			if tc.signal == syscall.SIGTERM && err != nil {
				t.Errorf("agent exited with %v after SIGTERM, want success", err)
			}
			testenv.Eventually(t, failOpenWait, fmt.Sprintf("%d queries answered by the pod's own nameserver after the %s", answersAfter, tc.name),
				func() bool { return l.answered(ownMarker) >= answersAfter })
			l.stop(t)
			qs := l.wait(t)

			var first *loopQuery
			for i, q := range qs {
				answer, ok := q.answer()
				switch {
				case q.done.Before(stoppedAt) && answer != addressVIP:
					t.Errorf("before the %s: query %d got %q, want ztdns's %s", tc.name, q.seq, q.outcome, addressVIP)
				case ok && answer == ownMarker && first == nil:
					first = &qs[i]
				case ok && answer != ownMarker && answer != addressVIP:
					t.Errorf("query %d got %s: neither ztdns (%s) nor the pod's nameserver (%s)", q.seq, answer, addressVIP, ownMarker)
				}
			}
			if first == nil {
				t.Fatalf("the pod's own nameserver never answered after the %s: %s", tc.name, tallyOf(qs))
			}
			t.Logf("fail open after %s: the pod's own nameserver answered %v after the signal (query sent %v after it); %s",
				tc.name, first.done.Sub(stoppedAt).Round(time.Millisecond), first.sent.Sub(stoppedAt).Round(time.Millisecond), tallyOf(qs))
			if r := tallyOf(qs); tc.lossless && r.lostTotal() > 0 {
				for _, q := range qs {
					if _, ok := q.answer(); !ok {
						t.Logf("lost: query %d sent %v after the %s: %s", q.seq, q.sent.Sub(stoppedAt).Round(time.Millisecond), tc.name, q.outcome)
					}
				}
				t.Errorf("%d queries lost across a graceful stop, want none: each should reach ztdns or, once it failed open, the pod's nameserver", r.lostTotal())
			}
			// Once open, it stays open: every later query reaches the
			// pod's own nameserver.
			for _, q := range qs {
				if q.sent.After(first.done) {
					if answer, _ := q.answer(); answer != ownMarker {
						t.Errorf("query %d, sent after fail-open, got %q; want %s from the pod's nameserver", q.seq, q.outcome, ownMarker)
					}
				}
			}
			if askers := askersOf(own, addressHost); !slices.Contains(askers, p.IPv4) {
				t.Errorf("the pod's nameserver was asked by %v, want the pod itself (%s)", askers, p.IPv4)
			}
		})
	}
}
