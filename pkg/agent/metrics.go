package agent

import (
	"maps"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ztdns/ztdns/internal/acceptretry"
	"github.com/ztdns/ztdns/pkg/ambient"
	"github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/resolver"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
	"github.com/ztdns/ztdns/pkg/resolver/table"
	"github.com/ztdns/ztdns/pkg/version"
)

var (
	// metricTableBuild is how long building a name table from a snapshot takes.
	metricTableBuild = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ztdns_table_build_seconds",
		Help:    "Time to build the name table from a snapshot and swap it in.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	})
	// metricCNIEvents counts the CNI plugin's events by outcome: the capture
	// decision's reason for ADD (source-mismatch: one the source contradicts,
	// not recorded), ok for DEL, refused (claims that do not
	// match the network namespace; an ADD that arrived before its
	// container's DEL was carried out) or error.
	metricCNIEvents = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztdns_cni_events_total",
		Help: "CNI events from the chained plugin by command (add, del) and outcome (the decision's reason, ok, refused, error).",
	}, []string{"command", "outcome"})
	// metricCNIConfigRepairs counts what cni.KeepInstalled put back: the
	// plugin's entry or binary, after something removed or changed them.
	metricCNIConfigRepairs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ztdns_cni_config_repairs_total",
		Help: "Times the agent put the CNI plugin's entry or binary back after something removed or changed them (at most one a second).",
	})
	// metricCNIConfigContested is 1 while another installer takes the
	// plugin's entry out whenever it is back (cni.KeepInstalled's contest).
	metricCNIConfigContested = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ztdns_cni_config_contested",
		Help: "1 while another installer takes the CNI plugin's entry out of the node's CNI configuration whenever the agent puts it back " +
			"(5 repairs within 10 s, until 10 s pass without one), else 0.",
	})
	// metricCaptureRepairs counts what keepAttached put back: links
	// re-attached, pins made again.
	metricCaptureRepairs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ztdns_capture_repairs_total",
		Help: "Capture links re-attached and pins made again by the agent after something else detached or removed them.",
	})
	// metricNameserverFallbacks counts captured pods' misses not forwarded
	// to the nameserver the pod addressed, which is the agent itself or
	// another pod of the node (forwardable), by reason.
	metricNameserverFallbacks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztdns_capture_nameserver_fallbacks_total",
		Help: "Captured pods' misses sent to the configured upstreams instead of the nameserver the pod addressed, by reason: " +
			"agent (the agent's own address: forwarded there, the miss would come back as the node's own query) or " +
			"node-pod (another pod of this node: forwarded from the node, the query would pass that pod's ingress policy and Istio's).",
	}, []string{"reason"})
	// metricTableWarnings is the number of warnings of the last build.
	metricTableWarnings = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ztdns_table_warnings",
		Help: "Warnings of the last name-table build: objects or parts of them left out, exportTo lists Istio rejects, ServiceEntries an older one of their namespace hides (ztdns status lists the first of them).",
	})
	// metricTableNamespacesOverBudget and metricTableObjectsOverBudget
	// count, for the last build, the namespaces over their budget of
	// names and the objects they left out: no namespace label, the
	// warnings name them.
	metricTableNamespacesOverBudget = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ztdns_table_namespaces_over_budget",
		Help: "Namespaces whose objects make more names than --max-names-per-namespace in the last name-table build: their newest objects that do not fit are left out (a table warning per namespace names them).",
	})
	metricTableObjectsOverBudget = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ztdns_table_objects_over_budget",
		Help: "Services and ServiceEntries left out of the last name-table build because their namespace is over --max-names-per-namespace.",
	})
	// metricTableNames is the number of names in the current table.
	metricTableNames = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ztdns_table_names",
		Help: "Distinct names (exact and wildcard) in the current name table, those held without records (forwarded) and ServiceEntry hosts without a VIP included; not ztdns table's row count (a row per record type, SRV and PTR names, one namespace's view).",
	})
	// metricTableHostsWithoutVIP counts the ServiceEntry hosts that
	// istiod's rules give a VIP but the current table has none for, by
	// reason (table.NoVIPReasons).
	metricTableHostsWithoutVIP = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ztdns_table_hosts_without_vip",
		Help: "ServiceEntry hosts that istiod's rules give a VIP but that the current name table has none for (forwarded, or answered by another object), " +
			"per entry and host, by reason: istiod_pending (no status.addresses yet), istiod_no_ipv4 (istiod wrote an IPv6 VIP alone: its IPv4 range is exhausted), " +
			"pool_exhausted (ztdns's allocator has none left), vip_source_none (--vip-source=none).",
	}, []string{"reason"})
	// metricTableAllocatedIPv4VIPs counts the hosts holding an
	// auto-allocated IPv4 VIP in the current table.
	metricTableAllocatedIPv4VIPs = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ztdns_table_allocated_ipv4_vips",
		Help: "ServiceEntry hosts the current name table answers with an auto-allocated IPv4 VIP (istiod's status.addresses or ztdns's allocator), per entry and host: " +
			"ztdns's allocator has 65,024; istiod's 240.240.0.0/16 holds 65,534, less the VIPs of deleted entries, which istiod frees only when it restarts.",
	})
)

func (a *Agent) registerMetrics() error {
	// The failures exist from the start, at 0: a series that first
	// appears at its first event, at 1, has risen by nothing for
	// increase(), and ZtdnsCNIAddFailing would never see that one.
	for _, failed := range [][2]string{{"add", "error"}, {"add", "refused"}, {"del", "error"}} {
		metricCNIEvents.WithLabelValues(failed[0], failed[1])
	}
	for _, r := range table.NoVIPReasons { // each exists from the start, at 0
		metricTableHostsWithoutVIP.WithLabelValues(r)
	}
	for _, r := range []refusal{refusedAgent, refusedNodePod} { // so does each fallback's
		metricNameserverFallbacks.WithLabelValues(r.reason())
	}
	cs := []prometheus.Collector{
		metricTableBuild, metricTableNames, metricTableWarnings, metricTableHostsWithoutVIP, metricTableAllocatedIPv4VIPs, metricTableNamespacesOverBudget, metricTableObjectsOverBudget, metricCNIEvents, metricCNIConfigRepairs, metricCNIConfigContested, metricCaptureRepairs, metricNameserverFallbacks, metricResolverStalls, captureCollector{a}, podsCollector{a}, istioRulesCollector{a}, cniInstalledCollector{a}, knownUpstreamsCollector{a},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	}
	cs = append(cs, resolver.Collectors()...)
	cs = append(cs, control.Collectors()...)
	cs = append(cs, acceptretry.Collectors()...)
	cs = append(cs, a.server.Collector())
	cs = append(cs, capture.Collectors()...)
	if mc, ok := a.cfg.Source.(interface{ Collectors() []prometheus.Collector }); ok {
		cs = append(cs, mc.Collectors()...)
	}
	cs = append(cs, forward.Collectors()...)
	cs = append(cs, a.fwd.Collectors()...)
	cs = append(cs, a.cfg.AccessLog.Collector(), memoryLimit{a})
	cs = append(cs, version.Collector())
	cs = append(cs, cpuThrottling{cgroup: a.limits.cgroup})
	for _, c := range cs {
		if err := a.reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

var cniInstalledDesc = prometheus.NewDesc("ztdns_cni_config_installed",
	"1 while the CNI plugin's binary and entry are in the node's CNI configuration as the agent last looked (--cni-install), "+
		"0 while they are not: waiting for the primary plugin's configuration, or one it cannot change (ztdns status and the log say why); "+
		"pods that start meanwhile are captured only when the agent's scan finds them.",
	nil, nil)

// cniInstalledCollector exports ztdns_cni_config_installed, with
// --cni-install only: without it the agent installs nothing, and a 0
// would page.
type cniInstalledCollector struct {
	a *Agent
}

func (c cniInstalledCollector) Describe(ch chan<- *prometheus.Desc) { ch <- cniInstalledDesc }

func (c cniInstalledCollector) Collect(ch chan<- prometheus.Metric) {
	if c.a.cfg.CNI == nil {
		return
	}
	installed, _ := c.a.cniInstall.get()
	ch <- prometheus.MustNewConstMetric(cniInstalledDesc, prometheus.GaugeValue, boolValue(installed))
}

var knownUpstreamDesc = prometheus.NewDesc("ztdns_forward_upstream_known",
	"1 for each upstream nameserver the operator named or the agent learned as the cluster's (to, as ztdns_forward_upstream_queries_total labels it): "+
		"--upstream, single addresses of --capture-nameservers, the kube-system/kube-dns Service on port 53. ZtdnsServfailRatioHigh counts only their failures, "+
		"not those of nameservers a pod chose itself.",
	[]string{"to"}, nil)

// knownUpstreamsCollector exports ztdns_forward_upstream_known, read from
// the forwarder at scrape time.
type knownUpstreamsCollector struct {
	a *Agent
}

func (c knownUpstreamsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- knownUpstreamDesc }

func (c knownUpstreamsCollector) Collect(ch chan<- prometheus.Metric) {
	for _, to := range c.a.fwd.KnownUpstreams() {
		ch <- prometheus.MustNewConstMetric(knownUpstreamDesc, prometheus.GaugeValue, 1, to)
	}
}

var podsDesc = prometheus.NewDesc("ztdns_capture_pods",
	"Pods as ztdns pods lists them, by the capture decision: captured (true or false) and its reason (ambient, annotation-off, not-enrolled: "+
		"labelled ambient, but istio-cni has not enrolled it, …); not-enrolled is exported from the start, at 0.",
	[]string{"captured", "reason"}, nil)

// podsCollector exports ztdns_capture_pods, counted at scrape time from
// the pods the agent knows, as `ztdns pods` lists them (podDecision): what
// is captured and why not, in one series per reason, and a pod istio-cni
// never enrolled (released as not-enrolled after capture.EnrollmentGrace)
// visible without reading the log.
type podsCollector struct {
	a *Agent
}

func (c podsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- podsDesc }

func (c podsCollector) Collect(ch chan<- prometheus.Metric) {
	type decision struct {
		captured bool
		reason   string
	}
	// Exported from the start, at 0, for the alert ZtdnsPodsNotEnrolled.
	counts := map[decision]int{{false, ambient.ReasonNotEnrolled}: 0}
	for _, p := range c.a.pods.List() {
		if captured, reason := c.a.podDecision(p); reason != "" {
			counts[decision{captured, reason}]++
		}
	}
	for d, n := range counts {
		ch <- prometheus.MustNewConstMetric(podsDesc, prometheus.GaugeValue, float64(n), strconv.FormatBool(d.captured), d.reason)
	}
}

// captureCollector exports the programs' per-CPU counters, summed, at scrape
// time: reading a map is cheap and keeps the programs free of any export work.
type captureCollector struct {
	a *Agent
}

var captureDesc = prometheus.NewDesc("ztdns_capture_events_total",
	"Events counted by the capture programs: redirected queries, restored replies, and why a port-53 packet of a marked pod was left alone.",
	[]string{"event"}, nil)

var capturePodsDesc = prometheus.NewDesc("ztdns_capture_marked_pods",
	"Network namespaces marked for capture in the pods map.", nil, nil)

var failOpenDesc = prometheus.NewDesc("ztdns_capture_fail_open",
	"1 while the capture programs let marked pods' queries go to their own nameservers because the agent's heartbeat is stale "+
		"(starting, stopping, or stuck), else 0.", nil, nil)

var problemsDesc = prometheus.NewDesc("ztdns_capture_problems",
	"What is not as the agent attached and pinned it (a link detached from the cgroup or running another program, a pin gone or "+
		"holding something else), as ztdns status lists it; 0 when capture is whole.", nil, nil)

var mapEntriesDesc = prometheus.NewDesc("ztdns_capture_map_entries",
	"Entries of the BPF maps pods fill (pods: one per marked pod; nameservers: one per nameserver a pod addressed); "+
		"a full pods map fails the CNI ADD of a pod to capture, a full nameservers map lets queries to nameservers not learned yet go around ztdns.", []string{"map"}, nil)

var mapCapacityDesc = prometheus.NewDesc("ztdns_capture_map_capacity",
	"Entries the BPF maps pods fill can hold.", []string{"map"}, nil)

func (c captureCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- captureDesc
	ch <- capturePodsDesc
	ch <- failOpenDesc
	ch <- problemsDesc
	ch <- mapEntriesDesc
	ch <- mapCapacityDesc
}

func (c captureCollector) Collect(ch chan<- prometheus.Metric) {
	cp := c.a.dataplane
	if cp == nil {
		return
	}
	if n, err := cp.r.Counters(); err == nil {
		for event, v := range captureEvents(n) {
			ch <- prometheus.MustNewConstMetric(captureDesc, prometheus.CounterValue, float64(v), event)
		}
	}
	if pods, err := cp.r.Pods(); err == nil {
		ch <- prometheus.MustNewConstMetric(capturePodsDesc, prometheus.GaugeValue, float64(len(pods)))
	}
	if open, err := cp.r.FailingOpen(); err == nil {
		ch <- prometheus.MustNewConstMetric(failOpenDesc, prometheus.GaugeValue, boolValue(open))
	}
	if at, err := cp.r.CheckAttachment(); err == nil {
		ch <- prometheus.MustNewConstMetric(problemsDesc, prometheus.GaugeValue, float64(len(at.Problems)))
	}
	if uses, err := cp.r.MapUses(); err == nil {
		for _, u := range uses {
			ch <- prometheus.MustNewConstMetric(mapEntriesDesc, prometheus.GaugeValue, float64(u.Entries), u.Name)
			ch <- prometheus.MustNewConstMetric(mapCapacityDesc, prometheus.GaugeValue, float64(u.Capacity), u.Name)
		}
	}
}

// CaptureEvents returns the values of ztdns_capture_events_total's
// "event" label, sorted: every one is exported from the agent's start.
func CaptureEvents() []string {
	return slices.Sorted(maps.Keys(captureEvents(redirect.Counters{})))
}

// captureEvents names the programs' counters, the values of
// ztdns_capture_events_total's "event" label (README.md, Metrics, explains
// each).
func captureEvents(n redirect.Counters) map[string]uint64 {
	return map[string]uint64{
		"redirected": n.Redirected, "restored": n.Restored, "skipped_stale": n.SkippedStale,
		"skipped_paused": n.SkippedPaused, "skipped_no_resolver": n.SkippedNoResolver,
		"skipped_slots_full": n.SkippedSlotsFull, "skipped_local": n.SkippedLocal, "nameserver_learned": n.NameserverLearned,
		"nameserver_replaced": n.NameserverReplaced, "nameserver_failed": n.NameserverFailed,
		"socket_storage_failed": n.SocketStorageFailed, "skipped_not_listed": n.SkippedNotListed,
		"skipped_sockets_full": n.SkippedSocketsFull,
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
