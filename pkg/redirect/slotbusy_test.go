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

// TestReplyKeepsSlotBusy: a UDP socket connected once and kept (c-ares
// keeps one per nameserver) sends with send(), which runs neither the
// connect nor the sendmsg hook. The replies it reads, asking their source
// (recvfrom), or its getpeername() must keep its nameserver's slot busy:
// otherwise, after 30 s of only such traffic, new destinations of the pod
// take the slot, and the socket's later queries are forwarded to them.
// The slots' ages are set back in the map instead of waiting 30 s.
func TestReplyKeepsSlotBusy(t *testing.T) {
	t.Parallel()
	e := newCaptureEnv(t, envOptions{})

	port53 := func(s string) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr(s), 53) }
	mapped := func(s string) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom16(netip.MustParseAddr(s).As16()), 53)
	}
	v4s := []string{nowhere4, "203.0.113.54", "203.0.113.55", "203.0.113.56", "203.0.113.57", "203.0.113.58"}
	v6s := []string{nowhere6, "2001:db8::54", "2001:db8::55", "2001:db8::56", "2001:db8::57", "2001:db8::58"}
	dests := func(addrs []string, ap func(string) netip.AddrPort) []netip.AddrPort {
		var out []netip.AddrPort
		for _, a := range addrs {
			out = append(out, ap(a))
		}
		return out
	}
	families := []struct {
		name   string
		family string
		dests  []netip.AddrPort // the kept socket's nameserver first, then five others
	}{
		{"AF_INET", "inet", dests(v4s, port53)},
		{"AF_INET6", "inet6", dests(v6s, port53)},
		{"AF_INET6 to ::ffff:a.b.c.d", "inet6", dests(v4s, mapped)},
	}

	for _, fam := range families {
		for _, read := range []string{"recvfrom", "getpeername"} {
			t.Run(fam.name+", "+read, func(t *testing.T) {
				p, cookie := e.markedPod(t, 0)
				a := fam.dests[0]
				h := testenv.StartHelper(t, t.Context(), p, e.cg, "connected",
					helperEnv+"="+helperKeeper, helperFamily+"="+fam.family, helperAddr+"="+a.String())
				slotA := e.slotHolding(cookie, a)
				if slotA < 0 {
					t.Fatalf("no slot learned %s at connect; slots: %v", a, e.learned(t, cookie))
				}
				// Two more nameservers of the pod fill the other slots.
				for _, d := range fam.dests[1:3] {
					if out := h.Do(t, "connect "+d.String()); out != "ok" {
						t.Fatalf("connect %s: %s", d, out)
					}
				}

				// 30 s of only send() on the kept socket: every slot
				// looks idle, A's the longest.
				for slot := range Slots {
					back := SlotIdle + 5*time.Second
					if slot == slotA {
						back += 5 * time.Second
					}
					e.setLastUsed(t, cookie, slot, back)
				}

				switch read {
				case "recvfrom":
					e.queryKeeper(t, h, cookie, a)
				case "getpeername":
					if out := h.Do(t, "peer"); out != a.String() {
						t.Fatalf("getpeername: %s, want %s", out, a)
					}
				}
				if idle := e.learned(t, cookie)[slotA].Idle; idle >= SlotIdle {
					t.Errorf("after a %s on the kept socket, its slot %d has been idle for %v, want it busy", read, slotA, idle)
				}

				// Three new destinations: two take the idle slots, the
				// third finds every slot busy; none takes A's.
				for _, d := range fam.dests[3:] {
					if out := h.Do(t, "connect "+d.String()); out != "ok" {
						t.Fatalf("connect %s: %s", d, out)
					}
				}
				got := e.learned(t, cookie)
				if !sameAddrPort(got[slotA].Addr, a) {
					t.Errorf("slot %d now holds %s, want %s (slots: %v)", slotA, got[slotA].Addr, a, got)
				}
				for _, d := range fam.dests[3:5] {
					if !slices.ContainsFunc(got[:], func(ns LearnedNameserver) bool { return sameAddrPort(ns.Addr, d) }) {
						t.Errorf("slots %v, want %s in an idle slot it took", got, d)
					}
				}

				// The kept socket's next query is still meant for A.
				e.queryKeeper(t, h, cookie, a)
			})
		}
	}

	// Once A's slot went to another destination (A's socket silent for
	// 30 s), A's socket's replies do not keep the new holder busy.
	t.Run("slot given away", func(t *testing.T) {
		p, cookie := e.markedPod(t, 0)
		dests := families[0].dests
		a := dests[0]
		h := testenv.StartHelper(t, t.Context(), p, e.cg, "connected",
			helperEnv+"="+helperKeeper, helperFamily+"=inet", helperAddr+"="+a.String())
		for _, d := range dests[1:3] {
			if out := h.Do(t, "connect "+d.String()); out != "ok" {
				t.Fatalf("connect %s: %s", d, out)
			}
		}
		slotA := e.slotHolding(cookie, a)
		if slotA < 0 {
			t.Fatalf("no slot learned %s at connect; slots: %v", a, e.learned(t, cookie))
		}
		e.setLastUsed(t, cookie, slotA, SlotIdle+5*time.Second)
		if out := h.Do(t, "connect "+dests[3].String()); out != "ok" {
			t.Fatalf("connect %s: %s", dests[3], out)
		}
		if got := e.learned(t, cookie); !sameAddrPort(got[slotA].Addr, dests[3]) {
			t.Fatalf("slots %v, want %s in slot %d, the idle one", got, dests[3], slotA)
		}
		e.setLastUsed(t, cookie, slotA, SlotIdle+5*time.Second)

		// The socket still sends through slotA; its reply is restored to
		// A, what it addressed.
		name := uniqueName("kept")
		if out := h.Do(t, "query "+name); !strings.HasPrefix(out, a.String()+" ") {
			t.Fatalf("query on the kept socket: %q, want a reply from %s", out, a)
		}
		if idle := e.learned(t, cookie)[slotA].Idle; idle < SlotIdle {
			t.Errorf("slot %d, now %s's, has been idle for %v after a reply to %s's socket; want it still idle", slotA, dests[3], idle, a)
		}
	})
}

// TestReleasedPodKeepsItsSlots: a socket connected while its pod was
// captured keeps sending to the resolver slot once the pod is unmarked (no
// hook runs for its send()), and the resolver forwards those queries to
// what the slot holds. Unmark leaves the slot, the socket's restored
// replies keep it busy as they do for a marked pod, and SweepNameservers
// forgets it only once it is idle.
func TestReleasedPodKeepsItsSlots(t *testing.T) {
	t.Parallel()
	e := newCaptureEnv(t, envOptions{})
	p, cookie := e.markedPod(t, 0)
	a := netip.AddrPortFrom(netip.MustParseAddr(nowhere4), 53)
	h := testenv.StartHelper(t, t.Context(), p, e.cg, "connected",
		helperEnv+"="+helperKeeper, helperFamily+"=inet", helperAddr+"="+a.String())
	slotA := e.slotHolding(cookie, a)
	if slotA < 0 {
		t.Fatalf("no slot learned %s at connect; slots: %v", a, e.learned(t, cookie))
	}

	if err := e.r.Unmark(cookie); err != nil {
		t.Fatal(err)
	}
	if ns, ok := e.r.Nameserver(cookie, slotA); !ok || !sameAddrPort(ns, a) {
		t.Fatalf("after Unmark, slot %d holds %s, %v; want %s kept", slotA, ns, ok, a)
	}
	// Its last use long ago; then a query on the kept socket.
	e.setLastUsed(t, cookie, slotA, SlotIdle+5*time.Second)
	e.queryKeeper(t, h, cookie, a)
	if idle := e.slotIdleFor(t, cookie, slotA); idle >= SlotIdle {
		t.Errorf("after a reply on the released pod's kept socket, its slot %d has been idle for %v, want it busy", slotA, idle)
	}
	if removed, err := e.r.SweepNameservers(); err != nil || removed != 0 {
		t.Errorf("SweepNameservers() = %d, %v; want the busy slot kept", removed, err)
	}

	e.setLastUsed(t, cookie, slotA, SlotIdle+5*time.Second)
	if removed, err := e.r.SweepNameservers(); err != nil || removed != 1 {
		t.Errorf("SweepNameservers() once idle = %d, %v; want the slot removed", removed, err)
	}
	if ns, ok := e.r.Nameserver(cookie, slotA); ok {
		t.Errorf("slot %d still holds %s after the sweep", slotA, ns)
	}
}

// slotIdleFor returns how long ago the slot was last used, read from the
// map: Pods lists only marked pods.
func (e *captureEnv) slotIdleFor(tb testing.TB, cookie uint64, slot int) time.Duration {
	tb.Helper()
	ns, now := e.slotNow(tb, cookie, slot)
	return idleFor(now, ns.LastUsedNs)
}

// slotNow reads the slot from the map, and the clock its last use is
// counted on.
func (e *captureEnv) slotNow(tb testing.TB, cookie uint64, slot int) (ztdnsNameserver, uint64) {
	tb.Helper()
	ns, err := e.r.nameserver(cookie, slot)
	if err != nil {
		tb.Fatalf("slot %d: %v", slot, err)
	}
	now, err := monotonicNow()
	if err != nil {
		tb.Fatal(err)
	}
	return ns, now
}

// queryKeeper has the keeper helper send a query on its kept socket and
// checks that the reply was restored to a and answered by the resolver,
// which saw it on the slot that holds a: a miss is forwarded to a.
func (e *captureEnv) queryKeeper(tb testing.TB, h *testenv.Helper, cookie uint64, a netip.AddrPort) {
	tb.Helper()
	name := uniqueName("kept")
	out := h.Do(tb, "query "+name)
	fields := strings.Fields(out)
	if len(fields) == 0 || fields[0] != a.String() || !slices.Contains(testenv.ParseAddrs(strings.Join(fields[1:], "\n")), marker4) {
		tb.Fatalf("query %s on the kept socket: %q, want a reply from %s with %s", name, out, a, marker4)
	}
	qs := e.dns.ReceivedFor(name)
	if len(qs) != 1 {
		tb.Fatalf("the resolver saw %+v, want one query", qs)
	}
	slot := e.slotOf(qs[0].Local)
	if ns, ok := e.r.Nameserver(cookie, slot); !ok || !sameAddrPort(ns, a) {
		tb.Errorf("the query arrived on slot %d, which holds %s, %v; want %s", slot, ns, ok, a)
	}
}

// sameAddrPort compares nameservers, an IPv4-mapped one as the IPv4 one the
// slots store.
func sameAddrPort(x, y netip.AddrPort) bool {
	return x.Addr().Unmap() == y.Addr().Unmap() && x.Port() == y.Port()
}

// learned returns what the pod's slots hold (the zero Addr when free) and
// how long ago each was last used, as Pods reports them.
func (e *captureEnv) learned(tb testing.TB, cookie uint64) [Slots]LearnedNameserver {
	tb.Helper()
	return e.reported(tb, cookie).Nameservers
}

// slotHolding returns the pod's slot that holds ns, or -1.
func (e *captureEnv) slotHolding(cookie uint64, ns netip.AddrPort) int {
	for slot := range Slots {
		if got, ok := e.r.Nameserver(cookie, slot); ok && sameAddrPort(got, ns) {
			return slot
		}
	}
	return -1
}

// setLastUsed makes a slot look unused for back, as if no query had gone
// through it since.
func (e *captureEnv) setLastUsed(tb testing.TB, cookie uint64, slot int, back time.Duration) {
	tb.Helper()
	ns, now := e.slotNow(tb, cookie, slot)
	ns.LastUsedNs = now - uint64(back)
	key := ztdnsNameserverKey{NetnsCookie: cookie, Slot: uint32(slot)}
	if err := e.r.objs.Nameservers.Put(&key, &ns); err != nil {
		tb.Fatalf("slot %d: %v", slot, err)
	}
}

// idleSlots makes every slot the pod holds look unused for longer than
// SlotIdle: the next destination may take any of them.
func (e *captureEnv) idleSlots(tb testing.TB, cookie uint64) {
	tb.Helper()
	for slot := range Slots {
		if _, ok := e.r.Nameserver(cookie, slot); ok {
			e.setLastUsed(tb, cookie, slot, SlotIdle+5*time.Second)
		}
	}
}
