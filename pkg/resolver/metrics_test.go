package resolver

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/accesslog"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// metricsServer is a limitsServer whose pods' nameserver answers from a
// zone (cacheable answers) and whose access log is on, writing JSON to log.
type metricsServer struct {
	*limitsServer
	upstream netip.AddrPort
	log      *testenv.Log
}

func startMetricsServer(t *testing.T, opts Options) *metricsServer {
	t.Helper()
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.ZoneOf(t, "who.example. 300 IN A 203.0.113.7")).Addr
	var buf *testenv.Log
	opts.AccessLog, buf = startAccessLog(t)
	return &metricsServer{limitsServer: startLimitsServer(t, opts, up, up), upstream: up, log: buf}
}

// startAccessLog returns an access log, on for every query, writing JSON
// to the returned buffer until the test ends.
func startAccessLog(t *testing.T) (*accesslog.Log, *testenv.Log) {
	t.Helper()
	return startAccessLogIn(t, "json")
}

// startAccessLogIn is startAccessLog writing format ("text" or "json").
func startAccessLogIn(t *testing.T, format string) (*accesslog.Log, *testenv.Log) {
	t.Helper()
	buf := &testenv.Log{}
	al, err := accesslog.New(buf, "test", format, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := al.Set(true, 1); err != nil {
		t.Fatal(err)
	}
	runAccessLog(t, al)
	return al, buf
}

// accessLine is an access log line in JSON, as a test reads it.
type accessLine struct {
	Msg, Client, Namespace, Pod, Name, Type, Proto, Rcode, Answered, Upstream, Result, Limit string
	Latency                                                                                  int64
}

// logLines returns the lines written to buf so far: none before the
// access log's writer, which runs on its own, wrote the first.
func logLines(buf *testenv.Log) []string {
	text := strings.TrimSpace(buf.String())
	if text == "" {
		return nil
	}
	return strings.Split(text, "\n")
}

// accessLines waits for n lines in buf and returns them.
func accessLines(t *testing.T, buf *testenv.Log, n int) []accessLine {
	t.Helper()
	var lines []accessLine
	testenv.Eventually(t, 30*time.Second, fmt.Sprintf("%d access log lines", n), func() bool {
		lines = nil
		for _, l := range logLines(buf) {
			var got accessLine
			if err := json.Unmarshal([]byte(l), &got); err != nil {
				t.Fatalf("access log line %q: %v", l, err)
			}
			lines = append(lines, got)
		}
		return len(lines) == n
	})
	return lines
}

// runAccessLog runs l's writer until the test ends.
func runAccessLog(t *testing.T, l *accesslog.Log) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// exchange sends m from the source address over proto and returns the
// reply, failing the test when none comes.
func (ms *metricsServer) exchange(t *testing.T, from netip.Addr, proto string, m *dns.Msg) *dns.Msg {
	t.Helper()
	r, err := ms.tryExchange(from, proto, m)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (ms *metricsServer) query(t *testing.T, from netip.Addr, proto, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	return ms.exchange(t, from, proto, m)
}

// TestRequestMetrics asks known questions over UDP and TCP, answered from
// the table, an upstream, the cache and with errors, and compares every
// series of the request counters and the duration histogram's counts.
func TestRequestMetrics(t *testing.T) {
	ms := startMetricsServer(t, Options{MaxNamespaceSeries: 1})
	// startLimitsServer asked tableName A over UDP from 127.0.0.1, no pod.
	for _, q := range []struct {
		from        netip.Addr
		proto, name string
		qtype       uint16
		rcode       int
	}{
		{victimIP, "udp", tableName, dns.TypeA, dns.RcodeSuccess},
		{victimIP, "tcp", tableName, dns.TypeAAAA, dns.RcodeSuccess}, // NODATA
		{victimIP, "udp", serviceName, dns.TypeMX, dns.RcodeSuccess}, // NODATA, a type with a label of its own
		{victimIP, "udp", serviceName, 999, dns.RcodeSuccess},        // a type without one
		{victimIP, "udp", aliasName, dns.TypeA, dns.RcodeSuccess},    // the slow path, from the table
		{victimIP, "udp", "who.example.", dns.TypeA, dns.RcodeSuccess},
		{victimIP, "tcp", "who.example.", dns.TypeA, dns.RcodeSuccess}, // the cache
		{victimIP, "udp", "nx.example.", dns.TypeA, dns.RcodeNameError},
		{flooderIP, "udp", tableName, dns.TypeA, dns.RcodeSuccess}, // a second namespace: past the cap of one
		{victimIP, "tcp", tableName, dns.TypeAXFR, dns.RcodeRefused},
	} {
		if r := ms.query(t, q.from, q.proto, q.name, q.qtype); r.Rcode != q.rcode {
			t.Fatalf("%s %s %s: %s, want %s", q.proto, q.name, dns.TypeToString[q.qtype], dns.RcodeToString[r.Rcode], dns.RcodeToString[q.rcode])
		}
	}
	// Two questions in one query: FORMERR, no type.
	twoQuestions := new(dns.Msg)
	twoQuestions.Question = []dns.Question{{Name: tableName, Qtype: dns.TypeA, Qclass: dns.ClassINET}, {Name: tableName, Qtype: dns.TypeA, Qclass: dns.ClassINET}}
	if r := ms.exchange(t, victimIP, "udp", twoQuestions); r.Rcode != dns.RcodeFormatError {
		t.Fatalf("two questions: %s, want FORMERR", dns.RcodeToString[r.Rcode])
	}
	// EDNS version 1: BADVERS.
	badVers := new(dns.Msg)
	badVers.SetQuestion(tableName, dns.TypeA)
	badVers.SetEdns0(1232, false)
	badVers.IsEdns0().SetVersion(1)
	if r := ms.exchange(t, victimIP, "udp", badVers); r.Rcode != dns.RcodeBadVers {
		t.Fatalf("EDNS version 1: %s, want BADVERS", dns.RcodeToString[r.Rcode])
	}

	want := map[string]float64{
		`ztdns_dns_requests_total{proto="tcp",rcode="NOERROR",source="cache",type="A"}`:     1,
		`ztdns_dns_requests_total{proto="tcp",rcode="NOERROR",source="table",type="AAAA"}`:  1,
		`ztdns_dns_requests_total{proto="tcp",rcode="REFUSED",source="none",type="AXFR"}`:   1,
		`ztdns_dns_requests_total{proto="udp",rcode="BADVERS",source="none",type="A"}`:      1,
		`ztdns_dns_requests_total{proto="udp",rcode="FORMERR",source="none",type="other"}`:  1,
		`ztdns_dns_requests_total{proto="udp",rcode="NOERROR",source="table",type="A"}`:     4,
		`ztdns_dns_requests_total{proto="udp",rcode="NOERROR",source="table",type="MX"}`:    1,
		`ztdns_dns_requests_total{proto="udp",rcode="NOERROR",source="table",type="other"}`: 1,
		`ztdns_dns_requests_total{proto="udp",rcode="NOERROR",source="upstream",type="A"}`:  1,
		`ztdns_dns_requests_total{proto="udp",rcode="NXDOMAIN",source="upstream",type="A"}`: 1,
		`ztdns_dns_namespace_requests_total{client_namespace="_other"}`:                     1,
		`ztdns_dns_namespace_requests_total{client_namespace="_unknown"}`:                   1,
		`ztdns_dns_namespace_requests_total{client_namespace="default"}`:                    11,
	}
	// The UDP loop adds a batch's counts after writing its answers: the
	// last ones may come a moment after the client has its answer.
	wantCounts := map[string]uint64{"table": 7, "cache": 1, "upstream": 2, "none": 3}
	var (
		got    map[string]float64
		counts map[string]uint64
		sums   map[string]float64
	)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		got = scrape(t, ms.Collector(), "ztdns_dns_requests_total", "ztdns_dns_namespace_requests_total")
		counts, sums = histogramCounts(t, ms.Collector(), "ztdns_dns_request_duration_seconds", "source")
		if maps.Equal(got, want) && maps.Equal(counts, wantCounts) {
			break
		}
	}
	if !maps.Equal(got, want) {
		t.Errorf("scraped\n%s\nwant\n%s", seriesText(got), seriesText(want))
	}
	if !maps.Equal(counts, wantCounts) {
		t.Errorf("request durations counted %v, want %v", counts, wantCounts)
	}
	for src, sum := range sums {
		if sum <= 0 {
			t.Errorf("request durations of %s sum to %v, want more than 0", src, sum)
		}
	}
}

// TestNoRequestMetrics: a server whose metrics nobody reads (the agent
// without --metrics) counts no query, over UDP and TCP, on the fast and the
// slow path, and still answers them and logs them.
func TestNoRequestMetrics(t *testing.T) {
	ms := startMetricsServer(t, Options{NoRequestMetrics: true})
	// startLimitsServer asked tableName A over UDP: the first line.
	ms.query(t, victimIP, "udp", tableName, dns.TypeA)
	ms.query(t, victimIP, "tcp", tableName, dns.TypeA)
	ms.query(t, victimIP, "udp", aliasName, dns.TypeA)
	if r := ms.query(t, victimIP, "udp", "nx.example.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Fatalf("nx.example.: %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	testenv.Eventually(t, 30*time.Second, "five access log lines", func() bool { return strings.Count(ms.log.String(), "\n") == 5 })
	if got := scrape(t, ms.Collector(), "ztdns_dns_requests_total", "ztdns_dns_namespace_requests_total"); len(got) > 0 {
		t.Errorf("scraped\n%s\nwant nothing", seriesText(got))
	}
	if counts, _ := histogramCounts(t, ms.Collector(), "ztdns_dns_request_duration_seconds", "source"); len(counts) > 0 {
		t.Errorf("request durations counted %v, want none", counts)
	}
}

// TestAccessLogLines: a line per query with who asked, what, and how it was
// answered: from the table (fast and slow path), an upstream and the cache.
func TestAccessLogLines(t *testing.T) {
	ms := startMetricsServer(t, Options{})
	ms.query(t, victimIP, "udp", tableName, dns.TypeA)
	ms.query(t, victimIP, "tcp", aliasName, dns.TypeA)
	ms.query(t, victimIP, "udp", "who.example.", dns.TypeA)
	ms.query(t, victimIP, "udp", "who.example.", dns.TypeA)
	badVers := new(dns.Msg)
	badVers.SetQuestion(tableName, dns.TypeA)
	badVers.SetEdns0(1232, false)
	badVers.IsEdns0().SetVersion(1)
	ms.exchange(t, victimIP, "udp", badVers)
	lines := accessLines(t, ms.log, 6)
	up := ms.upstream.String()
	want := []accessLine{
		{Name: tableName, Proto: "udp", Answered: "table"}, // startLimitsServer's, from no pod
		{Namespace: "default", Pod: "victim", Name: tableName, Proto: "udp", Answered: "table"},
		{Namespace: "default", Pod: "victim", Name: aliasName, Proto: "tcp", Answered: "table"},
		{Namespace: "default", Pod: "victim", Name: "who.example.", Proto: "udp", Answered: "upstream", Upstream: up},
		{Namespace: "default", Pod: "victim", Name: "who.example.", Proto: "udp", Answered: "cache", Upstream: up},
		{Namespace: "default", Pod: "victim", Name: tableName, Proto: "udp", Answered: "none", Rcode: "BADVERS"},
	}
	for i, got := range lines {
		client, err := netip.ParseAddrPort(got.Client)
		wantIP := victimIP
		if i == 0 {
			wantIP = netip.MustParseAddr("127.0.0.1")
		}
		if err != nil || client.Addr() != wantIP {
			t.Errorf("line %d: client %q, want %s", i, got.Client, wantIP)
		}
		if got.Latency <= 0 {
			t.Errorf("line %d: latency %d, want more than 0", i, got.Latency)
		}
		w := want[i]
		w.Msg, w.Type, w.Client, w.Latency = "dns query", "A", got.Client, got.Latency
		if w.Rcode == "" {
			w.Rcode = "NOERROR"
		}
		if got != w {
			t.Errorf("line %d: %+v\nwant %+v", i, got, w)
		}
	}
}

// TestAccessLogEscapesNames: a name whose labels hold a dot, a control or
// a non-ASCII octet is logged in presentation form as dig writes it, in
// either format, from the slow path (which forwards such names) and the
// fast one (a FORMERR): the single label "a.b" does not read as the two
// labels "a.b." do, two names that differ only in non-UTF-8 octets do
// not both read as U+FFFD, and no raw control octet reaches an
// operator's terminal, not even through `jq -r`.
func TestAccessLogEscapesNames(t *testing.T) {
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.ZoneOf(t, "who.example. 300 IN A 203.0.113.7")).Addr
	names := []string{`a\.b.`, `\255.`, `\254.`, `x\027[2k\010\\.`}
	nameField := regexp.MustCompile(` name=(\S+)`)
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			al, buf := startAccessLogIn(t, format)
			ls := startLimitsServer(t, Options{AccessLog: al}, up, up)
			for _, name := range names {
				if r := ls.ask(t, victimIP, "udp", name); r != nil && r.Question[0].Name != name {
					t.Errorf("asked %s, the reply's question is %s", name, r.Question[0].Name)
				}
			}
			twoOPT := new(dns.Msg)
			twoOPT.SetQuestion(`a\.b.`, dns.TypeA)
			twoOPT.SetEdns0(1232, false)
			twoOPT.Extra = append(twoOPT.Extra, twoOPT.Extra[0])
			if r, err := ls.tryExchange(victimIP, "udp", twoOPT); err != nil || r.Rcode != dns.RcodeFormatError {
				t.Errorf("a query with two OPT records: %v, %v; want FORMERR", r, err)
			}
			want := append([]string{tableName}, names...) // startLimitsServer's first
			want = append(want, `a\.b.`)
			var got []string
			testenv.Eventually(t, 30*time.Second, fmt.Sprintf("%d access log lines", len(want)), func() bool {
				got = nil
				for _, l := range logLines(buf) {
					if i := strings.IndexFunc(l, func(r rune) bool { return r < ' ' || r == 0x7f || r == utf8.RuneError }); i >= 0 {
						t.Fatalf("access log line %q holds %q", l, l[i:])
					}
					var name string
					if format == "json" {
						var line accessLine
						if err := json.Unmarshal([]byte(l), &line); err != nil {
							t.Fatalf("access log line %q: %v", l, err)
						}
						name = line.Name
					} else if m := nameField.FindStringSubmatch(l); m != nil {
						name = m[1]
					}
					got = append(got, name)
				}
				return len(got) >= len(want)
			})
			if !slices.Equal(got, want) {
				t.Errorf("access log names:\n%q\nwant\n%q\nlog:\n%s", got, want, buf.String())
			}
		})
	}
}

// TestAccessLogSaysWhyNoUpstreamAnswered: a SERVFAIL made for want of an
// upstream's answer names the upstream asked and how its exchange ended
// (refused, or no answer within the forwarder's timeout); one made for a
// limit names the limit.
func TestAccessLogSaysWhyNoUpstreamAnswered(t *testing.T) {
	silent, dead := startSilentUpstream(t), testenv.DeadAddr(t)
	al, buf := startAccessLog(t)
	// The forwarder's timeout leaves the limited query ample time to
	// arrive while the silent one holds the victim's forward (before: 1 s),
	// within slowPathTimeout and the client's 5 s.
	ls := startLimitsServer(t, Options{AccessLog: al, Limits: quota.Limits{QPS: -1, Forwarding: 1}}, dead, silent.addr, forward.WithTimeout(3*time.Second))

	if r := ls.ask(t, flooderIP, "udp", "refused.example."); r == nil || r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("a query to a nameserver that refuses: %v, want SERVFAIL", r)
	}
	// The victim's nameserver never answers: its forward waits for the
	// forwarder's timeout, holding the victim's one forward meanwhile, so
	// that a second query is over the victim's bound.
	m := new(dns.Msg)
	m.SetQuestion("silent.example.", dns.TypeA)
	timedOut := make(chan *dns.Msg, 1)
	go func() {
		r, _ := ls.tryExchange(victimIP, "udp", m)
		timedOut <- r
	}()
	testenv.Eventually(t, 30*time.Second, "the silent nameserver got the victim's query", func() bool { return silent.received.Load() == 1 })
	if r := ls.ask(t, victimIP, "udp", "limited.example."); r == nil || r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("a query over the pod's bound: %v, want SERVFAIL", r)
	}
	if r := <-timedOut; r == nil || r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("a query to a nameserver that never answers: %v, want SERVFAIL", r)
	}

	// Each line by its name: the order they were written in is not the
	// point (the first is startLimitsServer's table answer).
	got := map[string]accessLine{}
	for _, l := range accessLines(t, buf, 4) {
		got[l.Name] = l
	}
	for _, w := range []accessLine{
		{Namespace: "flood", Pod: "flooder", Name: "refused.example.", Answered: "upstream", Upstream: dead.String(), Result: "refused"},
		{Namespace: "default", Pod: "victim", Name: "limited.example.", Answered: "none", Limit: "pod"},
		{Namespace: "default", Pod: "victim", Name: "silent.example.", Answered: "upstream", Upstream: silent.addr.String(), Result: "timeout"},
	} {
		g, ok := got[w.Name]
		if !ok {
			t.Errorf("no line for %s", w.Name)
			continue
		}
		w.Msg, w.Client, w.Type, w.Proto, w.Rcode, w.Latency = "dns query", g.Client, "A", "udp", "SERVFAIL", g.Latency
		if g != w {
			t.Errorf("%s: %+v\nwant %+v", w.Name, g, w)
		}
	}
}

// histogramCounts gathers the histogram name from c: its sample count and
// sum by the value of label.
func histogramCounts(t *testing.T, c prometheus.Collector, name, label string) (map[string]uint64, map[string]float64) {
	t.Helper()
	counts, sums := map[string]uint64{}, map[string]float64{}
	for _, mf := range gather(t, c) {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			v := labelValue(m, label)
			counts[v], sums[v] = m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
		}
	}
	return counts, sums
}

// gather collects c through a registry that checks what it collects.
func gather(t *testing.T, c prometheus.Collector) []*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

func labelValue(m *dto.Metric, name string) string {
	i := slices.IndexFunc(m.Label, func(l *dto.LabelPair) bool { return l.GetName() == name })
	if i < 0 {
		return ""
	}
	return m.Label[i].GetValue()
}

// scrape gathers the counters and gauges named from c: their values by
// series, spelled name{label="value",...} with the labels sorted.
func scrape(t *testing.T, c prometheus.Collector, names ...string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, mf := range gather(t, c) {
		if !slices.Contains(names, mf.GetName()) {
			continue
		}
		for _, m := range mf.Metric {
			var labels []string
			for _, l := range m.Label {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			key := mf.GetName() + "{" + strings.Join(labels, ",") + "}"
			out[key] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return out
}

// The forwarder's cache hits and misses, as addForwardCache keys them.
const (
	cacheHitsSeries   = "ztdns_forward_cache_hits_total{}"
	cacheMissesSeries = "ztdns_forward_cache_misses_total{}"
)

// addForwardCache adds the forwarder's cache hits and misses
// (cacheHitsSeries, cacheMissesSeries) to out, another scrape's series,
// and returns it.
func addForwardCache(t *testing.T, out map[string]float64) map[string]float64 {
	t.Helper()
	for _, c := range forward.Collectors() {
		maps.Copy(out, scrape(t, c, "ztdns_forward_cache_hits_total", "ztdns_forward_cache_misses_total"))
	}
	return out
}

func seriesText(series map[string]float64) string {
	var lines []string
	for k, v := range series {
		lines = append(lines, fmt.Sprintf("  %s %v", k, v))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// TestRcodeLabels: the rcode label names what a client got: BADVERS is
// rcode 16, and YXDOMAIN (6), which an upstream may send, is "other".
func TestRcodeLabels(t *testing.T) {
	label := func(rcode int) string {
		cell := requestCell(dns.TypeA, rcode, false, sourceUpstream)
		return rcodeLabels[cell/(2*nSources)%nRcodes]
	}
	for rcode, want := range map[int]string{
		dns.RcodeSuccess: "NOERROR", dns.RcodeNameError: "NXDOMAIN", dns.RcodeRefused: "REFUSED",
		dns.RcodeBadVers: "BADVERS", dns.RcodeYXDomain: "other", dns.RcodeNotZone: "other", 4095: "other", -1: "other",
	} {
		if got := label(rcode); got != want {
			t.Errorf("rcode %d: label %q, want %q", rcode, got, want)
		}
	}
}
