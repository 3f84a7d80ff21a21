//go:build linux

package bench

import (
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// perfEvents are what `perf stat` counts for a profiled server: where a
// query's CPU goes besides the work itself (wake-ups, the netpoller,
// futexes, batches per syscall).
var perfEvents = []string{
	"task-clock", "context-switches", "cpu-migrations",
	"raw_syscalls:sys_enter",
	"syscalls:sys_enter_futex", "syscalls:sys_enter_epoll_pwait", "syscalls:sys_enter_nanosleep",
	"syscalls:sys_enter_recvmmsg", "syscalls:sys_enter_sendmmsg",
	"syscalls:sys_enter_recvfrom", "syscalls:sys_enter_sendto", "syscalls:sys_enter_recvmsg", "syscalls:sys_enter_sendmsg",
	"syscalls:sys_enter_read", "syscalls:sys_enter_write",
}

var profileDir struct {
	once sync.Once
	dir  string
	err  error
}

// profilePath is where the profile of the running benchmark goes, with
// suffix.
func profilePath(tb testing.TB, suffix string) string {
	tb.Helper()
	profileDir.once.Do(func() {
		if *flagProfileDir != "" {
			profileDir.dir, profileDir.err = *flagProfileDir, os.MkdirAll(*flagProfileDir, 0o755)
			return
		}
		profileDir.dir, profileDir.err = os.MkdirTemp("", "ztdns-bench-profile-")
	})
	if profileDir.err != nil {
		tb.Fatal(profileDir.err)
	}
	name := strings.NewReplacer("/", "_", "=", "-").Replace(tb.Name())
	return filepath.Join(profileDir.dir, name+suffix)
}

// startProfile starts profiling srv as -profile asks, for about d, and
// returns what stops it. perf profiles any server (perf record -g and perf
// stat of perfEvents, as root); go profiles an agent bench/agentprof runs.
func startProfile(tb testing.TB, srv *dnsServer, d time.Duration) (stop func()) {
	tb.Helper()
	switch *flagProfile {
	case "":
		return func() {}
	case "perf":
		return startPerf(tb, srv.pid())
	case "go":
		if srv.pprof == "" {
			return func() {}
		}
		return startPprof(tb, srv.pprof, d)
	}
	tb.Fatalf("-profile %q: want perf or go", *flagProfile)
	return nil
}

// startPerf runs perf record and perf stat on pid until stop.
func startPerf(tb testing.TB, pid int) func() {
	tb.Helper()
	testenv.RequireRoot(tb)
	perf := testenv.LookPath(tb, "perf")
	p := strconv.Itoa(pid)
	data, stat := profilePath(tb, ".perf.data"), profilePath(tb, ".perf-stat.txt")
	cmds := []*exec.Cmd{
		exec.Command(perf, "record", "-q", "-F", "999", "-g", "-p", p, "-o", data),
		exec.Command(perf, "stat", "-p", p, "-o", stat, "-e", strings.Join(perfEvents, ",")),
	}
	for _, c := range cmds {
		c.Stderr = os.Stderr
		if err := c.Start(); err != nil {
			tb.Fatalf("perf: %v", err)
		}
	}
	time.Sleep(200 * time.Millisecond) // perf attaches
	return func() {
		for _, c := range cmds {
			_ = c.Process.Signal(syscall.SIGINT)
			err := c.Wait()
			if ws, ok := c.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGINT {
				err = nil // perf writes its results and dies of the SIGINT it was stopped with
			}
			if err != nil {
				tb.Errorf("%s: %v", strings.Join(c.Args[:2], " "), err)
			}
		}
		tb.Logf("perf: %s (perf report -i %s), %s", data, data, stat)
	}
}

// startPprof fetches a CPU profile of d from an agentprof, and its heap at
// stop.
func startPprof(tb testing.TB, base string, d time.Duration) func() {
	tb.Helper()
	cpu, heap := profilePath(tb, ".cpu.pprof"), profilePath(tb, ".heap.pprof")
	done := make(chan error, 1)
	go func() { done <- fetch(fmt.Sprintf("%sprofile?seconds=%d", base, int(d.Seconds())), cpu) }()
	return func() {
		if err := <-done; err != nil {
			tb.Errorf("pprof: %v", err)
		}
		if err := fetch(base+"heap?gc=1", heap); err != nil {
			tb.Errorf("pprof: %v", err)
		}
		tb.Logf("pprof: go tool pprof %s; go tool pprof -sample_index=inuse_space %s", cpu, heap)
	}
}

func fetch(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// pprofLine is how agentprof says where its profiles are.
var pprofLine = regexp.MustCompile(`pprof on (http://\S+/debug/pprof/)`)

// startAgentprof runs bench/agentprof, the agent in-process with pprof, on
// manifests in place of the ztdns binary.
func startAgentprof(tb testing.TB, manifests string, upstream netip.AddrPort) *dnsServer {
	tb.Helper()
	bin := testenv.Build(tb, "github.com/ztdns/ztdns/bench/agentprof")
	addr := testenv.FreePort(tb)
	sock := filepath.Join(tb.TempDir(), "ztdns.sock")
	s := &dnsServer{
		proc: testenv.StartLocal(tb, bin, "-config-dir", manifests, "-listen", addr.String(), "-upstream", upstream.String(), "-socket", sock),
		addr: addr,
		ctl:  &agenttest.Agent{Addr: addr, Socket: sock},
	}
	s.proc.WaitLog(tb, "pprof on", time.Minute)
	s.pprof = pprofLine.FindStringSubmatch(s.proc.Log())[1]
	s.waitLoaded(tb, 1)
	return s
}
