//go:build linux

package bench

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/testenv"
)

// pinServers places every thread of every server and returns a starter
// that runs the load on CPU 0. Left to itself, the kernel tends to put a
// one-thread server on the load's CPU, where a wake-up is cheap, and a
// server of several threads on the other, where each costs an
// inter-processor interrupt: the placement, not the server, then decides
// much of the CPU per query at fixed rates. Pinned, both servers meet the
// same placement: apart (on the last CPU, as on a node whose clients run
// on other CPUs) or together (on CPU 0, sharing it with the load).
func pinServers(tb testing.TB, servers []namedServer, how string) starter {
	tb.Helper()
	n := runtime.NumCPU()
	var cpu int
	switch how {
	case "apart":
		if n < 2 {
			tb.Fatalf("-pin apart needs two CPUs, the machine has %d", n)
		}
		cpu = n - 1
	case "together":
	default:
		tb.Fatalf("-pin %q: want apart or together", how)
	}
	var set unix.CPUSet
	set.Set(cpu)
	for _, s := range servers {
		if err := pinProcess(s.srv.pid(), &set); err != nil {
			tb.Fatalf("pinning %s: %v", s.name, err)
		}
	}
	taskset := testenv.LookPath(tb, "taskset")
	tb.Logf("-pin %s: servers on CPU %d, dnsperf on CPU 0", how, cpu)
	return func(ctx context.Context, name string, args ...string) *exec.Cmd {
		return exec.CommandContext(ctx, taskset, append([]string{"-c", "0", name}, args...)...)
	}
}

// pinProcess sets the affinity of every thread pid has; threads it starts
// later inherit it from the thread that starts them. A thread started
// while the walk runs, by one not pinned yet, is caught by the walk after
// it: it walks until one finds no new thread. A thread that has exited is
// none of its business.
func pinProcess(pid int, set *unix.CPUSet) error {
	pinned := map[int]bool{}
	for {
		tids, err := threadIDs(pid)
		if err != nil {
			return err
		}
		fresh := 0
		for _, tid := range tids {
			if pinned[tid] {
				continue
			}
			if err := unix.SchedSetaffinity(tid, set); err != nil && err != unix.ESRCH {
				return err
			}
			pinned[tid] = true
			fresh++
		}
		if fresh == 0 {
			return nil
		}
	}
}

// threadIDs lists the threads of pid.
func threadIDs(pid int) ([]int, error) {
	tasks, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
	if err != nil {
		return nil, err
	}
	var tids []int
	for _, t := range tasks {
		if tid, err := strconv.Atoi(t.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}
