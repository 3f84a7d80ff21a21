//go:build linux

package deploy

import (
	"cmp"
	"iter"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
)

// TestChartAlertsNodeOrPod reads the expressions of the chart's
// PrometheusRule as helm renders them, parses them with Prometheus's
// parser, and evaluates them over one agent's counters at steady rates:
// 100 answers a second, a fifth of them failing for one reason at a time.
// The node's SERVFAIL alert fires for what is the node's (failing
// upstreams, its own bounds: overload), not for a pod refused over its own
// limits (forward_limited, SERVFAILs of source "none"), which only
// ZtdnsPodThrottled reports; so is a pod over its query rate, which gets
// REFUSED or nothing, also when only the kernel's filter counts it
// (ztdns_resolver_kernel_rate_limited_total), and with no such series
// where the filter is off. (Before, ZtdnsServfailRatioHigh counted every
// SERVFAIL: one pod throttled as designed set off the node's alert, and no
// alert said it was one pod; and UDP queries the kernel dropped set off
// none.) Of failing nameservers, only those the node asks for every pod
// count (ztdns_forward_upstream_known: the cluster DNS here), not one a
// pod chose itself: the resolver counts its SERVFAIL answers by whose
// nameserver failed (ztdns_resolver_forward_servfails_total cause node or
// pod). (Earlier, a pod's own dead nameserver, its timeouts SERVFAILs
// of source "upstream", set off the node's alert.) And answers, not
// exchanges: a node resolv.conf's refusing second nameserver, raced by
// every query another answers, fails an exchange per query and no
// answer; a query failing on three nameservers is one answer. (Before,
// the rule counted the known nameservers' failed exchanges: both fired.)
func TestChartAlertsNodeOrPod(t *testing.T) {
	t.Parallel()
	exprs := chartAlerts(t)
	const node, pod = "ZtdnsServfailRatioHigh", "ZtdnsPodThrottled"
	for _, name := range []string{node, pod} {
		alertExpr(t, exprs, name)
	}

	for _, tc := range []struct {
		name string
		// Per second: answers NOERROR from upstream, SERVFAIL from
		// upstream and from none (ztdns's own), REFUSED from none; and
		// queries by outcome; UDP queries the kernel's filter dropped, and
		// whether it is off (no such series).
		noerror, servfailUpstream, servfailNone, refused float64
		overload, forwardLimited, rateLimited            float64
		kernelRateLimited                                float64
		noKernelFilter                                   bool
		// Per second: SERVFAIL answers to forwards by whose failure it
		// is (node: a known nameserver's, or the node's budget; pod: a
		// nameserver the pod chose); and exchanges that failed with the
		// known nameservers (the cluster DNS, the node's second
		// nameserver) and with a nameserver one pod chose; replies refused
		// for the node's budget of bytes.
		servfailsNode, servfailsPod             float64
		knownFailures, chosenFailures, noMemory float64
		firing                                  []string
	}{
		{name: "all answered", noerror: 100},
		{name: "one pod over its forwarded queries or bytes", noerror: 80, servfailNone: 20, forwardLimited: 20, firing: []string{pod}},
		{name: "one pod over its query rate over TCP", noerror: 80, refused: 20, rateLimited: 20, firing: []string{pod}},
		{name: "one pod over its query rate over UDP, dropped in the kernel", noerror: 100, kernelRateLimited: 20, firing: []string{pod}},
		{name: "one pod over its forwarded queries, no kernel filter", noerror: 80, servfailNone: 20, forwardLimited: 20, noKernelFilter: true, firing: []string{pod}},
		{name: "all answered, no kernel filter", noerror: 100, noKernelFilter: true},
		{name: "the node over its bounds", noerror: 80, servfailNone: 20, overload: 20, firing: []string{node}},
		{name: "replies over the node's budget as they are written", noerror: 100, overload: 20, firing: []string{node}},
		{name: "the cluster DNS failing", noerror: 80, servfailUpstream: 20, servfailsNode: 20, knownFailures: 20, firing: []string{node}},
		{name: "one pod's own nameserver failing", noerror: 80, servfailUpstream: 20, servfailsPod: 20, chosenFailures: 20},
		{name: "replies over the node's budget as they are read", noerror: 80, servfailUpstream: 20, servfailsNode: 20, noMemory: 20, firing: []string{node}},
		{name: "the node's refusing second nameserver, raced by every query", noerror: 100, knownFailures: 100},
		{name: "a few queries failing on three known nameservers each", noerror: 97, servfailUpstream: 3, servfailsNode: 3, knownFailures: 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			agent := map[string]string{"node": "n1", "instance": "10.0.0.1:15053", "job": "ztdns"}
			s := seriesWith(agent)
			series := []rateSeries{
				s("ztdns_dns_requests_total", tc.noerror, "rcode", "NOERROR", "source", "upstream", "type", "A", "proto", "udp"),
				s("ztdns_dns_requests_total", tc.servfailUpstream, "rcode", "SERVFAIL", "source", "upstream", "type", "A", "proto", "udp"),
				s("ztdns_dns_requests_total", tc.servfailNone, "rcode", "SERVFAIL", "source", "none", "type", "A", "proto", "udp"),
				s("ztdns_dns_requests_total", tc.refused, "rcode", "REFUSED", "source", "none", "type", "A", "proto", "tcp"),
				s("ztdns_resolver_queries_total", tc.overload, "outcome", "overload"),
				s("ztdns_resolver_queries_total", tc.forwardLimited, "outcome", "forward_limited"),
				s("ztdns_resolver_queries_total", tc.rateLimited, "outcome", "rate_limited"),
				s("ztdns_resolver_kernel_rate_limited_total", tc.kernelRateLimited),
				s("ztdns_resolver_forward_servfails_total", tc.servfailsNode, "cause", "node"),
				s("ztdns_resolver_forward_servfails_total", tc.servfailsPod, "cause", "pod"),
				s("ztdns_forward_upstream_queries_total", tc.knownFailures, "to", "10.96.0.10:53", "result", "error"),
				s("ztdns_forward_upstream_queries_total", tc.chosenFailures, "to", "203.0.113.9:53", "result", "timeout"),
				s("ztdns_forward_upstream_queries_total", tc.noMemory, "to", "203.0.113.9:53", "result", "no_memory"),
				// Its value, 1, as a rate: the evaluator's gauges.
				s("ztdns_forward_upstream_known", 1, "to", "10.96.0.10:53", "pod", "ztdns-abcde"),
			}
			// The agent exports a cell of ztdns_dns_requests_total only once
			// it counts something; the outcomes of
			// ztdns_resolver_queries_total and the causes of
			// ztdns_resolver_forward_servfails_total exist from the start,
			// and the kernel's drops from the start wherever its filter is on.
			series = slices.DeleteFunc(series, func(s rateSeries) bool {
				name := s.labels["__name__"]
				return (name == "ztdns_dns_requests_total" || name == "ztdns_forward_upstream_queries_total") && s.rate == 0 ||
					name == "ztdns_resolver_kernel_rate_limited_total" && tc.noKernelFilter
			})
			var firing []string
			for _, name := range []string{node, pod} {
				v := evalRates(t, exprs[name], series)
				if len(v) > 0 {
					firing = append(firing, name)
					if v[0].labels["node"] != "n1" {
						t.Errorf("%s fires without the node: %v", name, v[0].labels)
					}
				}
			}
			if !slices.Equal(firing, tc.firing) {
				t.Errorf("alerts firing: %q, want %q", firing, tc.firing)
			}
		})
	}
}

// chartAlerts is every alert of the chart's PrometheusRule, as helm
// renders it, parsed with Prometheus's parser.
func chartAlerts(t *testing.T) map[string]parser.Expr {
	t.Helper()
	return renderedAlerts(t, renderChart(t, "metrics.prometheusRule.enabled=true"))
}

// alertExpr is the expression of alert name in exprs; without it the test
// stops, listing the alerts there are.
func alertExpr(t *testing.T, exprs map[string]parser.Expr, name string) parser.Expr {
	t.Helper()
	e := exprs[name]
	if e == nil {
		t.Fatalf("the PrometheusRule has no alert %s: %v", name, slices.Sorted(maps.Keys(exprs)))
	}
	return e
}

// alertRules is every rule of c's PrometheusRule, by its alert's name, as
// helm renders it.
func alertRules(t *testing.T, c *chart) iter.Seq2[string, map[string]any] {
	t.Helper()
	if c.prometheusRule == nil {
		t.Fatalf("no PrometheusRule: %q", c.kinds)
	}
	return func(yield func(string, map[string]any) bool) {
		groups, _ := lookup(c.prometheusRule, "spec", "groups").([]any)
		for _, g := range groups {
			rules, _ := lookup(g.(map[string]any), "rules").([]any)
			for _, r := range rules {
				r, _ := r.(map[string]any)
				name, _ := r["alert"].(string)
				if !yield(name, r) {
					return
				}
			}
		}
	}
}

// waitingAlert renders the chart with its PrometheusRule and returns the
// alert's expression, having checked that the alert waits between atLeast
// and atMost before it fires (why says what the bounds stand for).
func waitingAlert(t *testing.T, name string, atLeast, atMost time.Duration, why string) (*chart, parser.Expr) {
	t.Helper()
	c := renderChart(t, "metrics.prometheusRule.enabled=true")
	e := alertExpr(t, renderedAlerts(t, c), name)
	if f := renderedAlertFor(t, c)[name]; f < atLeast || f > atMost {
		t.Errorf("%s waits %v: %s", name, f, why)
	}
	return c, e
}

// renderedAlertFor is every alert's "for" in c's PrometheusRule (0 where
// it has none).
func renderedAlertFor(t *testing.T, c *chart) map[string]time.Duration {
	t.Helper()
	out := map[string]time.Duration{}
	for name, r := range alertRules(t, c) {
		var d model.Duration
		if f, ok := r["for"].(string); ok {
			var err error
			if d, err = model.ParseDuration(f); err != nil {
				t.Fatalf("%s: for %q: %v", name, f, err)
			}
		}
		out[name] = time.Duration(d)
	}
	return out
}

// renderedAlerts is every alert of c's PrometheusRule, parsed.
func renderedAlerts(t *testing.T, c *chart) map[string]parser.Expr {
	t.Helper()
	exprs := map[string]parser.Expr{}
	for name, r := range alertRules(t, c) {
		expr, _ := r["expr"].(string)
		e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		exprs[name] = e
	}
	return exprs
}

// TestChartUpstreamAlert: ZtdnsUpstreamFailureRatioHigh fires for a
// nameserver that fails (timeouts, errors, error rcodes), not for replies
// ztdns itself refused for want of bytes (the node's budget, no_memory,
// which ZtdnsServfailRatioHigh reports; or a pod's own, source_limited) nor
// for attempts cancelled because another nameserver answered first: those
// say nothing of the nameserver; nor for a nameserver sent less than a
// query a second, as one pod's own unreachable nameserver is. (Before,
// no_memory counted as its failure and source_limited diluted its failures;
// and a pod's `dig @203.0.113.9` every two minutes held it at 100%.)
// ZtdnsUpstreamSlow fires for a nameserver that answers, but more than 1%
// of its replies take over 0.5 s, again only at more than a reply a
// second. (Before, a nameserver answering every query after 1.6 s, within
// --forward-timeout, counted ok and set off no alert.)
func TestChartUpstreamAlert(t *testing.T) {
	t.Parallel()
	const failing, slow = "ZtdnsUpstreamFailureRatioHigh", "ZtdnsUpstreamSlow"
	exprs := chartAlerts(t)
	for _, name := range []string{failing, slow} {
		alertExpr(t, exprs, name)
	}
	// The buckets of ztdns_forward_upstream_duration_seconds.
	bounds := append(forward.DurationBuckets(), math.Inf(1))
	for _, tc := range []struct {
		name  string
		rates map[string]float64 // attempts a second to one nameserver, by result
		// The share of the replies (ok and servfail) that take "after"
		// seconds; the others take 3 ms.
		slowShare, after float64
		firing           []string
	}{
		{name: "all answered", rates: map[string]float64{"ok": 100}},
		{name: "timeouts", rates: map[string]float64{"ok": 80, "timeout": 20}, firing: []string{failing}},
		{name: "error rcodes", rates: map[string]float64{"ok": 80, "servfail": 20}, firing: []string{failing}},
		{name: "the node's budget of replies spent", rates: map[string]float64{"ok": 50, "no_memory": 50}},
		{name: "a pod over its bytes, and timeouts", rates: map[string]float64{"ok": 80, "timeout": 20, "source_limited": 400}, firing: []string{failing}},
		{name: "cancelled for a faster nameserver", rates: map[string]float64{"ok": 50, "canceled": 50}},
		// A pod's own nameserver (dig @, its dnsConfig), unreachable: one
		// query every two minutes is all its failures, and says nothing of
		// the cluster's DNS.
		{name: "a pod's own unreachable nameserver, a query every two minutes", rates: map[string]float64{"timeout": 1.0 / 120}},
		{name: "a nameserver failing under load", rates: map[string]float64{"ok": 1, "timeout": 1}, firing: []string{failing}},
		// As reproduced: every cache miss answered after 1.6 s, all ok.
		{name: "every reply after 1.6 s, within the forward timeout", rates: map[string]float64{"ok": 20}, slowShare: 1, after: 1.6, firing: []string{slow}},
		{name: "5% of the replies after 1.6 s", rates: map[string]float64{"ok": 100}, slowShare: 0.05, after: 1.6, firing: []string{slow}},
		{name: "half a percent of the replies after 1.6 s", rates: map[string]float64{"ok": 100}, slowShare: 0.005, after: 1.6},
		{name: "every reply after 0.3 s", rates: map[string]float64{"ok": 100}, slowShare: 1, after: 0.3},
		{name: "slow and failing", rates: map[string]float64{"ok": 80, "timeout": 20}, slowShare: 0.5, after: 1.6, firing: []string{failing, slow}},
		{name: "a pod's own slow nameserver, a query every two minutes", rates: map[string]float64{"ok": 1.0 / 120}, slowShare: 1, after: 1.6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nameserver := map[string]string{"node": "n1", "instance": "10.0.0.1:15053", "job": "ztdns", "to": "10.96.0.10:53"}
			s := seriesWith(nameserver)
			var series []rateSeries
			for result, rate := range tc.rates {
				series = append(series, s("ztdns_forward_upstream_queries_total", rate, "result", result))
			}
			// The histogram has the replies, not timeouts nor errors.
			if replies := tc.rates["ok"] + tc.rates["servfail"]; replies > 0 {
				for _, le := range bounds {
					n := 0.0
					if le >= 0.003 {
						n += replies * (1 - tc.slowShare)
					}
					if le >= tc.after {
						n += replies * tc.slowShare
					}
					series = append(series, s("ztdns_forward_upstream_duration_seconds_bucket", n, "proto", "udp", "le", strconv.FormatFloat(le, 'g', -1, 64)))
				}
				series = append(series, s("ztdns_forward_upstream_duration_seconds_count", replies, "proto", "udp"))
			}
			var firing []string
			for _, name := range []string{failing, slow} {
				v := evalRates(t, exprs[name], series)
				if len(v) == 0 {
					continue
				}
				firing = append(firing, name)
				if v[0].labels["to"] != "10.96.0.10:53" || v[0].labels["node"] != "n1" {
					t.Errorf("%s fires without the nameserver and the node: %v", name, v[0].labels)
				}
			}
			if !slices.Equal(firing, tc.firing) {
				t.Errorf("alerts firing: %q, want %q", firing, tc.firing)
			}
		})
	}
}

// TestChartKubeWatchAlert: ZtdnsKubeWatchFailing fires, naming the node
// and the resource, while an agent's list or watch calls for a resource
// fail (ztdns_kube_watch_failing is 1): it serves the names it last saw, so
// new Services and ServiceEntries do not resolve there and deleted ones
// still do. Not while every watch works, nor on an agent with no API
// source (no such series). (Before, no alert said so.) And an outage of 10
// minutes fires it: the agent stays ready through one (/readyz), so this
// alert is what says so. (Before, it waited 10 minutes after the gauge
// turned 1 as scraped and evaluated, and a 10-minute outage never fired
// it.)
func TestChartKubeWatchAlert(t *testing.T) {
	t.Parallel()
	const name = "ZtdnsKubeWatchFailing"
	c := renderChart(t, "metrics.prometheusRule.enabled=true", "metrics.serviceMonitor.enabled=true")
	e := alertExpr(t, renderedAlerts(t, c), name)
	// The gauge turns 1 at the first failed call; the ServiceMonitor
	// scrapes every interval, and Prometheus evaluates rules every minute
	// by default: the alert fires at most that long after its "for".
	const outage, evaluation = 10 * time.Minute, time.Minute
	endpoints, _ := lookup(c.serviceMonitor, "spec", "endpoints").([]any)
	if len(endpoints) != 1 {
		t.Fatalf("ServiceMonitor endpoints %v, want one", endpoints)
	}
	interval, _ := endpoints[0].(map[string]any)["interval"].(string)
	scrape, err := model.ParseDuration(interval)
	if err != nil {
		t.Fatalf("ServiceMonitor interval %q: %v", interval, err)
	}
	if latest := renderedAlertFor(t, c)[name] + time.Duration(scrape) + evaluation; latest >= outage {
		t.Errorf("%s fires up to %v into an outage: one of %v would pass unreported", name, latest, outage)
	}
	for _, tc := range []struct {
		name    string
		failing map[string]float64 // the gauge by resource
		firing  bool
	}{
		{"every watch works", map[string]float64{"services": 0, "serviceentries.networking.istio.io": 0}, false},
		{"no API source", nil, false},
		{"one resource's watch failing", map[string]float64{"services": 0, "serviceentries.networking.istio.io": 1}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var series []rateSeries
			for resource, v := range tc.failing {
				series = append(series, rateSeries{rate: v, labels: map[string]string{
					"__name__": "ztdns_kube_watch_failing", "node": "n1", "instance": "10.0.0.1:15053", "job": "ztdns",
					"resource": resource,
				}})
			}
			v := evalRates(t, e, series)
			if got := len(v) > 0; got != tc.firing {
				t.Errorf("%s firing: %v, want %v (%v)", name, got, tc.firing, v)
			}
			if len(v) > 0 && (v[0].labels["node"] != "n1" || v[0].labels["resource"] != "serviceentries.networking.istio.io") {
				t.Errorf("%s fires without the node and the resource: %v", name, v[0].labels)
			}
		})
	}
}

// TestChartServiceEntriesUnavailableAlert: ZtdnsServiceEntriesUnavailable
// fires, naming the node and the reason, while the agent runs without
// ServiceEntries because Istio is there but it cannot read them: RBAC
// refuses them (forbidden), or the CRD serves no networking.istio.io/v1;
// not in a cluster without Istio (not-installed), nor while they are
// watched, nor on an agent with no API source (no such series). Its
// description says what to do. (Before, a ClusterRole without
// serviceentries left no watch failing and no host without a VIP: every
// ServiceEntry host got NXDOMAIN on every node, and no alert fired.)
func TestChartServiceEntriesUnavailableAlert(t *testing.T) {
	t.Parallel()
	const name = "ZtdnsServiceEntriesUnavailable"
	c, e := waitingAlert(t, name, time.Minute, 15*time.Minute, "a CRD being installed serves no version for seconds; an outage of its names wants a page within 15 minutes")
	checkDescription(t, c, name, "serviceentries", "networking.istio.io", "ClusterRole", "Istio before 1.22", "ztdns status")
	unavailable := func(reason string) map[string]float64 {
		m := map[string]float64{"not-installed": 0, "v1-not-served": 0, "forbidden": 0}
		if reason != "" {
			m[reason] = 1
		}
		return m
	}
	for _, tc := range []struct {
		name   string
		gauge  map[string]float64 // by reason
		firing string             // the reason it fires for, "" none
	}{
		{"ServiceEntries watched", unavailable(""), ""},
		{"no API source", nil, ""},
		{"no Istio in the cluster", unavailable("not-installed"), ""},
		{"RBAC refuses serviceentries", unavailable("forbidden"), "forbidden"},
		{"Istio before 1.22", unavailable("v1-not-served"), "v1-not-served"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var series []rateSeries
			for reason, v := range tc.gauge {
				series = append(series, onNode("ztdns_kube_serviceentries_unavailable", v, "reason", reason))
			}
			v := evalRates(t, e, series)
			checkFiring(t, name, v, tc.firing != "")
			if len(v) == 1 && v[0].labels["reason"] != tc.firing {
				t.Errorf("%s fires for %q, want %q", name, v[0].labels["reason"], tc.firing)
			}
			if len(v) > 1 {
				t.Errorf("%s fires %d times, want at most one: %v", name, len(v), v)
			}
		})
	}
}

// TestChartMeshConfigAbsentAlert: ZtdnsMeshConfigAbsent fires, naming the
// node and the ConfigMap, while the mesh config ConfigMap of the agent's
// revision is absent (resolver.istioRevision names no istiod's revision);
// not while it is there, nor in a cluster without Istio (the gauge 0 while
// the ServiceEntry CRD is not installed, though --istio-namespace keeps
// istio-system: kube.TestMeshConfigAbsentWithoutIstio), nor on an agent
// given --istio-namespace= (no such series); and only after 5 to 15
// minutes, past an install or upgrade in progress. Its description says
// what to do. (Before, an absent ConfigMap was one log line: the agents
// answered the wrong revision's ServiceEntries with Istio's defaults, and
// no alert fired.)
func TestChartMeshConfigAbsentAlert(t *testing.T) {
	t.Parallel()
	const name = "ZtdnsMeshConfigAbsent"
	c, e := waitingAlert(t, name, 5*time.Minute, 15*time.Minute, "an install or upgrade in progress lacks the ConfigMap for minutes; a misconfiguration wants a page within 15")
	checkDescription(t, c, name, "resolver.istioRevision", "istio-REVISION", "revision tag", "ztdns status")
	for _, tc := range []struct {
		name   string
		absent map[string]float64 // the gauge by ConfigMap
		firing string             // the ConfigMap it fires for, "" none
	}{
		{"the mesh config there", map[string]float64{"istio-system/istio-1-27": 0}, ""},
		{"no istiod", map[string]float64{"istio-system/istio": 0}, ""},
		{"no --istio-namespace", nil, ""},
		{"the revision's mesh config absent", map[string]float64{"istio-system/istio-1-27": 1}, "istio-system/istio-1-27"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var series []rateSeries
			for cm, v := range tc.absent {
				series = append(series, onNode("ztdns_kube_mesh_config_absent", v, "configmap", cm))
			}
			v := evalRates(t, e, series)
			checkFiring(t, name, v, tc.firing != "")
			if len(v) == 1 && (v[0].labels["configmap"] != tc.firing || v[0].labels["node"] != "n1") {
				t.Errorf("%s fires for %v, want configmap %q on n1", name, v[0].labels, tc.firing)
			}
		})
	}
}

// TestChartVIPsMissingAlert: ZtdnsVIPsMissing fires, naming the node and
// the reason, while ServiceEntry hosts that should have a VIP have none
// because istiod has not written it, istiod wrote IPv6 alone (its IPv4
// range exhausted: it never frees a deleted entry's VIPs), or ztdns's own
// allocator has none left; not for --vip-source=none, which gives none by
// design, nor while every host has its VIP; and only after 10 to 15
// minutes, past any lag of istiod's. (Before, no metric counted those
// hosts, and no alert said that a tenant's new hosts were forwarded.)
func TestChartVIPsMissingAlert(t *testing.T) {
	t.Parallel()
	const name = "ZtdnsVIPsMissing"
	_, e := waitingAlert(t, name, 10*time.Minute, 15*time.Minute, "istiod writes VIPs within milliseconds, so 10 to 15 minutes tell a lag from a failure")
	for _, tc := range []struct {
		name    string
		without map[string]float64 // the gauge by reason
		firing  string             // the reason it fires for, "" none
	}{
		{"every host has its VIP", map[string]float64{"istiod_pending": 0, "istiod_no_ipv4": 0, "pool_exhausted": 0, "vip_source_none": 0}, ""},
		{"--vip-source=none", map[string]float64{"istiod_pending": 0, "istiod_no_ipv4": 0, "pool_exhausted": 0, "vip_source_none": 40}, ""},
		{"istiod has not allocated", map[string]float64{"istiod_pending": 3, "istiod_no_ipv4": 0, "pool_exhausted": 0, "vip_source_none": 0}, "istiod_pending"},
		{"istiod's IPv4 range exhausted", map[string]float64{"istiod_pending": 0, "istiod_no_ipv4": 2, "pool_exhausted": 0, "vip_source_none": 0}, "istiod_no_ipv4"},
		{"ztdns's allocator exhausted", map[string]float64{"istiod_pending": 0, "istiod_no_ipv4": 0, "pool_exhausted": 1, "vip_source_none": 0}, "pool_exhausted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var series []rateSeries
			for reason, v := range tc.without {
				series = append(series, onNode("ztdns_table_hosts_without_vip", v, "reason", reason))
			}
			v := evalRates(t, e, series)
			var got string
			if len(v) > 1 {
				t.Fatalf("%s fires %d times, want at most one: %v", name, len(v), v)
			}
			if len(v) == 1 {
				got = v[0].labels["reason"]
				if v[0].labels["node"] != "n1" {
					t.Errorf("%s fires without the node: %v", name, v[0].labels)
				}
			}
			if got != tc.firing {
				t.Errorf("%s fires for %q, want %q", name, got, tc.firing)
			}
		})
	}
}

// TestChartCNIAddAlert: ZtdnsCNIAddFailing fires, naming the node, when
// the agent failed a CNI ADD in the last 10 minutes (each fails a pod's
// sandbox), not for ADDs it refused (claims that do not match their
// network namespace, late ADDs of deleted containers: refused as
// designed), nor for failed DELs, which are replayed and fail no pod.
// (Before, no alert said that pods failed to start on a node.)
func TestChartCNIAddAlert(t *testing.T) {
	t.Parallel()
	const name = "ZtdnsCNIAddFailing"
	e := alertExpr(t, chartAlerts(t), name)
	for _, tc := range []struct {
		name   string
		rates  map[[2]string]float64 // events a second by command and outcome
		firing bool
	}{
		{"every ADD and DEL works", map[[2]string]float64{{"add", "ambient"}: 1, {"add", "not-ambient"}: 1, {"del", "ok"}: 2}, false},
		{"one ADD failed in 10 minutes", map[[2]string]float64{{"add", "ambient"}: 1, {"add", "error"}: 1.0 / 600, {"del", "ok"}: 1}, true},
		{"ADDs refused", map[[2]string]float64{{"add", "ambient"}: 1, {"add", "refused"}: 0.1}, false},
		{"DELs failing", map[[2]string]float64{{"add", "ambient"}: 1, {"del", "error"}: 0.1}, false},
		{"no ADD failed since the agent started", map[[2]string]float64{{"add", "error"}: 0}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var series []rateSeries
			for k, rate := range tc.rates {
				series = append(series, rateSeries{rate: rate, labels: map[string]string{
					"__name__": "ztdns_cni_events_total", "node": "n1", "instance": "10.0.0.1:15053", "job": "ztdns",
					"command": k[0], "outcome": k[1],
				}})
			}
			v := evalRates(t, e, series)
			checkFiring(t, name, v, tc.firing)
		})
	}
}

// TestChartIstioRevisionMismatchAlert: ZtdnsIstioRevisionMismatch fires,
// naming the node, while the node's ztunnel follows istiod of another
// revision than the agent's --istio-revision
// (ztdns_kube_ztunnel_revision_mismatch is 1), and its description says
// where both are read and what to set; not while they agree, nor on an
// agent with no API source (no such series). It waits long enough for an
// upgrade's two rollouts to pass, not so long that a forgotten flag goes
// unreported for hours. (Before, nothing noticed: with ztunnel upgraded
// to 1-28 and the flag at 1-27, 1-28's ServiceEntries were forwarded
// though ztunnel routed their VIPs.)
func TestChartIstioRevisionMismatchAlert(t *testing.T) {
	t.Parallel()
	const name = "ZtdnsIstioRevisionMismatch"
	c, e := waitingAlert(t, name, 5*time.Minute, 30*time.Minute, "an upgrade's rollouts want a few minutes, a forgotten flag a page within 30")
	checkDescription(t, c, name, "--istio-revision", "istio.io/rev", "resolver.istioRevision", "ztdns status")
	checkGaugeAlert(t, name, e, "ztdns_kube_ztunnel_revision_mismatch", []gaugeCase{
		{"the same revision", []float64{0}, false},
		{"no API source", nil, false}, // no such series
		{"ztunnel of another revision", []float64{1}, true},
	})
}

// TestChartCNINotInstalledAlert: ZtdnsCNINotInstalled fires, naming the
// node, while the agent's CNI plugin is out of the node's CNI
// configuration (the agent serves, and new pods there start uncaptured),
// within 5 minutes; not while it is in, nor on an agent without
// --cni-install (no such series). (Before, no metric said so: a .conf
// beside a .conflist ztdns did not write showed only in the log.)
func TestChartCNINotInstalledAlert(t *testing.T) {
	t.Parallel()
	const name = "ZtdnsCNINotInstalled"
	_, e := waitingAlert(t, name, 0, 5*time.Minute, "every pod started meanwhile is uncaptured for up to 30 s, a short Job for good")
	checkGaugeAlert(t, name, e, "ztdns_cni_config_installed", []gaugeCase{
		{"installed", []float64{1}, false},
		{"no --cni-install", nil, false}, // no such series
		{"not installed", []float64{0}, true},
	})
}

// TestChartPodsNotEnrolledAlert: ZtdnsPodsNotEnrolled fires, naming the
// node, while pods there are labelled for the ambient mesh but istio-cni
// has not enrolled them (ztdns_capture_pods{reason="not-enrolled"}), within
// 10 minutes; not for pods left alone for other reasons, nor while there
// are none (the series at 0). (Before, no metric counted them: the ADD was
// counted as ambient, and the release 5 s later only logged.)
func TestChartPodsNotEnrolledAlert(t *testing.T) {
	t.Parallel()
	const name = "ZtdnsPodsNotEnrolled"
	_, e := waitingAlert(t, name, 0, 10*time.Minute, "pods outside the mesh for that long is istio-cni missing, not a lag")
	for _, tc := range []struct {
		name   string
		pods   map[string]float64 // ztdns_capture_pods{captured="false"} by reason
		firing bool
	}{
		{"none", map[string]float64{"not-enrolled": 0}, false},
		{"left alone by design", map[string]float64{"not-enrolled": 0, "not-ambient": 12, "annotation-off": 2}, false},
		{"not enrolled", map[string]float64{"not-enrolled": 3, "not-ambient": 12}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var series []rateSeries
			for reason, v := range tc.pods {
				series = append(series, onNode("ztdns_capture_pods", v, "captured", "false", "reason", reason))
			}
			checkFiring(t, name, evalRates(t, e, series), tc.firing)
		})
	}
}

// TestChartCaptureEventAlerts: ZtdnsCaptureBypassed fires, naming the
// node and the event, when in the last 10 minutes a captured pod's query
// went to its own nameserver for the node's reasons (the nameservers map
// refused it, no socket storage, no resolver of its family): each one
// lost that pod its ServiceEntry names. Not for what is by design (local
// destinations, nameservers outside --capture-nameservers) nor failing
// open (ZtdnsFailOpen's). ZtdnsCaptureSlotsFull (info) fires for a pod
// that keeps sending queries around ztdns because its three slots are
// busy, not for one such query now and then (a dig @ a fourth
// nameserver); ZtdnsCaptureSocketsFull (info) likewise for a pod whose
// open sockets hold --capture-sockets-per-pod records. (Before, no alert
// read ztdns_capture_events_total.)
func TestChartCaptureEventAlerts(t *testing.T) {
	t.Parallel()
	const bypassed, slotsFull, socketsFull = "ZtdnsCaptureBypassed", "ZtdnsCaptureSlotsFull", "ZtdnsCaptureSocketsFull"
	exprs := chartAlerts(t)
	for _, name := range []string{bypassed, slotsFull, socketsFull} {
		alertExpr(t, exprs, name)
	}
	// Every event the agent exports, from its start.
	events := agent.CaptureEvents()
	for _, tc := range []struct {
		name   string
		rates  map[string]float64 // events a second
		firing []string
		event  string // the event ZtdnsCaptureBypassed names
	}{
		{name: "all redirected", rates: map[string]float64{"redirected": 50, "restored": 50, "nameserver_learned": 0.01}},
		{name: "left alone by design", rates: map[string]float64{"redirected": 50, "skipped_local": 5, "skipped_not_listed": 5}},
		{name: "failing open", rates: map[string]float64{"skipped_stale": 50}},
		{name: "the nameservers map refused one nameserver in 10 minutes", rates: map[string]float64{"redirected": 50, "nameserver_failed": 1.0 / 600}, firing: []string{bypassed}, event: "nameserver_failed"},
		{name: "no socket storage", rates: map[string]float64{"redirected": 50, "socket_storage_failed": 0.5}, firing: []string{bypassed}, event: "socket_storage_failed"},
		{name: "no resolver of the family", rates: map[string]float64{"redirected": 50, "skipped_no_resolver": 0.5}, firing: []string{bypassed}, event: "skipped_no_resolver"},
		{name: "slots full for one query now and then", rates: map[string]float64{"redirected": 50, "skipped_slots_full": 1.0 / 120}},
		{name: "slots full for a pod's queries all along", rates: map[string]float64{"redirected": 50, "skipped_slots_full": 1}, firing: []string{slotsFull}},
		{name: "sockets full for one query now and then", rates: map[string]float64{"redirected": 50, "skipped_sockets_full": 1.0 / 120}},
		{name: "sockets full for a pod's queries all along", rates: map[string]float64{"redirected": 50, "skipped_sockets_full": 1}, firing: []string{socketsFull}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var series []rateSeries
			for _, event := range events {
				series = append(series, rateSeries{rate: tc.rates[event], labels: map[string]string{
					"__name__": "ztdns_capture_events_total", "node": "n1", "instance": "10.0.0.1:15053", "job": "ztdns", "event": event,
				}})
			}
			var firing []string
			for _, name := range []string{bypassed, slotsFull, socketsFull} {
				v := evalRates(t, exprs[name], series)
				if len(v) == 0 {
					continue
				}
				firing = append(firing, name)
				if v[0].labels["node"] != "n1" {
					t.Errorf("%s fires without the node: %v", name, v[0].labels)
				}
				if name == bypassed && (len(v) != 1 || v[0].labels["event"] != tc.event) {
					t.Errorf("%s fires for %v, want the event %s", name, v, tc.event)
				}
			}
			if !slices.Equal(firing, tc.firing) {
				t.Errorf("alerts firing: %q, want %q", firing, tc.firing)
			}
		})
	}
}

// rateSeries is a counter's labels and its steady rate per second.
type rateSeries struct {
	labels map[string]string
	rate   float64
}

// onNode makes an agent's series on node n1, as seriesWith.
var onNode = seriesWith(map[string]string{"node": "n1", "instance": "10.0.0.1:15053", "job": "ztdns"})

// gaugeCase is a case of checkGaugeAlert: the gauge's value, none for no
// such series, and whether the alert fires.
type gaugeCase struct {
	name   string
	gauge  []float64
	firing bool
}

// checkGaugeAlert checks, case by case, whether alert name (its
// expression e) fires over the gauge metric of an agent on node n1, and
// names the node when it does.
func checkGaugeAlert(t *testing.T, name string, e parser.Expr, metric string, cases []gaugeCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var series []rateSeries
			for _, v := range tc.gauge {
				series = append(series, onNode(metric, v))
			}
			checkFiring(t, name, evalRates(t, e, series), tc.firing)
		})
	}
}

// seriesWith makes series with the labels of base: the series name, at
// perSecond, with the label pairs kv besides.
func seriesWith(base map[string]string) func(name string, perSecond float64, kv ...string) rateSeries {
	return func(name string, perSecond float64, kv ...string) rateSeries {
		l := maps.Clone(base)
		l["__name__"] = name
		for i := 0; i < len(kv); i += 2 {
			l[kv[i]] = kv[i+1]
		}
		return rateSeries{labels: l, rate: perSecond}
	}
}

func (s rateSeries) key() string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(s.labels)) {
		if k != "__name__" {
			parts = append(parts, k+"="+s.labels[k])
		}
	}
	return strings.Join(parts, ",")
}

// checkFiring checks an alert's instances v (evalRates') against whether
// it is to fire, and that, firing, it names the node (n1).
func checkFiring(t *testing.T, name string, v []rateSeries, firing bool) {
	t.Helper()
	if got := len(v) > 0; got != firing {
		t.Errorf("%s firing: %v, want %v (%v)", name, got, firing, v)
	}
	if len(v) > 0 && v[0].labels["node"] != "n1" {
		t.Errorf("%s fires without the node: %v", name, v[0].labels)
	}
}

// checkDescription checks that the description of c's alert name says
// each of want.
func checkDescription(t *testing.T, c *chart, name string, want ...string) {
	t.Helper()
	for r, rule := range alertRules(t, c) {
		if r != name {
			continue
		}
		desc, _ := lookup(rule, "annotations", "description").(string)
		for _, w := range want {
			if !strings.Contains(desc, w) {
				t.Errorf("%s's description does not say %q: %s", name, w, desc)
			}
		}
	}
}

// evalRates evaluates e at an instant over counters that rose at steady
// rates: rate() of a counter is its rate; a selector outside rate() is a
// gauge, whose value is "rate"; increase() is the rate times the range.
// So it cannot model a series that first appears at its first event (a
// CounterVec's cell made by its first Inc): Prometheus's increase() sees
// no rise from nothing to 1, whereas here it is the rate's share of the
// range. What an alert's increase() reads must exist from the start, at 0
// (the agent's failed CNI events, say: cmd/ztdns TestBuiltBinary). It
// knows what the chart's alerts use (rate, increase, a gauge, sum and max by, histogram_quantile, arithmetic and comparison between vectors matched on
// all their labels or with a number, and, or, parentheses) and fails the test
// on anything else, rather than guess.
func evalRates(t *testing.T, e parser.Expr, series []rateSeries) []rateSeries {
	t.Helper()
	switch e := e.(type) {
	case *parser.ParenExpr:
		return evalRates(t, e.Expr, series)
	case *parser.VectorSelector:
		var out []rateSeries
		for _, s := range series {
			if matches(e, s.labels) {
				l := maps.Clone(s.labels)
				delete(l, "__name__")
				out = append(out, rateSeries{labels: l, rate: s.rate})
			}
		}
		return out
	case *parser.Call:
		if e.Func.Name == "histogram_quantile" {
			q, ok := e.Args[0].(*parser.NumberLiteral)
			if !ok {
				t.Fatalf("the test does not evaluate %s", e)
			}
			return histogramQuantile(t, q.Val, evalRates(t, e.Args[1], series))
		}
		if e.Func.Name != "rate" && e.Func.Name != "increase" || len(e.Args) != 1 {
			t.Fatalf("the test does not evaluate %s", e)
		}
		ms, ok := e.Args[0].(*parser.MatrixSelector)
		if !ok {
			t.Fatalf("the test does not evaluate %s", e)
		}
		out := evalRates(t, ms.VectorSelector, series)
		if e.Func.Name == "increase" { // the steady rate over the range
			for i := range out {
				out[i].rate *= ms.Range.Seconds()
			}
		}
		return out
	case *parser.AggregateExpr:
		if e.Op != parser.SUM && e.Op != parser.MAX || e.Without || e.Param != nil {
			t.Fatalf("the test does not evaluate %s", e)
		}
		sums := map[string]*rateSeries{}
		var order []string
		for _, s := range evalRates(t, e.Expr, series) {
			l := map[string]string{}
			for _, g := range e.Grouping {
				if v, ok := s.labels[g]; ok {
					l[g] = v
				}
			}
			g := rateSeries{labels: l, rate: s.rate}
			switch {
			case sums[g.key()] == nil:
				sums[g.key()] = &g
				order = append(order, g.key())
			case e.Op == parser.SUM:
				sums[g.key()].rate += s.rate
			default:
				sums[g.key()].rate = max(sums[g.key()].rate, s.rate)
			}
		}
		var out []rateSeries
		for _, k := range order {
			out = append(out, *sums[k])
		}
		return out
	case *parser.BinaryExpr:
		// "and on (labels)" matches on those labels alone; other matching
		// is not evaluated here.
		m := e.VectorMatching
		andOn := m != nil && m.On && e.Op == parser.LAND && len(m.Include) == 0
		if m != nil && !andOn && (m.On || len(m.MatchingLabels) > 0 || len(m.Include) > 0) || e.ReturnBool {
			t.Fatalf("the test does not evaluate %s", e)
		}
		if andOn {
			on := func(s rateSeries) string {
				l := map[string]string{}
				for _, k := range m.MatchingLabels {
					if v, ok := s.labels[k]; ok {
						l[k] = v
					}
				}
				return rateSeries{labels: l}.key()
			}
			right := map[string]bool{}
			for _, s := range evalRates(t, e.RHS, series) {
				right[on(s)] = true
			}
			var out []rateSeries
			for _, s := range evalRates(t, e.LHS, series) {
				if right[on(s)] {
					out = append(out, s)
				}
			}
			return out
		}
		if n, ok := e.RHS.(*parser.NumberLiteral); ok {
			var out []rateSeries
			for _, s := range evalRates(t, e.LHS, series) {
				if v, keep := apply(t, e, s.rate, n.Val); keep {
					out = append(out, rateSeries{labels: s.labels, rate: v})
				}
			}
			return out
		}
		if e.Op == parser.LOR { // the left's elements, and the right's the left has not
			out := evalRates(t, e.LHS, series)
			left := map[string]bool{}
			for _, s := range out {
				left[s.key()] = true
			}
			for _, s := range evalRates(t, e.RHS, series) {
				if !left[s.key()] {
					out = append(out, s)
				}
			}
			return out
		}
		rhs := map[string]float64{}
		for _, s := range evalRates(t, e.RHS, series) {
			rhs[s.key()] = s.rate
		}
		var out []rateSeries
		for _, s := range evalRates(t, e.LHS, series) {
			r, ok := rhs[s.key()]
			if !ok {
				continue
			}
			if e.Op == parser.LAND {
				out = append(out, s)
			} else if v, keep := apply(t, e, s.rate, r); keep {
				out = append(out, rateSeries{labels: s.labels, rate: v})
			}
		}
		return out
	}
	t.Fatalf("the test does not evaluate %s (%T)", e, e)
	return nil
}

// histogramQuantile is Prometheus's histogram_quantile over classic
// buckets (series with an "le" label), grouped by their other labels: the
// q-quantile interpolated linearly within the bucket it falls in; the
// upper bound of the last finite bucket when it falls in +Inf's.
func histogramQuantile(t *testing.T, q float64, buckets []rateSeries) []rateSeries {
	t.Helper()
	type bucket struct{ upper, count float64 }
	groups := map[string][]bucket{}
	labelsOf := map[string]map[string]string{}
	var order []string
	for _, s := range buckets {
		upper, err := strconv.ParseFloat(s.labels["le"], 64)
		if err != nil {
			t.Fatalf("bucket without a bound: %v", s.labels)
		}
		l := maps.Clone(s.labels)
		delete(l, "le")
		k := rateSeries{labels: l}.key()
		if labelsOf[k] == nil {
			labelsOf[k] = l
			order = append(order, k)
		}
		groups[k] = append(groups[k], bucket{upper, s.rate})
	}
	var out []rateSeries
	for _, k := range order {
		bs := groups[k]
		slices.SortFunc(bs, func(a, b bucket) int { return cmp.Compare(a.upper, b.upper) })
		n := len(bs)
		if n < 2 || !math.IsInf(bs[n-1].upper, 1) || bs[n-1].count == 0 {
			continue // NaN: no comparison keeps it
		}
		rank := q * bs[n-1].count
		b := slices.IndexFunc(bs, func(b bucket) bool { return b.count >= rank })
		var v float64
		switch {
		case b == n-1:
			v = bs[n-2].upper
		case b == 0 && bs[0].upper <= 0:
			v = bs[0].upper
		default:
			start, count := 0.0, bs[b].count
			if b > 0 {
				start = bs[b-1].upper
				count -= bs[b-1].count
				rank -= bs[b-1].count
			}
			v = start + (bs[b].upper-start)*(rank/count)
		}
		out = append(out, rateSeries{labels: labelsOf[k], rate: v})
	}
	return out
}

// apply is e's operator on l and r, and whether the element stays (a
// comparison filters).
func apply(t *testing.T, e *parser.BinaryExpr, l, r float64) (float64, bool) {
	switch e.Op {
	case parser.ADD:
		return l + r, true
	case parser.SUB:
		return l - r, true
	case parser.MUL:
		return l * r, true
	case parser.DIV:
		return l / r, true // 0/0 is NaN, which no comparison keeps
	case parser.GTR:
		return l, l > r
	case parser.LSS:
		return l, l < r
	case parser.EQLC:
		return l, l == r
	}
	t.Fatalf("the test does not evaluate %s", e)
	return 0, false
}

func matches(vs *parser.VectorSelector, l map[string]string) bool {
	for _, m := range vs.LabelMatchers {
		if !m.Matches(l[m.Name]) {
			return false
		}
	}
	return vs.Name == "" || vs.Name == l["__name__"]
}
