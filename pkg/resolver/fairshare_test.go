package resolver

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// The fair share of the node's pools (quota.Pool): sources that together
// could take a whole pool within their own bounds leave room for the
// others.

// attackerIP is the i-th of the sources that fill a pool, each an address
// of its own (a source like a pod: the limits are per source).
func attackerIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 2, byte(1 + i)}) }

// victimForwarded has the victim ask for who.example. over UDP, a query
// that is forwarded, and fails the test at once unless the upstream's
// answer comes back; what names the query, and what it was up against.
func (ls *limitsServer) victimForwarded(t *testing.T, what string) {
	t.Helper()
	r := ls.ask(t, victimIP, "udp", "who.example.")
	if r == nil {
		t.FailNow()
	}
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 || !strings.Contains(r.Answer[0].String(), "203.0.113.7") {
		t.Fatalf("%s: %s %v, want its upstream's answer", what, dns.RcodeToString[r.Rcode], r.Answer)
	}
}

// TestForwardingPoolSharedFairly: as many pods as the server's forwarding
// slots hold at their own bound (MaxInflight / Forwarding, 1024/128 with
// the defaults) flood unique names to nameservers that never answer. Past
// half of the pool none gets beyond its fair share, so they never take
// every slot, and the other pod's forwarded queries are answered.
func TestForwardingPoolSharedFairly(t *testing.T) {
	const perPod, slots = 8, 64
	const attackers, each = slots / perPod, 3 * perPod
	silent := startSilentUpstream(t)
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1, Forwarding: perPod}, MaxInflight: slots}, silent.addr, liveUpstream(t))
	before := testutil.ToFloat64(metricQueries.forwardLimited)

	floods := make([]*udpFlood, attackers)
	for i := range floods {
		floods[i] = startUDPFlood(t, attackerIP(i), ls.addr)
		var queries [][]byte
		for j := range each {
			queries = append(queries, packQuery(t, fmt.Sprintf("n%d.a%d.flood.example.", j, i), dns.TypeA))
		}
		floods[i].send(t, queries, 0, each) // all at once
	}
	held, refused := 0, 0
	for i, f := range floods {
		src := ls.unknown.Get(attackerIP(i), 0)
		testenv.Eventually(t, 30*time.Second, "every query an attacker does not hold is answered", func() bool {
			n, _ := f.answered()
			return n+src.Usage().Forwarding == each
		})
		u := src.Usage()
		if _, rcodes := f.answered(); rcodes[dns.RcodeServerFailure] != each-u.Forwarding {
			t.Errorf("attacker %d: replies by rcode %v, want %d SERVFAIL", i, rcodes, each-u.Forwarding)
		}
		held += u.Forwarding
		refused += int(u.ForwardRefused)
	}
	t.Logf("%d attackers hold %d of %d slots", attackers, held, slots)
	if held >= slots {
		t.Errorf("%d attackers hold %d slots, every one of the server's %d", attackers, held, slots)
	}
	if got := testutil.ToFloat64(metricQueries.forwardLimited) - before; int(got) != refused {
		t.Errorf("ztdns_resolver_queries_total{outcome=forward_limited} rose by %v, want the %d the attackers were refused", got, refused)
	}
	ls.askVictim(t, 2)
	if u := ls.usage(victimIP); u.ForwardRefused != 0 {
		t.Errorf("the victim was refused %d forwards", u.ForwardRefused)
	}
}

// TestForwardingSlotTakenForASourceUnderItsShare: more pods than the
// server's forwarding slots hold at their own bound (12 against 64/8)
// send their bound of queries at once to nameservers that never answer.
// The first ones take their bound while less than half of the pool is
// used, so the fair shares do not keep it from filling. The other pod,
// holding nothing, finds every slot taken and gets one anyway: a forward
// of the pod most over its share is ended for it, its client gets
// SERVFAIL at once, and the other pod's forwarded queries are answered.
func TestForwardingSlotTakenForASourceUnderItsShare(t *testing.T) {
	const perPod, slots = 8, 64
	const attackers = slots/perPod + 4
	silent := startSilentUpstream(t)
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1, Forwarding: perPod}, MaxInflight: slots}, silent.addr, liveUpstream(t))
	beforeLimited := testutil.ToFloat64(metricQueries.forwardLimited)

	floods := make([]*udpFlood, attackers)
	sources := make([]*quota.Source, attackers)
	for i := range floods {
		floods[i] = startUDPFlood(t, attackerIP(i), ls.addr)
		sources[i] = ls.unknown.Get(attackerIP(i), 0)
		var queries [][]byte
		for j := range perPod {
			queries = append(queries, packQuery(t, fmt.Sprintf("n%d.a%d.flood.example.", j, i), dns.TypeA))
		}
		floods[i].send(t, queries, 0, perPod) // all at once
	}
	testenv.Eventually(t, 30*time.Second, "every attacker's query held or answered", func() bool {
		for i, f := range floods {
			if n, _ := f.answered(); n+sources[i].Usage().Forwarding != perPod {
				return false
			}
		}
		return true
	})
	held, answered, refused := make([]int, attackers), make([]int, attackers), 0
	for i, f := range floods {
		answered[i], _ = f.answered()
		held[i] = sources[i].Usage().Forwarding
		refused += int(sources[i].Usage().ForwardRefused)
	}
	t.Logf("%d attackers hold %v of %d slots", attackers, held, slots)
	if ls.forwarding.Used() != slots {
		t.Fatalf("the attackers hold %d of %d slots, want all of them", ls.forwarding.Used(), slots)
	}
	if got := testutil.ToFloat64(metricQueries.forwardLimited) - beforeLimited; int(got) != refused {
		t.Errorf("ztdns_resolver_queries_total{outcome=forward_limited} rose by %v, want the %d the attackers were refused", got, refused)
	}

	beforeOverload := testutil.ToFloat64(metricQueries.overload)
	ls.victimForwarded(t, "the victim's forwarded query, every slot an attacker's")
	evicted := -1
	testenv.Eventually(t, 30*time.Second, "an attacker's forward ended for the victim", func() bool {
		for i, f := range floods {
			if n, _ := f.answered(); n > answered[i] {
				evicted = i
				return true
			}
		}
		return false
	})
	t.Logf("attacker %d, which held %d, got SERVFAIL", evicted, held[evicted])
	// At once, not when its query would have timed out: an attacker's query
	// otherwise gets SERVFAIL only when the slow path's bound (5 s) ends
	// it, and that ends every attacker's, all started before the victim
	// asked. So when the ended forward's client has its SERVFAIL, no other
	// attacker has a reply more or a forward less.
	for i, f := range floods {
		if n, _ := f.answered(); i != evicted && (n != answered[i] || sources[i].Usage().Forwarding != held[i]) {
			t.Errorf("attacker %d: %d replies, %d forwards held once attacker %d had its SERVFAIL, want still %d and %d: the forwards timed out, none was ended for the victim",
				i, n, sources[i].Usage().Forwarding, evicted, answered[i], held[i])
		}
	}
	if _, rcodes := floods[evicted].answered(); rcodes[dns.RcodeServerFailure] != answered[evicted]+1 {
		t.Errorf("attacker %d's replies by rcode %v, want all %d SERVFAIL", evicted, rcodes, answered[evicted]+1)
	}
	for i := range attackers {
		if held[i] > held[evicted] {
			t.Errorf("attacker %d held %d forwards, more than the %d of attacker %d whose forward was ended", i, held[i], held[evicted], evicted)
		}
	}
	u := sources[evicted].Usage()
	if u.Forwarding != held[evicted]-1 {
		t.Errorf("attacker %d holds %d forwards, want %d: one given back", evicted, u.Forwarding, held[evicted]-1)
	}
	total := 0
	for i := range attackers {
		total += int(sources[i].Usage().ForwardRefused)
	}
	if total != refused+1 || testutil.ToFloat64(metricQueries.forwardLimited)-beforeLimited != float64(refused+1) {
		t.Errorf("attackers refused %d, forward_limited rose by %v; want both %d: the ended forward counts", total, testutil.ToFloat64(metricQueries.forwardLimited)-beforeLimited, refused+1)
	}
	ls.askVictim(t, 2)
	if got := testutil.ToFloat64(metricQueries.overload) - beforeOverload; got != 0 {
		t.Errorf("ztdns_resolver_queries_total{outcome=overload} rose by %v, want 0", got)
	}
	if u := ls.usage(victimIP); u.ForwardRefused != 0 {
		t.Errorf("the victim was refused %d forwards", u.ForwardRefused)
	}
	if p := ls.forwarding.Peak(); p > slots {
		t.Errorf("%d forwards in flight at most, over the bound of %d", p, slots)
	}
}

// TestTCPPoolSharedFairly: more pods than the server's TCP connections
// hold at their own bound (TCPMaxConns / TCPConns, 1024/32 with the
// defaults) open all the connections they may and keep them. Past half
// of the pool none gets beyond its fair share, and a source within its
// share that finds every connection taken gets one of an attacker over
// its share: the other pod's TCP queries are answered, each on a
// connection of its own.
func TestTCPPoolSharedFairly(t *testing.T) {
	const perPod, maxConns = 8, 64
	const attackers = maxConns/perPod + 4
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1, TCPConns: perPod}, TCPMaxConns: maxConns, TCPIdleTimeout: time.Hour},
		liveUpstream(t), liveUpstream(t))
	beforeTotal := testutil.ToFloat64(metricTCPRejected.total)
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := range attackers {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: attackerIP(i).AsSlice()}}
		for range perPod + 2 {
			c, err := d.Dial("tcp4", ls.addr.String())
			if errors.Is(err, syscall.ECONNRESET) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
	}
	// Each attempt ends open, refused at once, or closed later for a
	// source under its share (then counted refused too).
	testenv.Eventually(t, 30*time.Second, "every attacker's connection accepted or refused", func() bool {
		n := int(testutil.ToFloat64(metricTCPRejected.total) - beforeTotal)
		for i := range attackers {
			u := ls.unknown.Get(attackerIP(i), 0).Usage()
			n += u.TCPConns + int(u.TCPRefused)
		}
		return n == attackers*(perPod+2)
	})
	open := 0
	for i := range attackers {
		open += ls.unknown.Get(attackerIP(i), 0).Usage().TCPConns
	}
	t.Logf("%d attackers hold %d of %d connections", attackers, open, maxConns)
	if int64(open) != ls.tcpOpen.Used() || open > maxConns {
		t.Errorf("attackers hold %d connections, the server counts %d open of %d", open, ls.tcpOpen.Used(), maxConns)
	}
	ls.askVictim(t, 3)
	if u := ls.usage(victimIP); u.TCPRefused != 0 {
		t.Errorf("the victim was refused %d connections", u.TCPRefused)
	}
	if ls.tcpOpen.Used() > maxConns {
		t.Errorf("%d connections open, over the bound of %d", ls.tcpOpen.Used(), maxConns)
	}
}

// TestStalledRepliesWithinTheSourcesBytes: a pod's nameserver sends
// nearly all of a 64 KiB TCP reply and stalls, for as many queries as the
// pod may forward: together as much as the whole budget of replies in
// flight. The pod holds no more than its own bound of it, and the other
// pod's forwarded queries are answered.
func TestStalledRepliesWithinTheSourcesBytes(t *testing.T) {
	const perPod, sent = 16, 60000
	const budget, perSource = perPod * 0xFFFF, 4 * 0xFFFF
	b := quota.NewBudget(budget, perSource)
	limited := testutil.ToFloat64(metricQueries.forwardLimited)
	ls, stalling, c := startStalledReplies(t, perPod, sent, b)
	// Replies refused their bytes get SERVFAIL; the rest hold a 64 KiB
	// buffer each once they have read what was sent.
	// Replies are read whole by a reader of their own: a read deadline
	// could end a read between a reply's length and its body.
	rcodes := make(chan int, perPod)
	go func() {
		for {
			r, err := readTCPReply(c)
			if err != nil {
				return // the connection closed at the test's end
			}
			rcodes <- r.Rcode
		}
	}()
	servfails := 0
	testenv.Eventually(t, 30*time.Second, "every reply refused or holding what was sent", func() bool {
		for drained := false; !drained; {
			select {
			case rcode := <-rcodes:
				if rcode != dns.RcodeServerFailure {
					t.Fatalf("a stalled reply's query: %s, want SERVFAIL", dns.RcodeToString[rcode])
				}
				servfails++
			default:
				drained = true
			}
		}
		u := ls.usage(flooderIP)
		return stalling.Stalled() == perPod && u.Forwarding+servfails == perPod && b.Used() == int64(u.Forwarding)*0xFFFF
	})
	u := ls.usage(flooderIP)
	t.Logf("%d stalled replies: %d hold %d bytes, %d SERVFAIL; peak %d of the budget of %d, %d per source", perPod, u.Forwarding, u.InflightBytes, servfails, b.Peak(), budget, perSource)
	if b.Peak() > perSource || u.InflightBytes > perSource {
		t.Errorf("one pod's stalled replies held %d bytes at most, %d now: over its bound of %d", b.Peak(), u.InflightBytes, perSource)
	}
	if u.Forwarding == 0 || servfails == 0 {
		t.Errorf("%d replies held and %d refused: want some of each", u.Forwarding, servfails)
	}
	if int(u.BytesRefused) != servfails {
		t.Errorf("the pod's bytesRefused is %d, want its %d SERVFAILs", u.BytesRefused, servfails)
	}
	// Each is the pod's outcome once: refused as it was read, its SERVFAIL
	// (refused again as it waited to be written, the pod still full) is
	// not counted twice.
	if got := testutil.ToFloat64(metricQueries.forwardLimited) - limited; int(got) != servfails {
		t.Errorf("forward_limited rose by %v, want the pod's %d SERVFAILs", got, servfails)
	}
	ls.askVictim(t, 2)
}

// TestReplyBytesTakenForASourceUnderItsShare: pods whose nameserver sends
// most of a 64 KiB TCP reply and stalls fill the budget of replies in
// flight, one stalled reply after another: the first three take their own
// bound of two while the budget is quieter, the next two their share of
// one. The other pod, holding nothing, finds the budget spent and gets
// room anyway: a stalled exchange of a pod most over its share is ended
// for it, its bytes given back at once, its client gets SERVFAIL (counted
// as the pod's refusal), and the other pod's forwarded query is answered.
func TestReplyBytesTakenForASourceUnderItsShare(t *testing.T) {
	const reply, sent = 0xFFFF, 60000 // a stalled reply holds a buffer of 64 KiB
	holds := []int{2, 2, 2, 1, 1}     // stalled replies of each pod, in order
	const budget, perSource = 8 * reply, 2 * reply
	b := quota.NewBudget(budget, perSource)
	stalling := dnstest.StartStalling(t, sent)
	ls := startLimitsServer(t, Options{Limits: quota.Limits{QPS: -1}, Budget: b}, stalling.Addr, liveUpstream(t), forward.WithCacheSize(0))
	beforeLimited := testutil.ToFloat64(metricQueries.forwardLimited)
	beforeOverload := testutil.ToFloat64(metricQueries.overload)

	type answer struct {
		pod   int
		rcode int
	}
	answers := make(chan answer, 16)
	sources := make([]*quota.Source, len(holds))
	stalled := 0
	for i, n := range holds {
		c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: attackerIP(i).AsSlice()}}).Dial("tcp4", ls.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		go func() {
			for {
				r, err := readTCPReply(c)
				if err != nil {
					return
				}
				answers <- answer{i, r.Rcode}
			}
		}()
		sources[i] = ls.unknown.Get(attackerIP(i), 0)
		for j := range n {
			if err := dnstest.WriteTCP(c, packQuery(t, fmt.Sprintf("n%d.a%d.stall.example.", j, i), dns.TypeTXT)); err != nil {
				t.Fatal(err)
			}
			stalled++
			testenv.Eventually(t, 30*time.Second, "the reply stalled, its buffer grown to the whole reply", func() bool {
				return stalling.Stalled() == int64(stalled) && b.Used() == int64(stalled)*reply
			})
		}
	}
	held := make([]int64, len(holds))
	for i := range holds {
		held[i] = sources[i].Usage().InflightBytes
		if held[i] != int64(holds[i])*reply {
			t.Fatalf("pod %d holds %d bytes, want its %d stalled replies'", i, held[i], holds[i])
		}
	}
	if b.Used() != budget {
		t.Fatalf("the stalled replies hold %d of the budget of %d, want all of it", b.Used(), budget)
	}
	select {
	case a := <-answers:
		t.Fatalf("pod %d answered %s before the other pod asked", a.pod, dns.RcodeToString[a.rcode])
	default:
	}

	start := time.Now()
	ls.victimForwarded(t, "the other pod's forwarded query, the budget spent on stalled replies")
	answeredIn := time.Since(start)
	var evicted answer
	select {
	case evicted = <-answers:
	case <-time.After(2 * time.Second): // the stalled exchanges end after slowPathTimeout, 5 s
		t.Fatal("no stalled exchange ended for the other pod")
	}
	servfailIn := time.Since(start)
	t.Logf("the other pod answered in %v; pod %d, which held %d bytes, got %s in %v", answeredIn, evicted.pod, held[evicted.pod], dns.RcodeToString[evicted.rcode], servfailIn)
	if evicted.rcode != dns.RcodeServerFailure {
		t.Errorf("pod %d's stalled query: %s, want SERVFAIL", evicted.pod, dns.RcodeToString[evicted.rcode])
	}
	for i := range holds {
		if held[i] > held[evicted.pod] {
			t.Errorf("pod %d held %d bytes, more than the %d of pod %d whose exchange was ended", i, held[i], held[evicted.pod], evicted.pod)
		}
	}
	// Its bytes were given back once: by the one that ended it, not again
	// by its exchange as it ended.
	testenv.Eventually(t, 30*time.Second, "the ended exchange's bytes given back, once", func() bool {
		return b.Used() == budget-reply && sources[evicted.pod].Usage().InflightBytes == held[evicted.pod]-reply
	})
	if u := sources[evicted.pod].Usage(); u.BytesRefused != 1 {
		t.Errorf("pod %d refused %d replies for its bytes, want 1: the ended exchange counts", evicted.pod, u.BytesRefused)
	}
	if got := testutil.ToFloat64(metricQueries.forwardLimited) - beforeLimited; got != 1 {
		t.Errorf("ztdns_resolver_queries_total{outcome=forward_limited} rose by %v, want 1: the ended exchange", got)
	}
	select {
	case a := <-answers:
		t.Errorf("pod %d answered %s too: more than one exchange ended", a.pod, dns.RcodeToString[a.rcode])
	default:
	}
	ls.askVictim(t, 1)
	if got := testutil.ToFloat64(metricQueries.overload) - beforeOverload; got != 0 {
		t.Errorf("ztdns_resolver_queries_total{outcome=overload} rose by %v, want 0", got)
	}
	if u := ls.usage(victimIP); u.ForwardRefused != 0 {
		t.Errorf("the other pod was refused %d forwards", u.ForwardRefused)
	}
	if p := b.Peak(); p > budget {
		t.Errorf("%d bytes of replies held at most, over the budget of %d", p, budget)
	}
}
