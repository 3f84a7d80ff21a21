package resolver

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// tcpCloseCounts scrapes ztdns_resolver_tcp_closed_total and
// ztdns_resolver_tcp_unsent_replies_total.
func tcpCloseCounts(t *testing.T) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, c := range Collectors() {
		for k, v := range scrape(t, c, "ztdns_resolver_tcp_closed_total", "ztdns_resolver_tcp_unsent_replies_total") {
			out[k] = v
		}
	}
	return out
}

// countsSince is now's counts minus before's, those that did not change
// left out.
func countsSince(before, now map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range now {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// TestUnsentRepliesCounted: a pod pipelines forwarded queries (to a local
// upstream, 8 KB answers) on one connection and reads nothing. Its replies fill what
// the kernel takes for it, then wait; 2 s after one was ready the
// connection is closed. The close is counted once, as write_timeout, and
// the replies counted answered (forwarded) that were never written are
// counted unsent, for the same reason; a line is logged. Before: the
// replies counted as answered and nothing else, ztdns_resolver_tcp_rejected_total
// and the dropped queries unchanged, and nothing logged: nothing said the
// client got none of them.
func TestUnsentRepliesCounted(t *testing.T) {
	const answer = 8000
	log := &testenv.Log{}
	ls, _ := bigAnswerWith(t, answer, Options{Logger: slog.New(slog.NewTextHandler(log, nil))})
	testenv.Eventually(t, 30*time.Second, "the first answer's connection closed", func() bool { return ls.tcpOpen.Used() == 0 })
	before := tcpCloseCounts(t)
	forwarded := testutil.ToFloat64(metricQueries.forwarded)

	c := slowTCPClient(t, ls.addr)
	testenv.Eventually(t, 30*time.Second, "the connection served", func() bool { return ls.usage(flooderIP).TCPConns == 1 })
	pipeline(c, packQuery(t, "big.example.", dns.TypeTXT), 3000)
	testenv.Eventually(t, 60*time.Second, "the connection closed for a reply not written in time", func() bool {
		return ls.usage(flooderIP).TCPConns == 0
	})
	// Logged once what the close counted is: its counts are all in.
	testenv.Eventually(t, 30*time.Second, "the close logged", func() bool { return log.Contains("repliesDropped=") })
	got := countsSince(before, tcpCloseCounts(t))
	answered := testutil.ToFloat64(metricQueries.forwarded) - forwarded
	unsent := got[`ztdns_resolver_tcp_unsent_replies_total{reason="write_timeout"}`]
	t.Logf("%v replies counted answered; counted since: %v", answered, got)
	if n := got[`ztdns_resolver_tcp_closed_total{reason="write_timeout"}`]; n != 1 || len(got) != 2 || unsent == 0 {
		t.Errorf("counted: %v; want one connection closed, for write_timeout, and its unsent replies, for the same reason", got)
	}
	if unsent > answered {
		t.Errorf("%v replies unsent of %v answered", unsent, answered)
	}
	if !log.Contains("reason=write_timeout") {
		t.Errorf("no line logged for the connection closed with its replies unsent:\n%s", log)
	}
	// The line says what was counted unsent as the connection closed, and
	// what was still being answered, counted as it came.
	var dropped, answering float64
	if _, err := fmt.Sscanf(log.String()[strings.Index(log.String(), "repliesDropped="):], "repliesDropped=%v queriesAnswering=%v", &dropped, &answering); err != nil {
		t.Fatalf("the close line: %v\n%s", err, log)
	}
	if dropped == 0 || dropped > unsent || unsent > dropped+answering {
		t.Errorf("logged %v replies dropped and %v queries answering; %v counted unsent: want the dropped among them, and no more than both", dropped, answering, unsent)
	}
}

// TestIdleTimeoutFromTheLastReply: a client waits on its connection for a
// forwarded reply that takes longer than the idle timeout, and sends its
// next query once it has it: the connection is still open (its idle
// timeout runs from the reply), and the query is answered. Before: the
// idle timeout ran from the query handed off; the reply was written, and
// the connection closed right after it.
func TestIdleTimeoutFromTheLastReply(t *testing.T) {
	// Long enough that the next query, written as the reply is read, comes
	// within it on a loaded machine; short enough that waiting out 1.5 of
	// it stays within the slow path's 5 s.
	const idle = 2 * time.Second
	g := gated{open: make(chan struct{}), r: liveAnswers()}
	upstream := dnstest.Start(t, "127.0.0.1:0", g)
	var opened sync.Once
	openGate := func() { opened.Do(func() { close(g.open) }) }
	t.Cleanup(openGate)
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1}, TCPIdleTimeout: idle}, upstream.Addr, liveUpstream(t))

	c := ls.dialFrom(t, flooderIP)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := dnstest.WriteTCP(c, packQuery(t, "who.example.", dns.TypeA)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the query forwarded", func() bool { return upstream.Queries("who.example.") == 1 })
	time.Sleep(idle + idle/2) // the reply takes longer than the idle timeout
	openGate()
	if r, err := readTCPReply(c); err != nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("the forwarded reply: %v %v", r, err)
	}
	if err := dnstest.WriteTCP(c, packQuery(t, tableName, dns.TypeA)); err != nil {
		t.Fatalf("the next query: %v", err)
	}
	if r, err := readTCPReply(c); err != nil || r.Rcode != dns.RcodeSuccess {
		t.Errorf("the next query, sent as the forwarded reply came: %v %v, want it answered", r, err)
	}
}

// TestDrainAnswersQueriesRead: a client writes two queries at once (A and
// AAAA, as a stub does); the first spends its pod's rate, and the reader
// pauses with the second read into its buffer. A Drain (the agent handing
// its sockets over) answers the second before the connection closes, as
// it promises for what was read: the successor never sees it. Before: the
// reader ended at the pause, and the second query got no answer.
func TestDrainAnswersQueriesRead(t *testing.T) {
	var clock atomic.Int64 // the test's: ns since 1970
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: 0.001, Burst: 1}, Now: now, TCPIdleTimeout: time.Minute},
		liveUpstream(t), liveUpstream(t))
	c := ls.dialFrom(t, flooderIP)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	a, aaaa := packQuery(t, tableName, dns.TypeA), packQuery(t, tableName, dns.TypeAAAA)
	binary.BigEndian.PutUint16(aaaa, 2) // its ID
	var both []byte
	for _, q := range [][]byte{a, aaaa} {
		both = binary.BigEndian.AppendUint16(both, uint16(len(q)))
		both = append(both, q...)
	}
	if _, err := c.Write(both); err != nil {
		t.Fatal(err)
	}
	if r, err := readTCPReply(c); err != nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("the first reply: %v %v", r, err)
	}
	// The reader pauses (its clock stands still: for the idle timeout, a
	// minute); once it is woken, the rate allows the second query. The
	// clock moves only once it is paused: moved before the reader computes
	// its pause, nothing would pause, and the drain would prove nothing.
	testenv.Eventually(t, 30*time.Second, "the reader paused for the rate", func() bool {
		tc := ls.connOf(c)
		if tc == nil {
			return false
		}
		tc.mu.Lock()
		defer tc.mu.Unlock()
		return tc.wake != nil
	})
	clock.Add(int64(time.Hour))
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		ls.Drain()
	}()
	r, err := readTCPReply(c)
	if err != nil {
		t.Fatalf("the second query, read before the drain: %v, want its reply", err)
	}
	if r.Id != 2 || r.Rcode != dns.RcodeSuccess {
		t.Errorf("the second reply: ID %d %s, want the AAAA's (2) answered", r.Id, dns.RcodeToString[r.Rcode])
	}
	select {
	case <-drained:
	case <-time.After(30 * time.Second):
		t.Fatal("Drain has not returned in 30 s")
	}
}
