package capture

import "github.com/prometheus/client_golang/prometheus"

// metricStateWriteFailures counts failed writes of the record of captured
// pods; each is retried, and no pod fails for it.
var metricStateWriteFailures = prometheus.NewCounter(prometheus.CounterOpts{
	Name: "ztdns_state_write_failures_total",
	Help: "Failed writes of the record of captured pods (--state-dir); retried every few seconds, pods are captured all the same.",
})

// Collectors returns the package's metrics, for the agent's registry.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{metricStateWriteFailures}
}
