//go:build linux

package bench

import (
	"testing"
	"time"
)

// loadRun is one measured dnsperf run against a server: what dnsperf saw,
// what the server spent, and what the kernel's ksoftirqd threads spent.
type loadRun struct {
	dnsperfResult
	server  usage
	softirq time.Duration
	// after is the server's state when the run ended (its memory).
	after procSample
}

// warmUp runs l for d, unmeasured: the server's caches, the kernel's
// socket buffers and the CPU frequency settle.
func warmUp(tb testing.TB, l dnsperfLoad, start starter, d time.Duration) {
	tb.Helper()
	if d > 0 {
		l.duration = d
		runDnsperf(tb, l, start)
	}
}

// measureLoad warms the server up with warmup of the same load, then
// measures one run of l against the server process pid.
func measureLoad(tb testing.TB, pid int, l dnsperfLoad, start starter, warmup time.Duration) loadRun {
	tb.Helper()
	warmUp(tb, l, start, warmup)
	before, k0 := sampleProc(tb, pid), ksoftirqdCPU()
	res := runDnsperf(tb, l, start)
	after, k1 := sampleProc(tb, pid), ksoftirqdCPU()
	if res.noerror != res.completed {
		tb.Errorf("%d of %d answers were not NOERROR: every queried name exists\n%s", res.completed-res.noerror, res.completed, res.output)
	}
	return loadRun{dnsperfResult: res, server: before.until(after), softirq: k1 - k0, after: after}
}

// tally sums the runs of a benchmark's iterations and reports them as
// metrics per answered query.
type tally struct {
	runs                          int
	sent, completed, lost         int64
	runtime                       time.Duration
	serverCPU, clientCPU, softirq time.Duration
	wakeups, preempted            int64
	last                          procSample
}

func (t *tally) add(r loadRun) {
	t.runs++
	t.sent += r.sent
	t.completed += r.completed
	t.lost += r.lost
	t.runtime += r.runtime
	t.serverCPU += r.server.cpu
	t.clientCPU += r.cpu
	t.softirq += r.softirq
	t.wakeups += r.server.wakeups
	t.preempted += r.server.preempted
	t.last = r.after
}

// perQuery is d in microseconds per answered query.
func (t *tally) perQuery(d time.Duration) float64 {
	return float64(d) / float64(time.Microsecond) / float64(t.completed)
}

// report puts the server's figures on b: answered queries per second,
// server CPU, wake-ups and preemptions per answered query, lost queries,
// resident memory after the last run, dnsperf's own CPU per query, the
// ksoftirqd threads' (receive work the kernel deferred, charged to neither;
// other traffic on the machine adds to it) and all three together.
func (t *tally) report(b *testing.B) {
	b.ReportMetric(0, "ns/op") // an iteration's wall time is the -duration flag
	if t.completed == 0 {
		return
	}
	b.ReportMetric(float64(t.completed)/t.runtime.Seconds(), "qps")
	b.ReportMetric(t.perQuery(t.serverCPU), "cpu-us/query")
	b.ReportMetric(float64(t.wakeups)/float64(t.completed), "wakeups/query")
	b.ReportMetric(float64(t.preempted)/float64(t.completed), "preempted/query")
	b.ReportMetric(100*float64(t.lost)/float64(t.sent), "lost-%")
	b.ReportMetric(float64(t.last.rss)/mib, "rss-MB")
	b.ReportMetric(t.perQuery(t.clientCPU), "client-cpu-us/query")
	b.ReportMetric(t.perQuery(t.softirq), "softirq-cpu-us/query")
	b.ReportMetric(t.perQuery(t.serverCPU+t.clientCPU+t.softirq), "all-cpu-us/query")
}
