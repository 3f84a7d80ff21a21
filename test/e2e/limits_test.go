//go:build linux

package e2e

import (
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// slowNameserver is the flooding pod's own nameserver: it answers, a
// second late.
const slowNameserver = "198.51.100.57"

// TestOnePodCannotStarveAnother: a captured pod floods the agent through
// the redirect, with unique names its slow nameserver answers late (over
// UDP at 25 times its rate) and with idle TCP connections, while another
// captured pod resolves table names over UDP and TCP. The second pod's
// queries are all answered, none refused, and `ztdns pods` shows what the
// first was refused (and the second nothing). Each probe waits 10 s for its
// answer: a loaded machine may answer late, but a query dropped or refused
// is never answered. And each keeps at most 4 queries unanswered, as a
// well-behaved pod, well within the victim's shares (8 TCP connections, 16
// forwards): asking on regardless, a probe the slowed agent answers late
// would pile up past them and be refused. The flood at full speed, with its
// figures, is `make bench` (test/bench: BenchmarkFlood); here it is paced
// so the test proves the limits and not how this machine schedules, and
// it runs alone, not beside the package's parallel tests.
func TestOnePodCannotStarveAnother(t *testing.T) {
	c := newCluster(t)
	c.node.ServeNameserver(t, netip.MustParseAddr(slowNameserver), dnstest.Delayed(time.Second, dnstest.Marker(ownMarker, netip.IPv6Unspecified())))
	c.serve(t, podNameserver1, ownMarker)
	// Per-pod bounds well under the agent's: without them, the flooder
	// alone would take every connection and forwarding slot.
	a := testenv.StartAgent(t, c.node, c.bin, append(c.agentArgs(),
		"--pod-qps=200", "--pod-qps-burst=200", "--pod-max-forwarding=16", "--pod-max-tcp=8", "--max-forwarding=64", "--max-tcp=64")...)
	c.waitReady(t, a)
	flooder := c.markedPod(t, "flooder", slowNameserver)
	victim := c.markedPod(t, "victim", podNameserver1)

	const load = 4 * time.Second
	floods := []*testenv.Flood{
		testenv.StartFlood(t, flooder, c.cg, testenv.FloodConfig{Mode: "udp", Name: "n%d.flood.example", Conns: 2, Rate: 5000, For: load}),
		testenv.StartFlood(t, flooder, c.cg, testenv.FloodConfig{Mode: "tcp-idle", Conns: 100, Pause: 500 * time.Millisecond, For: load}),
	}
	probe := func(name string, tcp bool) *testenv.Flood {
		return testenv.StartFlood(t, victim, c.cg, testenv.FloodConfig{Mode: "probe", Name: name, TCP: tcp,
			Every: 20 * time.Millisecond, Timeout: 10 * time.Second, InFlight: 4, For: load})
	}
	probes := map[string]*testenv.Flood{
		"a table name over UDP":         probe(addressHost, false),
		"a table name over TCP":         probe(addressHost, true),
		"a name its nameserver answers": probe(whoHost, false),
	}
	for name, p := range probes {
		r := p.Wait(t)
		t.Logf("victim, %s: %d of %d answered, p99 %v; %+v", name, r.Answered, r.Sent, r.LatencyQuantile(0.99), r.Rcodes)
		if r.Sent < 50 || r.Answered != r.Sent {
			t.Errorf("victim, %s: %d of %d queries answered during the flood (%d timed out, %d failed, replies %v), want all",
				name, r.Answered, r.Sent, r.Timeouts, r.Errors, r.Rcodes)
		}
	}
	udp, idle := floods[0].Wait(t), floods[1].Wait(t)
	t.Logf("flooder: UDP %d sent, replies %v; TCP %d connections opened, %d closed by the agent", udp.Sent, udp.Rcodes, idle.Opened, idle.Closed)
	if udp.Sent < 5000 || idle.Opened < 100 {
		t.Fatalf("the flood was too small to prove anything: %d UDP queries, %d TCP connections", udp.Sent, idle.Opened)
	}

	rows := map[string]podRow{}
	var all []podRow
	if err := json.Unmarshal([]byte(c.ztdns(t, "pods", "--socket", c.socket, "-o", "json")), &all); err != nil {
		t.Fatal(err)
	}
	for _, r := range all {
		rows[r.Name] = r
	}
	f, v := rows["flooder"].Resolver, rows["victim"].Resolver
	t.Logf("ztdns pods: flooder %+v; victim %+v", f, v)
	if f.RateLimited == 0 || f.ForwardRefused == 0 || f.TCPRefused == 0 {
		t.Errorf("ztdns pods shows the flooder refused %+v, want queries over its rate, forwarded queries over its share and TCP connections over its share", f)
	}
	if v.RateLimited != 0 || v.ForwardRefused != 0 || v.TCPRefused != 0 {
		t.Errorf("ztdns pods shows the victim refused %+v, want nothing", v)
	}
}
