package resolver

import (
	"fmt"
	"maps"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// TestForwardServfailsCountAnswersByWhoseNameserver: the node's SERVFAIL
// alert counts answers, not exchanges. A node whose resolv.conf names a
// second nameserver that refuses every query at once (both known
// upstreams, as --upstream makes them) answers every query from the
// first: no SERVFAIL is counted, though every query's exchange with the
// refusing one failed first (the rule before counted those exchanges,
// one per query, and fired while every answer was good). A query that gets
// SERVFAIL counts once, node when the nameserver that failed is a known
// one (refusing, or answering SERVFAIL), pod when the pod chose it
// itself; over UDP and TCP alike.
func TestForwardServfailsCountAnswersByWhoseNameserver(t *testing.T) {
	refusing, chosenDead := testenv.DeadAddr(t), testenv.DeadAddr(t)
	servfailing := dnstest.Start(t, "127.0.0.1:0", respondFunc(func(req *dns.Msg, _ netip.AddrPort) *dns.Msg {
		return new(dns.Msg).SetRcode(req, dns.RcodeServerFailure)
	})).Addr
	fwd := forward.New(forward.WithTimeout(30*time.Second), forward.WithCacheSize(0),
		forward.WithKnownUpstreams(refusing, servfailing))
	// The answering nameserver answers each query only once the
	// forwarder has counted as many refusals as it got queries: each
	// query's race is lost by the refusing nameserver first, as on a node
	// where it refuses at once and the other takes a moment.
	var asked atomic.Int64
	answering := dnstest.Start(t, "127.0.0.1:0", respondFunc(func(req *dns.Msg, local netip.AddrPort) *dns.Msg {
		n := asked.Add(1)
		for deadline := time.Now().Add(3 * time.Second); refusedExchanges(fwd, refusing) < n && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		return liveAnswers().Reply(req, local)
	})).Addr
	fwd.KnowUpstreams(answering) // as the agent makes the cluster DNS known once it runs

	var (
		racer       = netip.MustParseAddr("127.0.0.3") // the node's nameservers, one refusing
		chooser     = netip.MustParseAddr("127.0.0.4") // a dead nameserver of its own
		nodeRefused = netip.MustParseAddr("127.0.0.5") // the refusing known one alone
		nodeFailed  = netip.MustParseAddr("127.0.0.6") // a known one answering SERVFAIL
	)
	upstreams := map[netip.Addr][]netip.AddrPort{
		racer:       {answering, refusing},
		chooser:     {chosenDead},
		nodeRefused: {refusing},
		nodeFailed:  {servfailing},
	}
	pods := podcache.New()
	var sourcePods []model.Pod
	for ip := range upstreams {
		sourcePods = append(sourcePods, model.Pod{Namespace: "default", Name: ip.String(), IPs: []netip.Addr{ip}})
	}
	pods.SetSourcePods(sourcePods)
	s := New(Options{
		Pods:      pods,
		Forwarder: fwd,
		Upstreams: func(client, _ netip.AddrPort) ([]netip.AddrPort, bool) {
			return upstreams[client.Addr()], true
		},
	})
	udp, tcp := listenPair(t, "127.0.0.1:0")
	serveUntilCleanup(t, s, fwd, udp, tcp)
	ls := &limitsServer{Server: s, addr: addrPortOf(udp.LocalAddr()), pods: pods, fwd: fwd}

	counted := func() map[string]float64 {
		t.Helper()
		return scrape(t, s.Collector(), "ztdns_resolver_forward_servfails_total")
	}
	want := map[string]float64{
		`ztdns_resolver_forward_servfails_total{cause="node"}`: 0,
		`ztdns_resolver_forward_servfails_total{cause="pod"}`:  0,
	}

	const rounds = 3
	for i := range rounds {
		for _, proto := range []string{"udp", "tcp"} {
			name := fmt.Sprintf("race-%d-%s.example.", i, proto) // never cached: a race each
			if r := ls.ask(t, racer, proto, name); r == nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
				t.Fatalf("%s %s from the node's nameservers, one refusing: %v, want the answering one's address", proto, name, r)
			}
		}
	}
	// What the exchange-based rule counted: every query's exchange with
	// the refusing known nameserver.
	if got := refusedExchanges(fwd, refusing); got != 2*rounds {
		t.Errorf("the refusing nameserver's failed exchanges: %d, want %d (one per query, each lost the race)", got, 2*rounds)
	}
	if got := counted(); !maps.Equal(got, want) {
		t.Errorf("every answer good, SERVFAILs counted\n%s\nwant\n%s", seriesText(got), seriesText(want))
	}

	for _, tc := range []struct {
		from  netip.Addr
		cause string
	}{
		{chooser, "pod"},
		{nodeRefused, "node"},
		{nodeFailed, "node"},
	} {
		for _, proto := range []string{"udp", "tcp"} {
			if r := ls.ask(t, tc.from, proto, "fail.example."); r == nil || r.Rcode != dns.RcodeServerFailure {
				t.Fatalf("%s query to %v: %v, want SERVFAIL", proto, upstreams[tc.from], r)
			}
			want[`ztdns_resolver_forward_servfails_total{cause="`+tc.cause+`"}`]++
			if got := counted(); !maps.Equal(got, want) {
				t.Errorf("after a %s SERVFAIL from %v, counted\n%s\nwant\n%s", proto, upstreams[tc.from], seriesText(got), seriesText(want))
			}
		}
	}

	// A reply refused for the node's budget, or an exchange without a
	// socket, is the node's whichever nameserver was asked.
	for _, failure := range []string{forward.FailureNoMemory, forward.FailureNoSocket} {
		q := &slowQuery{s: s, src: netip.AddrPortFrom(chooser, 53), upstream: chosenDead, result: failure}
		if got := q.servfailCause(); got != causeNode {
			t.Errorf("a SERVFAIL for %s with a pod's own nameserver: cause %s, want node", failure, causeLabels[got])
		}
	}
}

// refusedExchanges is the exchanges with upstream u that f counted as errors
// (ztdns_forward_upstream_queries_total result "error": refused).
func refusedExchanges(f *forward.Forwarder, u netip.AddrPort) int64 {
	for _, a := range f.Asked() {
		if a.Upstream == u.String() {
			return int64(a.Results["error"])
		}
	}
	return 0
}

// TestForwardServfailsCountedWithTheBudgetSpent: with the node's budget of
// replies in flight spent, a forward to a known upstream gets SERVFAIL
// (its reply refused: no_memory), the node's failure over UDP and TCP
// alike. Over TCP the SERVFAIL's own hold is refused too; the client gets
// a SERVFAIL either way, and it stays the node's: it counts, as over UDP
// (it was counted as a limit of the resolver's, and not at all, where the
// alert most needs it).
func TestForwardServfailsCountedWithTheBudgetSpent(t *testing.T) {
	known := dnstest.Start(t, "127.0.0.1:0", respondFunc(func(req *dns.Msg, _ netip.AddrPort) *dns.Msg {
		return new(dns.Msg).SetRcode(req, dns.RcodeServerFailure)
	})).Addr
	const budget = 4096
	b := quota.NewBudget(budget, 0)
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1}, Budget: b}, known, known,
		forward.WithCacheSize(0), forward.WithKnownUpstreams(known))
	useUpBytes(t, b, nil, budget) // work of no source: nothing to take back

	want := map[string]float64{
		`ztdns_resolver_forward_servfails_total{cause="node"}`: 0,
		`ztdns_resolver_forward_servfails_total{cause="pod"}`:  0,
	}
	for _, proto := range []string{"udp", "tcp"} {
		if r := ls.ask(t, victimIP, proto, proto+".example."); r == nil || r.Rcode != dns.RcodeServerFailure {
			t.Fatalf("%s query with the budget spent: %v, want SERVFAIL", proto, r)
		}
		want[`ztdns_resolver_forward_servfails_total{cause="node"}`]++
		if got := scrape(t, ls.Collector(), "ztdns_resolver_forward_servfails_total"); !maps.Equal(got, want) {
			t.Errorf("after a %s SERVFAIL with the budget spent, counted\n%s\nwant\n%s", proto, seriesText(got), seriesText(want))
		}
	}
}
