package accesslog

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztdns/ztdns/internal/testenv"
)

// run runs l's writer until the test ends.
func run(t *testing.T, l *Log) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func newLog(t *testing.T, w io.Writer, format string, queue int) *Log {
	t.Helper()
	l, err := New(w, "test", format, queue)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestOffByDefaultAndSampling(t *testing.T) {
	l := newLog(t, io.Discard, "text", 0)
	for range 10 {
		if l.Sampled() {
			t.Fatal("a new log samples queries: it must be off until Set")
		}
	}
	if err := l.Set(true, 5); err != nil {
		t.Fatal(err)
	}
	var picked []int
	for i := 1; i <= 10; i++ {
		if l.Sampled() {
			picked = append(picked, i)
		}
	}
	if len(picked) != 2 || picked[0] != 5 || picked[1] != 10 {
		t.Errorf("one in 5 of 10 queries sampled %v, want [5 10]", picked)
	}
	// Turned on again without a rate, it keeps the one it had.
	l.Set(false, 0)
	if on, _ := l.Settings(); on || l.Sampled() {
		t.Error("still on after Set(false)")
	}
	l.Set(true, 0)
	if on, sample := l.Settings(); !on || sample != 5 {
		t.Errorf("Set(true, 0) after one in 5: on %v, one in %d; want on, one in 5", on, sample)
	}
	for _, bad := range []int{-1, MaxSample + 1} {
		if err := l.Set(true, bad); err == nil {
			t.Errorf("Set(true, %d) accepted", bad)
		}
	}
	var nilLog *Log
	if nilLog.Sampled() {
		t.Error("a nil log samples")
	}
}

func TestLineFields(t *testing.T) {
	var buf testenv.Log
	l := newLog(t, &buf, "json", 0)
	run(t, l)
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	l.Send(Entry{Time: at, Client: netip.MustParseAddrPort("10.0.0.5:40000"), Namespace: "shop", Pod: "web-0",
		Name: "db.shop.svc.cluster.local.", Type: 28, Proto: "tcp", Rcode: 3, Answered: "upstream",
		Upstream: netip.MustParseAddrPort("10.96.0.10:53"), Latency: 1500 * time.Microsecond})
	l.Send(Entry{Time: at, Client: netip.MustParseAddrPort("10.0.0.6:40000"), Name: "x.", Type: 4242, Proto: "udp", Rcode: 0, Answered: "table"})
	waitFor(t, func() bool { return strings.Count(buf.String(), "\n") == 2 })
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []map[string]any{
		{"time": "2026-01-02T03:04:05Z", "level": "INFO", "msg": "dns query", "client": "10.0.0.5:40000", "namespace": "shop", "pod": "web-0",
			"name": "db.shop.svc.cluster.local.", "type": "AAAA", "proto": "tcp", "rcode": "NXDOMAIN", "answered": "upstream",
			"upstream": "10.96.0.10:53", "latency": float64(1500000)},
		{"time": "2026-01-02T03:04:05Z", "level": "INFO", "msg": "dns query", "client": "10.0.0.6:40000", "namespace": "", "pod": "",
			"name": "x.", "type": "TYPE4242", "proto": "udp", "rcode": "NOERROR", "answered": "table", "latency": float64(0)},
	}
	for i, line := range lines {
		var got map[string]any
		if err := json.Unmarshal([]byte(line), &got); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if !equalJSON(got, want[i]) {
			t.Errorf("line %d: %v\nwant %v", i, got, want[i])
		}
	}
}

// TestWriterBehindDropsAndCounts: a destination that stops reading never
// holds up a query: entries past the queue are dropped and counted.
func TestWriterBehindDropsAndCounts(t *testing.T) {
	w := &blockingWriter{entered: make(chan struct{}, 1), release: make(chan struct{})}
	const queue = 4
	l := newLog(t, w, "text", queue)
	l.Set(true, 1)
	run(t, l)
	t.Cleanup(w.unblock)

	l.Send(Entry{Name: "first."})
	<-w.entered // the writer holds the first entry, stuck in Write
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for range 99 {
			l.Send(Entry{Name: "more."})
		}
	}()
	select {
	case <-sent:
	case <-time.After(10 * time.Second):
		t.Fatal("Send blocked behind a writer that does not write")
	}
	if got := l.Dropped(); got != 99-queue {
		t.Errorf("dropped %d entries, want %d (99 sent, %d queued)", got, 99-queue, queue)
	}
	w.unblock()
	waitFor(t, func() bool { return l.written.Load() == 1+queue })
	if got := w.lines(); got != 1+queue {
		t.Errorf("wrote %d lines, want %d", got, 1+queue)
	}
	want := `
# HELP ztdns_access_log_dropped_total Access log entries dropped because the writer was behind (the queries were answered all the same).
# TYPE ztdns_access_log_dropped_total counter
ztdns_access_log_dropped_total 95
# HELP ztdns_access_log_enabled 1 while the access log is on (ztdns log on|off), else 0.
# TYPE ztdns_access_log_enabled gauge
ztdns_access_log_enabled 1
# HELP ztdns_access_log_lines_total Lines written to the access log.
# TYPE ztdns_access_log_lines_total counter
ztdns_access_log_lines_total 5
`
	if err := testutil.CollectAndCompare(l.Collector(), strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

// blockingWriter blocks every Write until unblock.
type blockingWriter struct {
	entered  chan struct{}
	release  chan struct{}
	once     sync.Once
	mu       sync.Mutex
	newlines int
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	select {
	case w.entered <- struct{}{}:
	default:
	}
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	w.newlines += bytes.Count(p, []byte("\n"))
	return len(p), nil
}

func (w *blockingWriter) unblock() { w.once.Do(func() { close(w.release) }) }

func (w *blockingWriter) lines() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.newlines
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func equalJSON(a, b map[string]any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}
