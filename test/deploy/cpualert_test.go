//go:build linux

package deploy

import (
	"testing"
)

// TestChartCPUThrottledAlert: ZtdnsCPUThrottled fires, naming the node,
// when the agent was stopped by its CPU limit in more than a quarter of
// the periods it ran (ztdns_cpu_throttled_periods_total over
// ztdns_cpu_periods_total): no pod on the node is answered while it is.
// Not for a throttled period now and then (startup, a table build), nor
// without a limit (both counters flat at 0), nor where the agent exports
// no such series. (Before, nothing told the operator: a 100m limit
// throttled 103 of 116 periods under load and took a well-behaved pod's
// p99 from 8.8 to 78 ms.)
func TestChartCPUThrottledAlert(t *testing.T) {
	t.Parallel()
	const name = "ZtdnsCPUThrottled"
	e := alertExpr(t, chartAlerts(t), name)
	for _, tc := range []struct {
		name               string
		noSeries           bool
		periods, throttled float64 // a second
		firing             bool
	}{
		// As measured: 103 of 116 periods throttled at 100m under load.
		{name: "100m under load", periods: 116.0 / 11.6, throttled: 103.0 / 11.6, firing: true},
		{name: "a third of the periods", periods: 10, throttled: 3.4, firing: true},
		{name: "startup's 19 periods in 10 minutes of a busy agent", periods: 10, throttled: 19.0 / 600},
		{name: "a tenth of the periods", periods: 10, throttled: 1},
		{name: "a limit never reached", periods: 10},
		{name: "no limit", periods: 0},
		{name: "no cpu.stat to read", noSeries: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var series []rateSeries
			if !tc.noSeries {
				series = []rateSeries{
					onNode("ztdns_cpu_periods_total", tc.periods),
					onNode("ztdns_cpu_throttled_periods_total", tc.throttled),
					onNode("ztdns_cpu_throttled_seconds_total", tc.throttled*0.09),
				}
			}
			v := evalRates(t, e, series)
			checkFiring(t, name, v, tc.firing)
		})
	}
}
