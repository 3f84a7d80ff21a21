package forward

import (
	"maps"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// TestIdleUpstreamsGiveBackTheirLabel: once the 32 upstreams pods chose
// have not been asked for labelIdle (the pods are gone), a new upstream
// gets a label of its own rather than "other", and the idle ones' series
// leave the registry; a configured upstream keeps its series however long
// it is idle.
func TestIdleUpstreamsGiveBackTheirLabel(t *testing.T) {
	t.Parallel()
	known := startUpstream(t, answerA(60, "198.51.100.1"))
	chosen := make([]netip.AddrPort, DefaultMaxUpstreamSeries)
	for i := range chosen {
		chosen[i] = startUpstream(t, answerA(60, "198.51.100.2")).addr
	}
	late := startUpstream(t, answerA(60, "198.51.100.3"))
	clock := newFakeClock()
	f := newForwarder(t, WithNow(clock.Now), WithKnownUpstreams(known.addr), WithCacheSize(0))
	reg := prometheus.NewRegistry()
	reg.MustRegister(f.Collectors()...)
	ask := func(u netip.AddrPort) {
		t.Helper()
		forward(t, f, query(t, "www.example.com.", dns.TypeA), false, u)
	}

	ask(known.addr)
	for _, u := range chosen {
		ask(u)
	}
	ask(late.addr)
	if got := upstreamCounts(t, f)[[2]string{otherUpstreams, resultOK}]; got != 1 {
		t.Fatalf("with %d upstreams labelled, the next one counted %v under %q, want 1", len(chosen), got, otherUpstreams)
	}

	clock.Advance(labelIdle + labelSweepEvery)
	ask(late.addr)
	want := map[[2]string]float64{
		{known.addr.String(), resultOK}: 1,
		{otherUpstreams, resultOK}:      1,
		{late.addr.String(), resultOK}:  1,
	}
	if got := upstreamCounts(t, f); !maps.Equal(got, want) {
		t.Errorf("upstream queries after the chosen upstreams went idle: %v, want %v", got, want)
	}

	// Every series of the idle upstreams has left the registry, the
	// duration histogram's too.
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	idle := map[string]bool{}
	for _, u := range chosen {
		idle[u.String()] = true
	}
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "to" && idle[l.GetValue()] {
					t.Errorf("%s{to=%q} still exported after its upstream went idle", mf.GetName(), l.GetValue())
				}
			}
		}
	}

	// The freed labels are there for other upstreams: all of them again.
	for _, u := range chosen[:len(chosen)-1] {
		ask(u)
	}
	if got := upstreamCounts(t, f); got[[2]string{chosen[0].String(), resultOK}] != 1 || got[[2]string{otherUpstreams, resultOK}] != 1 {
		t.Errorf("upstream queries when the idle upstreams came back: %v, want each under its own address", got)
	}
}

// TestAskedListsRecentUpstreams: Asked lists the upstreams asked within
// labelIdle, most recently asked first, with how their exchanges ended
// (`ztdns status` shows it); one unasked for labelIdle leaves the list,
// and asked again it counts afresh. A configured upstream never asked is
// not listed.
func TestAskedListsRecentUpstreams(t *testing.T) {
	t.Parallel()
	fallback := startUpstream(t, answerA(60, "198.51.100.1"))
	own := startUpstream(t, answerA(60, "198.51.100.2"))
	failing := startUpstream(t, answerRcode(dns.RcodeServerFailure))
	clock := newFakeClock()
	f := newForwarder(t, WithNow(clock.Now), WithKnownUpstreams(fallback.addr), WithCacheSize(0))
	ask := func(u netip.AddrPort) {
		t.Helper()
		forward(t, f, query(t, "www.example.com.", dns.TypeA), false, u)
	}
	check := func(when string, want ...Asked) {
		t.Helper()
		got := f.Asked()
		ok := len(got) == len(want)
		for i := 0; ok && i < len(got); i++ {
			ok = got[i].Upstream == want[i].Upstream && got[i].Last.Equal(want[i].Last) && maps.Equal(got[i].Results, want[i].Results)
		}
		if !ok {
			t.Errorf("%s: Asked() = %+v, want %+v", when, got, want)
		}
	}
	check("before any query")

	start := clock.Now()
	ask(own.addr)
	ask(own.addr)
	clock.Advance(time.Second)
	ask(failing.addr)
	check("after three queries",
		Asked{Upstream: failing.addr.String(), Last: start.Add(time.Second), Results: map[string]uint64{resultServfail: 1}},
		Asked{Upstream: own.addr.String(), Last: start, Results: map[string]uint64{resultOK: 2}})

	clock.Advance(labelIdle - time.Second)
	check("labelIdle after the first", Asked{Upstream: failing.addr.String(), Last: start.Add(time.Second), Results: map[string]uint64{resultServfail: 1}})
	clock.Advance(time.Second)
	check("labelIdle after the last")
	ask(failing.addr)
	check("asked again", Asked{Upstream: failing.addr.String(), Last: clock.Now(), Results: map[string]uint64{resultServfail: 1}})
}
