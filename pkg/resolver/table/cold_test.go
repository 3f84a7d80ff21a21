package table_test

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/bench/workload"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// resolverCluster is make bench's Resolver cluster (test/bench): 10,000
// Services and 10,000 ServiceEntries, queried over 10,000 names, every
// tenth AAAA.
var resolverCluster = workload.Config{Services: 10_000, Entries: 10_000, Queries: 10_000, AAAAEvery: 10}

// evictions are what BenchmarkColdLookup reads between two lookups: 1 MiB
// leaves a lookup as slow as perf sees the agent's at 10,000 q/s (about
// 0.8 µs), where the kernel and dnsperf run between two queries; 16 MiB,
// eight times the L2 of a core here, leaves nothing of the table in L1 or
// L2.
var evictions = []int{1 << 20, 16 << 20}

// BenchmarkColdLookup: what the server's fast path asks of the table for
// one query (Resolve, Restrict, the checks, AppendAnswer), for a name
// picked at random from the Resolver cluster's queried names, from a
// random namespace, after reading a buffer that evicts the table from the
// caches (evict=): ns/lookup is the median time of one lookup alone (the
// clock reads around it included; the median, for on a shared machine a
// few lookups wait for another process), B/name the heap the builder and
// its table hold per name.
//
//	go test -run '^$' -bench ColdLookup -count 10 ./pkg/resolver/table/
func BenchmarkColdLookup(b *testing.B) {
	s := workload.Snapshot(resolverCluster)
	names := workload.QueriedNames(resolverCluster)
	before := heapAlloc()
	bld := table.NewBuilder(table.Options{Domain: workload.Domain})
	tbl, _ := bld.Build(s)
	held := heapAlloc() - before
	runtime.KeepAlive(bld)
	for _, size := range evictions {
		b.Run(fmt.Sprintf("evict=%dMiB", size>>20), func(b *testing.B) {
			coldLookups(b, tbl, names, size)
			b.ReportMetric(float64(held)/float64(tbl.Len()), "B/name")
		})
	}
}

// coldLookups is BenchmarkColdLookup at one eviction size.
func coldLookups(b *testing.B, tbl *table.Table, names []string, size int) {
	evict := make([]byte, size)
	for i := range evict {
		evict[i] = byte(i)
	}
	rng := rand.New(rand.NewPCG(53, 53))
	out := make([]byte, 12, 512) // a reply's header: AppendAnswer sets its counts
	var spent []time.Duration
	var sink byte
	for b.Loop() {
		for i := 0; i < len(evict); i += 64 {
			sink += evict[i]
		}
		k := rng.IntN(len(names))
		name, ns, qtype := names[k], fmt.Sprintf("ns-%03d", rng.IntN(workload.Namespaces)), uint16(dns.TypeA)
		if k%resolverCluster.AAAAEvery == 0 {
			qtype = dns.TypeAAAA
		}
		start := time.Now()
		res := tbl.Resolve(name, ns)
		res.Restrict(table.IPv4)
		if res.Entry == nil || res.Alias != "" || res.Chases(qtype) || res.Forwards(qtype) {
			b.Fatalf("%s from %s: not answered from the table", name, ns)
		}
		out, _ = res.AppendAnswer(out[:12], 0, qtype, uint16(k), 512)
		spent = append(spent, time.Since(start))
	}
	runtime.KeepAlive(sink)
	slices.Sort(spent)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(spent[len(spent)/2].Nanoseconds()), "ns/lookup")
}

// TestHeapPerName: the builder and the table it built for the Resolver
// cluster hold at most 460 bytes a name (475 before entries were packed
// with their names and addresses, 448 after): packing must not cost the
// node memory.
func TestHeapPerName(t *testing.T) {
	s := workload.Snapshot(resolverCluster)
	before := heapAlloc()
	bld := table.NewBuilder(table.Options{Domain: workload.Domain})
	tbl, _ := bld.Build(s)
	perName := float64(heapAlloc()-before) / float64(tbl.Len())
	runtime.KeepAlive(bld)
	if perName > 460 {
		t.Errorf("%.1f bytes a name, want at most 460", perName)
	}
	t.Logf("%.1f bytes a name", perName)
}

// heapAlloc is the live heap after a collection.
func heapAlloc() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}
