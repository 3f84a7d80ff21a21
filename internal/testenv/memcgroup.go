//go:build linux

package testenv

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// MemoryCgroup is a cgroup made by the test with a memory limit, in the
// hierarchy that holds the memory controller: cgroup v2's when its root
// hands the controller down, else v1's (/sys/fs/cgroup/memory on these
// hybrid machines). Never the root cgroup itself.
type MemoryCgroup struct {
	Path string
	// limitFile is memory.max (v2) or memory.limit_in_bytes (v1).
	limitFile string
}

// NewMemoryCgroup creates a cgroup with a memory limit of limit bytes. At
// cleanup every process still in it is killed and it is removed.
func NewMemoryCgroup(tb testing.TB, limit int64) *MemoryCgroup {
	tb.Helper()
	RequireRoot(tb)
	root, v2 := cgroupHierarchy("memory")
	file := "memory.limit_in_bytes"
	if v2 {
		file = "memory.max"
	}
	if root == "" {
		Unavailable(tb, "needs the memory cgroup controller, v2 (in the cgroup2 root's cgroup.subtree_control) or v1 (a cgroup mount with the memory option)")
	}
	path := filepath.Join(root, UniqueName("ztdns-test-"))
	record(tb, ledgerCgroup, path)
	if err := os.Mkdir(path, 0o755); err != nil {
		tb.Fatalf("testenv: create cgroup: %v", err)
	}
	tb.Cleanup(func() {
		if err := removeCgroup(path); err != nil {
			tb.Errorf("cleanup: cgroup %s: %v", path, err)
		}
	})
	c := &MemoryCgroup{Path: path, limitFile: file}
	c.SetLimit(tb, limit)
	return c
}

// SetLimit sets the cgroup's memory limit to limit bytes, in place, as a
// resized pod's is.
func (c *MemoryCgroup) SetLimit(tb testing.TB, limit int64) {
	tb.Helper()
	if err := os.WriteFile(filepath.Join(c.Path, c.limitFile), []byte(strconv.FormatInt(limit, 10)), 0); err != nil {
		tb.Fatalf("testenv: set %s of %s to %d: %v", c.limitFile, c.Path, limit, err)
	}
}

// Wrapper is a command line prefix (StartAgentIn's wrapper) that runs the
// command after it inside the cgroup from its first instruction: a shell
// moves itself into the cgroup and execs the command.
func (c *MemoryCgroup) Wrapper() []string { return wrapperInto(c.Path) }
