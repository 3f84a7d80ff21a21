//go:build linux

package deploy

import (
	"math"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql/parser"

	"github.com/ztdns/ztdns/internal/acceptretry"
)

// TestChartOpenFileLimitAlert: ZtdnsOpenFileLimitReached fires, naming
// the node, while the agent keeps running out of file descriptors: its
// accepts fail with EMFILE or ENFILE and are retried
// (ztdns_accept_errors_total{reason="descriptors"}, on the resolver's TCP
// sockets or the control socket: TCP clients and CNI calls wait
// meanwhile), or its forwarded queries get SERVFAIL because no socket
// could be opened (ztdns_forward_upstream_queries_total{result="no_socket"}).
// Not for one burst (failures within one scrape, however many: a rate's
// range holds them for less than its length, which the alert's "for"
// reaches), nor for a few failures in 5 minutes, nor for accept
// errors of other reasons (a client's connection that failed, the
// kernel's memory). (Before, no alert read either: an operator learnt of
// it when DNS on the node degraded.)
func TestChartOpenFileLimitAlert(t *testing.T) {
	t.Parallel()
	const name = "ZtdnsOpenFileLimitReached"
	c := renderChart(t, "metrics.prometheusRule.enabled=true")
	e := alertExpr(t, renderedAlerts(t, c), name)
	// A burst, however large, stays in a rate's range for the range's
	// length: an alert held at least that long never fires for it alone.
	if window, held := longestRange(e), renderedAlertFor(t, c)[name]; window == 0 || held < window {
		t.Errorf("%s holds %v over rates of %v: one burst of failures alone would fire it", name, held, window)
	}
	for _, tc := range []struct {
		name string
		// A second: accepts failed by listener and reason; forwarded
		// exchanges answered, and those that found no socket.
		accept       map[[2]string]float64
		ok, noSocket float64
		firing       bool
	}{
		{name: "every connection accepted, every query forwarded", ok: 50},
		// The retries of one accept until it has a descriptor: 5 ms,
		// doubling, 8 in the first second.
		{name: "one accept retried 8 times in 5 minutes", accept: map[[2]string]float64{{acceptretry.DNS, acceptretry.ReasonDescriptors}: 8.0 / 300}, ok: 50},
		{name: "5 forwards without a socket in 5 minutes", ok: 50, noSocket: 5.0 / 300},
		{name: "clients' connections failing before they are accepted", accept: map[[2]string]float64{{acceptretry.DNS, acceptretry.ReasonConnection}: 5}, ok: 50},
		{name: "the kernel short of memory for sockets", accept: map[[2]string]float64{{acceptretry.DNS, acceptretry.ReasonMemory}: 1}, ok: 50},
		// At the longest pause, a retry a second while a client waits.
		{name: "the resolver's TCP sockets out of descriptors", accept: map[[2]string]float64{{acceptretry.DNS, acceptretry.ReasonDescriptors}: 1}, ok: 50, firing: true},
		{name: "the control socket out of descriptors", accept: map[[2]string]float64{{acceptretry.Control, acceptretry.ReasonDescriptors}: 1}, ok: 50, firing: true},
		{name: "forwarded queries without a socket, no TCP client", ok: 40, noSocket: 10, firing: true},
		{name: "both", accept: map[[2]string]float64{{acceptretry.DNS, acceptretry.ReasonDescriptors}: 1}, ok: 40, noSocket: 10, firing: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var series []rateSeries
			// Each listener's descriptors series is exported from the
			// start, at 0; the other reasons' from their first error.
			for _, listener := range []string{acceptretry.DNS, acceptretry.Control, acceptretry.Handoff} {
				series = append(series, onNode("ztdns_accept_errors_total", tc.accept[[2]string{listener, acceptretry.ReasonDescriptors}],
					"listener", listener, "reason", acceptretry.ReasonDescriptors))
			}
			for k, rate := range tc.accept {
				if k[1] != acceptretry.ReasonDescriptors {
					series = append(series, onNode("ztdns_accept_errors_total", rate, "listener", k[0], "reason", k[1]))
				}
			}
			series = append(series, onNode("ztdns_forward_upstream_queries_total", tc.ok, "to", "10.96.0.10:53", "result", "ok"))
			if tc.noSocket > 0 { // a cell made by its first event
				series = append(series, onNode("ztdns_forward_upstream_queries_total", tc.noSocket, "to", "10.96.0.10:53", "result", "no_socket"))
			}
			v := evalRates(t, e, series)
			if len(v) > 1 {
				t.Fatalf("%s fires %d times, want at most once a node: %v", name, len(v), v)
			}
			checkFiring(t, name, v, tc.firing)
		})
	}
}

// TestChartMemoryBoundAlert: ZtdnsMemoryBoundOverLimit fires, naming the
// node, when what the agent may hold whatever pods ask
// (ztdns_memory_bound_bytes) is over its memory limit
// (ztdns_memory_limit_bytes): the kernel kills it once pods ask that much,
// while its resident memory may be far below the limit until then. Not
// without a limit (+Inf), nor with the chart's 384 MiB and the bound of
// its defaults with 20,000 names and 110 pods captured, nor at a bound
// equal to the limit (the agent warns only above it). (Before, the agent
// warned in its log alone.)
func TestChartMemoryBoundAlert(t *testing.T) {
	t.Parallel()
	const name = "ZtdnsMemoryBoundOverLimit"
	e := alertExpr(t, chartAlerts(t), name)
	const mib = 1 << 20
	for _, tc := range []struct {
		name         string
		bound, limit float64 // bytes
		firing       bool
	}{
		{name: "no limit", bound: 273 * mib, limit: math.Inf(1)},
		{name: "the chart's limit, 20,000 names and 110 pods", bound: 273 * mib, limit: 384 * mib},
		{name: "a bound equal to the limit", bound: 384 * mib, limit: 384 * mib},
		// README, A limit below the bound is warned about: the defaults
		// with capture and no names.
		{name: "a 128 MiB limit", bound: 176 * mib, limit: 128 * mib, firing: true},
		{name: "names past what the chart's limit holds", bound: 450 * mib, limit: 384 * mib, firing: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			series := []rateSeries{
				onNode("ztdns_memory_bound_bytes", tc.bound),
				onNode("ztdns_memory_limit_bytes", tc.limit),
				onNode("process_resident_memory_bytes", 30*mib),
			}
			v := evalRates(t, e, series)
			checkFiring(t, name, v, tc.firing)
		})
	}
}

// longestRange is the longest range of e's range selectors (rate's
// [5m]), 0 without one.
func longestRange(e parser.Expr) time.Duration {
	var longest time.Duration
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if m, ok := n.(*parser.MatrixSelector); ok {
			longest = max(longest, m.Range)
		}
		return nil
	})
	return longest
}
