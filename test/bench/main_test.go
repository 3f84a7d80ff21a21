//go:build linux

// Package bench measures ztdns beside its peers, in one run, on this
// machine: Go benchmarks that start the real binaries (the ztdns agent,
// unbound, kube-apiserver) and load them with dnsperf, and report what they
// measured with b.ReportMetric. `make bench` runs them and prints the
// side-by-side tables with ratios (bench/report).
//
//	go test -run '^$' -bench Resolver -benchtime 1x ./test/bench/ -args -duration 10s
//
// One iteration is one whole measurement (a dnsperf run, an idle period, a
// set of probes), so run with -benchtime 1x. The comparisons take -rounds
// N: round=1..N in their names, each measuring every server (or way) once,
// in an order that turns from round to round, so that a load drifting on
// the shared machine favours none, and a ratio pairs measurements taken
// side by side (-count N would repeat each measurement N times in a row).
// bench/report, and benchstat -col /server -ignore /round, summarise them.
// The benchmarks:
//
//   - Resolver: ztdns vs. unbound on loopback, at full speed and at fixed
//     rates: qps, server CPU per answered query, wake-ups, RSS (-beside
//     adds another build of ztdns, to compare a change).
//   - Metrics: the agent with its metrics on (scraped) vs. off, at full
//     speed: what counting every query costs.
//   - Forward: names ztdns does not hold, forwarded to an upstream on
//     loopback by ztdns, unbound and CoreDNS (forward and cache), each
//     with its cache: cached names at full speed and at a fixed rate, and
//     unique names (every query a miss) at a fixed rate.
//   - Capture (root): dnsperf in a pod through the eBPF redirect vs. straight
//     to the resolver vs. an iptables DNAT in the pod.
//   - Footprint: RSS, heap and idle CPU of an agent with an empty table and
//     with 20,000 objects, standalone and against a real API server, with
//     capture off (no root needed) and on (root).
//   - Scale: a real API server holding 100,000 Services, 50,000
//     ServiceEntries and 300,000 endpoints: memory per object, a change
//     reaching the served table, list-and-watch bytes.
//
// Helpers for benchmarks in this package: generate writes a cluster
// (manifests, unbound zone, dnsperf queries) once per test binary;
// startAgent and startUnbound start servers on loopback and wait for them
// (startForwarders: the Forward benchmark's, and their upstream);
// newCaptureNode is a node namespace with capture on, its pods and marks;
// startCluster is a real API server loaded with a cluster; runDnsperf and
// measureLoad run a load and read what the server spent on it (sampleProc:
// CPU, wake-ups and memory from /proc); tally reports the runs per answered
// query.
//
// What a benchmark needs and does not find (root, dnsperf, unbound, the
// cached kube-apiserver or CoreDNS) skips it with the reason, and fails it when
// CI=true, as in the tests. TestSmoke (Resolver's) and TestSmokeForward
// run tiny scenarios in `make test` so that the harness cannot rot.
package bench

import (
	"flag"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
)

// Settings. They follow -args on the go test command line (BENCH_FLAGS in
// `make bench`).
var (
	flagDuration        = flag.Duration("duration", 20*time.Second, "measured dnsperf load per server, load and round")
	flagWarmup          = flag.Duration("warmup", 2*time.Second, "unmeasured dnsperf load before each measured one")
	flagRates           = flag.String("rates", "max,10000,1000", "Resolver: dnsperf loads, comma-separated queries/s (max: as fast as answers come)")
	flagCaptureRate     = flag.String("capture-rates", "max,10000", "Capture: dnsperf loads, as -rates")
	flagRounds          = flag.Int("rounds", 1, "Resolver, Capture, Forward: rounds, each measuring every server or way once, in turning order")
	flagClients         = flag.Int("clients", 8, "dnsperf -c: source sockets")
	flagOutstanding     = flag.Int("outstanding", 200, "dnsperf -q: queries in flight")
	flagIdle            = flag.Duration("idle", 30*time.Second, "Footprint: how long an idle agent's CPU is measured")
	flagSettle          = flag.Duration("settle", 3*time.Second, "Footprint: pause after loading before memory is read")
	flagProfile         = flag.String("profile", "", "Resolver, Forward: profile the servers during each measured run: perf (perf record and perf stat, root) or go (pprof of ztdns, via bench/agentprof; Resolver only)")
	flagProfileDir      = flag.String("profile-dir", "", "where -profile writes (default: a directory it names in the log)")
	flagPin             = flag.String("pin", "", "Resolver, Forward: where servers run beside dnsperf, which runs on CPU 0: apart (every server on the last CPU), together (every server on CPU 0 too), or unset (wherever the kernel puts them)")
	flagBeside          = flag.String("beside", "", "Resolver: also measure the ztdns binary `BIN` (a build of another revision) as server=ztdns-beside, to compare a change in the same run")
	flagForwardNames    = flag.Int("forward-names", 10_000, "Forward: names the hot load asks over and over")
	flagForwardRates    = flag.String("forward-rates", "max,10000", "Forward: the hot load's rates, as -rates")
	flagForwardMissRate = flag.Int("forward-miss-rate", 5000, "Forward: the miss-heavy load's rate, queries/s of names each asked once")
	flagScale           = flag.String("scale", "100000,50000,3", "Scale: Services, ServiceEntries, endpoints per Service")
	flagProbes          = flag.Int("probes", 40, "Scale: changes timed from the API write to the agent's answer")
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	testenv.RemoveBuilds()
	removeGenerated()
	os.Exit(code)
}

// ztdnsBinary is the agent under test, built once per test binary.
func ztdnsBinary(tb testing.TB) string {
	tb.Helper()
	return testenv.Build(tb, "github.com/ztdns/ztdns/cmd/ztdns")
}

// loads parses a -rates list: 0 is full speed.
func loads(tb testing.TB, list string) []int {
	tb.Helper()
	var out []int
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		if f == "max" {
			out = append(out, 0)
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			tb.Fatalf("bad rate %q in %q: want max or a positive number", f, list)
		}
		out = append(out, n)
	}
	return out
}

// roundName is the round part of a benchmark name, when there are rounds.
func roundName(r int) string {
	if *flagRounds <= 1 {
		return ""
	}
	return "/round=" + strconv.Itoa(r+1)
}

// turn returns s in round r's order: rotated by r/2, and reversed in odd
// rounds, so that over each pair of rounds every element has the same mean
// position (ztdns, unbound; unbound, ztdns; ...).
func turn[T any](s []T, r int) []T {
	out := make([]T, len(s))
	for i := range s {
		out[i] = s[(i+r/2)%len(s)]
	}
	if r%2 == 1 {
		slices.Reverse(out)
	}
	return out
}

// loadName names a load in a benchmark name: load=max or load=10000.
func loadName(rate int) string {
	if rate == 0 {
		return "load=max"
	}
	return "load=" + strconv.Itoa(rate)
}
