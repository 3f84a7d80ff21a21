package forward

import (
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

// TestUpstreamsKnownLaterKeepTheirLabel: an upstream made known once the
// Forwarder runs (KnowUpstreams: the cluster DNS the agent learns from its
// source) keeps a label of its own like one known from the start: one that
// held a label pods' choices compete for gives that place back, and one
// counted under "other" gets its own from then on. A known one is never
// taken back, and Knows says it is known (the resolver counts a SERVFAIL
// from it as the node's).
func TestUpstreamsKnownLaterKeepTheirLabel(t *testing.T) {
	t.Parallel()
	chosen := startUpstream(t, answerA(60, "198.51.100.1"))
	cluster := startUpstream(t, answerA(60, "198.51.100.2"))
	late := startUpstream(t, answerA(60, "198.51.100.3"))
	next := startUpstream(t, answerA(60, "198.51.100.4"))
	f := newForwarder(t, WithMaxUpstreamSeries(1), WithCacheSize(0))
	ask := func(u netip.AddrPort) {
		t.Helper()
		forward(t, f, query(t, "www.example.com.", dns.TypeA), false, u)
	}
	ask(chosen.addr)
	ask(late.addr) // "other": the one label is taken
	f.KnowUpstreams(chosen.addr, late.addr, chosen.addr)
	if got, want := f.KnownUpstreams(), slices.Sorted(slices.Values([]string{chosen.addr.String(), late.addr.String()})); !slices.Equal(got, want) {
		t.Errorf("known upstreams %v, want %v", got, want)
	}
	// Knows says the same of an address, as an IPv4-mapped one too; a
	// pod's choice, or no address (a forward that asked none), is not.
	mapped := netip.AddrPortFrom(netip.AddrFrom16(late.addr.Addr().As16()), late.addr.Port())
	for u, want := range map[netip.AddrPort]bool{chosen.addr: true, mapped: true, next.addr: false, {}: false} {
		if got := f.Knows(u); got != want {
			t.Errorf("Knows(%v) = %v, want %v", u, got, want)
		}
	}
	ask(late.addr)
	ask(next.addr) // the place chosen gave back
	ask(cluster.addr)
	want := map[[2]string]float64{
		{chosen.addr.String(), resultOK}: 1,
		{otherUpstreams, resultOK}:       2,
		{late.addr.String(), resultOK}:   1,
		{next.addr.String(), resultOK}:   1,
	}
	if got := upstreamCounts(t, f); !maps.Equal(got, want) {
		t.Errorf("upstream queries %v, want %v", got, want)
	}
}
