//go:build linux

package bench

import (
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/bench/workload"
	"github.com/ztdns/ztdns/internal/testenv"
)

// TestSmoke runs the Resolver comparison's machinery at a tiny size (400
// objects, 200 names queried, one second at 500 queries/s against each
// server, no warm-up), so that `make test` proves the benchmarks still
// work: the generated cluster loads into both servers, they give the same
// answers, -pin places them, dnsperf's report parses, and /proc is read.
// It asserts no timing.
func TestSmoke(t *testing.T) {
	testenv.LookPath(t, "dnsperf")
	c := workload.Config{Services: 200, Entries: 200, Queries: 200, AAAAEvery: 10}
	files := generate(t, c)
	unbound := startUnbound(t, files.Zone, files.Names[0])
	ztdns := startAgent(t, unbound.addr, 1, "--config-dir", files.Manifests)
	waitAnswers(t, ztdns, files.Names[0], files.Names[len(files.Names)-1])
	sameAnswers(t, ztdns, unbound, files.Names, 10)
	servers := []namedServer{{"ztdns", ztdns}, {"unbound", unbound}}
	how, cpu := "apart", runtime.NumCPU()-1
	if cpu == 0 {
		how = "together"
	}
	start := pinServers(t, servers, how)
	for _, s := range servers {
		// Every thread, the agent's runtime threads included.
		tids, err := threadIDs(s.srv.pid())
		if err != nil {
			t.Fatal(err)
		}
		for _, tid := range tids {
			var set unix.CPUSet
			if err := unix.SchedGetaffinity(tid, &set); err == unix.ESRCH {
				continue // exited since
			} else if err != nil {
				t.Fatal(err)
			}
			if set.Count() != 1 || !set.IsSet(cpu) {
				t.Errorf("-pin %s: thread %d of %s may run on %d CPUs (CPU %d among them: %v), want CPU %d alone",
					how, tid, s.name, set.Count(), cpu, set.IsSet(cpu), cpu)
			}
		}
	}
	for _, n := range servers {
		name, s := n.name, n.srv
		l := dnsperfLoad{server: s.addr.Addr().String(), port: int(s.addr.Port()), queries: files.Queries, rate: 500, duration: time.Second}
		r := measureLoad(t, s.pid(), l, start, 0)
		t.Logf("%s: %d of %d answered, server CPU %v, %d wake-ups, RSS %.1f MB, dnsperf CPU %v",
			name, r.completed, r.sent, r.server.cpu, r.server.wakeups, float64(r.after.rss)/mib, r.cpu)
		if r.completed < r.sent*9/10 || r.server.cpu <= 0 || r.server.wakeups <= 0 || r.after.rss <= 0 || r.cpu <= 0 {
			t.Errorf("%s: the run's figures are not all there: %+v", name, r)
		}
	}
	if ztdns.heapInuse(t) <= 0 {
		t.Error("the agent's /metrics has no heap in use")
	}
}

// TestSmokeForward runs the Forward comparison's machinery at a tiny size
// (200 hot names, one second at 500 queries/s of each load against each
// forwarder, no warm-up): the upstream serves both zones and counts its
// queries, every forwarder answers the hot names and caches them, and
// asks the upstream for each unique name of the miss load. It asserts no
// timing.
func TestSmokeForward(t *testing.T) {
	f := startForwarders(t, 200)
	for _, s := range f.servers {
		for _, load := range []struct {
			name    string
			queries queryFile
		}{{"hot", f.hot}, {"miss", f.miss}} {
			l := dnsperfLoad{server: s.srv.addr.Addr().String(), port: int(s.srv.addr.Port()), rate: 500, duration: time.Second}
			var done func()
			l.queries, done = load.queries(t, l)
			before := f.upstream.queries(t)
			r := measureLoad(t, s.srv.pid(), l, local, 0)
			upstream := f.upstream.queries(t) - before
			done()
			t.Logf("%s, %s names: %d of %d answered, server CPU %v, RSS %.1f MB, %d upstream queries",
				s.name, load.name, r.completed, r.sent, r.server.cpu, float64(r.after.rss)/mib, upstream)
			if r.completed < r.sent*9/10 || r.server.cpu <= 0 || r.after.rss <= 0 {
				t.Errorf("%s, %s names: the run's figures are not all there: %+v", s.name, load.name, r)
			}
			switch {
			case load.name == "hot" && upstream != 0:
				t.Errorf("%s asked the upstream %d times for cached names", s.name, upstream)
			case load.name == "miss" && upstream < r.completed:
				t.Errorf("%s asked the upstream %d times for %d unique names answered", s.name, upstream, r.completed)
			}
		}
	}
}
