package main

import (
	"strings"
	"testing"
)

// Two rounds of a comparison, as `go test -bench -count 2` prints them.
const twoRounds = `goos: linux
BenchmarkResolver/load=max/server=ztdns-2     1  0 ns/op  100000 qps  6.0 cpu-us/query
BenchmarkResolver/load=max/server=unbound-2   1  0 ns/op   80000 qps  5.0 cpu-us/query
BenchmarkResolver/load=max/server=ztdns-2     1  0 ns/op  120000 qps  9.0 cpu-us/query
BenchmarkResolver/load=max/server=unbound-2   1  0 ns/op  100000 qps  10.0 cpu-us/query
BenchmarkFootprint/capture=off/table=20k/mode=kube-2        1  71.7 rss-MB
BenchmarkFootprint/capture=off/table=20k/mode=standalone-2  1  38.0 rss-MB
BenchmarkScale-2  1  450100 objects  80 change-p90-ms
PASS
`

func TestTables(t *testing.T) {
	var rs results
	if err := rs.read(strings.NewReader(twoRounds), "twoRounds"); err != nil {
		t.Fatal(err)
	}
	if len(rs.tables) != 3 {
		t.Fatalf("%d tables, want Resolver/load=max, Footprint/capture=off/table=20k and Scale", len(rs.tables))
	}
	var out strings.Builder
	rs.print(&out)
	got := out.String()
	t.Log("\n" + got)
	rows := []struct{ row, want string }{
		{"Resolver", "(median of 2 rounds"},
		{"qps", "ztdns/unbound"}, // the header
		// The rounds' ratios are 1.25 and 1.2 for qps, 1.2 and 0.9 for CPU.
		{" qps ", "1.23"},
		{" qps ", "≥ 1: met"},
		{"cpu-us/query", "1.05"},
		{"cpu-us/query", "≤ 1: NOT met"},
		{"rss-MB", "≤ 40: kube NOT met, standalone met"},
		{"objects", "450,100"},
		{"change-p90-ms", "≤ 100: met"},
	}
	lines := strings.Split(got, "\n")
	for _, r := range rows {
		found := false
		for i, l := range lines {
			// The header is the line before the first row.
			if strings.Contains(l, r.row) && (strings.Contains(l, r.want) || i > 0 && strings.Contains(lines[i-1], r.want)) {
				found = true
			}
		}
		if !found {
			t.Errorf("no row %q with %q", r.row, r.want)
		}
	}
	if strings.Contains(got, "ns/op") {
		t.Error("the report shows ns/op, an iteration's wall time")
	}
}

func TestNumber(t *testing.T) {
	for v, want := range map[float64]string{
		139523: "139,523", -1234: "-1,234", 250: "250", 17.34: "17.3", 6.604: "6.60", 0: "0.00", 0.0213: "0.0213",
	} {
		if got := number(v); got != want {
			t.Errorf("number(%v) = %q, want %q", v, got, want)
		}
	}
}
