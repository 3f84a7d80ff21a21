package forward

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/testenv"
)

// fourAddrs is the set the rotation tests' upstream answers, in its order.
var fourAddrs = []string{"10.96.0.11", "10.96.0.12", "10.96.0.13", "10.96.0.14"}

// checkRotated checks the replies to the queries with IDs 0, 1, …: each
// has the upstream's set, and they do not all start with the same address
// (kube-dns's loadbalance shuffles every reply; a reply served again must
// not fix the order of the first for every client).
func checkRotated(t *testing.T, replies []*dns.Msg) {
	t.Helper()
	firsts := map[string]bool{}
	for id, m := range replies {
		if int(m.Id) != id {
			t.Fatalf("reply %d has ID %d", id, m.Id)
		}
		var got []string
		for _, rr := range m.Answer {
			got = append(got, rr.(*dns.A).A.String())
		}
		slices.Sort(got)
		if !slices.Equal(got, fourAddrs) {
			t.Fatalf("reply to ID %d answers %v, want %v", id, got, fourAddrs)
		}
		firsts[firstA(m)] = true
	}
	if len(firsts) < 2 {
		t.Errorf("%d replies all start with %v: the set is not rotated", len(replies), firsts)
	}
}

func TestCachedAnswerRotates(t *testing.T) {
	t.Parallel()
	u := startUpstream(t, answerA(300, fourAddrs...))
	f := newForwarder(t)
	forward(t, f, query(t, "lb.example.com.", dns.TypeA, withID(0xFFFF)), false, u.addr)
	var replies []*dns.Msg
	for id := range 8 {
		replies = append(replies, forward(t, f, query(t, "lb.example.com.", dns.TypeA, withID(uint16(id))), false, u.addr))
	}
	if n := u.queries.Load(); n != 1 {
		t.Fatalf("the upstream was asked %d times, want once (the rest from the cache)", n)
	}
	checkRotated(t, replies)
}

func TestSharedAnswerRotates(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	u := startUpstream(t, func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
		select {
		case <-release:
		case <-u.stop:
		}
		answerA(300, fourAddrs...)(u, w, req)
	})
	// The waiters' copies only; the exchange outlasts the joins however
	// slow the machine (the default timeout, 2 s, might not).
	f := newForwarder(t, WithCacheSize(0), WithTimeout(4*guard))
	lead := startForward(context.Background(), f, query(t, "lb.example.com.", dns.TypeA, withID(0xFFFF)), false, []netip.AddrPort{u.addr})
	testenv.Eventually(t, guard, "the leader asks", func() bool { return u.queries.Load() == 1 })
	var waiters []<-chan forwardResult
	for id := range 8 {
		waiters = append(waiters, startForward(context.Background(), f, query(t, "lb.example.com.", dns.TypeA, withID(uint16(id))), false, []netip.AddrPort{u.addr}))
		testenv.Eventually(t, guard, "the query joins the exchange", func() bool { return joined(f) == id+1 })
	}
	close(release)
	awaitForward(t, lead, "")
	var replies []*dns.Msg
	for _, w := range waiters {
		replies = append(replies, awaitForward(t, w, ""))
	}
	checkRotated(t, replies)
}
