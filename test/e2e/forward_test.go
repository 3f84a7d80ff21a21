//go:build linux

package e2e

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// TestMissGoesToPodNameserver checks that a name ztdns does not know is
// forwarded to the nameserver the pod addressed, not to the agent's own
// upstream (Istio's ztunnel forwards to the node's: ztunnel#555). Two
// marked pods name different nameservers, which answer the same name
// differently; each pod must get its own nameserver's answer, asked by the
// agent (the pod's query went to ztdns), also after the other pod's answer
// was cached.
func TestMissGoesToPodNameserver(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	markers := map[string]netip.Addr{
		podNameserver1: netip.MustParseAddr("203.0.113.1"),
		podNameserver2: netip.MustParseAddr("203.0.113.2"),
	}
	servers := map[string]*dnstest.Server{
		podNameserver1: c.serve(t, podNameserver1, markers[podNameserver1]),
		podNameserver2: c.serve(t, podNameserver2, markers[podNameserver2]),
	}
	c.startReadyAgent(t)
	pods := map[string]*testenv.Pod{
		podNameserver1: c.markedPod(t, "pod-a", podNameserver1),
		podNameserver2: c.markedPod(t, "pod-b", podNameserver2),
	}

	// Each pod twice, interleaved: the second round is answered from the
	// agent's cache, which must not hand one pod the other's answer.
	for round := range 2 {
		for _, ns := range []string{podNameserver1, podNameserver2} {
			for _, proto := range []string{"+notcp", "+tcp"} {
				p, want := pods[ns], markers[ns]
				got, err := c.dig(t, p, proto, whoHost)
				if err != nil {
					t.Fatalf("round %d, pod with nameserver %s: %v", round, ns, err)
				}
				if !slices.Equal(got, []netip.Addr{want}) {
					t.Errorf("round %d, pod with nameserver %s, dig %s %s = %v, want %s from its own nameserver (the agent's upstream answers %s)",
						round, ns, proto, whoHost, got, want, upstreamMarker)
				}
			}
		}
	}

	for ns, srv := range servers {
		askers := askersOf(srv, whoHost)
		if len(askers) == 0 {
			t.Errorf("nameserver %s was never asked for %s", ns, whoHost)
		}
		for _, p := range pods {
			if slices.Contains(askers, p.IPv4) || slices.Contains(askers, p.IPv6) {
				t.Errorf("nameserver %s was asked by the pod itself (%v): the query was not redirected to ztdns", ns, askers)
			}
		}
	}
	if askers := askersOf(c.upstream, whoHost); len(askers) > 0 {
		t.Errorf("the agent's --upstream %s was asked for %s by %v; misses must go to the pod's nameserver", agentUpstream, whoHost, askers)
	}
}
