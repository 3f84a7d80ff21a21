package vip

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func claim(host string, ageSeconds int) Claim {
	return Claim{Host: host, Owner: "ns/" + host, Created: t0.Add(time.Duration(ageSeconds) * time.Second)}
}

func TestAllocateRangesAndShape(t *testing.T) {
	got := Allocate([]Claim{claim("auto.internal", 0), claim("tcp-echo.external-1.svc.cluster.local", 1)}, nil)
	if len(got) != 2 {
		t.Fatalf("got %d VIPs, want 2: %v", len(got), got)
	}
	seen := map[netip.Addr]bool{}
	for host, p := range got {
		if !PrefixV4.Contains(p.V4) || !PrefixV6.Contains(p.V6) {
			t.Errorf("%s: %v outside %v/%v", host, p, PrefixV4, PrefixV6)
		}
		if b := p.V4.As4(); b[3] == 0 || b[3] == 255 {
			t.Errorf("%s: VIP %v ends in .0 or .255", host, p.V4)
		}
		if seen[p.V4] || seen[p.V6] {
			t.Errorf("%s: VIP %v reused", host, p)
		}
		seen[p.V4], seen[p.V6] = true, true
		if s4, ok := slotOf(p.V4); !ok {
			t.Errorf("slotOf(%v) failed", p.V4)
		} else if s6, ok := slotOf(p.V6); !ok || s6 != s4 {
			t.Errorf("slotOf(%v) = %d,%v; want %d (same slot as v4)", p.V6, s6, ok, s4)
		}
	}
}

func TestAllocateSameHostOneVIP(t *testing.T) {
	got := Allocate([]Claim{
		{Host: "db.example", Owner: "a/se1", Created: t0},
		{Host: "db.example", Owner: "b/se2", Created: t0.Add(time.Hour)},
	}, nil)
	if len(got) != 1 {
		t.Fatalf("two ServiceEntries naming one host got %d VIPs", len(got))
	}
}

// Every node must compute the same answer whatever order its informers
// delivered the objects in.
func TestAllocateOrderIndependent(t *testing.T) {
	var claims []Claim
	for i := range 3000 {
		// Identical timestamps for many entries make the tie-breakers matter.
		claims = append(claims, claim(fmt.Sprintf("h%d.example", i), i%7))
	}
	want := Allocate(claims, nil)
	for round := range 5 {
		shuffled := append([]Claim(nil), claims...)
		rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		got := Allocate(shuffled, nil)
		for h, p := range want {
			if got[h] != p {
				t.Fatalf("round %d: %s got %v, want %v", round, h, got[h], p)
			}
		}
	}
}

// Adding a (newer) ServiceEntry never moves an existing host, even when the
// new host hashes onto an occupied slot.
func TestAllocateAddingNeverMovesExisting(t *testing.T) {
	var claims []Claim
	for i := range 20000 { // dense enough that collisions are certain
		claims = append(claims, claim(fmt.Sprintf("svc-%d.example", i), i))
	}
	before := Allocate(claims[:19000], nil)
	after := Allocate(claims, nil)
	collided := 0
	for _, c := range claims[19000:] {
		if home(c.Host) != mustSlot(t, after[c.Host].V4) {
			collided++
		}
	}
	if collided == 0 {
		t.Fatal("test needs at least one collision among the added hosts")
	}
	for h, p := range before {
		if after[h] != p {
			t.Fatalf("%s moved from %v to %v when newer entries were added", h, p, after[h])
		}
	}
}

func TestAllocateSkipsTaken(t *testing.T) {
	c := claim("auto.internal", 0)
	first := Allocate([]Claim{c}, nil)["auto.internal"]
	got := Allocate([]Claim{c}, []netip.Addr{first.V4})["auto.internal"]
	if got == first {
		t.Fatalf("allocator handed out %v although istiod already assigned it", first.V4)
	}
}

func TestAllocateExhaustion(t *testing.T) {
	claims := make([]Claim, 0, slots+10)
	for i := range slots + 10 {
		claims = append(claims, claim(fmt.Sprintf("h%d", i), 0))
	}
	got := Allocate(claims, nil)
	if len(got) != slots {
		t.Fatalf("allocated %d VIPs, want all %d slots and no more", len(got), slots)
	}
}

func TestSlotOfRejectsForeign(t *testing.T) {
	for _, s := range []string{"10.0.0.1", "240.240.1.0", "240.240.1.255", "2001:2::1", "2001:3::f0f0:101", "2001:2:0:1::f0f0:101"} {
		if _, ok := slotOf(netip.MustParseAddr(s)); ok {
			t.Errorf("slotOf(%s) accepted an address the allocator never produces", s)
		}
	}
}

func mustSlot(t *testing.T, a netip.Addr) uint32 {
	t.Helper()
	s, ok := slotOf(a)
	if !ok {
		t.Fatalf("slotOf(%v) failed", a)
	}
	return s
}

func BenchmarkAllocate10k(b *testing.B) {
	claims := make([]Claim, 10000)
	for i := range claims {
		claims[i] = claim(fmt.Sprintf("h%d.example", i), i)
	}
	b.ReportAllocs()
	for b.Loop() {
		Allocate(claims, nil)
	}
}
