//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
)

// How long the steady client of the restart tests runs, and when during
// it the restart begins.
const (
	restartLoopFor   = 6 * time.Second
	restartLoopStart = time.Second
	// restartQueryTimeout is how long the client waits for each answer: a
	// query counts as lost only if no answer came within it.
	restartQueryTimeout = 2 * time.Second
)

// restartServiceEntries is how many ServiceEntries the restart tests add
// to the examples: a mesh of some size, whose first table takes a new agent
// a moment (a few hundred ms here) to load, as in a real cluster.
const restartServiceEntries = 5000

// steadyPod is the name the restart tests capture their pod under.
const steadyPod = "steady"

// restartEnv is a cluster with a running agent and a marked pod whose own
// nameserver is real, so that an answer that failed open (ownMarker) can be
// told from ztdns's (addressVIP).
type restartEnv struct {
	*cluster
	agent *testenv.Agent
	pod   *testenv.Pod
	own   *dnstest.Server
}

func newRestartEnv(t *testing.T) *restartEnv {
	t.Helper()
	c := newCluster(t)
	c.addServiceEntries(t, restartServiceEntries)
	e := &restartEnv{cluster: c, own: c.serve(t, podNameserver1, ownMarker)}
	e.agent = c.startReadyAgent(t)
	e.pod = c.markedPod(t, steadyPod, podNameserver1)
	if got, err := c.dig(t, e.pod, addressHost); err != nil || !slices.Equal(got, []netip.Addr{addressVIP}) {
		t.Fatalf("before the restart: dig %s = %v, %v; want ztdns's %s", addressHost, got, err, addressVIP)
	}
	return e
}

// checkNotForwarded fails the test if ztdns ever forwarded addressHost, a
// name in its table, to the pod's nameserver: only the pod itself (after
// failing open) may ask there. A real cluster's nameserver would answer
// NXDOMAIN, which clients cache.
func (e *restartEnv) checkNotForwarded(t *testing.T) {
	t.Helper()
	for _, a := range askersOf(e.own, addressHost) {
		if a != e.pod.IPv4 && a != e.pod.IPv6 {
			t.Errorf("the pod's nameserver was asked for %s by %s, not by the pod: ztdns forwarded a name of its own table (asked by %v)",
				addressHost, a, askersOf(e.own, addressHost))
			return
		}
	}
}

// TestRestartLosesNoQuery restarts the agent the way a DaemonSet rolling
// update does, under a steady query loop: a second agent with the same
// flags takes over the first one's sockets and programs (pkg/agent's
// handoff), then the first gets SIGTERM. No query may be lost, and none
// may fail open: ztdns answers every one.
func TestRestartLosesNoQuery(t *testing.T) {
	e := newRestartEnv(t)
	c, first, p := e.cluster, e.agent, e.pod

	l := c.startLoop(t, p, lossEvery, restartQueryTimeout, restartLoopFor)
	time.Sleep(restartLoopStart)
	second := c.startAgent(t)
	second.WaitLog(t, "took over the resolver's sockets from the previous agent", 30*time.Second)
	signal(t, first, syscall.SIGTERM)
	if err := first.Wait(t, 10*time.Second); err != nil {
		t.Errorf("first agent exited with %v after SIGTERM, want success", err)
	}
	restartedAt := time.Now()
	qs := l.wait(t)
	if !slices.ContainsFunc(qs, func(q loopQuery) bool { return q.sent.After(restartedAt) }) {
		t.Errorf("the restart took %v and outlasted the query loop: lengthen it", restartedAt.Sub(qs[0].sent))
	}

	r := tallyOf(qs)
	t.Logf("restart: %d sent, %d lost", r.sent, r.lostTotal())
	t.Logf("restart: %s", r)
	if r.lostTotal() != 0 {
		t.Errorf("%d queries lost across the restart (%v)", r.lostTotal(), r.lost)
	}
	if n := r.answered[ownMarker]; n != 0 {
		t.Errorf("%d queries failed open across the restart, want every one answered by ztdns", n)
	}
	if r.answered[addressVIP] != r.sent {
		t.Errorf("answers %v, want all %d from ztdns (%s)", r.answered, r.sent, addressVIP)
	}
	e.checkNotForwarded(t)

	// The successor owns the control socket and still has the pod marked.
	row := c.podRow(t, steadyPod)
	if !row.Marked || row.NetnsCookie != netnsCookie(t, p) {
		t.Errorf("after the restart `ztdns pods` shows %+v, want the pod marked with its netns cookie", row)
	}
	if got, err := c.dig(t, p, addressHost); err != nil || !slices.Equal(got, []netip.Addr{addressVIP}) {
		t.Errorf("after the restart: dig %s = %v, %v; want ztdns's %s", addressHost, got, err, addressVIP)
	}
}

// TestHardRestart kills the agent with SIGKILL under the same loop and
// starts a new one at once, as the kubelet restarts a crashed container.
// Nothing hands the sockets over, so queries are lost until the new agent
// listens (or answered by the pod's own nameserver if the heartbeat went
// stale first): the figure is reported, not asserted. What is asserted is
// that no query gets a wrong answer (ztdns forwarding a name of its table
// because it serves before its table is loaded), and that the new agent
// takes over: once it is ready, ztdns answers again.
func TestHardRestart(t *testing.T) {
	e := newRestartEnv(t)
	c, first, p := e.cluster, e.agent, e.pod

	l := c.startLoop(t, p, lossEvery, restartQueryTimeout, restartLoopFor)
	time.Sleep(restartLoopStart)
	killedAt := signal(t, first, syscall.SIGKILL)
	first.Wait(t, 10*time.Second)
	second := c.startAgent(t)
	c.waitReady(t, second)
	readyAt := time.Now()
	qs := l.wait(t)

	r := tallyOf(qs)
	t.Logf("hard restart: %d sent, %d lost, %d answered by the pod's own nameserver; new agent ready %v after the kill",
		r.sent, r.lostTotal(), r.answered[ownMarker], readyAt.Sub(killedAt).Round(time.Millisecond))
	t.Logf("hard restart: %s", r)
	if from, to, ok := lostWindow(qs); ok {
		t.Logf("hard restart: the lost queries were sent between %v and %v after the kill",
			from.Sub(killedAt).Round(time.Millisecond), to.Sub(killedAt).Round(time.Millisecond))
	}
	// Lost queries are the price of a crash; a wrong answer is not.
	e.checkNotForwarded(t)
	var late int
	for _, q := range qs {
		if q.sent.After(readyAt) {
			late++
			if answer, _ := q.answer(); answer != addressVIP {
				t.Errorf("query %d, sent after the new agent was ready, got %q; want ztdns's %s", q.seq, q.outcome, addressVIP)
			}
		}
	}
	if late == 0 {
		t.Errorf("no query was sent after the new agent was ready (%v after the kill): lengthen the loop", readyAt.Sub(killedAt))
	}
	// The new agent found the pod in the state the killed one left.
	if row := c.podRow(t, steadyPod); !row.Marked || row.NetnsCookie != netnsCookie(t, p) {
		t.Errorf("after the restart `ztdns pods` shows %+v, want the pod marked with its netns cookie", row)
	}
}

// lostWindow returns when the first and the last lost query were sent.
func lostWindow(qs []loopQuery) (from, to time.Time, ok bool) {
	for _, q := range qs {
		if _, answered := q.answer(); answered {
			continue
		}
		if !ok {
			from, ok = q.sent, true
		}
		to = q.sent
	}
	return from, to, ok
}

// podRow is one row of `ztdns pods -o json`.
type podRow = control.PodRow

// pods returns `ztdns pods -o json`.
func (c *cluster) pods(t *testing.T) []podRow {
	t.Helper()
	out := c.ztdns(t, "pods", "--socket", c.socket, "-o", "json")
	var rows []podRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("ztdns pods -o json: %v\n%s", err, out)
	}
	return rows
}

// podRow returns the row of the pod captured under name.
func (c *cluster) podRow(t *testing.T, name string) podRow {
	t.Helper()
	rows := c.pods(t)
	for _, r := range rows {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("ztdns pods lists no pod %q: %+v", name, rows)
	return podRow{}
}

// addServiceEntries adds n ServiceEntries (bulk-N.example.internal, each
// with an auto-allocated VIP) to the agent's manifests.
func (c *cluster) addServiceEntries(t *testing.T, n int) {
	t.Helper()
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: bulk-%d
spec:
  hosts:
  - bulk-%d.example.internal
  ports:
  - name: http
    number: 80
    protocol: HTTP
  resolution: DNS
`, i, i)
	}
	writeFile(t, filepath.Join(c.configDir, "bulk.yaml"), b.String())
}
