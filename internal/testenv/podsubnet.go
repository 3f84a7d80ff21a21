//go:build linux

package testenv

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// maxPodSubnets is how many pods the machine's tests may have at once:
// pod N holds 10.253.N.2/24 and 2001:db8:N::2/64.
const maxPodSubnets = 250

// podSubnet hands out the N of a pod's subnets machine-wide, not per node:
// go test runs packages at once, and an agent that looks for a pod by its
// IP in every network namespace of the node's /proc (adoption) would find
// another package's pod holding the same one, and adopt neither. Each N is
// a file under ledgerDir naming the process that holds it, taken under a
// lock; one whose process is gone (killed before its cleanup) is taken
// again. It is given back when the test ends, after the pod's namespace.
func podSubnet(tb testing.TB) int {
	tb.Helper()
	dir := filepath.Join(ledgerDir, "pod-subnets")
	n, err := claimPodSubnet(dir)
	if err != nil {
		tb.Fatalf("testenv: a pod subnet: %v", err)
	}
	path := filepath.Join(dir, strconv.Itoa(n))
	tb.Cleanup(func() { os.Remove(path) })
	return n
}

func claimPodSubnet(dir string) (int, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return 0, err
	}
	defer lock.Close() // and with it the lock
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return 0, err
	}
	me, err := processID(os.Getpid())
	if err != nil {
		return 0, err
	}
	for n := 1; n <= maxPodSubnets; n++ {
		path := filepath.Join(dir, strconv.Itoa(n))
		owner, err := os.ReadFile(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return 0, err
		case processGone(string(owner)):
			// Its holder was killed before its cleanup: what it left,
			// a namespace holding the subnet's IP among it, goes first.
			if err := sweepGone(string(owner)); err != nil {
				continue
			}
		default:
			continue
		}
		return n, os.WriteFile(path, []byte(me), 0o600)
	}
	return 0, errors.New("all " + strconv.Itoa(maxPodSubnets) + " are in use by running tests")
}

// sweepGone removes what the process id named, gone, left in its ledger,
// and the ledger; nothing if another process swept it first.
func sweepGone(id string) error {
	path := filepath.Join(ledgerDir, id)
	if err := sweepLedger(path); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// isProcessID reports whether name has a processID's form, PID-start.
func isProcessID(name string) bool {
	pid, start, ok := strings.Cut(name, "-")
	_, perr := strconv.Atoi(pid)
	_, serr := strconv.ParseUint(start, 10, 64)
	return ok && perr == nil && serr == nil
}

// processGone reports whether the process a processID names has exited.
func processGone(id string) bool {
	pid, _, ok := strings.Cut(id, "-")
	n, err := strconv.Atoi(pid)
	if !ok || err != nil {
		return true
	}
	now, err := processID(n)
	return err != nil || now != id
}
