//go:build linux

package deploy

import (
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"

	"github.com/ztdns/ztdns/internal/testenv"
)

// The dashboard and the alerts, in the chart so that its templates can
// read them (test/e2e checks that their expressions parse and name only
// metrics a running agent exports).
const (
	dashboardFile = testenv.DashboardFile
	rulesFile     = chartDir + "/files/prometheus-rules.yaml"
)

// TestChartDashboardAndRules: the dashboard's ConfigMap carries the label
// Grafana's sidecar looks for and the dashboard as it is in the chart; the
// PrometheusRule holds the rule groups of the rules file; both are off by
// default and in cleanup mode; the ServiceMonitor names the job the rules
// select.
func TestChartDashboardAndRules(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	for _, c := range []*chart{renderChart(t), renderChart(t, "mode=cleanup", "metrics.dashboard.enabled=true", "metrics.prometheusRule.enabled=true")} {
		if c.dashboard != nil || c.prometheusRule != nil {
			t.Errorf("dashboard or rules rendered by default or in cleanup mode: %q", c.kinds)
		}
	}
	c := renderChart(t, "metrics.dashboard.enabled=true", "metrics.dashboard.annotations.grafana_folder=DNS",
		"metrics.prometheusRule.enabled=true", "metrics.prometheusRule.labels.release=prometheus", "metrics.serviceMonitor.enabled=true")
	if c.dashboard == nil || c.prometheusRule == nil {
		t.Fatalf("missing objects: %q", c.kinds)
	}

	cm := c.dashboard
	if cm.Labels["grafana_dashboard"] != "1" || cm.Annotations["grafana_folder"] != "DNS" || cm.Namespace != namespace {
		t.Errorf("dashboard ConfigMap %s/%s labels %v annotations %v; want grafana_dashboard: \"1\" and the annotation asked for", cm.Namespace, cm.Name, cm.Labels, cm.Annotations)
	}
	want, err := os.ReadFile(filepath.Join(root, dashboardFile))
	if err != nil {
		t.Fatal(err)
	}
	if got := cm.Data["ztdns.json"]; got != strings.TrimSuffix(string(want), "\n") {
		t.Errorf("the ConfigMap's ztdns.json differs from %s", dashboardFile)
	}
	var dash struct {
		UID    string           `json:"uid"`
		Panels []map[string]any `json:"panels"`
	}
	if err := json.Unmarshal([]byte(cm.Data["ztdns.json"]), &dash); err != nil || dash.UID == "" || len(dash.Panels) == 0 {
		t.Errorf("the dashboard is not a Grafana dashboard with a uid and panels: %v", err)
	}

	pr := c.prometheusRule
	if lookup(pr, "apiVersion") != "monitoring.coreos.com/v1" || lookup(pr, "metadata", "labels", "release") != "prometheus" || lookup(pr, "metadata", "namespace") != namespace {
		t.Errorf("PrometheusRule %v", pr["metadata"])
	}
	rulesYAML, err := os.ReadFile(filepath.Join(root, rulesFile))
	if err != nil {
		t.Fatal(err)
	}
	var rules map[string]any
	if err := yaml.UnmarshalStrict(rulesYAML, &rules); err != nil {
		t.Fatal(err)
	}
	if got := pr["spec"]; !reflect.DeepEqual(got, rules) {
		t.Errorf("PrometheusRule spec differs from %s:\n%v", rulesFile, got)
	}
}

// TestChartJobIsTheRulesJob: the job the ServiceMonitor gives the agents'
// series is the one every alert and every dashboard panel selects, whatever
// nameOverride or fullnameOverride name the objects. (Before, the job was
// the Service's app.kubernetes.io/name, which nameOverride sets: with
// nameOverride=foo, ZtdnsResolverDown, ZtdnsMemoryNearLimit and the Memory
// and CPU panels selected job="ztdns" and matched nothing.)
func TestChartJobIsTheRulesJob(t *testing.T) {
	t.Parallel()
	panels := dashboardPanels(t)
	for _, sets := range [][]string{nil, {"nameOverride=foo"}, {"fullnameOverride=bar"}} {
		name := strings.Join(sets, ",")
		if name == "" {
			name = "defaults"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := renderChart(t, append([]string{"metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true"}, sets...)...)
			if c.serviceMonitor == nil || c.service == nil || c.prometheusRule == nil {
				t.Fatalf("missing objects: %q", c.kinds)
			}
			job := serviceMonitorJob(t, c)
			matchers := 0
			check := func(where string, e parser.Expr) {
				parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
					vs, ok := n.(*parser.VectorSelector)
					if !ok {
						return nil
					}
					for _, m := range vs.LabelMatchers {
						if m.Name != "job" {
							continue
						}
						matchers++
						if !m.Matches(job) {
							t.Errorf("%s: %s does not select the ServiceMonitor's job %q", where, vs, job)
						}
					}
					return nil
				})
			}
			for name, e := range renderedAlerts(t, c) {
				check("alert "+name, e)
			}
			for _, p := range panels {
				for _, expr := range p.Exprs {
					e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
					if err != nil {
						t.Fatalf("panel %q: %v", p.Title, err)
					}
					check("panel "+p.Title, e)
				}
			}
			if matchers == 0 {
				t.Error("no alert or panel selects a job")
			}
		})
	}
}

// TestChartAlertTextNamesTheirLabels: what an alert's summary and
// description take from its labels ({{ $labels.X }}) is a label its
// series has: one its aggregation keeps, or for a series not aggregated
// one the ServiceMonitor's target carries; and none names a namespace,
// which is the release's. (Before, ZtdnsResolverDown told to look in
// kube-system for pods labelled app.kubernetes.io/name=ztdns, neither of
// which the chart fixes.)
func TestChartAlertTextNamesTheirLabels(t *testing.T) {
	t.Parallel()
	c := renderChart(t, "metrics.prometheusRule.enabled=true")
	exprs := renderedAlerts(t, c)
	// What the Prometheus Operator puts on a target of a ServiceMonitor,
	// and the node its relabeling adds.
	targetLabels := append(slices.Clone(testenv.OperatorTargetLabels), "node")
	ref := regexp.MustCompile(`\$labels\.(\w+)`)
	for name, r := range alertRules(t, c) {
		var kept []string
		aggregated := false
		parser.Inspect(exprs[name], func(n parser.Node, _ []parser.Node) error {
			if a, ok := n.(*parser.AggregateExpr); ok {
				aggregated = true
				kept = append(kept, a.Grouping...)
			}
			return nil
		})
		if !aggregated {
			kept = targetLabels
		}
		annotations, _ := r["annotations"].(map[string]any)
		for key, text := range annotations {
			text, _ := text.(string)
			for _, m := range ref.FindAllStringSubmatch(text, -1) {
				if !slices.Contains(kept, m[1]) {
					t.Errorf("%s's %s names $labels.%s, which its series lack (they have %v)", name, key, m[1], kept)
				}
			}
			if strings.Contains(text, "kube-system") {
				t.Errorf("%s's %s names kube-system; the chart installs into the release's namespace: %q", name, key, text)
			}
		}
	}
}

// serviceMonitorJob is the job label the Prometheus Operator gives the
// series it scrapes through c's ServiceMonitor: the value of the
// Service's label that jobLabel names, else the Service's name.
func serviceMonitorJob(t *testing.T, c *chart) string {
	t.Helper()
	endpoints, _ := lookup(c.serviceMonitor, "spec", "endpoints").([]any)
	for _, ep := range endpoints {
		rs, _ := ep.(map[string]any)["relabelings"].([]any)
		for _, r := range rs {
			if r.(map[string]any)["targetLabel"] == "job" {
				t.Fatalf("the test does not read a relabeling of job: %v", r)
			}
		}
	}
	if l, _ := lookup(c.serviceMonitor, "spec", "jobLabel").(string); l != "" {
		if v, ok := c.service.Labels[l]; ok {
			return v
		}
	}
	return c.service.Name
}

// dashboardPanels reads the chart's dashboard, Grafana's variables
// replaced as with the node "All".
func dashboardPanels(t *testing.T) []testenv.DashboardPanel {
	t.Helper()
	panels := testenv.ReadDashboard(t, filepath.Join(repoRoot(t), dashboardFile)).Panels
	vars := strings.NewReplacer("$__rate_interval", "5m", "$node", ".*")
	for _, p := range panels {
		for i, expr := range p.Exprs {
			p.Exprs[i] = vars.Replace(expr)
		}
	}
	return panels
}

// TestChartProcessMetricsAreZtdns: every selector of a process_ or go_
// metric in the dashboard and the alerts is filtered to the ztdns job.
// Every Go program Prometheus scrapes exports them; with the node "All"
// (.*) the dashboard's memory and CPU panels plotted them all. (Before,
// only ZtdnsMemoryNearLimit selected job="ztdns".)
func TestChartProcessMetricsAreZtdns(t *testing.T) {
	t.Parallel()
	check := func(where string, e parser.Expr) {
		parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
			vs, ok := n.(*parser.VectorSelector)
			if !ok || !strings.HasPrefix(vs.Name, "process_") && !strings.HasPrefix(vs.Name, "go_") {
				return nil
			}
			if !slices.ContainsFunc(vs.LabelMatchers, func(m *labels.Matcher) bool {
				return m.Name == "job" && m.Type == labels.MatchEqual && m.Value == "ztdns"
			}) {
				t.Errorf("%s: %s selects every scraped process, not job=\"ztdns\"", where, vs)
			}
			return nil
		})
	}
	for name, e := range chartAlerts(t) {
		check("alert "+name, e)
	}
	panels := 0
	for _, p := range dashboardPanels(t) {
		for _, expr := range p.Exprs {
			e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
			if err != nil {
				t.Fatalf("panel %q: %v", p.Title, err)
			}
			check("panel "+p.Title, e)
		}
		if p.Title == "Memory" || p.Title == "CPU" {
			panels++
		}
	}
	if panels != 2 {
		t.Errorf("found %d of the dashboard's Memory and CPU panels, want 2", panels)
	}
}

// TestChartDashboardRatiosAreTheAlerts: the dashboard's SERVFAIL and
// upstream failure ratios are the ratios their alerts compare, per node,
// so a panel shows what sets the alert off: the node's SERVFAILs and
// overload, not a pod's throttled SERVFAILs (source "none"); a
// nameserver's failures, not replies ztdns refused for want of bytes
// (no_memory, source_limited). (Before, the panels counted those, as the
// alerts, the README and the metrics' help do not.)
func TestChartDashboardRatiosAreTheAlerts(t *testing.T) {
	t.Parallel()
	alerts := chartAlerts(t)
	byPanel := map[string]string{
		"SERVFAIL ratio":         "ZtdnsServfailRatioHigh",
		"Upstream failure ratio": "ZtdnsUpstreamFailureRatioHigh",
	}
	found := 0
	for _, p := range dashboardPanels(t) {
		name, ok := byPanel[p.Title]
		if !ok {
			continue
		}
		found++
		if len(p.Exprs) != 1 {
			t.Errorf("panel %q has %d queries, want 1", p.Title, len(p.Exprs))
			continue
		}
		panel, err := parser.NewParser(parser.Options{}).ParseExpr(p.Exprs[0])
		if err != nil {
			t.Fatalf("panel %q: %v", p.Title, err)
		}
		// The panel's node variable (here "All") and rate interval are the
		// dashboard's; the rest must be the alert's ratio.
		parser.Inspect(panel, func(n parser.Node, _ []parser.Node) error {
			switch n := n.(type) {
			case *parser.VectorSelector:
				n.LabelMatchers = slices.DeleteFunc(n.LabelMatchers, func(m *labels.Matcher) bool {
					return m.Name == "node" && m.Type == labels.MatchRegexp && m.Value == ".*"
				})
			case *parser.MatrixSelector:
				n.Range = 5 * time.Minute
			}
			return nil
		})
		ratio := alertRatio(alerts[name])
		if ratio == nil {
			t.Fatalf("alert %s: no ratio compared with a threshold in %v", name, alerts[name])
		}
		if panel.String() != ratio.String() {
			t.Errorf("panel %q plots\n %s\nbut %s compares\n %s", p.Title, panel, name, ratio)
		}
	}
	if found != len(byPanel) {
		t.Errorf("found %d of the panels %v", found, slices.Sorted(maps.Keys(byPanel)))
	}
}

// alertRatio is what an alert "ratio > threshold [and rate > minimum]"
// compares with its threshold.
func alertRatio(e parser.Expr) parser.Expr {
	b, ok := e.(*parser.BinaryExpr)
	if ok && b.Op == parser.LAND {
		b, ok = b.LHS.(*parser.BinaryExpr)
	}
	if !ok || b.Op != parser.GTR {
		return nil
	}
	if _, ok := b.RHS.(*parser.NumberLiteral); !ok {
		return nil
	}
	return b.LHS
}
