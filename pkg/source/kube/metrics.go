package kube

import "github.com/prometheus/client_golang/prometheus"

// metrics belong to one Source (not to the package), so that several sources
// in one process, as in the two-node tests, do not overwrite each other.
type metrics struct {
	// watchFailing is 1 from a failed list or watch of a resource until a
	// watch of it works again.
	watchFailing *prometheus.GaugeVec
	// snapshots counts snapshots delivered.
	snapshots prometheus.Counter
	// delay is the time from the first change of a burst until the receiver
	// has taken the snapshot with it.
	delay prometheus.Histogram
	// leftOut is the number of objects that could not be converted.
	leftOut prometheus.Gauge
	// serviceEntriesUnavailable is 1 for the reason ServiceEntries are
	// missing from the snapshots, if they are.
	serviceEntriesUnavailable *prometheus.GaugeVec
	// ztunnelRevisionMismatch is 1 while a ztunnel pod the source watches
	// follows another istiod than --istio-revision (ztunnel.go).
	ztunnelRevisionMismatch prometheus.Gauge
	// meshConfigAbsent is 1 while istiod's mesh config ConfigMap is
	// absent (meshconfig.go), by its namespace/name.
	meshConfigAbsent *prometheus.GaugeVec
}

func newMetrics() *metrics {
	m := &metrics{
		watchFailing: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ztdns_kube_watch_failing",
			Help: "1 from a failed list or watch call to the API server for the resource, or a watch stream that ended in an error or within 1 s with no event, until a watch of it stays open 1 s; the last state is served meanwhile. One answer \"too large resource version\", which client-go retries at once, is none; a second before a watch works is, since the first.",
		}, []string{"resource"}),
		snapshots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ztdns_kube_snapshots_total",
			Help: "Snapshots of the cluster delivered to the name table.",
		}),
		delay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ztdns_kube_snapshot_delay_seconds",
			Help:    "Time from the first change a watch saw until the receiver took the snapshot with it (debounce, snapshot, and the agent's table build).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 12),
		}),
		leftOut: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ztdns_kube_objects_left_out",
			Help: "Objects in the cluster that cannot be converted and are left out of the name table.",
		}),
		serviceEntriesUnavailable: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ztdns_kube_serviceentries_unavailable",
			Help: "1 for why ServiceEntries are left out of the name table (not-installed: no ServiceEntry CRD; v1-not-served: the CRD does not serve networking.istio.io/v1; forbidden: RBAC refuses them), 0 for the others; all 0 while they are watched.",
		}, []string{"reason"}),
		ztunnelRevisionMismatch: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ztdns_kube_ztunnel_revision_mismatch",
			Help: "1 while the node's ztunnel follows istiod of another revision than --istio-revision (its pod's istio.io/rev annotation, default without one): ServiceEntries of ztunnel's revision are forwarded, those of the flag's answered with VIPs ztunnel does not route; `ztdns status` names both. 0 otherwise, also with no ztunnel pod on the node in --ztunnel-namespace (default: --istio-namespace).",
		}),
		meshConfigAbsent: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ztdns_kube_mesh_config_absent",
			Help: "1 while the mesh config ConfigMap of istiod's revision (--istio-revision), configmap namespace/name, is absent: every istiod the Istio chart installs has one, so --istio-revision names no istiod's revision, and Istio's defaults are followed; 0 while it is there (or RBAC refuses it), and while Istio's ServiceEntry CRD is not installed: a cluster without Istio has no istiod to follow and does not page. No series without --istio-namespace.",
		}, []string{"configmap"}),
	}
	for _, r := range seReasons {
		m.serviceEntriesUnavailable.WithLabelValues(r).Set(0)
	}
	return m
}

// Collectors returns the source's metrics, for the agent to register.
func (s *Source) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.metrics.watchFailing, s.metrics.snapshots, s.metrics.delay, s.metrics.leftOut, s.metrics.serviceEntriesUnavailable, s.metrics.ztunnelRevisionMismatch, s.metrics.meshConfigAbsent}
}
