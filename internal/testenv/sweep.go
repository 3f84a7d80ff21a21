//go:build linux

package testenv

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// A test process that is killed (a CI timeout, SIGKILL) runs no cleanup:
// the network namespaces (and their /etc/netns files), cgroups, mounts and
// temporary directories (builds among them) it made stay on the machine,
// with any process started in the namespaces. So every process records what
// it makes in a ledger under ledgerDir, named by its PID and start time, and
// the first test to make something sweeps the ledgers of processes that are
// gone: it removes what they recorded (what their cleanups already removed
// is simply not found) and then the ledger. Processes still running, such as
// tests of another checkout at the same time, are left alone.
var ledgerDir = "/run/ztdns-test"

var ledger struct {
	mu    sync.Mutex
	swept bool
	path  string
	file  *os.File
	live  int // entries whose cleanup has not run yet
	// keep: a test that recorded in this ledger failed, and perhaps a
	// cleanup with it.
	keep bool
}

// Ledger kinds: what a line records.
const (
	ledgerNetns   = "netns"   // a name under /run/netns and /etc/netns
	ledgerCgroup  = "cgroup"  // a cgroup directory (v2, or v1's memory hierarchy)
	ledgerMount   = "mount"   // a mount point (bpffs, tmpfs)
	ledgerTempDir = "tempdir" // a directory under os.TempDir() (tempDirPrefixes)
)

// record appends what is about to be made to this process's ledger,
// sweeping dead processes' ledgers first. The test registers release as a
// cleanup before the one that removes the thing, so it runs after it: once
// every recorded thing is cleaned up, the ledger goes too.
func record(tb testing.TB, kind, what string) {
	tb.Helper()
	release, err := hold(kind, what)
	if err != nil {
		tb.Fatalf("testenv: the ledger of what this test makes: %v", err)
	}
	tb.Cleanup(func() { release(tb.Failed()) })
}

// hold records what is about to be made in this process's ledger; release
// says it is gone (or, failed, that it perhaps is not).
func hold(kind, what string) (release func(failed bool), err error) {
	ledger.mu.Lock()
	defer ledger.mu.Unlock()
	if err := openLedger(); err != nil {
		return nil, err
	}
	if _, err := fmt.Fprintf(ledger.file, "%s %s\n", kind, what); err != nil {
		return nil, err
	}
	ledger.live++
	var once sync.Once
	return func(failed bool) {
		once.Do(func() {
			ledger.mu.Lock()
			defer ledger.mu.Unlock()
			ledger.keep = ledger.keep || failed
			if ledger.live--; ledger.live == 0 {
				ledger.file.Close()
				ledger.file = nil
				// A failed test may have failed a cleanup (a cgroup that
				// would not go): keep the ledger, so the first test after
				// this process tries again. Any test's failure counts, not
				// only the last one's to let go of the ledger.
				if !ledger.keep {
					os.Remove(ledger.path)
				}
			}
		})
	}, nil
}

// holdTempDir records a temporary directory that is about to be made.
// Without root there is no ledger (it is under /run) and nothing else to
// sweep: the directory goes unrecorded.
func holdTempDir(dir string) (func(failed bool), error) {
	if os.Geteuid() != 0 {
		return func(bool) {}, nil
	}
	return hold(ledgerTempDir, dir)
}

// RecordMount records a mount point at dir before the caller mounts there
// (a bpffs, a tmpfs), so that the first test after this process is killed
// unmounts it; the caller still unmounts it at cleanup.
func RecordMount(tb testing.TB, dir string) {
	tb.Helper()
	record(tb, ledgerMount, dir)
}

func openLedger() error {
	if !ledger.swept {
		if err := os.MkdirAll(ledgerDir, 0o700); err != nil {
			return err
		}
		sweepLeftovers() // what it cannot remove, it tries again next time
		ledger.swept = true
	}
	if ledger.file != nil {
		return nil
	}
	id, err := processID(os.Getpid())
	if err != nil {
		return err
	}
	ledger.path = filepath.Join(ledgerDir, id)
	ledger.file, err = os.OpenFile(ledger.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	return err
}

// processID names a process across PID reuse: its PID and its start time
// (in clock ticks since boot, field 22 of /proc/PID/stat).
func processID(pid int) (string, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(stat), ')')
	fields := strings.Fields(string(stat[i+1:]))
	if i < 0 || len(fields) < 20 {
		return "", fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return fmt.Sprintf("%d-%s", pid, fields[19]), nil
}

// sweepLeftovers removes what test processes that are gone recorded and did
// not clean up, and returns what it could not remove.
func sweepLeftovers() error {
	entries, err := os.ReadDir(ledgerDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if !isProcessID(e.Name()) || !processGone(e.Name()) {
			continue // no ledger, or its process still running
		}
		path := filepath.Join(ledgerDir, e.Name())
		if err := sweepLedger(path); err != nil {
			errs = append(errs, err)
			continue
		}
		os.Remove(path)
	}
	return errors.Join(errs...)
}

func sweepLedger(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // another package's tests swept it first
	}
	if err != nil {
		return err
	}
	defer f.Close()
	var lines []string
	for sc := bufio.NewScanner(f); sc.Scan(); {
		lines = append(lines, sc.Text())
	}
	var errs []error
	var tempDirs []string
	// Newest first, as cleanups run: a mount inside a namespace's files
	// before the namespace, a cgroup's processes before their namespace.
	for i := len(lines) - 1; i >= 0; i-- {
		kind, what, _ := strings.Cut(lines[i], " ")
		var err error
		switch kind {
		case ledgerMount:
			if err = unix.Unmount(what, unix.MNT_DETACH); errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
				err = nil // not mounted (any more)
			}
			if err == nil {
				os.Remove(what)
				tempDirs = append(tempDirs, testTempDir(what))
			}
		case ledgerCgroup:
			if _, serr := os.Stat(what); serr == nil {
				err = removeCgroup(what)
			}
		case ledgerNetns:
			err = removeNetns(what)
		case ledgerTempDir:
			err = removeTempDir(what)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", kind, what, err))
		}
	}
	if len(errs) == 0 {
		for _, dir := range tempDirs {
			if dir != "" {
				os.RemoveAll(dir)
			}
		}
	}
	return errors.Join(errs...)
}

// testTempDir is the directory t.TempDir made for the test that put a mount
// at path (TMPDIR/TestName123/001/bpffs), which a killed test leaves too;
// "" if path is not in one.
func testTempDir(path string) string {
	dir := filepath.Dir(filepath.Dir(path))
	if filepath.Dir(dir) != filepath.Clean(os.TempDir()) || !strings.HasPrefix(filepath.Base(dir), "Test") {
		return ""
	}
	return dir
}

// removeTempDir removes a temporary directory a test made, and nothing that
// is not one (which record never wrote).
func removeTempDir(dir string) error {
	if !isTempDir(dir) {
		return nil
	}
	return os.RemoveAll(dir)
}

// removeNetns kills the processes left in the namespace (an agent the test
// started, say) and deletes it, and removes the resolv.conf WriteResolvConf
// wrote for it, whether the namespace is there or not (WriteResolvConf
// writes before the namespace is made).
func removeNetns(name string) error {
	if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
		return nil // no name record wrote: nothing of a test's
	}
	defer func() {
		os.RemoveAll(filepath.Join("/etc/netns", name))
		os.Remove("/etc/netns") // only if no other namespace's files are in it
	}()
	path := filepath.Join("/run/netns", name)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	out, _ := exec.Command("ip", "netns", "pids", name).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
		if _, serr := os.Stat(path); !errors.Is(serr, fs.ErrNotExist) {
			return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
		} // else another package's tests swept it at the same time
	}
	return nil
}
