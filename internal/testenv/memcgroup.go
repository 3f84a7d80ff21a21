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
	root, file, _ := memoryHierarchy(tb)
	return newMemoryCgroupAt(tb, filepath.Join(root, UniqueName("ztdns-test-")), file, limit)
}

// memoryHierarchy is where child cgroups get the memory controller
// (cgroupHierarchy), the name of its limit file there, and whether it is
// cgroup v2's; the test is Unavailable without one. It requires root.
func memoryHierarchy(tb testing.TB) (root, file string, v2 bool) {
	tb.Helper()
	RequireRoot(tb)
	root, v2 = cgroupHierarchy("memory")
	if root == "" {
		Unavailable(tb, "needs the memory cgroup controller, v2 (in the cgroup2 root's cgroup.subtree_control) or v1 (a cgroup mount with the memory option)")
	}
	if v2 {
		return root, "memory.max", true
	}
	return root, "memory.limit_in_bytes", false
}

// newMemoryCgroupAt creates the cgroup at path with a memory limit of
// limit bytes (0: none), removed at cleanup.
func newMemoryCgroupAt(tb testing.TB, path, file string, limit int64) *MemoryCgroup {
	tb.Helper()
	c := &MemoryCgroup{Path: makeCgroup(tb, path), limitFile: file}
	if limit > 0 {
		c.SetLimit(tb, limit)
	}
	return c
}

// NewPodMemoryCgroups lays out a pod's cgroups as the kubelet's cgroupfs
// driver names them, in the hierarchy NewMemoryCgroup uses:
// ztdns-test-kubepods-<random>/pod<uid>, with a memory limit of podLimit
// bytes, and a container's beneath it, ctr, with ctrLimit (its Wrapper
// runs a command in it). At cleanup every process still in them is
// killed and they are removed.
func NewPodMemoryCgroups(tb testing.TB, uid string, podLimit, ctrLimit int64) (pod, ctr *MemoryCgroup) {
	tb.Helper()
	root, file, v2 := memoryHierarchy(tb)
	// Each level hands the controller down (v2; v1 has no such file).
	down := func(c *MemoryCgroup) {
		if v2 {
			if err := os.WriteFile(filepath.Join(c.Path, "cgroup.subtree_control"), []byte("+memory"), 0); err != nil {
				tb.Fatalf("testenv: enable memory under %s: %v", c.Path, err)
			}
		}
	}
	kubepods := newMemoryCgroupAt(tb, filepath.Join(root, UniqueName("ztdns-test-kubepods-")), file, 0)
	down(kubepods)
	pod = newMemoryCgroupAt(tb, filepath.Join(kubepods.Path, "pod"+uid), file, podLimit)
	down(pod)
	return pod, newMemoryCgroupAt(tb, filepath.Join(pod.Path, "ctr"), file, ctrLimit)
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
