// Package accesslog writes one structured line per DNS query the resolver
// answers, for an operator who needs to see who asked what and how it was
// answered (ztunnel#1509 asks Istio for the same).
//
// Its cost is bounded whatever the destination does: queries hand their
// entries to a bounded queue and never wait, one goroutine formats and
// writes them, and entries that find the queue full are dropped and
// counted. While it is off, a query pays one atomic load.
package accesslog

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultQueue is how many entries wait for the writer at most.
const DefaultQueue = 4096

// MaxSample bounds the sample rate (one query in MaxSample).
const MaxSample = 1_000_000

// Entry is one answered query.
type Entry struct {
	// Time is when the resolver read the query.
	Time   time.Time
	Client netip.AddrPort
	// Namespace and Pod name the pod behind Client; empty for an address
	// that is no known pod.
	Namespace, Pod string
	// Name is the question's name, lower case, with its trailing dot, in
	// presentation form: what a label holds that would read as something
	// else (a dot, a backslash, a space, a control or non-ASCII octet) is
	// escaped, as dnswire.Question.Name is.
	Name  string
	Type  uint16
	Proto string // "udp" or "tcp"
	Rcode int
	// Answered is where the answer came from: "table", "cache",
	// "upstream", or "none" for an error the resolver gave itself.
	Answered string
	// Upstream is the nameserver whose answer it was, or with Result the
	// one asked that gave none; not valid for table answers.
	Upstream netip.AddrPort
	// Result says why no upstream's answer came, for a SERVFAIL made in
	// its place: "timeout", "refused", "error", … (forward.Origin.Failure);
	// empty otherwise.
	Result string
	// Limit names the bound that refused the query, or a part of it (a
	// lookup it needed): "pod" (the asking pod's own, or its fair share of
	// the node's) or "node" (the node's); empty when none did.
	Limit string
	// Latency is from reading the query to its answer being ready.
	Latency time.Duration
}

// Log is an access log. Its zero value is not usable: make one with New.
type Log struct {
	handler     slog.Handler
	destination string
	entries     chan Entry

	// sample is the rate while on (one query in sample), nil while off: the
	// one load a query pays.
	sample atomic.Pointer[uint64]
	seq    atomic.Uint64 // queries seen while on, for sampling
	last   atomic.Uint64 // the rate of the last Set(true, …), kept while off

	written, dropped atomic.Uint64
}

// New returns a log, off, writing to w in format ("text" or "json", as the
// agent's own log) once on. destination names w for status output.
func New(w io.Writer, destination, format string, queue int) (*Log, error) {
	var h slog.Handler
	switch format {
	case "text", "":
		h = slog.NewTextHandler(w, nil)
	case "json":
		h = slog.NewJSONHandler(w, nil)
	default:
		return nil, fmt.Errorf("access log format %q: want text or json", format)
	}
	if queue <= 0 {
		queue = DefaultQueue
	}
	return &Log{handler: h, destination: destination, entries: make(chan Entry, queue)}, nil
}

// Destination is where the log writes ("stderr" or a file's path).
func (l *Log) Destination() string { return l.destination }

// Set turns the log on, writing one query in sample (0 keeps the rate it
// had, 1 at first), or off.
func (l *Log) Set(on bool, sample int) error {
	if sample < 0 || sample > MaxSample {
		return fmt.Errorf("sample %d: want 1 to %d (one query in N)", sample, MaxSample)
	}
	if !on {
		l.sample.Store(nil)
		return nil
	}
	n := uint64(sample)
	if n == 0 {
		n = max(l.last.Load(), 1)
	}
	l.last.Store(n)
	l.seq.Store(0)
	l.sample.Store(&n)
	return nil
}

// Settings reports whether the log is on and its sample rate.
func (l *Log) Settings() (on bool, sample int) {
	if n := l.sample.Load(); n != nil {
		return true, int(*n)
	}
	return false, 0
}

// Dropped is the number of entries dropped because the writer was behind.
func (l *Log) Dropped() uint64 { return l.dropped.Load() }

// Sampled reports whether the query being answered gets a line: false at
// once while the log is off (or l is nil), else true for one query in the
// sample rate.
func (l *Log) Sampled() bool {
	if l == nil {
		return false
	}
	n := l.sample.Load()
	if n == nil {
		return false
	}
	return *n <= 1 || l.seq.Add(1)%*n == 0
}

// Send queues e for the writer; it never waits. When the queue is full, e
// is dropped and counted.
func (l *Log) Send(e Entry) {
	select {
	case l.entries <- e:
	default:
		l.dropped.Add(1)
	}
}

// Run writes queued entries until ctx ends.
func (l *Log) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-l.entries:
			l.write(e)
		}
	}
}

func (l *Log) write(e Entry) {
	r := slog.NewRecord(e.Time, slog.LevelInfo, "dns query", 0)
	r.AddAttrs(
		slog.String("client", e.Client.String()),
		slog.String("namespace", e.Namespace),
		slog.String("pod", e.Pod),
		slog.String("name", e.Name),
		slog.String("type", typeString(e.Type)),
		slog.String("proto", e.Proto),
		slog.String("rcode", rcodeString(e.Rcode)),
		slog.String("answered", e.Answered),
	)
	if e.Upstream.IsValid() {
		r.AddAttrs(slog.String("upstream", e.Upstream.String()))
	}
	if e.Result != "" {
		r.AddAttrs(slog.String("result", e.Result))
	}
	if e.Limit != "" {
		r.AddAttrs(slog.String("limit", e.Limit))
	}
	r.AddAttrs(slog.Duration("latency", e.Latency))
	// A failed write has nowhere to be reported but here; it is not
	// counted as written.
	if l.handler.Handle(context.Background(), r) == nil {
		l.written.Add(1)
	}
}

func typeString(t uint16) string {
	if s, ok := dns.TypeToString[t]; ok {
		return s
	}
	return "TYPE" + strconv.Itoa(int(t))
}

func rcodeString(rc int) string {
	if rc == dns.RcodeBadVers {
		// 16 is BADSIG only in TSIG's error field; in a reply it is BADVERS
		// (RFC 6891), which miekg/dns's table does not say.
		return "BADVERS"
	}
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return "RCODE" + strconv.Itoa(rc)
}

var (
	writtenDesc = prometheus.NewDesc("ztdns_access_log_lines_total",
		"Lines written to the access log.", nil, nil)
	droppedDesc = prometheus.NewDesc("ztdns_access_log_dropped_total",
		"Access log entries dropped because the writer was behind (the queries were answered all the same).", nil, nil)
	enabledDesc = prometheus.NewDesc("ztdns_access_log_enabled",
		"1 while the access log is on (ztdns log on|off), else 0.", nil, nil)
)

// Collector is the log's metrics: lines written and dropped, and whether it
// is on.
func (l *Log) Collector() prometheus.Collector { return collector{l} }

type collector struct{ l *Log }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- writtenDesc
	ch <- droppedDesc
	ch <- enabledDesc
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(writtenDesc, prometheus.CounterValue, float64(c.l.written.Load()))
	ch <- prometheus.MustNewConstMetric(droppedDesc, prometheus.CounterValue, float64(c.l.dropped.Load()))
	var on float64
	if c.l.sample.Load() != nil {
		on = 1
	}
	ch <- prometheus.MustNewConstMetric(enabledDesc, prometheus.GaugeValue, on)
}
