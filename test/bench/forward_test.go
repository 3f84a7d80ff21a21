//go:build linux

package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// The Forward benchmark's zone, which its upstream serves: hotNames names
// under hotZone, each with one address, and every name under missZone
// (a redirect zone: one address for any name), which the miss-heavy load
// asks with a counter in each name so that no forwarder has it cached.
const (
	hotZone  = "ext.example."
	missZone = "miss.example."
	// forwardTTL outlives a whole run: the hot names stay cached (CoreDNS's
	// cache and ztdns's keep an answer an hour at most).
	forwardTTL = 86400
	// forwardCacheEntries is the entries each forwarder's cache may hold:
	// twice the hot names at the default -forward-names, so that the hot
	// load measures hits and not evictions (ztdns's default, 10,000, is
	// the hot set itself).
	forwardCacheEntries = 20_000
)

// missAddr is the one address of every name under missZone.
var missAddr = netip.MustParseAddr("192.0.2.1")

// hotName is the ith hot name, and hotAddr its address.
func hotName(i int) string { return fmt.Sprintf("host-%d.%s", i, hotZone) }

func hotAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

// BenchmarkForward: the queries a node's pods send most, names ztdns does
// not hold (external names, and their search-list expansions for kube-dns),
// through three forwarders with their caches, each pointed at the same
// upstream: ztdns (capture off, empty table, asked on its listen address
// as a node-local client asks it: it forwards to --upstream), unbound as
// a forwarder (forward-zone ".", one thread, cache on) and CoreDNS with
// forward and cache (the engine of NodeLocal DNSCache). The upstream is
// unbound on loopback serving -forward-names names and a redirect zone;
// its CPU is not counted, its queries are (upstream/query: the caching).
// Loads: cache=hot, the -forward-names names asked over and over (cached
// before the first run), at each -forward-rates rate; cache=miss, unique
// names at -forward-miss-rate, each asked once, so every query goes
// upstream. Servers are placed with -pin as in Resolver.
//
//	go test -run '^$' -bench Forward -benchtime 1x ./test/bench/ -args -rounds 4
func BenchmarkForward(b *testing.B) {
	if *flagProfile == "go" {
		b.Fatal("Forward: -profile go profiles an agentprof with a table; use -profile perf")
	}
	f := startForwarders(b, *flagForwardNames)
	start := local
	if *flagPin != "" {
		start = pinServers(b, f.servers, *flagPin)
	}
	for _, rate := range loads(b, *flagForwardRates) {
		f.sideBySide(b, "cache=hot/"+loadName(rate), start, f.hot, rate, *flagDuration)
	}
	rate := *flagForwardMissRate
	if rate <= 0 {
		b.Fatalf("-forward-miss-rate %d: want a fixed rate", rate)
	}
	f.sideBySide(b, "cache=miss/"+loadName(rate), start, f.miss, rate, *flagDuration)
}

// forwarders are the Forward benchmark's servers and their upstream.
type forwarders struct {
	upstream   *forwardUpstream
	servers    []namedServer
	hotQueries string // dnsperf's file of the hot names
	dir        string
}

// startForwarders starts the upstream serving names hot names, and the
// three forwarders pointed at it, and has each answer (and cache) every
// hot name.
func startForwarders(tb testing.TB, names int) *forwarders {
	tb.Helper()
	testenv.LookPath(tb, "dnsperf")
	f := &forwarders{dir: tb.TempDir()}
	f.upstream = startForwardUpstream(tb, names)
	ztdns := startAgent(tb, f.upstream.addr, 0, "--config-dir", tb.TempDir(),
		"--pod-max-forwarding", "0", // dnsperf is one source, with hundreds in flight while the cache fills
		"--cache-size", strconv.Itoa(forwardCacheEntries), "--cache-bytes", "32Mi")
	f.servers = []namedServer{
		{"ztdns", ztdns},
		{"unbound", startUnboundForwarder(tb, f.upstream.addr)},
		{"coredns", startCoreDNSForwarder(tb, f.upstream.addr)},
	}
	f.hotQueries = filepath.Join(f.dir, "hot.txt")
	var lines strings.Builder
	for i := range names {
		fmt.Fprintf(&lines, "%s A\n", hotName(i))
	}
	if err := os.WriteFile(f.hotQueries, []byte(lines.String()), 0o644); err != nil {
		tb.Fatal(err)
	}
	for _, s := range f.servers {
		before := f.upstream.queries(tb)
		primeHot(tb, s, names)
		tb.Logf("%s (pid %d) on %s: %d hot names answered and cached, %d upstream queries",
			s.name, s.srv.pid(), s.srv.addr, names, f.upstream.queries(tb)-before)
	}
	return f
}

// primeHot asks s every hot name once, in parallel, and checks each
// answer: the forwarders must do the same work.
func primeHot(tb testing.TB, s namedServer, names int) {
	tb.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < names; i = int(next.Add(1) - 1) {
				addrs, err := lookup(tb.Context(), s.srv.addr, hotName(i), dns.TypeA)
				if err == nil && (len(addrs) != 1 || addrs[0] != hotAddr(i)) {
					err = fmt.Errorf("%s: %v, want %v", hotName(i), addrs, hotAddr(i))
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		tb.Fatalf("%s: %v", s.name, err)
	}
}

// missRun counts the miss-heavy load's dnsperf runs, so that every run
// asks names no run asked before.
var missRun atomic.Int64

// queryFile gives the file of queries for a dnsperf run l (its rate and
// duration set), and what to do with it after the run.
type queryFile func(tb testing.TB, l dnsperfLoad) (path string, done func())

// hot is the queryFile of the hot names.
func (f *forwarders) hot(testing.TB, dnsperfLoad) (string, func()) { return f.hotQueries, func() {} }

// miss is a queryFile of names under missZone that no run asked before,
// enough for l (with a margin, as dnsperf starts over at the end of its
// file), removed after the run.
func (f *forwarders) miss(tb testing.TB, l dnsperfLoad) (string, func()) {
	tb.Helper()
	run := missRun.Add(1)
	path := filepath.Join(f.dir, fmt.Sprintf("miss-%d.txt", run))
	file, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer file.Close()
	w := bufio.NewWriter(file)
	for i := range int((l.duration + 5*time.Second).Seconds() * float64(l.rate)) {
		fmt.Fprintf(w, "r%d-%d.%s A\n", run, i, missZone)
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	return path, func() { os.Remove(path) }
}

// sideBySide is the package's sideBySide for the forwarders, with
// queries giving the file of each dnsperf run (the warm-up's and the
// measured one's), and the upstream's queries during the measured run
// reported per answered query: Forward/GROUP/round=N/server=NAME.
func (f *forwarders) sideBySide(b *testing.B, group string, start starter, queries queryFile, rate int, d time.Duration) {
	for r := range *flagRounds {
		for _, s := range turn(f.servers, r) {
			b.Run(group+roundName(r)+"/server="+s.name, func(b *testing.B) {
				l := dnsperfLoad{server: s.srv.addr.Addr().String(), port: int(s.srv.addr.Port()), rate: rate, duration: d}
				var t tally
				var upstream int64
				for b.Loop() {
					if *flagWarmup > 0 {
						w := l
						w.duration = *flagWarmup
						var done func()
						w.queries, done = queries(b, w)
						warmUp(b, w, start, w.duration)
						done()
					}
					var done func()
					l.queries, done = queries(b, l)
					before := f.upstream.queries(b)
					stop := startProfile(b, s.srv, d)
					t.add(measureLoad(b, s.srv.pid(), l, start, 0))
					stop()
					upstream += f.upstream.queries(b) - before
					done()
				}
				t.report(b)
				if t.completed > 0 {
					b.ReportMetric(float64(upstream)/float64(t.completed), "upstream/query")
				}
			})
		}
	}
}

// forwardUpstream is the Forward benchmark's upstream: unbound, one
// thread, answering from local data only, with its control socket to read
// how many queries it got.
type forwardUpstream struct {
	*dnsServer
	conf    string
	control string // unbound-control
}

// startForwardUpstream runs unbound on a free loopback port serving names
// hot names and missZone, and waits until it answers.
func startForwardUpstream(tb testing.TB, names int) *forwardUpstream {
	tb.Helper()
	u := &forwardUpstream{control: testenv.LookPath(tb, "unbound-control")}
	dir := tb.TempDir()
	var zone strings.Builder
	fmt.Fprintf(&zone, "local-zone: %q static\nlocal-zone: %q redirect\nlocal-data: \"%s %d IN A %s\"\n",
		"example.", missZone, missZone, forwardTTL, missAddr)
	for i := range names {
		fmt.Fprintf(&zone, "local-data: \"%s %d IN A %s\"\n", hotName(i), forwardTTL, hotAddr(i))
	}
	zoneFile := filepath.Join(dir, "zone.conf")
	if err := os.WriteFile(zoneFile, []byte(zone.String()), 0o644); err != nil {
		tb.Fatal(err)
	}
	u.dnsServer, u.conf = startUnboundIn(tb, dir, unboundLocal(zoneFile, filepath.Join(dir, "control.sock")), hotName(0), "first."+missZone)
	return u
}

// queries is how many queries the upstream has received.
func (u *forwardUpstream) queries(tb testing.TB) int64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, u.control, "-c", u.conf, "stats_noreset").CombinedOutput()
	if err != nil {
		tb.Fatalf("unbound-control stats_noreset: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "total.num.queries="); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				tb.Fatalf("unbound-control: %q: %v", line, err)
			}
			return n
		}
	}
	tb.Fatalf("unbound-control stats_noreset: no total.num.queries in\n%s", out)
	return 0
}

// startUnboundForwarder runs unbound as a caching forwarder, one thread,
// sending every query to upstream, and waits until it answers.
func startUnboundForwarder(tb testing.TB, upstream netip.AddrPort) *dnsServer {
	tb.Helper()
	s, _ := startUnboundIn(tb, tb.TempDir(), fmt.Sprintf(`  # The upstream is on loopback; no DNSSEC validation (neither of the
  # others validates); caches for %d answers and more.
  do-not-query-localhost: no
  module-config: "iterator"
  msg-cache-size: 32m
  rrset-cache-size: 32m
forward-zone:
  name: "."
  forward-addr: %s@%d
remote-control:
  control-enable: no
`, forwardCacheEntries, upstream.Addr(), upstream.Port()), "first."+missZone)
	return s
}

// startCoreDNSForwarder runs CoreDNS with the forward and cache plugins,
// as NodeLocal DNSCache configures them for names outside the cluster
// (its cache sized as the others'), and waits until it answers.
func startCoreDNSForwarder(tb testing.TB, upstream netip.AddrPort) *dnsServer {
	tb.Helper()
	bin := kubetest.CoreDNSBinary(tb)
	addr := testenv.FreePort(tb)
	corefile := filepath.Join(tb.TempDir(), "Corefile")
	err := os.WriteFile(corefile, fmt.Appendf(nil, `.:%d {
	bind %s
	cache {
		success %d
		denial %d
	}
	forward . %s
}
`, addr.Port(), addr.Addr(), forwardCacheEntries, forwardCacheEntries, upstream), 0o644)
	if err != nil {
		tb.Fatal(err)
	}
	s := &dnsServer{proc: testenv.StartLocal(tb, bin, "-conf", corefile), addr: addr}
	waitAnswers(tb, s, "first."+missZone)
	return s
}

// missWakeups bounds the agent's wake-ups (voluntary context switches,
// of all its threads) per forwarded query that misses the cache, asked
// one at a time with the agent idle in between: reading the query and
// reading the reply are two, the rest is the Go runtime's threads waking
// each other (a goroutine started or readied wakes an idle thread to
// look for work). With each exchange's socket in the netpoller
// (os.NewFile) and the reply sent through syscall.Syscall, whose calls
// woke the runtime's sysmon thread, asleep while the agent idled: 6.3-6.8
// a miss. With the exchanges' own epoll set, raw calls and a goroutine
// of the set's own handing each reply to its exchange: 4.5-5.0; with the
// exchanges taking turns to wait on the set instead: 3.8-4.0 (load
// average 9-16).
const missWakeups = 5.0

// TestForwardMissWakeups counts the agent's wake-ups per forwarded query
// that misses its cache, at a low paced rate: each query a name never
// asked, sent once the answer to the one before came and a pause after
// it (so no batch of queries shares a wake-up). A loaded machine
// preempts the agent more (involuntary switches, not counted) and wakes
// it no more often.
func TestForwardMissWakeups(t *testing.T) {
	upstream := startUpstream(t)
	agent := startAgent(t, upstream, 0, "--config-dir", t.TempDir())
	c := &dns.Client{Timeout: 5 * time.Second}
	ask := func(name string) {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		r, _, err := c.ExchangeContext(t.Context(), m, agent.addr.String())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r.Rcode != dns.RcodeNameError { // the upstream's answer to every name
			t.Fatalf("%s: %s, want the upstream's NXDOMAIN", name, dns.RcodeToString[r.Rcode])
		}
	}
	ask("warm." + missZone)
	const n = 400
	before := sampleProc(t, agent.pid())
	for i := range n {
		ask(fmt.Sprintf("w%d.%s", i, missZone))
		time.Sleep(2 * time.Millisecond)
	}
	after := sampleProc(t, agent.pid())
	per := float64(after.wakeups-before.wakeups) / n
	t.Logf("%.2f wake-ups per forwarded query that missed the cache (%.2f preempted)", per, float64(after.preempted-before.preempted)/n)
	if per > missWakeups {
		t.Errorf("%.2f wake-ups of the agent per forwarded query that missed the cache, want at most %.1f", per, missWakeups)
	}
}
