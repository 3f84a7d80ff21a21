//go:build linux

package bench

import (
	"testing"
	"time"

	"github.com/ztdns/ztdns/bench/workload"
	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// footprintCluster is the loaded node of the footprint targets: 10,000
// Services and 10,000 ServiceEntries, half of them with auto-allocated VIPs.
var footprintCluster = workload.Config{Services: 10_000, Entries: 10_000}

// BenchmarkFootprint: what an agent costs a node while nobody asks it
// anything. Resident memory (and its peak while loading), the Go heap, and
// CPU as % of one core and wake-ups per second over -idle, with an empty
// table and with footprintCluster, read from a directory of manifests
// (mode=standalone) or from a real API server (mode=kube), with capture off
// (no root needed) and on (root; loaded table only).
//
//	go test -run '^$' -bench Footprint -benchtime 1x ./test/bench/
func BenchmarkFootprint(b *testing.B) {
	tables := []struct {
		name    string
		cluster *workload.Config
	}{{"empty", nil}, {"20k", &footprintCluster}}
	for _, capture := range []bool{false, true} {
		for _, t := range tables {
			if capture && t.cluster == nil {
				continue
			}
			for _, mode := range []string{"kube", "standalone"} {
				b.Run("capture="+onOff(capture)+"/table="+t.name+"/mode="+mode, func(b *testing.B) {
					var sum footprint
					for b.Loop() {
						sum.add(measureFootprint(b, mode, capture, t.cluster))
					}
					sum.report(b)
				})
			}
		}
	}
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

// footprint is an idle agent's memory and CPU.
type footprint struct {
	n        int
	mem      procSample // memory at the end of the idle period
	heap     float64
	idle     usage
	loadedIn time.Duration
}

func (f *footprint) add(g footprint) {
	f.n++
	f.mem.rss += g.mem.rss
	f.mem.hwm += g.mem.hwm
	f.mem.anon += g.mem.anon
	f.mem.file += g.mem.file
	f.heap += g.heap
	f.idle.elapsed += g.idle.elapsed
	f.idle.cpu += g.idle.cpu
	f.idle.wakeups += g.idle.wakeups
	f.loadedIn += g.loadedIn
}

func (f *footprint) report(b *testing.B) {
	b.ReportMetric(0, "ns/op")
	if f.n == 0 {
		return
	}
	n := float64(f.n)
	b.ReportMetric(float64(f.mem.rss)/mib/n, "rss-MB")
	b.ReportMetric(float64(f.mem.hwm)/mib/n, "peak-rss-MB")
	b.ReportMetric(float64(f.mem.anon)/mib/n, "anon-MB")
	b.ReportMetric(float64(f.mem.file)/mib/n, "file-MB")
	b.ReportMetric(f.heap/mib/n, "heap-MB")
	b.ReportMetric(100*f.idle.cpu.Seconds()/f.idle.elapsed.Seconds(), "idle-cpu-%")
	b.ReportMetric(float64(f.idle.wakeups)/f.idle.elapsed.Seconds(), "idle-wakeups/s")
	b.ReportMetric(f.loadedIn.Seconds()/n, "ready-s")
}

// measureFootprint starts an agent on cluster (nil: nothing) in mode, waits
// until it serves all of it, lets it settle, and watches it idle.
func measureFootprint(b *testing.B, mode string, capture bool, cluster *workload.Config) footprint {
	b.Helper()
	if capture {
		testenv.RequireRoot(b) // before loading a cluster for nothing
	}
	var source []string
	var env *kubetest.Env
	names := 0
	switch {
	case mode == "kube" && cluster == nil:
		env = kubetest.Start(b)
	case mode == "kube":
		env = startCluster(b, *cluster)
	case cluster == nil:
		source = []string{"--config-dir", b.TempDir()}
	default:
		source = []string{"--config-dir", generate(b, *cluster).Manifests}
	}
	if env != nil {
		source = []string{"--kubeconfig", env.Kubeconfig}
	}
	if cluster != nil {
		tbl, _ := table.Build(workload.Snapshot(*cluster), table.Options{Domain: workload.Domain})
		names = tbl.Len()
	}

	began := time.Now()
	var srv *dnsServer
	if capture {
		n := newCaptureNode(b)
		if env != nil {
			n.forwardAPI(b, env)
		}
		srv = n.startAgent(b, names, source...)
	} else {
		srv = startAgent(b, startUpstream(b), names, source...)
	}
	f := footprint{loadedIn: time.Since(began)}
	time.Sleep(*flagSettle)
	before := sampleProc(b, srv.pid())
	time.Sleep(*flagIdle)
	f.mem = sampleProc(b, srv.pid())
	f.idle = before.until(f.mem)
	f.heap = srv.heapInuse(b)
	b.Logf("agent pid %d: %d names; RSS %.1f MB (peak %.1f), heap %.1f MB; idle %.3f%% of a core, %.1f wake-ups/s",
		srv.pid(), names, float64(f.mem.rss)/mib, float64(f.mem.hwm)/mib, f.heap/mib,
		100*f.idle.cpu.Seconds()/f.idle.elapsed.Seconds(), float64(f.idle.wakeups)/f.idle.elapsed.Seconds())
	return f
}
