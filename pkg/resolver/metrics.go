package resolver

import (
	"github.com/prometheus/client_golang/prometheus"
)

var (
	// metricQueriesVec counts queries by how they were answered.
	metricQueriesVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztdns_resolver_queries_total",
		Help: "DNS queries by outcome: local (answered from the table), forwarded, autopath, formerr, refused, " +
			"rate_limited (over the source's query rate: dropped over UDP, REFUSED over TCP), " +
			"forward_limited (SERVFAIL: the source had its share of forwarded queries in flight), " +
			"overload (SERVFAIL: too many forwarded queries, or bytes of their replies, in flight in all), drop.",
	}, []string{"outcome"})
	// metricTruncated counts UDP replies sent with TC set.
	metricTruncated = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ztdns_resolver_truncated_total",
		Help: "UDP replies truncated to fit the client's buffer (TC set).",
	})
	// metricTCPRejectedVec counts TCP connections closed at once, by the
	// bound they hit.
	metricTCPRejectedVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztdns_resolver_tcp_rejected_total",
		Help: "TCP connections closed at once, by the limit reached: source (the source's own connections) or total.",
	}, []string{"limit"})
	// metricTCPConns is the number of open TCP connections.
	metricTCPConns = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ztdns_resolver_tcp_connections",
		Help: "Open TCP connections from clients.",
	})
	// metricForwarding is the number of forwarded queries in flight.
	metricForwarding = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ztdns_resolver_forwarding",
		Help: "Queries waiting for an upstream nameserver.",
	})
)

// metricQueries holds the outcome counters bound once, so counting a query
// on the hot path is one atomic add.
var metricQueries = struct {
	local, forwarded, autopath, formerr, refused, rateLimited, forwardLimited, overload, drop prometheus.Counter
}{
	local:          metricQueriesVec.WithLabelValues("local"),
	forwarded:      metricQueriesVec.WithLabelValues("forwarded"),
	autopath:       metricQueriesVec.WithLabelValues("autopath"),
	formerr:        metricQueriesVec.WithLabelValues("formerr"),
	refused:        metricQueriesVec.WithLabelValues("refused"),
	rateLimited:    metricQueriesVec.WithLabelValues("rate_limited"),
	forwardLimited: metricQueriesVec.WithLabelValues("forward_limited"),
	overload:       metricQueriesVec.WithLabelValues("overload"),
	drop:           metricQueriesVec.WithLabelValues("drop"),
}

var metricTCPRejected = struct{ source, total prometheus.Counter }{
	source: metricTCPRejectedVec.WithLabelValues("source"),
	total:  metricTCPRejectedVec.WithLabelValues("total"),
}

// kernelDropsDesc describes the UDP queries the kernel dropped over their
// source's rate.
var kernelDropsDesc = prometheus.NewDesc("ztdns_resolver_kernel_rate_limited_total",
	"UDP queries over their source's rate, dropped in the kernel before the resolver saw them (counted per source address: "+
		"an address forgotten after 4,096 others takes its count with it).",
	nil, nil)

// Collector is the server's own metrics, read at scrape time: the queries
// the kernel dropped over their source's rate.
func (s *Server) Collector() prometheus.Collector { return kernelDrops{s} }

type kernelDrops struct{ s *Server }

func (c kernelDrops) Describe(ch chan<- *prometheus.Desc) { ch <- kernelDropsDesc }

func (c kernelDrops) Collect(ch chan<- prometheus.Metric) {
	if c.s.kernel != nil {
		ch <- prometheus.MustNewConstMetric(kernelDropsDesc, prometheus.CounterValue, float64(c.s.kernel.totalDrops()))
	}
}

// Collectors returns the package's metrics for registration.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{metricQueriesVec, metricTruncated, metricTCPRejectedVec, metricTCPConns, metricForwarding}
}
