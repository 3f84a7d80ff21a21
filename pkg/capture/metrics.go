// The controller's Prometheus collectors.

package capture

import "github.com/prometheus/client_golang/prometheus"

// metricStateWriteFailures counts failed writes of the record of captured
// pods; each is retried, and no pod fails for it.
var metricStateWriteFailures = prometheus.NewCounter(prometheus.CounterOpts{
	Name: "ztdns_state_write_failures_total",
	Help: "Failed writes of the record of captured pods (--state-dir); retried every few seconds, pods are captured all the same.",
})

// metricMarkRepairs counts the marks of the pods map made to match the
// records of captured pods again (Restore, RepairMarks), by kind.
var metricMarkRepairs = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "ztdns_capture_mark_repairs_total",
	Help: "Marks of the pods map the agent repaired to match its records of captured pods: mark_restored (a captured pod's mark was gone), stale_mark_removed (a mark no record captures).",
}, []string{"kind"})

// Its series, which exist from the start, at 0.
var (
	metricMarksRestored     = metricMarkRepairs.WithLabelValues("mark_restored")
	metricStaleMarksRemoved = metricMarkRepairs.WithLabelValues("stale_mark_removed")
)

// Collectors returns the package's metrics, for the agent's registry.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{metricStateWriteFailures, metricMarkRepairs}
}
