//go:build linux

package testenv

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const leakEnv = "ZTDNS_TESTENV_LEAK"

// leakAndExit is the killed test of TestSweepLeftovers, run in a child
// process: it makes a namespace with a resolv.conf and a process in it, a
// cgroup, a bpffs mount, a tmpfs mounted after RecordMount, the resolv.conf
// of a namespace it never made (a test killed between the two), AsUser's
// copy of a binary and temporary directories of a test and of the process,
// prints them, and exits without its cleanups, as a test process that is
// killed does.
func leakAndExit(t *testing.T) {
	name, unmade := UniqueName("ztdns-leak-"), UniqueName("ztdns-leak-")
	WriteResolvConf(t, name, PodConfig{})
	n := NewNetns(t, name)
	WriteResolvConf(t, unmade, PodConfig{})
	cg := NewCgroup(t)
	bpffs := NewBPFFS(t)
	tmpfs := filepath.Join(t.TempDir(), "tmpfs") // mounted by the caller of RecordMount
	if err := os.Mkdir(tmpfs, 0o700); err != nil {
		t.Fatal(err)
	}
	RecordMount(t, tmpfs)
	if err := unix.Mount("ztdns-test", tmpfs, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	asUser := AsUser(t, context.Background(), Nobody, "/bin/true")
	testDir := MkdirTemp(t, "ztcni-")
	processDir, _, err := MkdirTempForProcess("ztdns-testbin-")
	if err != nil {
		t.Fatal(err)
	}
	sleeper := n.Command(context.Background(), cg, "sleep", "600")
	sleeper.SysProcAttr.Setsid = true
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("LEAK %s %s %s %d %s %s %s %s %s\n", n.Name, cg.Path, bpffs, sleeper.Process.Pid, unmade, filepath.Dir(asUser.Path), tmpfs, testDir, processDir)
	os.Exit(0)
}

// TestSweepLeftovers: what a test process that was killed left (a network
// namespace with a process in it, a cgroup, bpffs and tmpfs mounts,
// /etc/netns files with or without their namespace, temporary directories)
// is removed by the next test that makes something, and what a running test
// made is not.
func TestSweepLeftovers(t *testing.T) {
	if os.Getenv(leakEnv) != "" {
		leakAndExit(t)
	}
	RequireRoot(t)
	mine := NewNetns(t, UniqueName("ztdns-live-")) // this process's: it stays

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestSweepLeftovers$", "-test.count=1")
	cmd.Env = append(os.Environ(), leakEnv+"=1")
	out, err := cmd.CombinedOutput()
	var netns, cgroup, mount, unmade, asUserDir, tmpfs, testDir, processDir string
	var pid int
	for line := range strings.Lines(string(out)) {
		if rest, ok := strings.CutPrefix(line, "LEAK "); ok {
			f := strings.Fields(rest)
			if len(f) == 9 {
				netns, cgroup, mount, unmade, asUserDir, tmpfs, testDir, processDir = f[0], f[1], f[2], f[4], f[5], f[6], f[7], f[8]
				pid, _ = strconv.Atoi(f[3])
			}
		}
	}
	if pid == 0 {
		t.Fatalf("the leaking test printed no LEAK line (%v):\n%s", err, out)
	}
	t.Cleanup(func() { // if the sweep fails, leave nothing all the same
		syscall.Kill(pid, syscall.SIGKILL)
		removeNetns(netns)
		removeNetns(unmade)
		removeCgroup(cgroup)
		syscall.Unmount(mount, syscall.MNT_DETACH)
		syscall.Unmount(tmpfs, syscall.MNT_DETACH)
		os.RemoveAll(filepath.Dir(filepath.Dir(mount)))
		removeTempDir(asUserDir)
		removeTempDir(testDir)
		removeTempDir(processDir)
	})
	if err != nil {
		t.Fatalf("the leaking test: %v\n%s", err, out)
	}
	netnsPath := filepath.Join("/run/netns", netns)
	etcNetns := []string{filepath.Join("/etc/netns", netns), filepath.Join("/etc/netns", unmade)}
	for _, p := range append([]string{netnsPath, cgroup, asUserDir, testDir, processDir}, etcNetns...) {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("the leaking test's %s is not there: %v", p, err)
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mount, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		t.Fatalf("the leaking test's bpffs is not mounted at %s (statfs: %v, type %#x)", mount, err, st.Type)
	}
	if err := unix.Statfs(tmpfs, &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		t.Fatalf("the leaking test's tmpfs is not mounted at %s (statfs: %v, type %#x)", tmpfs, err, st.Type)
	}

	if err := sweepLeftovers(); err != nil {
		t.Errorf("sweepLeftovers: %v", err)
	}
	for _, p := range append([]string{netnsPath, cgroup, mount, tmpfs, filepath.Dir(filepath.Dir(mount)), asUserDir, testDir, processDir}, etcNetns...) {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s is still there after the sweep (%v)", p, err)
		}
	}
	if err := waitGone(pid, 5*time.Second); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", mine.Name)); err != nil {
		t.Errorf("the sweep removed a running test's namespace: %v", err)
	}
}

// waitGone waits until process pid has exited (and been reaped by init).
func waitGone(pid int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("process %d left in the namespace is still running", pid)
}

// TestSweepRemovesOnlyTestTempDirs: a recorded temporary directory is
// removed only when it is directly under os.TempDir() with a name tests
// use; anything else a ledger names is left. It asks isTempDir, which
// removeTempDir consults, so that a regression cannot remove "/".
func TestSweepRemovesOnlyTestTempDirs(t *testing.T) {
	for _, dir := range []string{
		filepath.Join(os.TempDir(), "sub", "ztcni-nested"), // a known prefix, not under os.TempDir() itself
		filepath.Join(os.TempDir(), "ztdns-other-x"),       // under os.TempDir(), not a test's prefix
		"ztcni-relative",
		"/",
		os.TempDir(),
	} {
		if isTempDir(dir) {
			t.Errorf("isTempDir(%q) = true; want it left", dir)
		}
	}
	if dir := filepath.Join(os.TempDir(), "ztcni-x"); !isTempDir(dir) {
		t.Errorf("isTempDir(%q) = false; want it removed", dir)
	}
}
