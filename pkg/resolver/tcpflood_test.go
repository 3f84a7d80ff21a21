package resolver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
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

// dialFrom opens a TCP connection to the server from the source address,
// closed when the test ends.
func (ls *limitsServer) dialFrom(t *testing.T, from netip.Addr) *net.TCPConn {
	t.Helper()
	c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: from.AsSlice()}}).Dial("tcp4", ls.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// connOf is the server's side of the client's connection c (nil: none).
func (ls *limitsServer) connOf(c net.Conn) *tcpConn {
	client := addrPortOf(c.LocalAddr())
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for tc := range ls.tcp {
		if tc.src.Addr().Unmap() == client.Addr().Unmap() && tc.src.Port() == client.Port() {
			return tc
		}
	}
	return nil
}

// TestTCPFloodsCostBoundedWork: what a pod sends over TCP is read no
// faster than it is answered. A stream of zeros (empty frames, none a
// query) has its connection closed at its first frame: one frame read,
// counted dropped, none charged beyond it (before: 1M empty frames read
// and dropped, the connection kept). A connection pipelining valid
// queries far over its pod's rate is read at the rate: it gets answers,
// its burst and then at the rate, and no REFUSED (before: answers and
// REFUSED in turn, the reader pausing only after a REFUSED; before that,
// a REFUSED for every query it sent, as fast as it sent them). The other
// pod is answered meanwhile. With the rate's clock held still, the same
// queries pipelined get their burst answered and nothing more: the rate
// bounds the answers, counted, not measured against the time they took.
func TestTCPFloodsCostBoundedWork(t *testing.T) {
	const qps, burst = 100, 10
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: qps, Burst: burst}, TCPIdleTimeout: time.Minute},
		liveUpstream(t), liveUpstream(t))

	dropped := testutil.ToFloat64(metricQueries.drop)
	zeros := ls.dialFrom(t, flooderIP)
	go zeros.Write(make([]byte, 2<<20)) // fails once the server closes
	zeros.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err := io.Copy(io.Discard, zeros)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a stream of zeros: the connection still open after 30 s")
	}
	if n != 0 {
		t.Errorf("a stream of zeros: %d octets of replies, want none", n)
	}
	if got := testutil.ToFloat64(metricQueries.drop) - dropped; got != 1 {
		t.Errorf("a stream of zeros: %v frames dropped, want 1 (the connection closed at the first)", got)
	}
	if u := ls.usage(flooderIP); u.RateLimited != 0 {
		t.Errorf("a stream of zeros: %d rate-limited, want 0 (one frame read)", u.RateLimited)
	}

	// Valid queries, pipelined as fast as the connection takes them, until
	// the burst and as many again at the rate are answered.
	q := packQuery(t, tableName, dns.TypeA)
	rcodes, sent := floodTCP(t, ls.dialFrom(t, flooderIP), q, burst+qps/2, ls.askVictim)
	testenv.Eventually(t, 30*time.Second, "the flooding connection closed", func() bool { return ls.tcpOpen.Used() == 0 })
	t.Logf("%d queries sent, replies by rcode %v, %d rate-limited", sent, rcodes, ls.usage(flooderIP).RateLimited)
	if len(rcodes) > 1 {
		t.Errorf("a flood over a rate of %d: replies by rcode %v, want all NOERROR", qps, rcodes)
	}
	if u := ls.usage(flooderIP); u.RateLimited != 0 {
		t.Errorf("a flood over a rate of %d: %d rate-limited, want none: the reader waits for the rate", qps, u.RateLimited)
	}

	// With the rate's clock held still, the same queries pipelined are
	// answered their burst and no more: every query read after it is
	// REFUSED. (The reader waits for the rate as ever, but the rate never
	// allows the next.) Exactly burst+refused are sent: the reader reads on
	// after each pause, so on an endless flood it would also refuse the
	// queries after the last reply the client reads, as many as the
	// client's close leaves it time for (one more on a loaded machine).
	var still atomic.Int64 // the test's clock: ns since 1970, never moved
	held := startLimitsServer(t, Options{Limits: quota.Limits{QPS: qps, Burst: burst}, TCPIdleTimeout: time.Minute,
		Now: func() time.Time { return time.Unix(0, still.Load()) }},
		liveUpstream(t), liveUpstream(t))
	const refused = 20
	queries := make([][]byte, burst+refused)
	for i := range queries {
		queries[i] = q
	}
	rcodes = map[int]int{}
	for _, r := range pipelineTCP(t, held.dialFrom(t, flooderIP), queries, len(queries)) {
		rcodes[r.Rcode]++
	}
	if rcodes[dns.RcodeSuccess] != burst || rcodes[dns.RcodeRefused] != refused {
		t.Errorf("a flood, the rate's clock still: replies by rcode %v, want the burst of %d NOERROR, then %d REFUSED", rcodes, burst, refused)
	}
	if u := held.usage(flooderIP); u.RateLimited != refused {
		t.Errorf("a flood, the rate's clock still: %d rate-limited, want %d", u.RateLimited, refused)
	}
}

// floodTCP writes q on c, over and over, as fast as c takes it, until want
// replies have been read, meanwhile calling during once, then
// closes c. It returns the replies by rcode and how many queries were
// written. It fails the test when c ends or has no reply for 30 s before.
func floodTCP(t *testing.T, c *net.TCPConn, q []byte, want int, during func(*testing.T, int)) (rcodes map[int]int, sent int64) {
	t.Helper()
	var batch []byte
	for range 1000 {
		batch = binary.BigEndian.AppendUint16(batch, uint16(len(q)))
		batch = append(batch, q...)
	}
	var written atomic.Int64
	go func() {
		for {
			if _, err := c.Write(batch); err != nil {
				return
			}
			written.Add(1000)
		}
	}()
	type result struct {
		rcodes map[int]int
		err    error
	}
	done := make(chan result, 1)
	go func() {
		r := result{rcodes: map[int]int{}}
		for n := 0; n < want; n++ {
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			var m *dns.Msg
			if m, r.err = readTCPReply(c); r.err != nil {
				r.err = fmt.Errorf("reply %d of %d: %w", n+1, want, r.err)
				break
			}
			r.rcodes[m.Rcode]++
		}
		done <- r
	}()
	during(t, 1)
	r := <-done
	c.Close() // the writer fails and returns
	if r.err != nil {
		t.Fatalf("a flooding connection, replies by rcode %v: %v", r.rcodes, r.err)
	}
	return r.rcodes, written.Load()
}

// TestRatePauseBounded: a connection held back for its source's rate
// waits at most its idle timeout before it reads on, and no longer than
// the server runs. With a rate of one query in 1,000 s and a burst of one,
// each query after the first is read (and REFUSED) after the idle timeout
// of 1 s, not 1,000 s;
// with an idle timeout of a minute, Close returns at once, without waiting
// for the pause to end.
func TestRatePauseBounded(t *testing.T) {
	limits := quota.Limits{QPS: 0.001, Burst: 1}
	ask := func(t *testing.T, c net.Conn, want int) {
		t.Helper()
		if r := exchangeTCP(t, c, packQuery(t, tableName, dns.TypeA)); (r.Rcode == dns.RcodeRefused) != (want == dns.RcodeRefused) {
			t.Fatalf("%s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[want])
		}
	}
	t.Run("idle timeout", func(t *testing.T) {
		ls := startLimitsServer(t, Options{Limits: limits, TCPIdleTimeout: time.Second}, liveUpstream(t), liveUpstream(t))
		c := ls.dialFrom(t, flooderIP)
		c.SetDeadline(time.Now().Add(30 * time.Second))
		ask(t, c, dns.RcodeSuccess) // the burst spent: the reader pauses
		sent := time.Now()
		ask(t, c, dns.RcodeRefused) // and pauses again
		ask(t, c, dns.RcodeRefused)
		// The third is read once the second pause ends, a second after the
		// second query was read at the earliest. Here a time is the
		// assertion, a lower bound: the pause is the server's own timer,
		// which nothing the test can wait on marks the end of (the rate's
		// clock, which a test can hold, only says how long it would be), and
		// a slow machine makes the gap longer, never shorter. That the pause
		// ends at the idle timeout, not after the rate's 1,000 s, needs
		// only the connection's 30 s deadline.
		if d := time.Since(sent); d < 900*time.Millisecond {
			t.Errorf("the third query answered %v after the second was sent, want the idle timeout of 1 s at least: no pause", d)
		}
	})
	t.Run("Close", func(t *testing.T) {
		ls := startLimitsServer(t, Options{Limits: limits, TCPIdleTimeout: time.Minute}, liveUpstream(t), liveUpstream(t))
		c := ls.dialFrom(t, flooderIP)
		c.SetDeadline(time.Now().Add(30 * time.Second))
		ask(t, c, dns.RcodeSuccess) // the burst spent: the reader pauses
		done := make(chan struct{})
		go func() {
			defer close(done)
			ls.Close()
		}()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("Close has not returned in 30 s: it waits for a connection's pause (a minute)")
		}
	})
}

// gated answers as r does once open is closed.
type gated struct {
	open chan struct{}
	r    dnstest.Responder
}

func (g gated) Reply(req *dns.Msg, local netip.AddrPort) *dns.Msg {
	<-g.open
	return g.r.Reply(req, local)
}

// TestConnectionWaitingForRepliesKept: a client that sent forwarded
// queries waits for their replies on its connection, whether it
// half-closed it or not (glibc, Go and dig +tcp keep it open); such a
// connection is not idle. When another pod needs a connection and the
// first pod has every one, its idle connection is closed for it, not one
// waiting, and every waiting one gets its reply. Before: a connection left
// open counted idle as soon as its query was handed off, and was as likely
// as the idle one to be closed, its reply lost (the test then passed only
// when the pick fell on the idle one, 1 time in 8); only a half-closed one
// was kept.
func TestConnectionWaitingForRepliesKept(t *testing.T) {
	for _, halfClosed := range []bool{false, true} {
		name := "open"
		if halfClosed {
			name = "half-closed"
		}
		t.Run(name, func(t *testing.T) {
			const conns = 8
			g := gated{open: make(chan struct{}), r: liveAnswers()}
			upstream := dnstest.Start(t, "127.0.0.1:0", g)
			var opened sync.Once
			openGate := func() { opened.Do(func() { close(g.open) }) }
			t.Cleanup(openGate)
			ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1}, TCPMaxConns: conns, TCPIdleTimeout: time.Hour}, upstream.Addr, liveUpstream(t))

			idle := ls.dialFrom(t, flooderIP)
			waiting := make([]*net.TCPConn, conns-1)
			for i := range waiting {
				waiting[i] = ls.dialFrom(t, flooderIP)
			}
			testenv.Eventually(t, 30*time.Second, "every connection served", func() bool { return ls.tcpOpen.Used() == conns })
			names := make([]string, len(waiting))
			for i, c := range waiting {
				names[i] = fmt.Sprintf("w%d.example.", i)
				if err := dnstest.WriteTCP(c, packQuery(t, names[i], dns.TypeA)); err != nil {
					t.Fatal(err)
				}
			}
			testenv.Eventually(t, 30*time.Second, "every query forwarded", func() bool {
				for _, name := range names {
					if upstream.Queries(name) != 1 {
						return false
					}
				}
				return true
			})
			if halfClosed {
				for _, c := range waiting {
					if err := c.CloseWrite(); err != nil {
						t.Fatal(err)
					}
				}
			}

			// The other pod needs a connection: one of the first pod's is
			// closed, the idle one.
			if r := ls.ask(t, victimIP, "tcp", tableName); r == nil || r.Rcode != dns.RcodeSuccess {
				t.Fatalf("the other pod's TCP query: %v", r)
			}
			idle.SetReadDeadline(time.Now().Add(30 * time.Second))
			if _, err := idle.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) || err == nil {
				t.Errorf("the idle connection: %v, want it closed for the other pod", err)
			}
			openGate()
			for i, c := range waiting {
				c.SetReadDeadline(time.Now().Add(30 * time.Second))
				r, err := readTCPReply(c)
				if err != nil {
					t.Errorf("the connection waiting for %s: %v, want its reply", names[i], err)
					continue
				}
				if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
					t.Errorf("the reply for %s: %s %v, want the upstream's answer", names[i], dns.RcodeToString[r.Rcode], r.Answer)
				}
			}
		})
	}
}
