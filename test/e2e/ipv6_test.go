//go:build linux

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
)

// defaultListen6 is the IPv6 address of the agent's default --listen.
const defaultListen6 = "[fd00:7a74:646e::53]:53"

// TestIPv6OffOnLoopback runs the agent, with its default --listen (one
// address of each family), on a node whose loopback refuses IPv6
// (net.ipv6.conf.lo.disable_ipv6=1, which all=1 then default=0 leaves too)
// and checks what an operator sees:
//   - /healthz, the liveness probe, is 200: the agent left its IPv6
//     addresses out, which the node would reach only through lo;
//   - `ztdns status` says so, naming lo and the addresses left out;
//   - once lo takes IPv6 again, `ztdns status` says that a restart serves
//     and captures IPv6, and once it refuses it again, the first warning
//     is back.
//
// (Before: the agent kept its IPv6 addresses without a word, /healthz timed
// out on each of them for ever, and the chart's probes restarted the agent
// in a loop; the warning of the start never changed.)
func TestIPv6OffOnLoopback(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.node.WriteSysctl(t, "net.ipv6.conf.lo.disable_ipv6", "1")
	a := testenv.StartAgent(t, c.node, c.bin, append(c.agentArgs(), "--metrics", metricsAddr)...)
	c.waitReady(t, a)

	if body := c.node.HTTPGet(t, "http://"+metricsAddr+"/healthz"); strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz: %q, want ok", body)
	}
	const off = "IPv6 is off on this node (net.ipv6.conf.lo.disable_ipv6=1"
	c.waitStatusSays(t, off, defaultListen6)

	c.node.WriteSysctl(t, "net.ipv6.conf.lo.disable_ipv6", "0")
	c.waitStatusSays(t, "IPv6 is on again on this node, but was off when the agent started", "until the agent restarts", defaultListen6)
	c.node.WriteSysctl(t, "net.ipv6.conf.lo.disable_ipv6", "1")
	c.waitStatusSays(t, off, defaultListen6)
}

// TestIPv6TurnedOffAfterStart: IPv6 turned off on loopback after the agent
// started with it leaves its IPv6 addresses unreachable from the node;
// `ztdns status` says so (the agent re-reads the setting at each
// attachment check) until lo takes IPv6 again. (Before: no word.)
func TestIPv6TurnedOffAfterStart(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.startReadyAgent(t)
	if out := c.ztdns(t, "status", "--socket", c.socket); strings.Contains(out, "IPv6") {
		t.Fatalf("ztdns status warns of IPv6 on a node that takes it:\n%s", out)
	}

	c.node.WriteSysctl(t, "net.ipv6.conf.lo.disable_ipv6", "1")
	c.waitStatusSays(t, "IPv6 was turned off on this node after the agent started (net.ipv6.conf.lo.disable_ipv6=1", defaultListen6)
	c.node.WriteSysctl(t, "net.ipv6.conf.lo.disable_ipv6", "0")
	testenv.EventuallyNil(t, 30*time.Second, func() error {
		if out := c.ztdns(t, "status", "--socket", c.socket); strings.Contains(out, "IPv6") {
			return fmt.Errorf("ztdns status still warns of IPv6:\n%s", out)
		}
		return nil
	})
}

// waitStatusSays waits until `ztdns status` prints each of want (the
// agent re-reads the node's IPv6 setting every few seconds).
func (c *cluster) waitStatusSays(t *testing.T, want ...string) {
	t.Helper()
	testenv.EventuallyNil(t, 30*time.Second, func() error {
		out := c.ztdns(t, "status", "--socket", c.socket)
		for _, w := range want {
			if !strings.Contains(out, w) {
				return fmt.Errorf("ztdns status does not say %q:\n%s", w, out)
			}
		}
		return nil
	})
}
