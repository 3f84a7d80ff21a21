//go:build linux

package testenv

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Cgroup is a child cgroup v2 made by the test. Programs are attached here,
// never to the machine's root cgroup, and only processes started into it
// (Netns.Command with this cgroup) are affected.
type Cgroup struct {
	Path string
	dir  *os.File
}

// FD is the cgroup directory's descriptor, for SysProcAttr.CgroupFD.
func (c *Cgroup) FD() int { return int(c.dir.Fd()) }

// Cgroup2Root returns the first cgroup2 mount in /proc/mounts
// (/sys/fs/cgroup/unified on these hybrid machines).
func Cgroup2Root(tb testing.TB) string {
	tb.Helper()
	f, err := os.Open("/proc/mounts")
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[2] == "cgroup2" {
			return fields[1]
		}
	}
	Unavailable(tb, "needs a cgroup2 mount (none in /proc/mounts)")
	return ""
}

// NewCgroup creates a cgroup under the cgroup2 root. At cleanup every
// process still in it is killed and it is removed.
func NewCgroup(tb testing.TB) *Cgroup {
	tb.Helper()
	RequireRoot(tb)
	return newCgroupAt(tb, filepath.Join(Cgroup2Root(tb), UniqueName("ztdns-test-")))
}

// NewChildCgroup creates the cgroup name under parent (a test's own
// cgroup standing for the cgroup2 root, say). It is removed at cleanup,
// before parent, its processes killed.
func NewChildCgroup(tb testing.TB, parent *Cgroup, name string) *Cgroup {
	tb.Helper()
	return newCgroupAt(tb, filepath.Join(parent.Path, name))
}

// newCgroupAt creates the cgroup at path (makeCgroup) and opens it.
func newCgroupAt(tb testing.TB, path string) *Cgroup {
	tb.Helper()
	path = makeCgroup(tb, path)
	dir, err := os.Open(path)
	if err != nil {
		tb.Fatalf("testenv: open cgroup: %v", err)
	}
	tb.Cleanup(func() { dir.Close() }) // before makeCgroup's removal
	return &Cgroup{Path: path, dir: dir}
}

// makeCgroup creates the cgroup at path (recorded for the sweep); at
// cleanup every process still in it is killed and it is removed.
func makeCgroup(tb testing.TB, path string) string {
	tb.Helper()
	record(tb, ledgerCgroup, path)
	if err := os.Mkdir(path, 0o755); err != nil {
		tb.Fatalf("testenv: create cgroup: %v", err)
	}
	tb.Cleanup(func() {
		if err := removeCgroup(path); err != nil {
			tb.Errorf("cleanup: cgroup %s: %v", path, err)
		}
	})
	return path
}

// Remove kills the processes in the cgroup and removes it before cleanup,
// e.g. to leave a link attached to it defunct.
func (c *Cgroup) Remove() error { return removeCgroup(c.Path) }

// removeCgroup kills what is left in the cgroup and removes it; rmdir
// succeeds only once the last process is gone.
func removeCgroup(path string) error {
	// cgroup.kill (Linux 5.14) SIGKILLs the whole subtree at once.
	if err := os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0); err != nil {
		killProcs(path)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := os.Remove(path)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return err
		}
		killProcs(path)
		time.Sleep(20 * time.Millisecond)
	}
}

func killProcs(path string) {
	b, _ := os.ReadFile(filepath.Join(path, "cgroup.procs"))
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// cgroupHierarchy finds where child cgroups get controller, and whether
// it is cgroup v2's (its root hands the controller down) or v1's (a
// cgroup mount with the controller's option); "" when nowhere.
func cgroupHierarchy(controller string) (root string, v2 bool) {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return "", false
	}
	defer f.Close()
	var v1 string
	for sc := bufio.NewScanner(f); sc.Scan(); {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 {
			continue
		}
		switch fields[2] {
		case "cgroup2":
			b, _ := os.ReadFile(filepath.Join(fields[1], "cgroup.subtree_control"))
			if slices.Contains(strings.Fields(string(b)), controller) {
				return fields[1], true
			}
		case "cgroup":
			if v1 == "" && slices.Contains(strings.Split(fields[3], ","), controller) {
				v1 = fields[1]
			}
		}
	}
	return v1, false
}

// wrapperInto is a command line prefix that runs the command after it in
// the cgroup at path from its first instruction: a shell moves itself
// into the cgroup and execs the command.
func wrapperInto(path string) []string {
	return []string{"/bin/sh", "-c", `echo $$ > "$0" && exec "$@"`, filepath.Join(path, "cgroup.procs")}
}
