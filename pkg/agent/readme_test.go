package agent

import (
	"encoding/json"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/rest"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/source"
	"github.com/ztdns/ztdns/pkg/source/configdir"
	"github.com/ztdns/ztdns/pkg/source/kube"
)

// TestREADMEListsEveryMetric: the README's metrics table names every
// metric the agent registers (the Kubernetes source's too), each with its
// labels, and none it does not register.
func TestREADMEListsEveryMetric(t *testing.T) {
	registered := registeredMetrics(t, kube.New(&rest.Config{Host: "https://203.0.113.1"})) // never run
	listed := readmeMetrics(t, metricsTable, registered)
	compareMetrics(t, registered, listed)
}

// TestREADMEListsEveryConfigDirMetric: the README's table of the metrics
// of a standalone agent (--config-dir) names every metric its source
// registers, with its labels, and none it does not.
func TestREADMEListsEveryConfigDirMetric(t *testing.T) {
	registered := registeredMetrics(t, configdir.New(t.TempDir()))
	for name := range registered {
		if !strings.HasPrefix(name, "ztdns_configdir_") {
			delete(registered, name)
		}
	}
	if len(registered) < 3 {
		t.Fatalf("the config-dir source registers only %v", registered)
	}
	compareMetrics(t, registered, readmeMetrics(t, configDirMetricsTable, registered))
}

// The headers of the README's metrics tables.
const (
	metricsTable          = "| metric | labels | counts |"
	configDirMetricsTable = "| metric (`--config-dir`) | labels | says |"
)

func compareMetrics(t *testing.T, registered, listed map[string][]string) {
	t.Helper()
	for name, labels := range registered {
		got, ok := listed[name]
		switch {
		case !ok:
			t.Errorf("the README's metrics table lacks %s (labels %v)", name, labels)
		case !slices.Equal(got, labels):
			t.Errorf("the README's metrics table gives %s the labels %v; it has %v", name, got, labels)
		}
	}
	for name := range listed {
		if _, ok := registered[name]; !ok {
			t.Errorf("the README's metrics table lists %s, which the agent does not register", name)
		}
	}
}

// registeredMetrics are the ztdns_ metrics an agent with the source
// registers, each with its labels (constant and variable), sorted.
func registeredMetrics(t *testing.T, src source.Source) map[string][]string {
	t.Helper()
	reg := prometheus.NewRegistry()
	a, err := newAgent(Config{
		Source:    src,
		Listen:    []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53")},
		Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")},
		Logger:    slog.New(slog.DiscardHandler),
		Registry:  reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.server.Close(); a.fwd.Close() })
	ch := make(chan *prometheus.Desc)
	go func() { reg.Describe(ch); close(ch) }()
	// Desc has no accessors; its String is
	// Desc{fqName: "…", help: "…", unit: "…", constLabels: {k="v",…}, variableLabels: {a,c(b),…}}.
	fqName := regexp.MustCompile(`^Desc\{fqName: "([^"]+)"`)
	constName := regexp.MustCompile(`(\w+)="`)
	out := map[string][]string{}
	for d := range ch {
		s := d.String()
		m := fqName.FindStringSubmatch(s)
		if m == nil {
			t.Fatalf("cannot read %s", s)
		}
		if !strings.HasPrefix(m[1], "ztdns_") {
			continue // the Go runtime's and the process's
		}
		c := strings.LastIndex(s, ", constLabels: {")
		v := strings.LastIndex(s, ", variableLabels: {")
		if c < 0 || v < c {
			t.Fatalf("cannot read %s", s)
		}
		var labels []string
		for _, lm := range constName.FindAllStringSubmatch(s[c:v], -1) {
			labels = append(labels, lm[1])
		}
		if vl := strings.TrimSuffix(s[v+len(", variableLabels: {"):], "}}"); vl != "" {
			for _, l := range strings.Split(vl, ",") {
				labels = append(labels, strings.TrimSuffix(strings.TrimPrefix(l, "c("), ")"))
			}
		}
		slices.Sort(labels)
		out[m[1]] = labels
	}
	if len(out) < 30 {
		t.Fatalf("read only %d metrics from the registry: %v", len(out), slices.Sorted(maps.Keys(out)))
	}
	return out
}

// readmeMetrics reads the README's metrics table that starts with header:
// each metric it names,
// with the labels it gives it (in braces after the name, or in the labels
// column), sorted. A name written `_suffix` continues the first full name
// of its cell: the registered metric that is one of that name's prefixes
// (ending before a "_") and the suffix.
func readmeMetrics(t *testing.T, header string, registered map[string][]string) map[string][]string {
	t.Helper()
	code := regexp.MustCompile("`([^`]*)`")
	named := regexp.MustCompile(`^(\w+)(?:\{([\w,]*)\})?$`)
	out := map[string][]string{}
	// | name | labels | counts | …
	for _, cells := range testenv.MarkdownTable(t, "../../README.md", header) {
		row := strings.Join(cells, " | ")
		if len(cells) < 3 {
			t.Fatalf("README metrics table row %q: fewer than 3 cells", row)
		}
		var rowLabels []string
		for _, m := range code.FindAllStringSubmatch(cells[1], -1) {
			rowLabels = append(rowLabels, m[1])
		}
		first := ""
		for _, m := range code.FindAllStringSubmatch(cells[0], -1) {
			nm := named.FindStringSubmatch(m[1])
			if nm == nil {
				t.Errorf("README metrics table row %q: %q is no metric name", row, m[1])
				continue
			}
			name, labels := nm[1], rowLabels
			if nm[2] != "" {
				labels = strings.Split(nm[2], ",")
			}
			if strings.HasPrefix(name, "_") {
				full := ""
				for i := len(first) - 1; i > 0 && full == ""; i-- {
					if _, ok := registered[first[:i]+name]; ok && first[i] == '_' {
						full = first[:i] + name
					}
				}
				if full == "" {
					t.Errorf("README metrics table row %q: %s continues %q into no registered metric", row, name, first)
					continue
				}
				name = full
			} else if first == "" {
				first = name
			}
			labels = slices.Clone(labels)
			slices.Sort(labels)
			out[name] = labels
		}
	}
	if len(out) < min(20, len(registered)) {
		t.Fatalf("read only %d metrics from the README's table: %v", len(out), out)
	}
	return out
}

// TestDashboardShowsEveryMetric: every metric of the README's metrics table
// is on a panel of the chart's dashboard, which the README says shows "all
// of the above". (Before, the stale
// table, CNI, control-socket and truncation metrics were on none.)
func TestDashboardShowsEveryMetric(t *testing.T) {
	registered := registeredMetrics(t, kube.New(&rest.Config{Host: "https://203.0.113.1"})) // never run
	listed := readmeMetrics(t, metricsTable, registered)
	dash := testenv.ReadDashboard(t, "../../"+testenv.DashboardFile)
	// A metric's name in PromQL: no label name starts with ztdns_. A
	// histogram is on the dashboard through its series.
	name := regexp.MustCompile(`\bztdns_[a-z0-9_]+`)
	onDashboard := map[string]bool{}
	for _, p := range dash.Panels {
		for _, expr := range p.Exprs {
			for _, n := range name.FindAllString(expr, -1) {
				onDashboard[n] = true
				for _, suffix := range []string{"_bucket", "_count", "_sum"} {
					if base, ok := strings.CutSuffix(n, suffix); ok {
						onDashboard[base] = true
					}
				}
			}
		}
	}
	for _, n := range slices.Sorted(maps.Keys(listed)) {
		if !onDashboard[n] {
			t.Errorf("the README's metrics table lists %s, which no panel of the dashboard shows", n)
		}
	}
}

// TestREADMEExplainsEveryCaptureEvent: the agent exports each of the
// capture programs' counters under an event of its own, and the README's
// Capture events list explains every event it exports, and no other.
// (Before, only bpf/ztdns.h's comments said what nameserver_failed,
// socket_storage_failed, skipped_no_resolver or skipped_slots_full mean,
// each a captured pod's query sent around ztdns.)
func TestREADMEExplainsEveryCaptureEvent(t *testing.T) {
	var n redirect.Counters
	fields := reflect.ValueOf(&n).Elem()
	for i := range fields.NumField() {
		fields.Field(i).SetUint(uint64(i + 1))
	}
	exported := captureEvents(n)
	byCounter := map[uint64]string{}
	for event, v := range exported {
		if other, ok := byCounter[v]; ok {
			t.Errorf("events %s and %s export the same counter", event, other)
		}
		byCounter[v] = event
	}
	for i := range fields.NumField() {
		if _, ok := byCounter[uint64(i+1)]; !ok {
			t.Errorf("the counter %s is exported under no event", fields.Type().Field(i).Name)
		}
	}

	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n**Capture events.**")
	if !ok {
		t.Fatal("the README has no Capture events paragraph (**Capture events.**)")
	}
	section, _, _ = strings.Cut(section, "\n\n**")
	item := regexp.MustCompile("(?m)^- `(\\w+)`: ")
	explained := map[string]bool{}
	for _, m := range item.FindAllStringSubmatch(section, -1) {
		explained[m[1]] = true
	}
	for _, event := range slices.Sorted(maps.Keys(exported)) {
		if !explained[event] {
			t.Errorf("the README's Capture events list does not explain %s", event)
		}
	}
	for _, event := range slices.Sorted(maps.Keys(explained)) {
		if _, ok := exported[event]; !ok {
			t.Errorf("the README's Capture events list explains %s, which the agent does not export", event)
		}
	}
}

// TestDashboardNamespacePanelCountsEveryNamespaceMetric: the dashboard's
// top-10 namespaces panel reads every metric the agent counts queries by
// the asking pod's namespace (client_namespace) with, so that a namespace
// whose queries are refused or dropped does not look small there for want
// of a series, and groups by that label, not by the target's namespace
// (the agent's own); and its description says what it leaves out: dropped
// queries, which no metric counts by namespace.
func TestDashboardNamespacePanelCountsEveryNamespaceMetric(t *testing.T) {
	const title = "Queries by namespace (top 10)"
	dash := testenv.ReadDashboard(t, "../../"+testenv.DashboardFile)
	i := slices.IndexFunc(dash.Panels, func(p testenv.DashboardPanel) bool { return p.Title == title })
	if i < 0 {
		t.Fatalf("the dashboard has no panel %q", title)
	}
	exprs := strings.Join(dash.Panels[i].Exprs, "\n")
	found := 0
	for name, labels := range registeredMetrics(t, kube.New(&rest.Config{Host: "https://203.0.113.1"})) {
		if !slices.Contains(labels, "client_namespace") {
			continue
		}
		found++
		if !strings.Contains(exprs, name) {
			t.Errorf("panel %q does not read %s, which counts queries by namespace", title, name)
		}
	}
	if found == 0 {
		t.Fatal("the agent registers no metric with a client_namespace label")
	}
	for _, expr := range dash.Panels[i].Exprs {
		if !strings.Contains(expr, "by (client_namespace)") {
			t.Errorf("panel %q does not sum by client_namespace: %s", title, expr)
		}
	}
	b, err := os.ReadFile("../../" + testenv.DashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Panels []struct{ Title, Description string } `json:"panels"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	for _, p := range raw.Panels {
		if p.Title == title && !strings.Contains(p.Description, "Queries dropped unanswered are not here") {
			t.Errorf("panel %q's description does not say that dropped queries are left out: %q", title, p.Description)
		}
	}
}
