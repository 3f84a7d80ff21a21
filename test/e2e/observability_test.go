//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// The chart's dashboard and alerts.
const (
	dashboardFile = "../../" + testenv.DashboardFile
	rulesFile     = "../../deploy/charts/ztdns/files/prometheus-rules.yaml"
)

// synthesized are series Prometheus makes itself for every target it
// scrapes: the alerts may use them though no agent exports them.
var synthesized = []string{"up"}

// apiSourceOnly are metrics of the Kubernetes API source, which this test's
// agent (--config-dir) does not run; test/deploy's TestChartKubeWatchAlert
// evaluates the alert that uses them.
var apiSourceOnly = []string{"ztdns_kube_watch_failing", "ztdns_kube_snapshots_total", "ztdns_kube_snapshot_delay_seconds_bucket", "ztdns_kube_objects_left_out", "ztdns_kube_serviceentries_unavailable", "ztdns_kube_ztunnel_revision_mismatch", "ztdns_kube_mesh_config_absent"}

// eventOnly are metrics with a series only once an event this test does
// not make has happened: a CNI event (its pod is captured by hand), a query
// sent upstream again (none is lost here: pkg/resolver/forward's tests count
// them), an ICMP error from another address than the upstream's (forged:
// pkg/resolver/forward's TestForgedPortUnreachableIgnored counts them).
var eventOnly = []string{"ztdns_cni_events_total", "ztdns_forward_upstream_resends_total", "ztdns_forward_upstream_icmp_ignored_total"}

// cniInstallOnly are metrics of an agent with --cni-install, which this
// test's is not; pkg/agent's TestCNIInstallClashAtStart reads it, and
// test/deploy's TestChartCNINotInstalledAlert evaluates its alert.
var cniInstallOnly = []string{"ztdns_cni_config_installed"}

// cpuControllerOnly are metrics read from the cpu.stat of the agent's
// cgroup: absent on cgroup v2 where the cpu controller is off for it (the
// machine's root cgroup, say; v1's root has them, at 0). cmd/ztdns's
// TestCPULimitThrottlingIsExported runs an agent under a CPU limit, and
// test/deploy's TestChartCPUThrottledAlert evaluates the alert that uses
// two of them.
var cpuControllerOnly = []string{"ztdns_cpu_periods_total", "ztdns_cpu_throttled_periods_total", "ztdns_cpu_throttled_seconds_total"}

// TestREADMENamesObservabilityExemptions: README.md's account of
// TestObservability names every metric the test lets the dashboard and
// alerts use without finding it in its agent's scrape. (Before, it named
// ztdns_kube_watch_failing alone.)
func TestREADMENamesObservabilityExemptions(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, text, ok := strings.Cut(string(b), "`test/e2e` (`TestObservability`, as root)")
	if !ok {
		t.Fatal("README.md says nothing of `test/e2e` (`TestObservability`, as root)")
	}
	text, _, _ = strings.Cut(text, "\n\n")
	for _, name := range slices.Concat(synthesized, apiSourceOnly, eventOnly, cniInstallOnly, cpuControllerOnly) {
		if !strings.Contains(text, "`"+name+"`") {
			t.Errorf("README.md's account of TestObservability does not name %s, which the test does not look for in its scrape", name)
		}
	}
}

// TestObservability runs an agent with capture on, its metrics endpoint and
// an access log file, has a captured pod ask a table name and (twice) a
// name its own nameserver answers, and checks:
//   - the access log: a line for the table answer, the upstream's and the
//     cache's, with the pod, namespace, name, type, rcode and upstream;
//   - `ztdns log off` stops the lines (a name asked while off has none),
//     `ztdns log on --sample 2` writes one query in two, `ztdns status`
//     says which; a last name asked with every query logged again marks
//     the end: the lines before its own are all there will be;
//   - /metrics: the counts of those queries by source and namespace and
//     upstream, the capture maps and fail-open;
//   - every expression of the dashboard and of the alerts parses as PromQL
//     and names only metrics that scrape holds.
func TestObservability(t *testing.T) {
	t.Parallel()
	used := monitoringMetrics(t) // before anything starts: a broken expression fails at once
	c := newCluster(t)
	// The pod's nameserver answers markedNames (c.serve) and two names of
	// this test's own: one asked while the log is off, and the last.
	offHost, lastHost := testenv.UniqueName("off-")+".example", testenv.UniqueName("last-")+".example"
	var zone []string
	for _, name := range append(slices.Clone(markedNames), offHost, lastHost) {
		zone = append(zone, fmt.Sprintf("%s. 300 IN A %s", name, ownMarker))
	}
	c.node.ServeNameserver(t, netip.MustParseAddr(podNameserver1), dnstest.ZoneOf(t, zone...))
	accessLog := filepath.Join(t.TempDir(), "access.log")
	a := testenv.StartAgent(t, c.node, c.bin, append(c.agentArgs(), "--metrics", metricsAddr, "--access-log", accessLog)...)
	c.waitReady(t, a)
	p := c.markedPod(t, "observed", podNameserver1)
	dig := func(name string, want netip.Addr) {
		t.Helper()
		if got, err := c.dig(t, p, name); err != nil || !slices.Equal(got, []netip.Addr{want}) {
			t.Fatalf("dig %s = %v, %v; want %s", name, got, err, want)
		}
	}

	dig(addressHost, addressVIP)
	dig(whoHost, ownMarker)
	dig(whoHost, ownMarker)
	lines := waitLines(t, accessLog, 3)
	from := "namespace=default pod=observed name="
	for i, want := range []string{
		from + addressHost + ". type=A proto=udp rcode=NOERROR answered=table latency=",
		from + whoHost + ". type=A proto=udp rcode=NOERROR answered=upstream upstream=" + podNameserver1 + ":53 latency=",
		from + whoHost + ". type=A proto=udp rcode=NOERROR answered=cache upstream=" + podNameserver1 + ":53 latency=",
	} {
		if !strings.Contains(lines[i], want) || !strings.Contains(lines[i], `msg="dns query" client=`+p.IPv4.String()+":") {
			t.Errorf("access log line %d:\n%s\nwant the pod's client address and %q", i, lines[i], want)
		}
	}

	c.ztdns(t, "log", "off", "--socket", c.socket)
	if got := accessLogStatus(t, c); got != "off (to "+accessLog+" when on)" {
		t.Errorf("ztdns status: access log %q after ztdns log off", got)
	}
	dig(offHost, ownMarker)
	if out := c.ztdns(t, "log", "on", "--sample", "2", "--socket", c.socket); out != "access log on: one query in 2, to "+accessLog+"\n" {
		t.Errorf("ztdns log on --sample 2 printed %q", out)
	}
	for range 4 {
		dig(addressHost, addressVIP)
	}
	// Every query logged again, the last name's line comes after any line
	// of the queries before it.
	c.ztdns(t, "log", "on", "--sample", "1", "--socket", c.socket)
	dig(lastHost, ownMarker)
	lines = linesThrough(t, accessLog, lastHost)
	if len(lines) != 6 {
		t.Errorf("%d access log lines, want 3, none while off, 2 for 4 queries at one in 2, and the last name's:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for i, l := range lines {
		if strings.Contains(l, " name="+offHost+". ") {
			t.Errorf("access log line %d is of %s, asked while the log was off:\n%s", i, offHost, l)
		}
		if i >= 3 && i < len(lines)-1 && !strings.Contains(l, " name="+addressHost+". ") {
			t.Errorf("access log line %d, of the queries at one in 2, is not of %s:\n%s", i, addressHost, l)
		}
	}

	wantValues := map[string]float64{
		`ztdns_dns_requests_total{proto="udp",rcode="NOERROR",source="table",type="A"}`:    5,
		`ztdns_dns_requests_total{proto="udp",rcode="NOERROR",source="upstream",type="A"}`: 3,
		`ztdns_dns_requests_total{proto="udp",rcode="NOERROR",source="cache",type="A"}`:    1,
		`ztdns_dns_namespace_requests_total{client_namespace="default"}`:                   9,
		`ztdns_forward_upstream_queries_total{result="ok",to="` + podNameserver1 + `:53"}`: 3,
		`ztdns_dns_request_duration_seconds_count{source="table"}`:                         5,
		`ztdns_capture_map_entries{map="pods"}`:                                            1,
		`ztdns_capture_map_capacity{map="pods"}`:                                           16384,
		`ztdns_capture_fail_open{}`:                                                        0,
		`ztdns_access_log_lines_total{}`:                                                   6,
		`ztdns_access_log_enabled{}`:                                                       1,
	}
	// The UDP loop adds a batch's counts after writing its answers: the
	// last ones may come a moment after dig has its answer.
	var scraped scrape
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		scraped = scrapeMetrics(t, c, metricsAddr)
		if matches(scraped.values, wantValues) || time.Now().After(deadline) {
			break
		}
	}
	for series, want := range wantValues {
		if got, ok := scraped.values[series]; !ok || got != want {
			t.Errorf("/metrics: %s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	if limit, ok := scraped.values["ztdns_memory_limit_bytes{}"]; !ok || limit <= 0 {
		t.Errorf("/metrics: ztdns_memory_limit_bytes = %v (present %v), want a limit or +Inf", limit, ok)
	}
	var missing []string
	for name, where := range used {
		if !scraped.names[name] && !slices.Contains(synthesized, name) && !slices.Contains(apiSourceOnly, name) && !slices.Contains(eventOnly, name) && !slices.Contains(cpuControllerOnly, name) && !slices.Contains(cniInstallOnly, name) {
			missing = append(missing, name+" ("+strings.Join(where, ", ")+")")
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("the dashboard and alerts use metrics the agent does not export:\n  %s", strings.Join(missing, "\n  "))
	}
	if len(used) < 20 {
		t.Errorf("only %d metrics named by the dashboard and alerts: the expressions were not all read", len(used))
	}
}

// monitoringMetrics parses every PromQL expression of the dashboard (its
// panels' targets, with Grafana's variables given values) and of the alert
// rules, failing the test on any that does not parse or any rule without a
// severity and a summary, and returns the metric names they use, each with
// where.
func monitoringMetrics(t *testing.T) map[string][]string {
	t.Helper()
	used := map[string][]string{}
	p := parser.NewParser(parser.Options{})
	use := func(where, expr string) {
		e, err := p.ParseExpr(expr)
		if err != nil {
			t.Errorf("%s: %q does not parse: %v", where, expr, err)
			return
		}
		parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok && !slices.Contains(used[vs.Name], where) {
				used[vs.Name] = append(used[vs.Name], where)
			}
			return nil
		})
	}

	dash := testenv.ReadDashboard(t, dashboardFile)
	grafanaVars := strings.NewReplacer("$__rate_interval", "5m", "$node", ".*", "${datasource}", "prometheus")
	targets := 0
	for _, panel := range dash.Panels {
		for _, expr := range panel.Exprs {
			targets++
			use("dashboard panel "+panel.Title, grafanaVars.Replace(expr))
		}
	}
	if targets < 20 {
		t.Errorf("%s has %d queries", dashboardFile, targets)
	}
	labelValues := regexp.MustCompile(`^label_values\((\w+), *\w+\)$`)
	for _, v := range dash.Variables {
		if v.Definition == "" {
			continue
		}
		m := labelValues.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("dashboard variable %s: %q is not label_values(metric, label)", v.Name, v.Definition)
			continue
		}
		use("dashboard variable "+v.Name, m[1])
	}

	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.UnmarshalStrict(b, &rules); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			use("alert "+r.Alert, r.Expr)
			if _, err := model.ParseDuration(r.For); err != nil {
				t.Errorf("alert %s: for %q: %v", r.Alert, r.For, err)
			}
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s has no severity, summary or description", r.Alert)
			}
		}
	}
	wantAlerts := []string{"ZtdnsResolverDown", "ZtdnsServfailRatioHigh", "ZtdnsPodThrottled", "ZtdnsUpstreamFailureRatioHigh", "ZtdnsUpstreamSlow", "ZtdnsFailOpen", "ZtdnsCaptureBroken", "ZtdnsCaptureBypassed", "ZtdnsCaptureSlotsFull", "ZtdnsCaptureSocketsFull", "ZtdnsCaptureMapNearFull", "ZtdnsCNIAddFailing", "ZtdnsPodsNotEnrolled", "ZtdnsCNINotInstalled", "ZtdnsMemoryNearLimit", "ZtdnsMemoryBoundOverLimit", "ZtdnsOpenFileLimitReached", "ZtdnsCPUThrottled", "ZtdnsKubeWatchFailing", "ZtdnsServiceEntriesUnavailable", "ZtdnsIstioRevisionMismatch", "ZtdnsMeshConfigAbsent", "ZtdnsVIPsMissing"}
	if !slices.Equal(alerts, wantAlerts) {
		t.Errorf("alerts %v, want %v", alerts, wantAlerts)
	}
	return used
}

// readLines returns the lines of the access log file.
func readLines(path string) []string {
	b, _ := os.ReadFile(path)
	if len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// waitLines waits until the access log file has n lines and returns them,
// failing the test if it has more. Lines that come later are caught by the
// count once linesThrough has seen a name asked last.
func waitLines(t *testing.T, path string, n int) []string {
	t.Helper()
	var lines []string
	testenv.Eventually(t, 10*time.Second, fmt.Sprintf("%d lines in %s", n, path), func() bool {
		lines = readLines(path)
		return len(lines) >= n
	})
	if len(lines) != n {
		t.Fatalf("%s has %d lines, want %d:\n%s", path, len(lines), n, strings.Join(lines, "\n"))
	}
	return lines
}

// linesThrough waits until the access log file has a line of name, asked
// last, and returns its lines: the log writes its lines in the order the
// queries were answered, so every line of a query before name's is there.
func linesThrough(t *testing.T, path, name string) []string {
	t.Helper()
	var lines []string
	testenv.Eventually(t, 10*time.Second, fmt.Sprintf("a line of %s in %s", name, path), func() bool {
		lines = readLines(path)
		return slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, " name="+name+". ") })
	})
	return lines
}

// accessLogStatus is what `ztdns status` says of the access log.
func accessLogStatus(t *testing.T, c *cluster) string {
	t.Helper()
	for _, l := range strings.Split(c.ztdns(t, "status", "--socket", c.socket), "\n") {
		if v, ok := strings.CutPrefix(l, "Access log:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatal("ztdns status has no access log line")
	return ""
}

// matches reports whether values holds every series of want with its value.
func matches(values, want map[string]float64) bool {
	for series, v := range want {
		if got, ok := values[series]; !ok || got != v {
			return false
		}
	}
	return true
}

// metricsAddr is where tests start the agent's --metrics: inside the
// cluster's node namespace, each test's own, so parallel tests share it.
const metricsAddr = "127.0.0.1:19153"

// scrape is one read of /metrics.
type scrape struct {
	// names holds every sample name, a histogram's _bucket, _sum and
	// _count included.
	names map[string]bool
	// values are the counters' and gauges' values, and histograms' counts
	// (as name_count), by name{label="value",...} with the labels sorted.
	values map[string]float64
}

func scrapeMetrics(t *testing.T, c *cluster, addr string) scrape {
	t.Helper()
	text := c.node.HTTPGet(t, "http://"+addr+"/metrics")
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	s := scrape{names: map[string]bool{}, values: map[string]float64{}}
	for name, mf := range families {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			sort.Strings(labels)
			series := "{" + strings.Join(labels, ",") + "}"
			switch mf.GetType() {
			case dto.MetricType_HISTOGRAM:
				s.names[name+"_bucket"], s.names[name+"_sum"], s.names[name+"_count"] = true, true, true
				s.values[name+"_count"+series] = float64(m.GetHistogram().GetSampleCount())
			case dto.MetricType_SUMMARY:
				s.names[name], s.names[name+"_sum"], s.names[name+"_count"] = true, true, true
			default:
				s.names[name] = true
				s.values[name+series] = m.GetCounter().GetValue() + m.GetGauge().GetValue() + m.GetUntyped().GetValue()
			}
		}
	}
	return s
}
