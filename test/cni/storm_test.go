//go:build linux

package cnie2e

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/cni"
	"github.com/ztdns/ztdns/pkg/control"
)

// stormPods is how many sandboxes a Job's fan-out starts at once in
// TestStormOfAddsAndDels: twice control.MaxConns.
const stormPods = 64

// TestStormOfAddsAndDels: a Job fans out stormPods pods on the node at
// once, and later they all go at once. The agent is stopped (SIGSTOP) while
// the runtime runs the chain (bridge, host-local, then ztdns) for every
// pod, until every plugin waits at its socket, and then resumes: the storm
// meets it whole, as after any pause (a slow ADD the others queue behind,
// a CPU-starved moment), whatever this machine's scheduling. Every ADD
// and every DEL reaches the agent: every pod is captured, then released;
// the plugin never takes the healthy agent for unreachable, so nothing
// starts uncaptured and nothing is saved to pending/ for a replay; and the
// agent closes none of the plugins' connections to make room for the
// others (ztdns_control_evicted_connections_total stays 0: they wait their
// turn, ztdns_control_waited_connections_total).
func TestStormOfAddsAndDels(t *testing.T) {
	t.Parallel()
	testenv.LookPath(t, "ss")
	// The agent takes ADDs one at a time; on two cores shared with other
	// tests the last of stormPods may wait longer than the plugin's
	// default 5 s for its turn. What is tested is that none is lost on the
	// way, not how fast a loaded machine marks pods.
	n := newCapturingNode(t, NodeOptions{Runtime: RuntimeOptions{Plugin: cni.Config{Timeout: "1m"}}})
	const metrics = "127.0.0.1:15053" // the node namespace's own loopback
	a := testenv.StartAgent(t, n.Node, n.bin, append(n.agentArgs(), "--metrics", metrics)...)
	a.WaitReady(t, n.Socket, 30*time.Second)
	t.Cleanup(func() { a.Signal(syscall.SIGCONT) }) // a test that failed with it stopped

	pods := make([]*Pod, stormPods)
	for i := range pods {
		pods[i] = n.NewPod(t, PodOptions{Namespace: ambientNS, Name: fmt.Sprintf("job-%d", i), Nameservers: []string{ownNameserver}})
	}
	// storm runs cmd for every pod at once, with the agent stopped until
	// every plugin waits at its socket, and returns the failures.
	storm := func(what string, cmd func(*Pod) error) []string {
		if err := a.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		var (
			wg     sync.WaitGroup
			mu     sync.Mutex
			failed []string
		)
		start := time.Now()
		for _, p := range pods {
			wg.Go(func() {
				if err := cmd(p); err != nil {
					mu.Lock()
					failed = append(failed, fmt.Sprintf("%s of %s: %v", what, p.Name, err))
					mu.Unlock()
				}
			})
		}
		// Not Eventually: the runtime's goroutines must be done before
		// the test may end.
		waiting := 0
		var err error
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if waiting, err = n.backlog(); err == nil && waiting >= len(pods) {
				break
			}
		}
		if err := a.Signal(syscall.SIGCONT); err != nil {
			t.Error(err)
		}
		t.Logf("%d %ss waiting at the stopped agent's socket after %v", waiting, what, time.Since(start))
		wg.Wait()
		t.Logf("%d %ss done after %v", len(pods), what, time.Since(start))
		if waiting < len(pods) {
			t.Errorf("only %d of %d %ss reached the stopped agent's socket within a minute (%v)", waiting, len(pods), what, err)
		}
		return failed
	}
	evicted := func() float64 {
		body := n.Node.HTTPGet(t, "http://"+metrics+"/metrics")
		t.Logf("ztdns_control_waited_connections_total %v", metricValue(body, "ztdns_control_waited_connections_total"))
		return metricValue(body, "ztdns_control_evicted_connections_total")
	}

	if failed := storm("ADD", func(p *Pod) error { _, err := n.Add(t, p); return err }); len(failed) > 0 {
		t.Fatalf("%d of %d ADDs failed:\n%s", len(failed), len(pods), strings.Join(failed, "\n"))
	}
	marked := n.markedCookies(t)
	var uncaptured []string
	for _, p := range pods {
		if !slices.Contains(marked, cookieOf(t, p)) {
			uncaptured = append(uncaptured, p.Name)
		}
	}
	if len(uncaptured) > 0 {
		t.Errorf("%d of %d pods started uncaptured: %v", len(uncaptured), len(pods), uncaptured)
	}
	if adds, err := cni.PendingAdds(n.PendingDir); err != nil || len(adds) != 0 {
		t.Errorf("%d ADDs saved to pending/ for a replay (%v), want none: the agent was up", len(adds), err)
	}
	if v := evicted(); v != 0 {
		t.Errorf("ztdns_control_evicted_connections_total = %v after the ADDs, want 0", v)
	}

	if failed := storm("DEL", func(p *Pod) (err error) { p.delOnce.Do(func() { err = n.Del(t, p) }); return err }); len(failed) > 0 {
		t.Fatalf("%d of %d DELs failed:\n%s", len(failed), len(pods), strings.Join(failed, "\n"))
	}
	if left := n.markedCookies(t); len(left) != 0 {
		t.Errorf("%d pods still marked after their DELs", len(left))
	}
	if dels, err := cni.PendingDeletes(n.PendingDir); err != nil || len(dels) != 0 {
		t.Errorf("%d DELs saved to pending/ for a replay (%v), want none: the agent was up", len(dels), err)
	}
	if v := evicted(); v != 0 {
		t.Errorf("ztdns_control_evicted_connections_total = %v after the DELs, want 0", v)
	}
	if log := n.Log(t); strings.Contains(log, "unreachable") || strings.Contains(log, "could not take") {
		t.Errorf("the plugin took the agent for unreachable:\n%s", grepLines(log, "unreachable", "could not take"))
	}
	if rows, err := control.NewClient(n.Socket, 10*time.Second).Pods(t.Context()); err != nil {
		t.Errorf("ztdns pods: %v", err)
	} else {
		for _, r := range rows {
			if r.ContainerID != "" {
				t.Errorf("after every DEL the agent still lists %s/%s", r.Namespace, r.Name)
			}
		}
	}
}

// backlog returns how many connections wait to be accepted on the agent's
// control socket (the Recv-Q ss shows for a listening socket).
func (n *capturingNode) backlog() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := n.Node.Nsenter(ctx, "ss", "-xlnH").Output()
	if err != nil {
		return 0, fmt.Errorf("ss: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		// u_str LISTEN RECV-Q SEND-Q PATH INODE * 0
		if f := strings.Fields(line); len(f) >= 5 && f[4] == n.Socket {
			return strconv.Atoi(f[2])
		}
	}
	return 0, fmt.Errorf("ss lists no socket listening at %s:\n%s", n.Socket, out)
}

// grepLines returns the lines of text that contain any of words.
func grepLines(text string, words ...string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if slices.ContainsFunc(words, func(w string) bool { return strings.Contains(l, w) }) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
