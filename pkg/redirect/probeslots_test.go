//go:build linux

package redirect

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
)

// TestSortingProbesYieldToNameservers: Go's resolver sorts a multi-address
// answer by connecting a UDP socket to port 53 of each address, reading its
// local address and closing it; nothing is sent. Those connects take the
// pod's free slots. Once a few seconds old they must give way to the pod's
// own nameservers: before, they held the slots for 30 s after each lookup
// (for good in a pod resolving more often than that), and a query to the
// pod's second nameserver was not captured (kube-dns's NXDOMAIN for a
// ServiceEntry host; musl, asking both nameservers at once, got the right
// answer only sometimes). The slots' ages are set back in the map instead
// of waiting.
func TestSortingProbesYieldToNameservers(t *testing.T) {
	t.Parallel()
	e := newCaptureEnv(t, envOptions{})
	musl := testenv.BuildMuslGetaddrinfo(t)
	p, cookie := e.markedPod(t, 0, nowhere4, nowhere4b)
	first, second := ns53(nowhere4), ns53(nowhere4b)

	goLookup := func() {
		t.Helper()
		name := uniqueName("sorted")
		out, err := run(t, e, p, testenv.GoClient, name)
		if got := testenv.ParseAddrs(out); err != nil || !sameAddrs(got, []netip.Addr{marker4, marker6}) {
			t.Fatalf("Go lookup of %s: %v, %q; want %s and %s", name, err, out, marker4, marker6)
		}
		if got := e.meantFor(t, cookie, name); !slices.Equal(got, []netip.AddrPort{first}) {
			t.Fatalf("Go lookup of %s reached the resolver meant for %v, want %s", name, got, first)
		}
	}
	digSecond := func() {
		t.Helper()
		name := uniqueName("second")
		out, err := dig(t, &p.Netns, e.cg, "@"+nowhere4b, name)
		if got := testenv.ParseAddrs(out); err != nil || !slices.Equal(got, []netip.Addr{marker4}) {
			t.Fatalf("dig @%s %s: %v, %q; want %s from the resolver (slots: %v)", nowhere4b, name, err, out, marker4, e.learned(t, cookie))
		}
		if got := e.meantFor(t, cookie, name); !slices.Equal(got, []netip.AddrPort{second}) {
			t.Fatalf("dig @%s reached the resolver meant for %v", nowhere4b, got)
		}
	}
	fewSecondsPass := func() {
		t.Helper()
		for slot := range Slots {
			if _, ok := e.r.Nameserver(cookie, slot); ok {
				e.setLastUsed(t, cookie, slot, SlotUnconfirmedIdle+3*time.Second)
			}
		}
	}

	// The reviewer's case: the lookup's query and its two answer
	// addresses fill the three slots.
	goLookup()
	got := e.learned(t, cookie)
	for _, want := range []netip.AddrPort{first, netip.AddrPortFrom(marker4, 53), netip.AddrPortFrom(marker6, 53)} {
		i := slices.IndexFunc(got[:], func(ns LearnedNameserver) bool { return sameAddrPort(ns.Addr, want) })
		if i < 0 {
			t.Fatalf("slots after a Go lookup: %v, want %s among them", got, want)
		}
		if !got[i].Unconfirmed {
			t.Errorf("slot %d (%s) is confirmed after Go's connects alone", i, want)
		}
	}

	fewSecondsPass()
	digSecond()
	if i := e.slotHolding(cookie, second); i < 0 || e.learned(t, cookie)[i].Unconfirmed {
		t.Errorf("slots %v: want %s confirmed by dig's reply, read asking its source", e.learned(t, cookie), second)
	}

	// Go's lookups go on (its nameserver takes an answer address's slot
	// back), and the confirmed second nameserver keeps its slot.
	goLookup()
	digSecond()
	goLookup()

	// musl asks both nameservers at once: both queries are captured.
	fewSecondsPass()
	name := uniqueName("musl")
	out, err := run(t, e, p, testenv.CommandClient(musl), name)
	if got := testenv.ParseAddrs(out); err != nil || !sameAddrs(got, []netip.Addr{marker4, marker6}) {
		t.Fatalf("musl getaddrinfo %s: %v, %q; want %s and %s", name, err, out, marker4, marker6)
	}
	if got := e.meantFor(t, cookie, name); !slices.Equal(got, []netip.AddrPort{first, second}) && !slices.Equal(got, []netip.AddrPort{second, first}) {
		t.Errorf("musl's queries reached the resolver meant for %v, want %s and %s (slots: %v)", got, first, second, e.learned(t, cookie))
	}
}

// TestConfirmedSlotsKeepSlotIdle: a slot real DNS traffic went through (a
// reply read asking its source, a send naming the nameserver, a TCP
// connect) stays its nameserver's for SlotIdle against new destinations, as
// every slot did before; an unconfirmed one idle for SlotUnconfirmedIdle is
// given away first.
func TestConfirmedSlotsKeepSlotIdle(t *testing.T) {
	t.Parallel()
	e := newCaptureEnv(t, envOptions{})
	p, cookie := e.markedPod(t, 0)
	kept, sent, tcp := ns53(nowhere4), ns53("203.0.113.54"), ns53("203.0.113.55")
	others := []netip.AddrPort{ns53("203.0.113.56"), ns53("203.0.113.57")}

	// A kept socket, confirmed by the reply it reads with recvfrom.
	h := testenv.StartHelper(t, t.Context(), p, e.cg, "connected",
		helperEnv+"="+helperKeeper, helperFamily+"=inet", helperAddr+"="+kept.String())
	slotKept := e.slotHolding(cookie, kept)
	if slotKept < 0 || !e.learned(t, cookie)[slotKept].Unconfirmed {
		t.Fatalf("slots after the kept socket's connect: %v, want %s unconfirmed", e.learned(t, cookie), kept)
	}
	e.queryKeeper(t, h, cookie, kept)
	// A send naming its nameserver, as musl sends.
	s := testenv.StartHelper(t, t.Context(), p, e.cg, "ready", helperEnv+"="+helperSendTo)
	if out := s.Do(t, sent.Addr().String()+" "+uniqueName("sent")); out != "sent" {
		t.Fatalf("sendto %s: %s", sent, out)
	}
	// A TCP connection.
	if out, err := dig(t, &p.Netns, e.cg, "+tcp", "@"+tcp.Addr().String(), uniqueName("tcp")); err != nil || !strings.Contains(out, marker4.String()) {
		t.Fatalf("dig +tcp @%s: %v, %q", tcp.Addr(), err, out)
	}
	want := e.learned(t, cookie)
	for _, ns := range []netip.AddrPort{kept, sent, tcp} {
		i := e.slotHolding(cookie, ns)
		if i < 0 || want[i].Unconfirmed {
			t.Fatalf("slots %v, want %s confirmed", want, ns)
		}
	}

	// Idle for longer than an unconfirmed slot keeps, far less than
	// SlotIdle: a new destination takes none.
	for slot := range Slots {
		e.setLastUsed(t, cookie, slot, SlotUnconfirmedIdle+3*time.Second)
	}
	skipped := e.counters(t).SkippedSlotsFull
	if out := h.Do(t, "connect "+others[0].String()); out != "ok" {
		t.Fatalf("connect %s: %s", others[0], out)
	}
	for slot, ns := range e.learned(t, cookie) {
		if !sameAddrPort(ns.Addr, want[slot].Addr) {
			t.Errorf("slot %d now holds %s, want %s kept for %v", slot, ns.Addr, want[slot].Addr, SlotIdle)
		}
	}
	if got := e.counters(t).SkippedSlotsFull; got != skipped+1 {
		t.Errorf("skipped_slots_full %d, want %d: the new destination left alone", got, skipped+1)
	}

	// Idle for SlotIdle, a confirmed slot is given away.
	slotSent := e.slotHolding(cookie, sent)
	e.setLastUsed(t, cookie, slotSent, SlotIdle+5*time.Second)
	if out := h.Do(t, "connect "+others[0].String()); out != "ok" {
		t.Fatalf("connect %s: %s", others[0], out)
	}
	if got := e.learned(t, cookie)[slotSent]; !sameAddrPort(got.Addr, others[0]) || !got.Unconfirmed {
		t.Fatalf("slot %d holds %s (unconfirmed: %v), want %s, unconfirmed, in the idle slot", slotSent, got.Addr, got.Unconfirmed, others[0])
	}

	// An idle unconfirmed slot goes before a confirmed one idle longer.
	e.setLastUsed(t, cookie, slotKept, SlotIdle+10*time.Second)
	e.setLastUsed(t, cookie, slotSent, SlotUnconfirmedIdle+time.Second)
	if out := h.Do(t, "connect "+others[1].String()); out != "ok" {
		t.Fatalf("connect %s: %s", others[1], out)
	}
	if got := e.learned(t, cookie); !sameAddrPort(got[slotSent].Addr, others[1]) || !sameAddrPort(got[slotKept].Addr, kept) {
		t.Errorf("slots %v, want %s in slot %d (unconfirmed, idle) and %s kept in slot %d", got, others[1], slotSent, kept, slotKept)
	}
}

// TestUnconfirmedSlotKeepsItsQueryInFlight: Go's resolver connects a new
// socket for each query and writes and reads it without naming an address,
// so its nameserver's slot is never confirmed. A new destination must not
// take such a slot between the connect and the query's arrival, when the
// resolver reads the slot to forward it: only once it has been idle for
// SlotUnconfirmedIdle.
func TestUnconfirmedSlotKeepsItsQueryInFlight(t *testing.T) {
	t.Parallel()
	e := newCaptureEnv(t, envOptions{})
	p, cookie := e.markedPod(t, 0)
	a := ns53(nowhere4)
	others := []netip.AddrPort{ns53("203.0.113.54"), ns53("203.0.113.55"), ns53("203.0.113.56")}

	// A connected, its query not written yet; two probes fill the slots.
	name := uniqueName("inflight")
	c := testenv.StartHelper(t, t.Context(), p, e.cg, "connected",
		helperEnv+"="+helperConnected, helperFamily+"=inet", helperAddr+"="+a.String(),
		helperSend+"=write", helperName+"="+name)
	h := testenv.StartHelper(t, t.Context(), p, e.cg, "connected",
		helperEnv+"="+helperKeeper, helperFamily+"=inet", helperAddr+"="+others[0].String())
	if out := h.Do(t, "connect "+others[1].String()); out != "ok" {
		t.Fatalf("connect %s: %s", others[1], out)
	}
	slotA := e.slotHolding(cookie, a)
	if slotA < 0 {
		t.Fatalf("no slot learned %s at connect; slots: %v", a, e.learned(t, cookie))
	}
	// All used just now, however long the machine took to get here: set
	// a minute ahead, which no clock reaches during the test.
	for slot := range Slots {
		e.setLastUsed(t, cookie, slot, -time.Minute)
	}
	skipped := e.counters(t).SkippedSlotsFull
	if out := h.Do(t, "connect "+others[2].String()); out != "ok" {
		t.Fatalf("connect %s: %s", others[2], out)
	}
	if got := e.counters(t).SkippedSlotsFull; got != skipped+1 {
		t.Errorf("skipped_slots_full %d, want %d: a new destination takes no slot used just now (slots: %v)", got, skipped+1, e.learned(t, cookie))
	}

	// The query arrives on A's slot, which still holds A.
	out, err := c.Finish("go")
	if got := testenv.ParseAddrs(out); err != nil || !slices.Equal(got, []netip.Addr{marker4}) {
		t.Fatalf("query on the connected socket: %v, %q; want %s", err, out, marker4)
	}
	if got := e.meantFor(t, cookie, name); !slices.Equal(got, []netip.AddrPort{a}) {
		t.Errorf("the query reached the resolver meant for %v, want %s", got, a)
	}
	if !e.learned(t, cookie)[slotA].Unconfirmed {
		t.Errorf("slot %d (%s) confirmed by a write and a read() that names no address", slotA, a)
	}

	// Idle for SlotUnconfirmedIdle, the longest idle unconfirmed slot
	// goes to the new destination.
	for slot := range Slots {
		back := SlotUnconfirmedIdle + time.Second
		if slot == slotA {
			back += time.Second
		}
		e.setLastUsed(t, cookie, slot, back)
	}
	if out := h.Do(t, "connect "+others[2].String()); out != "ok" {
		t.Fatalf("connect %s: %s", others[2], out)
	}
	if got := e.learned(t, cookie); !sameAddrPort(got[slotA].Addr, others[2]) {
		t.Errorf("slots %v, want %s in slot %d, the longest idle", got, others[2], slotA)
	}
}

// TestForwardConfirmsKeptSlot: a kept socket (c-ares keeps one per
// nameserver) whose first reply it has not read yet sends with send(),
// which no hook sees, so its slot is still unconfirmed when the query
// arrives. Forwarding the query confirms it (ConfirmNameserver, as the
// agent does), so once every slot has been idle for SlotUnconfirmedIdle a
// new destination does not take it, and the kept socket's next query is
// still meant for its nameserver. (Before: the longest idle unconfirmed
// slot, the kept socket's, went to the new destination, and the socket's
// next queries were forwarded there while their replies looked like its
// own nameserver's.)
func TestForwardConfirmsKeptSlot(t *testing.T) {
	t.Parallel()
	e := newCaptureEnv(t, envOptions{})
	p, cookie := e.markedPod(t, 0)
	a := ns53(nowhere4)
	others := []netip.AddrPort{ns53("203.0.113.54"), ns53("203.0.113.55"), ns53("203.0.113.56")}
	k := testenv.StartHelper(t, t.Context(), p, e.cg, "connected",
		helperEnv+"="+helperKeeper, helperFamily+"=inet", helperAddr+"="+a.String())
	h := testenv.StartHelper(t, t.Context(), p, e.cg, "connected",
		helperEnv+"="+helperKeeper, helperFamily+"=inet", helperAddr+"="+others[0].String())
	if out := h.Do(t, "connect "+others[1].String()); out != "ok" {
		t.Fatalf("connect %s: %s", others[1], out)
	}

	// The kept socket's first query, its reply not read yet.
	name := uniqueName("first")
	if out := k.Do(t, "send "+name); out != "sent" {
		t.Fatalf("send on the kept socket: %s", out)
	}
	testenv.Eventually(t, 10*time.Second, "the resolver sees the kept socket's query", func() bool {
		return len(e.dns.ReceivedFor(name)) > 0
	})
	slotA := e.slotOf(e.dns.ReceivedFor(name)[0].Local)
	ns, unconfirmed, ok := e.r.ForwardedNameserver(cookie, slotA)
	if !ok || !sameAddrPort(ns, a) || !unconfirmed {
		t.Fatalf("the query arrived on slot %d holding %s (unconfirmed %v, %v); want %s, unconfirmed", slotA, ns, unconfirmed, ok, a)
	}
	// Forwarded to a: the agent confirms the slot. Another slot, named
	// with a server it does not hold, stays unconfirmed.
	if err := e.r.ConfirmNameserver(cookie, slotA, ns); err != nil {
		t.Fatal(err)
	}
	slotB := e.slotHolding(cookie, others[0])
	if err := e.r.ConfirmNameserver(cookie, slotB, others[1]); err != nil {
		t.Fatal(err)
	}
	got := e.learned(t, cookie)
	if got[slotA].Unconfirmed || !got[slotB].Unconfirmed {
		t.Errorf("slots %v, want slot %d (%s) confirmed and slot %d (%s) not", got, slotA, a, slotB, others[0])
	}

	// Every slot idle for SlotUnconfirmedIdle, the kept socket's the
	// longest: a new destination takes another.
	for slot := range Slots {
		back := SlotUnconfirmedIdle + time.Second
		if slot == slotA {
			back += time.Second
		}
		e.setLastUsed(t, cookie, slot, back)
	}
	if out := h.Do(t, "connect "+others[2].String()); out != "ok" {
		t.Fatalf("connect %s: %s", others[2], out)
	}
	if got := e.learned(t, cookie); !sameAddrPort(got[slotA].Addr, a) {
		t.Errorf("slots %v, want %s kept in slot %d", got, a, slotA)
	}
	name2 := uniqueName("kept")
	if out := k.Do(t, "send "+name2); out != "sent" {
		t.Fatalf("send on the kept socket: %s", out)
	}
	testenv.Eventually(t, 10*time.Second, "the resolver sees the kept socket's next query", func() bool {
		return len(e.dns.ReceivedFor(name2)) > 0
	})
	if got := e.meantFor(t, cookie, name2); !slices.Equal(got, []netip.AddrPort{a}) {
		t.Errorf("the kept socket's next query reached the resolver meant for %v, want %s", got, a)
	}
}

// ns53 is port 53 of addr.
func ns53(addr string) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(addr), 53)
}

// meantFor returns the nameservers the queries the resolver saw for name
// were meant for, read from the slots they arrived on, each once, in
// arrival order.
func (e *captureEnv) meantFor(tb testing.TB, cookie uint64, name string) []netip.AddrPort {
	tb.Helper()
	var out []netip.AddrPort
	for _, q := range e.dns.ReceivedFor(name) {
		ns, ok := e.r.Nameserver(cookie, e.slotOf(q.Local))
		if !ok {
			tb.Fatalf("query %+v arrived on a free slot", q)
		}
		if !slices.Contains(out, ns) {
			out = append(out, ns)
		}
	}
	return out
}
