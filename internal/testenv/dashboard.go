package testenv

import (
	"encoding/json"
	"os"
	"testing"
)

// DashboardFile is the chart's Grafana dashboard, from the repository's
// root.
const DashboardFile = "deploy/charts/ztdns/files/dashboard.json"

// OperatorTargetLabels are the labels the Prometheus Operator puts on
// every target of a ServiceMonitor's endpoint (job from jobLabel, else the
// Service's name), before the endpoint's own relabelings: on every series
// scraped from it, in place of any the agent exports under those names.
var OperatorTargetLabels = []string{"job", "instance", "namespace", "service", "pod", "container", "endpoint"}

// A Dashboard is what tests check of a Grafana dashboard, its queries as
// written (Grafana's variables in them are for the caller to replace).
type Dashboard struct {
	Panels    []DashboardPanel
	Variables []DashboardVariable
}

// A DashboardPanel is a panel's title and the queries of its targets.
type DashboardPanel struct {
	Title string
	Exprs []string
}

// A DashboardVariable is a templating variable and its query ("" for one
// that has none, as a data source's).
type DashboardVariable struct {
	Name, Definition string
}

// ReadDashboard reads the dashboard at path.
func ReadDashboard(tb testing.TB, path string) Dashboard {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	var raw struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		tb.Fatalf("testenv: %s: %v", path, err)
	}
	var d Dashboard
	for _, p := range raw.Panels {
		dp := DashboardPanel{Title: p.Title}
		for _, tg := range p.Targets {
			dp.Exprs = append(dp.Exprs, tg.Expr)
		}
		d.Panels = append(d.Panels, dp)
	}
	for _, v := range raw.Templating.List {
		d.Variables = append(d.Variables, DashboardVariable{Name: v.Name, Definition: v.Definition})
	}
	return d
}
