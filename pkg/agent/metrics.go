package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ztdns/ztdns/pkg/resolver"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
)

var (
	// metricTableBuild is how long building a name table from a snapshot takes.
	metricTableBuild = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ztdns_table_build_seconds",
		Help:    "Time to build the name table from a snapshot and swap it in.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	})
	// metricTableNames is the number of names in the current table.
	metricTableNames = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ztdns_table_names",
		Help: "Distinct names (exact and wildcard) in the current name table.",
	})
)

func (a *Agent) registerMetrics() error {
	cs := []prometheus.Collector{
		metricTableBuild, metricTableNames,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	}
	cs = append(cs, resolver.Collectors()...)
	cs = append(cs, forward.Collectors()...)
	for _, c := range cs {
		if err := a.reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
