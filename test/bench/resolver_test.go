//go:build linux

package bench

import (
	"slices"
	"testing"
	"time"

	"github.com/ztdns/ztdns/bench/workload"
	"github.com/ztdns/ztdns/internal/testenv"
)

// resolverCluster is what the agent serves in the Resolver benchmark:
// 10,000 Services and 10,000 ServiceEntries, half of them with
// auto-allocated VIPs (56,000 names with PTR and SRV), of which 10,000 are
// queried, every tenth for AAAA.
var resolverCluster = workload.Config{Services: 10_000, Entries: 10_000, Queries: 10_000, AAAAEvery: 10}

// BenchmarkResolver: the same dnsperf load against a standalone ztdns agent
// and against unbound (one thread) serving the queried names from a local
// zone, one after the other, on loopback, for each -rates load: answered
// qps, server CPU and wake-ups per answered query, RSS.
//
//	go test -run '^$' -bench Resolver -benchtime 1x ./test/bench/ -args -rounds 3
func BenchmarkResolver(b *testing.B) {
	benchResolver(b, resolverCluster, loads(b, *flagRates), *flagDuration)
}

// benchResolver runs the Resolver comparison for a cluster, at each load
// for d.
func benchResolver(b *testing.B, c workload.Config, rates []int, d time.Duration) {
	testenv.LookPath(b, "dnsperf")
	files := generate(b, c)
	unbound := startUnbound(b, files.Zone, files.Names[0])
	var ztdns *dnsServer
	if *flagProfile == "go" {
		ztdns = startAgentprof(b, files.Manifests, unbound.addr)
	} else {
		ztdns = startAgent(b, unbound.addr, 1, "--config-dir", files.Manifests)
	}
	waitAnswers(b, ztdns, files.Names[0], files.Names[len(files.Names)-1])
	sameAnswers(b, ztdns, unbound, files.Names, max(1, len(files.Names)/100))
	b.Logf("ztdns (pid %d) on %s, unbound (pid %d) on %s; %d Services, %d ServiceEntries, %d names queried",
		ztdns.pid(), ztdns.addr, unbound.pid(), unbound.addr, c.Services, c.Entries, len(files.Names))

	servers := []namedServer{{"ztdns", ztdns}, {"unbound", unbound}}
	if *flagBeside != "" {
		beside := startAgentBin(b, *flagBeside, unbound.addr, 1, "--config-dir", files.Manifests)
		waitAnswers(b, beside, files.Names[0], files.Names[len(files.Names)-1])
		servers = slices.Insert(servers, 1, namedServer{"ztdns-beside", beside})
	}
	start := local
	if *flagPin != "" {
		start = pinServers(b, servers, *flagPin)
	}
	sideBySide(b, servers, files.Queries, rates, d, start)
}

// namedServer is a server under load and its column in the tables.
type namedServer struct {
	name string
	srv  *dnsServer
}

// sideBySide runs the same dnsperf load of queries against every server,
// at each rate for d, in -rounds rounds that each measure every server
// once, in turning order: load=RATE/round=N/server=NAME.
func sideBySide(b *testing.B, servers []namedServer, queries string, rates []int, d time.Duration, start starter) {
	for _, rate := range rates {
		for r := range *flagRounds {
			for _, s := range turn(servers, r) {
				b.Run(loadName(rate)+roundName(r)+"/server="+s.name, func(b *testing.B) {
					l := dnsperfLoad{server: s.srv.addr.Addr().String(), port: int(s.srv.addr.Port()), queries: queries, rate: rate, duration: d}
					var t tally
					for b.Loop() {
						warmUp(b, l, start, *flagWarmup)
						stop := startProfile(b, s.srv, d)
						t.add(measureLoad(b, s.srv.pid(), l, start, 0))
						stop()
					}
					t.report(b)
				})
			}
		}
	}
}
