//go:build linux

package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// userHZ is the unit of the CPU times in /proc/PID/stat: USER_HZ, 100 on
// every Linux ABI Go supports.
const userHZ = 100

// procSample is what /proc says about a process (all its threads) at one
// moment.
type procSample struct {
	at time.Time
	// cpu is user plus system time.
	cpu time.Duration
	// wakeups are voluntary context switches: each is a thread that
	// blocked (in epoll, a futex, a read) and was later woken.
	wakeups int64
	// preempted are involuntary context switches.
	preempted int64
	// Memory in bytes: resident (VmRSS), its peak (VmHWM), and the
	// resident anonymous and file-backed parts.
	rss, hwm, anon, file int64
}

// sampleProc reads /proc for pid; the test fails if the process is gone.
func sampleProc(tb testing.TB, pid int) procSample {
	tb.Helper()
	s, err := readProc(pid)
	if err != nil {
		tb.Fatalf("reading /proc/%d: %v", pid, err)
	}
	return s
}

func readProc(pid int) (procSample, error) {
	s := procSample{at: time.Now()}
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	status, err := statusFields(filepath.Join(dir, "status"))
	if err != nil {
		return s, err
	}
	s.rss, s.hwm = status["VmRSS"]*1024, status["VmHWM"]*1024
	s.anon, s.file = status["RssAnon"]*1024, status["RssFile"]*1024

	// The process's own stat counts the CPU of threads that exited too, but
	// in ticks; the threads' schedstat counts nanoseconds. Take the larger.
	ticks, err := statCPU(filepath.Join(dir, "stat"))
	if err != nil {
		return s, err
	}
	tasks, err := os.ReadDir(filepath.Join(dir, "task"))
	if err != nil {
		return s, err
	}
	var ns time.Duration
	for _, t := range tasks {
		tdir := filepath.Join(dir, "task", t.Name())
		if b, err := os.ReadFile(filepath.Join(tdir, "schedstat")); err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				v, _ := strconv.ParseInt(f[0], 10, 64)
				ns += time.Duration(v)
			}
		}
		if st, err := statusFields(filepath.Join(tdir, "status")); err == nil {
			s.wakeups += st["voluntary_ctxt_switches"]
			s.preempted += st["nonvoluntary_ctxt_switches"]
		}
	}
	s.cpu = max(ns, ticks)
	return s, nil
}

// statCPU returns utime+stime of /proc/PID/stat.
func statCPU(path string) (time.Duration, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	// comm, in parentheses, may hold spaces: count fields after its end.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("%s: no ')'", path)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("%s: %d fields", path, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return time.Duration(utime+stime) * time.Second / userHZ, nil
}

// statusFields reads the numeric fields of a /proc status file ("VmRSS:
// 1234 kB" gives VmRSS 1234).
func statusFields(path string) (map[string]int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		if fields := strings.Fields(v); len(fields) > 0 {
			if n, err := strconv.ParseInt(fields[0], 10, 64); err == nil {
				out[k] = n
			}
		}
	}
	return out, sc.Err()
}

// ksoftirqdCPU is the CPU time of every ksoftirqd thread: network receive
// work the kernel defers to them under load is charged to no client or
// server, so the capture benchmark counts it apart.
func ksoftirqdCPU() time.Duration {
	var total time.Duration
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || !bytes.HasPrefix(comm, []byte("ksoftirqd/")) {
			continue
		}
		if d, err := statCPU(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			total += d
		}
	}
	return total
}

// usage is what a process did between two samples.
type usage struct {
	elapsed   time.Duration
	cpu       time.Duration
	wakeups   int64
	preempted int64
}

func (a procSample) until(b procSample) usage {
	return usage{
		elapsed:   b.at.Sub(a.at),
		cpu:       b.cpu - a.cpu,
		wakeups:   b.wakeups - a.wakeups,
		preempted: b.preempted - a.preempted,
	}
}

const mib = 1 << 20
