//go:build linux

package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The dashboard and the alerts, in the chart so that its templates can
// read them (test/e2e checks that their expressions parse and name only
// metrics a running agent exports).
const (
	dashboardFile = chartDir + "/files/dashboard.json"
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

	if got := lookup(c.serviceMonitor, "spec", "jobLabel"); got != "app.kubernetes.io/name" || c.service.Labels["app.kubernetes.io/name"] != "ztdns" {
		t.Errorf("ServiceMonitor jobLabel %v, Service labels %v: the job would not be \"ztdns\", which the rules select", got, c.service.Labels)
	}
}
