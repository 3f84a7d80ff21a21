//go:build linux

package testenv

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// CPUCgroup is a cgroup made by the test with a CPU limit (a CFS quota),
// in the hierarchy that holds the cpu controller: cgroup v2's when its
// root hands the controller down, else v1's (/sys/fs/cgroup/cpu on these
// hybrid machines). Never the root cgroup itself.
type CPUCgroup struct{ Path string }

// NewCPUCgroup creates a cgroup whose processes may run quota in every
// period (a pod's limits.cpu of 100m is 10 ms in 100 ms). At cleanup every
// process still in it is killed and it is removed.
func NewCPUCgroup(tb testing.TB, quota, period time.Duration) *CPUCgroup {
	tb.Helper()
	RequireRoot(tb)
	root, v2 := cgroupHierarchy("cpu")
	if root == "" {
		Unavailable(tb, "needs the cpu cgroup controller, v2 (in the cgroup2 root's cgroup.subtree_control) or v1 (a cgroup mount with the cpu option)")
	}
	path := makeCgroup(tb, filepath.Join(root, UniqueName("ztdns-test-")))
	us := func(d time.Duration) string { return strconv.FormatInt(d.Microseconds(), 10) }
	files := [][2]string{{"cpu.max", us(quota) + " " + us(period)}}
	if !v2 { // the period first: a quota over the old period may be refused
		files = [][2]string{{"cpu.cfs_period_us", us(period)}, {"cpu.cfs_quota_us", us(quota)}}
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(path, f[0]), []byte(f[1]), 0); err != nil {
			tb.Fatalf("testenv: set %s of %s to %s: %v", f[0], path, f[1], err)
		}
	}
	return &CPUCgroup{Path: path}
}

// Wrapper is a command line prefix (StartAgentIn's wrapper; StartLocal's
// bin and first arguments) that runs the command after it inside the
// cgroup from its first instruction: a shell moves itself into the cgroup
// and execs the command.
func (c *CPUCgroup) Wrapper() []string { return wrapperInto(c.Path) }

// Throttled is the cgroup's nr_throttled, as the kernel counts it.
func (c *CPUCgroup) Throttled(tb testing.TB) uint64 {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(c.Path, "cpu.stat"))
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "nr_throttled "); ok {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				tb.Fatalf("testenv: %s/cpu.stat: %q", c.Path, line)
			}
			return n
		}
	}
	tb.Fatalf("testenv: %s/cpu.stat has no nr_throttled:\n%s", c.Path, b)
	return 0
}
