package agent

import (
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/source/configdir"
	"github.com/ztdns/ztdns/pkg/source/kube"
)

// Where the scrapes the project sets up are written.
const (
	serviceMonitorTemplate = "../../deploy/charts/ztdns/templates/servicemonitor.yaml"
	deployREADME           = "../../deploy/README.md"
)

// TestNoMetricLabelIsATargetLabel: no label of a ztdns metric (either
// source's) is one the scrapes the chart and deploy/README.md set up put
// on the target. Prometheus keeps the target's label and renames the
// agent's to exported_<name> (honor_labels false, the default), so a query
// by the metric's label reads the target's. (Before,
// ztdns_dns_namespace_requests_total's namespace, the asking pod's, became
// exported_namespace, and the dashboard's top-10 namespaces, `sum by
// (namespace)`, drew one series: the agent's own namespace.)
func TestNoMetricLabelIsATargetLabel(t *testing.T) {
	registered := registeredMetrics(t, kube.New(&rest.Config{Host: "https://203.0.113.1"})) // never run
	maps.Copy(registered, registeredMetrics(t, configdir.New(t.TempDir())))
	scrapes := map[string][]string{
		"the chart's ServiceMonitor":                            serviceMonitorTargetLabels(t),
		"deploy/README.md's scrape config (kubernetes_sd pods)": readmeScrapeTargetLabels(t),
	}
	for where, target := range scrapes {
		if !slices.Contains(target, "namespace") || !slices.Contains(target, "node") {
			t.Fatalf("read %v as %s's target labels: no namespace or node", target, where)
		}
		for _, name := range slices.Sorted(maps.Keys(registered)) {
			for _, l := range registered[name] {
				if slices.Contains(target, l) {
					t.Errorf("%s's label %s is a target label of %s (%v): Prometheus stores the metric's as exported_%s", name, l, where, target, l)
				}
			}
		}
	}
}

// serviceMonitorTargetLabels are the labels a target of the chart's
// ServiceMonitor carries: the Prometheus Operator's and those its
// relabelings set. The template is read as YAML with its template actions
// taken out.
func serviceMonitorTargetLabels(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(serviceMonitorTemplate)
	if err != nil {
		t.Fatal(err)
	}
	text := regexp.MustCompile(`\{\{.*?\}\}`).ReplaceAllString(string(b), "")
	var objects []map[string]any
	for _, doc := range strings.Split(text, "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("%s without its template actions: %v\n%s", serviceMonitorTemplate, err, doc)
		}
		objects = append(objects, obj)
	}
	var sm struct {
		Spec struct {
			TargetLabels    []string `json:"targetLabels"`
			PodTargetLabels []string `json:"podTargetLabels"`
			Endpoints       []struct {
				Relabelings []struct {
					TargetLabel string `json:"targetLabel"`
				} `json:"relabelings"`
			} `json:"endpoints"`
		} `json:"spec"`
	}
	found := false
	for _, obj := range objects {
		if obj["kind"] != "ServiceMonitor" {
			continue
		}
		found = true
		b, _ := yaml.Marshal(obj)
		if err := yaml.Unmarshal(b, &sm); err != nil {
			t.Fatal(err)
		}
	}
	if !found || len(sm.Spec.Endpoints) == 0 {
		t.Fatalf("%s holds no ServiceMonitor with endpoints", serviceMonitorTemplate)
	}
	labels := slices.Clone(testenv.OperatorTargetLabels)
	// targetLabels and podTargetLabels copy the Service's and the pod's
	// labels of those names.
	labels = append(labels, sm.Spec.TargetLabels...)
	labels = append(labels, sm.Spec.PodTargetLabels...)
	for _, ep := range sm.Spec.Endpoints {
		for _, r := range ep.Relabelings {
			labels = append(labels, r.TargetLabel)
		}
	}
	return visible(labels)
}

// readmeScrapeTargetLabels are the labels a target of deploy/README.md's
// scrape config carries: job and instance, which Prometheus sets, and
// those its relabel_configs set.
func readmeScrapeTargetLabels(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(deployREADME)
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n### Metrics without the Prometheus Operator\n")
	if !ok {
		t.Fatalf("%s has no section Metrics without the Prometheus Operator", deployREADME)
	}
	_, block, ok := strings.Cut(section, "\n```yaml\n")
	if ok {
		block, _, ok = strings.Cut(block, "\n```")
	}
	if !ok {
		t.Fatalf("%s, Metrics without the Prometheus Operator, has no yaml block", deployREADME)
	}
	var cfg struct {
		ScrapeConfigs []struct {
			JobName        string `json:"job_name"`
			RelabelConfigs []struct {
				TargetLabel string `json:"target_label"`
				Action      string `json:"action"`
			} `json:"relabel_configs"`
		} `json:"scrape_configs"`
	}
	if err := yaml.Unmarshal([]byte(block), &cfg); err != nil {
		t.Fatalf("%s's scrape config: %v", deployREADME, err)
	}
	if len(cfg.ScrapeConfigs) == 0 {
		t.Fatalf("%s's scrape config has no scrape_configs", deployREADME)
	}
	labels := []string{"job", "instance"}
	for _, sc := range cfg.ScrapeConfigs {
		for _, r := range sc.RelabelConfigs {
			switch r.Action {
			case "", "replace", "hashmod", "lowercase", "uppercase":
				labels = append(labels, r.TargetLabel)
			case "keep", "drop", "keepequal", "dropequal", "labeldrop", "labelkeep":
			default:
				t.Fatalf("%s's scrape config: the test does not read relabel action %q", deployREADME, r.Action)
			}
		}
	}
	return visible(labels)
}

// visible sorts labels and drops duplicates and those Prometheus removes
// after relabeling (__address__, __meta_…).
func visible(labels []string) []string {
	labels = slices.DeleteFunc(labels, func(l string) bool { return l == "" || strings.HasPrefix(l, "__") })
	slices.Sort(labels)
	return slices.Compact(labels)
}
