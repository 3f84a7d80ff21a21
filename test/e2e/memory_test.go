//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
)

// The README's memory bound (Limits and protections, "The memory bound")
// for an agent with one resolver address, one UDP socket on it, and
// --max-tcp 64: the terms the Go runtime does not count.
const (
	boundBinary = 20 << 20
	boundKernel = 1*(2<<20) + 1<<20 + 64*(64+8)<<10 // 7.5 MiB
)

// The warning the agent logs, and says in `ztdns status`, while its memory
// limit is below its bound.
const memoryShort = "is below what the agent may hold whatever pods ask"

// TestGCMemoryLimitFollowsTheCgroup: the agent, started without
// GOMEMLIMIT in a cgroup of its own with a 128 MiB memory limit, gives the
// Go runtime that limit less the kernel's term and the binary's pages of
// the README's bound for its flags (go_gc_gomemlimit_bytes), and says
// nothing of a limit that holds its bound. The limit lowered in place to
// 64 MiB, below the bound (~70 MiB with these flags), the runtime's limit
// follows at the next memory check (every 20 s), and the agent warns: in
// its log, in `ztdns status`, and ztdns_memory_bound_bytes over
// ztdns_memory_limit_bytes. One started at 64 MiB warns at once. (Before:
// the runtime had no limit, go_gc_gomemlimit_bytes 9.2e18, whatever the
// cgroup's, and the agent said nothing of a limit it could not fit in.)
func TestGCMemoryLimitFollowsTheCgroup(t *testing.T) {
	bin := ztdnsBinary(t)
	start := func(t *testing.T, limit int64) (*testenv.MemoryCgroup, *testenv.Agent, *memoryAgent) {
		cg := testenv.NewMemoryCgroup(t, limit)
		m := &memoryAgent{bin: bin, socket: filepath.Join(t.TempDir(), "ztdns.sock"), metrics: testenv.FreePort(t).String()}
		t.Setenv("GOMEMLIMIT", "")
		os.Unsetenv("GOMEMLIMIT") // restored by Setenv's cleanup
		w := cg.Wrapper()
		a := testenv.StartLocal(t, w[0], append(w[1:], bin, "agent", "--capture=false", "--config-dir", "../../examples",
			"--listen", testenv.FreePort(t).String(), "--upstream", "127.0.0.1:9", "--socket", m.socket, "--metrics", m.metrics, "--max-tcp", "64")...)
		m.waitReady(t, a)
		return cg, a, m
	}

	t.Run("lowered", func(t *testing.T) {
		cg, a, m := start(t, 128<<20)
		if got, want := m.metric(t, "go_gc_gomemlimit_bytes"), float64(128<<20-boundKernel-boundBinary); got != want {
			t.Errorf("in a 128 MiB cgroup: go_gc_gomemlimit_bytes %.0f, want %.0f (the limit less the kernel's %d and the binary's %d)",
				got, want, boundKernel, boundBinary)
		}
		if a.LogContains(memoryShort) || slicesContain(m.status(t).Warnings, memoryShort) {
			t.Errorf("a 128 MiB limit holds the bound, but the agent warns:\n%s", a.Log())
		}

		cg.SetLimit(t, 64<<20)
		want := float64(64<<20 - boundKernel - boundBinary)
		agenttest.Eventually(t, 3*20*time.Second, func() error { // the check runs every 20 s
			if got := m.metric(t, "go_gc_gomemlimit_bytes"); got != want {
				return fmt.Errorf("the limit lowered to 64 MiB: go_gc_gomemlimit_bytes %.0f, want %.0f", got, want)
			}
			return nil
		})
		a.WaitLog(t, memoryShort, 5*time.Second)
		m.checkWarned(t)
	})

	t.Run("started below", func(t *testing.T) {
		_, a, m := start(t, 64<<20)
		if !a.LogContains(memoryShort) {
			t.Errorf("started in a 64 MiB cgroup, the agent did not warn:\n%s", a.Log())
		}
		m.checkWarned(t)
	})
}

// memoryAgent is an agent of TestGCMemoryLimitFollowsTheCgroup: its
// binary, control socket and metrics address.
type memoryAgent struct{ bin, socket, metrics string }

func (m *memoryAgent) waitReady(t *testing.T, a *testenv.Agent) {
	t.Helper()
	agenttest.Eventually(t, 30*time.Second, func() error {
		if !a.Running() {
			t.Fatalf("the agent exited; log:\n%s", a.Log())
		}
		if st, err := m.tryStatus(); err != nil || !st.Ready {
			return fmt.Errorf("not ready: %v", err)
		}
		return nil
	})
}

func (m *memoryAgent) tryStatus() (control.Status, error) {
	var st control.Status
	out, err := exec.Command(m.bin, "status", "--socket", m.socket, "-o", "json").Output()
	if err == nil {
		err = json.Unmarshal(out, &st)
	}
	return st, err
}

func (m *memoryAgent) status(t *testing.T) control.Status {
	t.Helper()
	st, err := m.tryStatus()
	if err != nil {
		t.Fatalf("ztdns status: %v", err)
	}
	return st
}

// metric is the value of an unlabelled series on the agent's /metrics
// (metricValue).
func (m *memoryAgent) metric(t *testing.T, name string) float64 {
	t.Helper()
	v := metricValue(testenv.Metrics(t, m.metrics), name)
	if v == -1 {
		t.Fatalf("no %s on /metrics", name)
	}
	return v
}

// checkWarned checks what the agent says of its 64 MiB limit besides the
// log: a status warning, and the bound over the limit on /metrics.
func (m *memoryAgent) checkWarned(t *testing.T) {
	t.Helper()
	if w := m.status(t).Warnings; !slicesContain(w, memoryShort) {
		t.Errorf("ztdns status warnings %q: none says the memory limit %s", w, memoryShort)
	}
	limit, bound := m.metric(t, "ztdns_memory_limit_bytes"), m.metric(t, "ztdns_memory_bound_bytes")
	if limit != 64<<20 || bound <= limit {
		t.Errorf("ztdns_memory_limit_bytes %.0f, ztdns_memory_bound_bytes %.0f: want 64 MiB and a bound above it", limit, bound)
	}
}

// slicesContain reports whether one of list contains s.
func slicesContain(list []string, s string) bool {
	return slices.ContainsFunc(list, func(l string) bool { return strings.Contains(l, s) })
}
