//go:build linux

package e2e

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
)

// resolverAddr is the agent's default IPv4 listen address, the one an
// operator puts in the node's resolv.conf so that node processes use
// ztdns.
const resolverAddr = "169.254.20.53"

// withoutUpstreamFlag is the agent's command line with no --upstream: its
// fallback upstreams come from --resolv-conf, as in the chart (dnsPolicy:
// Default).
func (c *cluster) withoutUpstreamFlag() []string {
	args := c.agentArgs()
	i := slices.Index(args, "--upstream")
	return slices.Delete(args, i, i+2)
}

// TestResolvConfNamingTheAgent: the node's resolv.conf names the agent
// itself beside another nameserver. The agent leaves its own address out of
// its upstreams, says so in its log and in `ztdns status`, and a query that
// falls back to the upstreams (a host-network client's, sent straight to
// the listen address) is answered by the other nameserver. Before, the
// agent forwarded to itself too, and with only itself named every such
// query waited for the timeout and failed; now an agent left with no
// upstream refuses to start, saying why.
func TestResolvConfNamingTheAgent(t *testing.T) {
	c := newCluster(t)
	writeFile(t, c.resolvConf, "nameserver "+resolverAddr+"\nnameserver "+agentUpstream+"\n")
	a := testenv.StartAgent(t, c.node, c.bin, c.withoutUpstreamFlag()...)
	c.waitReady(t, a)

	self := resolverAddr + ":53"
	st := c.status(t)
	if want := []string{agentUpstream + ":53"}; !slices.Equal(st.FallbackUpstreams, want) {
		t.Errorf("ztdns status: fallback upstreams %v, want %v: not the agent's own %s", st.FallbackUpstreams, want, self)
	}
	if !slices.ContainsFunc(st.Warnings, func(w string) bool { return strings.Contains(w, "upstream "+self+" left out") }) {
		t.Errorf("ztdns status: warnings %q, want one saying that upstream %s is left out", st.Warnings, self)
	}
	if !a.LogContains("upstreams left out") {
		t.Errorf("the agent's log does not say that it left %s out of its upstreams:\n%s", self, a.Log())
	}

	out, err := c.node.Output(t, nil, 20*time.Second, "dig", "+short", "+time=5", "+tries=1", "@"+resolverAddr, whoHost)
	if got := testenv.ParseAddrs(out); err != nil || !slices.Equal(got, []netip.Addr{upstreamMarker}) {
		t.Errorf("dig @%s %s from the node: %v, printed %q; want %s from %s", resolverAddr, whoHost, err, out, upstreamMarker, agentUpstream)
	}
	if n := len(c.upstream.ReceivedFor(whoHost)); n != 1 {
		t.Errorf("%s got %d queries for %s, want 1", agentUpstream, n, whoHost)
	}
	a.Stop(t, 20*time.Second)

	t.Run("only the agent", func(t *testing.T) {
		writeFile(t, c.resolvConf, "nameserver "+resolverAddr+"\n")
		a := testenv.StartAgent(t, c.node, c.bin, c.withoutUpstreamFlag()...)
		testenv.Eventually(t, 30*time.Second, "the agent exits or serves", func() bool {
			var st control.Status
			out, err := c.ztdnsOutput("status", "--socket", c.socket, "-o", "json")
			return !a.Running() || err == nil && json.Unmarshal([]byte(out), &st) == nil && st.Ready
		})
		if a.Running() {
			out, err := c.node.Output(t, nil, 20*time.Second, "dig", "+time=5", "+tries=1", "@"+resolverAddr, whoHost)
			t.Fatalf("the agent started with only itself as upstream; a query to it from the node: %v\n%s", err, out)
		}
		err := a.Wait(t, 0)
		const want = "no upstream: " + resolverAddr + ":53 is the agent's own address"
		if err == nil || !a.LogContains(want) {
			t.Errorf("agent with only itself in resolv.conf: %v; want it to exit saying %q; log:\n%s", err, want, a.Log())
		}
	})
}
