package main

import (
	"fmt"
	"slices"
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
BenchmarkScale-2  1  450100 objects  250 change-p90-ms  80 committed-change-p90-ms
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
		{"committed-change-p90-ms", "≤ 100: met"},
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

// TestRoundsPairUp: with round=N parts, each round's values are divided
// by the same round's base, whatever order the rounds came in.
func TestRoundsPairUp(t *testing.T) {
	const in = `BenchmarkCapture/load=max/round=1/way=redirect-2  1  100 qps
BenchmarkCapture/load=max/round=1/way=direct-2    1  100 qps
BenchmarkCapture/load=max/round=2/way=direct-2    1  200 qps
BenchmarkCapture/load=max/round=2/way=redirect-2  1  190 qps
BenchmarkCapture/load=max/round=3/way=redirect-2  1  50 qps
BenchmarkCapture/load=max/round=3/way=direct-2    1  60 qps
`
	var rs results
	if err := rs.read(strings.NewReader(in), "rounds"); err != nil {
		t.Fatal(err)
	}
	if len(rs.tables) != 1 || rs.tables[0].name != "Capture/load=max" {
		t.Fatalf("tables %+v, want one, Capture/load=max", rs.tables)
	}
	tbl := rs.tables[0]
	// The rounds' ratios are 1, 0.95 and 0.83: their median is 0.95; the
	// ratio of the medians would be 1.
	if r, ok := ratio(tbl.values["redirect"]["qps"], tbl.values["direct"]["qps"]); !ok || r.Center != 0.95 {
		t.Errorf("ratio %v (%v), want 0.95", r.Center, ok)
	}
}

// TestRatioInterval: from 6 rounds a ratio shows its 95% interval, and a
// target inside it is said to be, met or not.
func TestRatioInterval(t *testing.T) {
	var in strings.Builder
	// CPU ratios 0.9, 1.04, 1.1, 1.2, 0.95, 1.16 (median 1.07, spanning
	// 1); qps ratios all 2.
	for i, r := range []float64{0.9, 1.04, 1.1, 1.2, 0.95, 1.16} {
		fmt.Fprintf(&in, "BenchmarkResolver/load=10000/round=%d/server=ztdns-2  1  %g cpu-us/query  20000 qps\n", i, 10*r)
		fmt.Fprintf(&in, "BenchmarkResolver/load=10000/round=%d/server=unbound-2  1  10 cpu-us/query  10000 qps\n", i)
	}
	var rs results
	if err := rs.read(strings.NewReader(in.String()), "six"); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	rs.print(&out)
	got := out.String()
	t.Log("\n" + got)
	for _, want := range []string{
		"1.07 [0.90–1.20]",
		"≤ 1: NOT met (the rounds' interval spans it)",
		"2.00 [2.00–2.00]",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in the report", want)
		}
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

// TestSubjectOverEachPeer: a Forward table divides ztdns by each of its
// peers, whatever order the columns came in, where another table divides
// every column by the last.
func TestSubjectOverEachPeer(t *testing.T) {
	const in = `BenchmarkForward/cache=hot/load=max/round=1/server=ztdns-2    1  0 ns/op  30000 qps  20 cpu-us/query
BenchmarkForward/cache=hot/load=max/round=1/server=unbound-2  1  0 ns/op  20000 qps  10 cpu-us/query
BenchmarkForward/cache=hot/load=max/round=1/server=coredns-2  1  0 ns/op  15000 qps  40 cpu-us/query
BenchmarkForward/cache=hot/load=max/round=2/server=coredns-2  1  0 ns/op  15000 qps  40 cpu-us/query
BenchmarkForward/cache=hot/load=max/round=2/server=unbound-2  1  0 ns/op  20000 qps  10 cpu-us/query
BenchmarkForward/cache=hot/load=max/round=2/server=ztdns-2    1  0 ns/op  30000 qps  20 cpu-us/query
BenchmarkResolver/load=max/server=ztdns-2          1  0 ns/op  100 qps
BenchmarkResolver/load=max/server=ztdns-beside-2   1  0 ns/op  50 qps
BenchmarkResolver/load=max/server=unbound-2        1  0 ns/op  200 qps
`
	var rs results
	if err := rs.read(strings.NewReader(in), "subject"); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	rs.print(&out)
	got := out.String()
	t.Log("\n" + got)
	for table, want := range map[string][]string{
		"Forward":  {"ztdns/unbound", "ztdns/coredns"},
		"Resolver": {"ztdns/unbound", "ztdns-beside/unbound", "≥ 1: NOT met"},
	} {
		var tbl string
		for _, part := range strings.Split(got, "\n\n") {
			if strings.HasPrefix(part, table) {
				tbl = part
			}
		}
		for _, w := range want {
			if !strings.Contains(tbl, w) {
				t.Errorf("%s: no %q in\n%s", table, w, tbl)
			}
		}
	}
	for _, tc := range []struct {
		p    pair
		unit string
		want float64
	}{
		{pair{"ztdns", "unbound"}, "cpu-us/query", 2},
		{pair{"ztdns", "coredns"}, "cpu-us/query", 0.5},
		{pair{"ztdns", "unbound"}, "qps", 1.5},
		{pair{"ztdns", "coredns"}, "qps", 2},
	} {
		tbl := rs.tables[0]
		if !slices.Contains(tbl.pairs(), tc.p) {
			t.Errorf("Forward's ratios %v have no %v", tbl.pairs(), tc.p)
		}
		if r, ok := ratio(tbl.values[tc.p.num][tc.unit], tbl.values[tc.p.den][tc.unit]); !ok || r.Center != tc.want {
			t.Errorf("%v %s: %v (%v), want %v", tc.p, tc.unit, r.Center, ok, tc.want)
		}
	}
}
