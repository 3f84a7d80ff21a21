// Command report prints `go test -bench` results of test/bench as
// side-by-side tables with ratios and the targets they are held to.
//
// The last part of a benchmark's name is its column (server=ztdns,
// server=unbound; way=redirect, way=direct), the rest its table
// (Resolver/load=max); the last column is the base the others are divided
// by, except in a benchmark with a subject (Forward: ztdns), whose column
// is divided by each of the others. Every metric is a row. With several rounds (a round=N part, or
// -count), a cell is the median with its 95% confidence interval, as
// benchstat computes it (golang.org/x/perf/benchmath), and a ratio is the
// median of the ratios of the rounds: a server is compared with its peer in
// the same round (with -count, the Nth run of one with the Nth of the
// other).
//
// Usage: go run ./bench/report [FILE...]   (standard input without FILE)
package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"golang.org/x/perf/benchfmt"
	"golang.org/x/perf/benchmath"
)

func main() {
	var inputs []io.Reader
	var names []string
	for _, path := range os.Args[1:] {
		f, err := os.Open(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "report:", err)
			os.Exit(1)
		}
		defer f.Close()
		inputs, names = append(inputs, f), append(names, path)
	}
	if len(inputs) == 0 {
		inputs, names = []io.Reader{os.Stdin}, []string{"<stdin>"}
	}
	var rs results
	for i, in := range inputs {
		if err := rs.read(in, names[i]); err != nil {
			fmt.Fprintln(os.Stderr, "report:", err)
			os.Exit(1)
		}
	}
	if len(rs.tables) == 0 {
		fmt.Fprintln(os.Stderr, "report: no benchmark results")
		os.Exit(1)
	}
	rs.print(os.Stdout)
}

// results are the benchmark results, by table, in the order they came.
type results struct {
	tables []*table
}

// table is the results that share a name but for the last part.
type table struct {
	name    string // Resolver/load=max
	bench   string // Resolver
	group   string // load=max
	key     string // the column's key: server
	columns []string
	units   []string
	values  map[string]map[string][]sample // column → unit → one a round
}

// sample is one round's value.
type sample struct {
	round string // the round=N part; empty with -count
	v     float64
}

// floats returns the values of samples.
func floats(ss []sample) []float64 {
	out := make([]float64, len(ss))
	for i, s := range ss {
		out[i] = s.v
	}
	return out
}

func (rs *results) read(in io.Reader, name string) error {
	r := benchfmt.NewReader(in, name)
	for r.Scan() {
		res, ok := r.Result().(*benchfmt.Result)
		if !ok {
			continue // a syntax error or unit metadata: not ours to judge
		}
		bench, parts, round := splitName(res.Name)
		group, key, column := strings.Join(parts[:max(len(parts)-1, 0)], "/"), "", ""
		if len(parts) > 0 {
			key, column, _ = strings.Cut(parts[len(parts)-1], "=")
			if column == "" { // a positional part
				key, column = "", key
			}
		}
		t := rs.table(bench, group, key)
		if !slices.Contains(t.columns, column) {
			t.columns = append(t.columns, column)
			t.values[column] = map[string][]sample{}
		}
		for _, v := range res.Values {
			unit, val := v.Unit, v.Value
			if v.OrigUnit != "" {
				unit, val = v.OrigUnit, v.OrigValue
			}
			if unit == "ns/op" {
				continue // an iteration is a whole measurement: its wall time says nothing
			}
			if !slices.Contains(t.units, unit) {
				t.units = append(t.units, unit)
			}
			t.values[column][unit] = append(t.values[column][unit], sample{round, val})
		}
	}
	return r.Err()
}

// splitName returns a result's name without "Benchmark" and GOMAXPROCS,
// its parts after the first but the round, and the round.
func splitName(n benchfmt.Name) (string, []string, string) {
	base, parts := n.Parts()
	var out []string
	round := ""
	for _, p := range parts {
		if p[0] != '/' {
			continue
		}
		if r, ok := strings.CutPrefix(string(p[1:]), "round="); ok {
			round = r
			continue
		}
		out = append(out, string(p[1:]))
	}
	return strings.TrimPrefix(string(base), "Benchmark"), out, round
}

func (rs *results) table(bench, group, key string) *table {
	name := bench
	if group != "" {
		name += "/" + group
	}
	for _, t := range rs.tables {
		if t.name == name {
			return t
		}
	}
	t := &table{name: name, bench: bench, group: group, key: key, values: map[string]map[string][]sample{}}
	rs.tables = append(rs.tables, t)
	return t
}

func (rs *results) print(w io.Writer) {
	for i, t := range rs.tables {
		if i > 0 {
			fmt.Fprintln(w)
		}
		t.print(w)
	}
}

// unitOrder is the order of rows; other units follow in the order they
// came (go test prints a result's metrics sorted by name).
var unitOrder = []string{
	"qps", "cpu-us/query", "wakeups/query", "preempted/query",
	"client-cpu-us/query", "softirq-cpu-us/query", "all-cpu-us/query", "lost-%",
	"objects", "ready-s", "list-MB", "list-services-MB", "list-endpointslices-MB",
	"list-headless-endpointslices-MB", "list-serviceentries-MB", "watch-B/change", "watch-idle-B/s",
	"rss-MB", "peak-rss-MB", "empty-rss-MB", "rss-B/object", "heap-B/object",
	"anon-MB", "file-MB", "heap-MB", "idle-cpu-%", "idle-wakeups/s",
	"change-p50-ms", "change-p90-ms", "committed-change-p50-ms", "committed-change-p90-ms",
	"api-write-p50-ms", "peer-watch-p50-ms", "peer-watch-p90-ms", "agent-added-p50-ms", "agent-added-p90-ms",
}

// subjects are the benchmarks that compare one column with each of
// several peers: their tables show the subject's ratio to each.
var subjects = map[string]string{"Forward": "ztdns"}

// pair is one ratio column: num's values over den's.
type pair struct{ num, den string }

func (p pair) String() string { return p.num + "/" + p.den }

// pairs are t's ratio columns: each column over the last, or the
// subject's over each other.
func (t *table) pairs() []pair {
	var out []pair
	if subject := subjects[t.bench]; slices.Contains(t.columns, subject) {
		for _, c := range t.columns {
			if c != subject {
				out = append(out, pair{subject, c})
			}
		}
		return out
	}
	base := t.columns[len(t.columns)-1]
	for _, c := range t.columns[:len(t.columns)-1] {
		out = append(out, pair{c, base})
	}
	return out
}

func (t *table) print(w io.Writer) {
	slices.SortStableFunc(t.units, func(a, b string) int { return rank(a) - rank(b) })
	rounds := 0
	for _, c := range t.columns {
		for _, u := range t.units {
			rounds = max(rounds, len(t.values[c][u]))
		}
	}
	title := strings.ReplaceAll(t.name, "/", " ")
	if rounds > 1 {
		title += fmt.Sprintf(" (median of %d rounds, ±95%% confidence interval from 6; ratios: median of the rounds' ratios [its 95%% interval])", rounds)
	}
	fmt.Fprintln(w, title)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	pairs := t.pairs()
	header := []string{""}
	for _, c := range t.columns {
		header = append(header, orValue(c))
	}
	for _, p := range pairs {
		header = append(header, p.String())
	}
	header = append(header, "target")
	fmt.Fprintln(tw, strings.Join(header, "\t")+"\t")
	for _, u := range t.units {
		row := []string{u}
		for _, c := range t.columns {
			row = append(row, cell(t.values[c][u]))
		}
		ratios := map[pair]benchmath.Summary{}
		for _, p := range pairs {
			r, ok := ratio(t.values[p.num][u], t.values[p.den][u])
			if ok {
				ratios[p] = r
				row = append(row, ratioCell(r))
			} else {
				row = append(row, "")
			}
		}
		row = append(row, verdicts(t, u, ratios))
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	tw.Flush()
}

func rank(unit string) int {
	if i := slices.Index(unitOrder, unit); i >= 0 {
		return i
	}
	return len(unitOrder)
}

func orValue(c string) string {
	if c == "" {
		return "value"
	}
	return c
}

// summary is benchstat's summary of values: the median and its 95%
// confidence interval.
func summary(vs []float64) benchmath.Summary {
	return benchmath.AssumeNothing.Summary(benchmath.NewSample(vs, &benchmath.DefaultThresholds), 0.95)
}

// cell is one value, or the summary of several rounds.
func cell(ss []sample) string {
	switch len(ss) {
	case 0:
		return ""
	case 1:
		return number(ss[0].v)
	}
	s := summary(floats(ss))
	if hasInterval(s) { // fewer than 6 rounds have no 95% interval
		return number(s.Center) + " ±" + s.PctRangeString()
	}
	return number(s.Center)
}

// ratio is a/b: the median of the ratios of a's and b's values in the same
// round (by round=N, else in order), with its 95% confidence interval from
// 6 rounds; or, when the rounds do not match, the ratio of the medians,
// with none.
func ratio(a, b []sample) (benchmath.Summary, bool) {
	if len(a) == 0 || len(b) == 0 {
		return benchmath.Summary{}, false
	}
	var rs []float64
	if len(a) == len(b) {
		for i := range a {
			if a[i].round != b[i].round {
				rs = nil
				break
			}
			if b[i].v != 0 {
				rs = append(rs, a[i].v/b[i].v)
			}
		}
	}
	if len(rs) == 0 {
		if m := summary(floats(b)).Center; m != 0 {
			r := summary(floats(a)).Center / m
			return benchmath.Summary{Center: r, Lo: math.Inf(-1), Hi: math.Inf(1)}, true
		}
		return benchmath.Summary{}, false
	}
	return summary(rs), true
}

// ratioCell is a ratio, with the interval its rounds' ratios give when
// there are enough of them: at fixed rates the rounds spread by more than
// the differences measured, and a reader should see it.
func ratioCell(r benchmath.Summary) string {
	if hasInterval(r) {
		return fmt.Sprintf("%.2f [%.2f–%.2f]", r.Center, r.Lo, r.Hi)
	}
	return fmt.Sprintf("%.2f", r.Center)
}

func hasInterval(r benchmath.Summary) bool {
	return !math.IsInf(r.Lo, 0) && !math.IsInf(r.Hi, 0)
}

// number prints a value with about three significant digits, and
// thousands separated.
func number(v float64) string {
	a := v
	if a < 0 {
		a = -a
	}
	switch {
	case a >= 1000:
		s := fmt.Sprintf("%.0f", v)
		neg := strings.HasPrefix(s, "-")
		s = strings.TrimPrefix(s, "-")
		var b strings.Builder
		for i, c := range s {
			if i > 0 && (len(s)-i)%3 == 0 {
				b.WriteByte(',')
			}
			b.WriteRune(c)
		}
		if neg {
			return "-" + b.String()
		}
		return b.String()
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1 || a == 0:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3g", v)
}
