package forward

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// TestConcurrentExchangesAllAnswered forwards bursts of queries at once,
// each a name of its own, to an upstream that holds each burst's
// replies until every query of it came, then sends half of them at once
// and the rest a little later: the exchanges wait on the Forwarder's
// epoll set together, one leading (udpPoller) and the others following,
// and the first half leave, the lead passing among them, while the
// second half wait on. Every query is answered; followers left with no
// leader would wait for the timeout, longer than the test's guard, and
// get SERVFAIL.
func TestConcurrentExchangesAllAnswered(t *testing.T) {
	const bursts, size = 30, 64
	type burst struct {
		arrived atomic.Int32
		all     chan struct{}
	}
	var current atomic.Pointer[burst]
	up := startUpstream(t, func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
		b := current.Load()
		if b.arrived.Add(1) == size {
			close(b.all)
		}
		select {
		case <-b.all:
		case <-u.stop:
			return
		}
		if strings.HasPrefix(req.Question[0].Name, "late-") {
			select {
			case <-time.After(20 * time.Millisecond):
			case <-u.stop:
				return
			}
		}
		answerA(300, "198.51.100.1")(u, w, req)
	})
	// No resend within the guard: only the wait can answer a query.
	f := newForwarder(t, WithCacheSize(0), WithTimeout(4*guard))
	for b := range bursts {
		current.Store(&burst{all: make(chan struct{})})
		var wg sync.WaitGroup
		errs := make(chan error, size)
		for i := range size {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), guard)
				defer cancel()
				name := fmt.Sprintf("b%d-%d.example.", b, i)
				if i%2 == 1 {
					name = "late-" + name
				}
				out, err := f.Forward(ctx, query(t, name, dns.TypeA), false, []netip.AddrPort{up.addr})
				if err == nil {
					if m := dnstest.Unpack(t, out); m.Rcode != dns.RcodeSuccess || firstA(m) != "198.51.100.1" {
						err = fmt.Errorf("%s: %v", name, m)
					}
				}
				if err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("burst %d: %v", b, err)
		}
	}
}

// TestLeaderEndsWithItsContext has a lone exchange lead the set with a
// read deadline left on it by an earlier leader, whose context ended as
// it stopped leading, and ends the exchange's context just as the leader
// is about to clear that deadline, its context's own deadline set by
// then: the wait ends with its context. A leader that asked whether its
// context ended before it cleared the deadline would clear its
// context's too, and wait on for an event that never comes (its
// upstream silent): its client would get no answer, and Close would
// wait for it for ever.
func TestLeaderEndsWithItsContext(t *testing.T) {
	p := newUDPPoller()
	t.Cleanup(p.close)
	_, w := addSilent(t, p) // nothing comes on it
	t.Cleanup(func() { p.remove(w) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The context's context.AfterFunc sets the deadline in a goroutine of
	// its own: the leader goes on once it did, however late it runs.
	deadlineSet := make(chan struct{})
	ctxDeadlineSet = func() { close(deadlineSet) }
	clearingDeadline = func() {
		clearingDeadline = nil // the next deadline is the context's own
		cancel()
		<-deadlineSet
	}
	t.Cleanup(func() { clearingDeadline, ctxDeadlineSet = nil, nil })
	_ = p.ep.SetReadDeadline(time.Unix(1, 0)) // an earlier leader's
	done := make(chan error, 1)
	go func() { done <- p.wait(ctx, w) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("wait: %v, want its context's end", err)
		}
	case <-time.After(guard):
		t.Fatalf("wait: still waiting %v after its context ended", guard)
	}
}

// TestForwardsOnceDescriptorsAreBack makes a Forwarder while the agent is
// out of descriptors, so it has no epoll set: its UDP exchanges fail at
// once, SERVFAIL counted as no_socket, while none can be made, and are
// answered once descriptors are back. An agent that never tried again
// would SERVFAIL every forwarded UDP query until restarted.
func TestForwardsOnceDescriptorsAreBack(t *testing.T) {
	up := startUpstream(t, answerA(300, "198.51.100.1"))
	var limit unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &limit); err != nil {
		t.Fatal(err)
	}
	restore := func() {
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &limit); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(restore)
	// The lowest descriptor number free: the next one opened takes it.
	free, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(free)
	// At most n more descriptors: n above the lowest free, the next n opened
	// if none is closed meanwhile, fewer where some above are taken.
	openAtMost := func(n int) {
		t.Helper()
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: uint64(free + n), Max: limit.Max}); err != nil {
			t.Fatal(err)
		}
	}
	openAtMost(0)
	f := newForwarder(t, WithCacheSize(0))
	ask := func() (*dns.Msg, Origin) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), guard)
		defer cancel()
		out, from, err := f.ForwardFrom(ctx, query(t, "www.example.com.", dns.TypeA), false, []netip.AddrPort{up.addr})
		if err != nil {
			t.Fatal(err)
		}
		return dnstest.Unpack(t, out), from
	}
	openAtMost(1) // the exchange's socket, and no set
	if m, from := ask(); m.Rcode != dns.RcodeServerFailure || from.Failure != FailureNoSocket {
		t.Fatalf("with no descriptor for the set: %s (%q), want SERVFAIL (%q)", dns.RcodeToString[m.Rcode], from.Failure, FailureNoSocket)
	}
	restore() // descriptors back
	if m, from := ask(); m.Rcode != dns.RcodeSuccess || firstA(m) != "198.51.100.1" {
		t.Fatalf("with descriptors back: %s (%q), want the upstream's answer", dns.RcodeToString[m.Rcode], from.Failure)
	}
}

// addSilent adds to p a socket connected to an upstream that never
// answers (nothing comes on it), closed when the test ends.
func addSilent(t *testing.T, p *udpPoller) (int, *udpWait) {
	t.Helper()
	fd, err := dialUDP(silentUpstream(t).addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rawClose(fd) })
	w, err := p.add(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fd, w
}

// TestSetClosedAsTheLastExchangeLeaves closes the poller while an
// exchange is still in its set, as Forwarder.Close may (it does not wait
// for a query relayed as it came): the set stays open for it, for a
// descriptor number the exchange still uses could otherwise be another's
// by then, and is closed as it leaves.
func TestSetClosedAsTheLastExchangeLeaves(t *testing.T) {
	p := newUDPPoller()
	fd, w := addSilent(t, p)
	p.close()
	if err := p.wantRoom(fd, w); err != nil {
		t.Fatalf("the set closed under its exchange: %v", err)
	}
	p.remove(w)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ep != nil {
		t.Error("the set is still open after its last exchange left")
	}
}

// TestManyExchangesEndRight runs rounds of concurrent UDP exchanges, each
// a name of its own, whose upstream answers after a random pause (some
// after a datagram with another ID first, so replies come in no order)
// or never, and whose clients cancel at a random moment, give up at a
// random deadline, or wait: every query is answered with its own name's
// address or fails (SERVFAIL), one whose client waits and whose upstream
// answers is answered, one never answered fails; and once the Forwarder
// is closed, no goroutine and no descriptor of theirs is left.
func TestManyExchangesEndRight(t *testing.T) {
	addrOf := func(i int) string { return fmt.Sprintf("10.1.%d.%d", i>>8, i&0xFF) }
	indexOf := func(name string) int {
		var i int
		_, _ = fmt.Sscanf(name, "s%d.", &i)
		return i
	}
	dropped := func(i int) bool { return i%5 == 0 }
	up := rawUDPUpstream(t, func(pc net.PacketConn, from net.Addr, q []byte) {
		req := new(dns.Msg)
		if req.Unpack(q) != nil || len(req.Question) != 1 {
			return
		}
		i := indexOf(req.Question[0].Name)
		if dropped(i) {
			return
		}
		time.AfterFunc(time.Duration(rand.N(15000))*time.Microsecond, func() {
			if i%7 == 0 { // a datagram that is no reply first
				stray := new(dns.Msg)
				stray.SetReply(req)
				stray.Id++
				if b, err := stray.Pack(); err == nil {
					_, _ = pc.WriteTo(b, from)
				}
			}
			m := new(dns.Msg)
			m.SetReply(req)
			rr, _ := dns.NewRR(req.Question[0].Name + " 30 IN A " + addrOf(i))
			m.Answer = append(m.Answer, rr)
			if b, err := m.Pack(); err == nil {
				_, _ = pc.WriteTo(b, from)
			}
		})
	})
	goroutines, fds := runtime.NumGoroutine(), testenv.OpenFDs(t, os.Getpid())
	// No timeout of the Forwarder's own: the clients' contexts end the
	// exchanges, or their answers.
	f := New(WithCacheSize(0), WithTimeout(4*guard))
	const rounds, size = 4, 200
	for r := range rounds {
		var wg sync.WaitGroup
		errs := make(chan error, size)
		for k := range size {
			i := r*size + k
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), guard)
				defer cancel()
				mode := i % 3
				if dropped(i) && mode == 0 {
					mode = 2 // a client that waits for an answer that never comes would wait for ever
				}
				switch mode {
				case 1:
					time.AfterFunc(time.Duration(rand.N(20000))*time.Microsecond, cancel)
				case 2:
					var stop context.CancelFunc
					ctx, stop = context.WithTimeout(ctx, time.Duration(1+rand.N(30000))*time.Microsecond)
					defer stop()
				}
				name := fmt.Sprintf("s%d.example.", i)
				out, err := f.Forward(ctx, query(t, name, dns.TypeA), false, []netip.AddrPort{up})
				if err != nil {
					errs <- fmt.Errorf("%s: %w", name, err)
					return
				}
				m := new(dns.Msg)
				if err := m.Unpack(out); err != nil {
					errs <- fmt.Errorf("%s: %w", name, err)
					return
				}
				answered := m.Rcode == dns.RcodeSuccess && len(m.Answer) == 1 && firstA(m) == addrOf(i) && m.Question[0].Name == name
				switch {
				case !answered && m.Rcode != dns.RcodeServerFailure:
					errs <- fmt.Errorf("%s: %v, want its address or SERVFAIL", name, m)
				case mode == 0 && !answered:
					errs <- fmt.Errorf("%s, its client waiting: %v, want %s", name, m, addrOf(i))
				case dropped(i) && answered:
					errs <- fmt.Errorf("%s, never answered upstream: answered %v", name, m)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("round %d: %v", r, err)
		}
		if t.Failed() {
			break
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, guard, "the exchanges' goroutines end", func() bool { return runtime.NumGoroutine() <= goroutines })
	testenv.Eventually(t, guard, "the exchanges' descriptors are closed", func() bool { return testenv.OpenFDs(t, os.Getpid()) <= fds })
}
