package main

import (
	"fmt"
	"strings"

	"golang.org/x/perf/benchmath"
)

// target is a figure ztdns is held to: the ratio of a column to the
// table's base (ratio), or every column's own value.
type target struct {
	bench, group, unit string
	// ratio names the column whose ratio to the base counts; empty: the
	// values themselves.
	ratio  string
	limit  float64
	atMost bool // the figure must be ≤ limit; else ≥
}

// targets are issue 12's (and, for the capture, issue 3's; for the
// metrics, issue 11's).
var targets = []target{
	{bench: "Resolver", group: "load=max", unit: "cpu-us/query", ratio: "ztdns", limit: 1, atMost: true},
	{bench: "Resolver", group: "load=max", unit: "qps", ratio: "ztdns", limit: 1},
	{bench: "Resolver", group: "load=10000", unit: "cpu-us/query", ratio: "ztdns", limit: 1, atMost: true},
	{bench: "Resolver", group: "load=1000", unit: "cpu-us/query", ratio: "ztdns", limit: 1, atMost: true},
	{bench: "Metrics", group: "load=max", unit: "qps", ratio: "metrics-on", limit: 0.97},
	{bench: "Capture", group: "load=max", unit: "qps", ratio: "redirect", limit: 0.95},
	{bench: "Footprint", group: "capture=off/table=20k", unit: "rss-MB", limit: 40, atMost: true},
	{bench: "Footprint", group: "capture=on/table=20k", unit: "rss-MB", limit: 40, atMost: true},
	{bench: "Footprint", group: "capture=off/table=empty", unit: "rss-MB", limit: 25, atMost: true},
	{bench: "Footprint", group: "capture=on/table=20k", unit: "idle-cpu-%", limit: 0.5, atMost: true},
	{bench: "Scale", unit: "committed-change-p90-ms", limit: 100, atMost: true},
}

// verdicts says whether t's row of unit meets its targets.
func verdicts(t *table, unit string, ratios map[pair]benchmath.Summary) string {
	var out []string
	for _, g := range targets {
		if g.bench != t.bench || g.group != t.group || g.unit != unit {
			continue
		}
		if g.ratio != "" {
			r, ok := ratios[pair{g.ratio, t.columns[len(t.columns)-1]}]
			if !ok {
				continue
			}
			v := g.String() + ": " + metOrNot(g.met(r.Center))
			if hasInterval(r) && r.Lo <= g.limit && g.limit <= r.Hi {
				v += " (the rounds' interval spans it)"
			}
			out = append(out, v)
			continue
		}
		var each []string
		for _, c := range t.columns {
			if ss := t.values[c][unit]; len(ss) > 0 {
				v := metOrNot(g.met(summary(floats(ss)).Center))
				if len(t.columns) > 1 {
					v = orValue(c) + " " + v
				}
				each = append(each, v)
			}
		}
		out = append(out, g.String()+": "+strings.Join(each, ", "))
	}
	return strings.Join(out, "; ")
}

func (g target) met(v float64) bool {
	if g.atMost {
		return v <= g.limit
	}
	return v >= g.limit
}

func (g target) String() string {
	op := "≥"
	if g.atMost {
		op = "≤"
	}
	return fmt.Sprintf("%s %g", op, g.limit)
}

func metOrNot(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
