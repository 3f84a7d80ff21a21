package resolver

import (
	"github.com/prometheus/client_golang/prometheus"
)

var (
	// metricQueriesVec counts queries by how they were answered.
	metricQueriesVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztdns_resolver_queries_total",
		Help: "DNS queries by outcome: local (answered from the table), forwarded, autopath, formerr, refused, overload (SERVFAIL because too many were in flight), drop.",
	}, []string{"outcome"})
	// metricTruncated counts UDP replies sent with TC set.
	metricTruncated = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ztdns_resolver_truncated_total",
		Help: "UDP replies truncated to fit the client's buffer (TC set).",
	})
	// metricTCPRejected counts TCP connections closed because too many were open.
	metricTCPRejected = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ztdns_resolver_tcp_rejected_total",
		Help: "TCP connections closed at once because the connection limit was reached.",
	})
)

// metricQueries holds the outcome counters bound once, so counting a query
// on the hot path is one atomic add.
var metricQueries = struct {
	local, forwarded, autopath, formerr, refused, overload, drop prometheus.Counter
}{
	local:     metricQueriesVec.WithLabelValues("local"),
	forwarded: metricQueriesVec.WithLabelValues("forwarded"),
	autopath:  metricQueriesVec.WithLabelValues("autopath"),
	formerr:   metricQueriesVec.WithLabelValues("formerr"),
	refused:   metricQueriesVec.WithLabelValues("refused"),
	overload:  metricQueriesVec.WithLabelValues("overload"),
	drop:      metricQueriesVec.WithLabelValues("drop"),
}

// Collectors returns the package's metrics for registration.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{metricQueriesVec, metricTruncated, metricTCPRejected}
}
