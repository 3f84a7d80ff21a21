package vip

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func claim(host string, ageSeconds int) Claim {
	return Claim{Host: host, Owner: "ns/" + host, Created: t0.Add(time.Duration(ageSeconds) * time.Second)}
}

func keyOf(c Claim) Key { return Key{Owner: c.Owner, Host: c.Host} }

func TestAllocateRangesAndShape(t *testing.T) {
	got := Allocate([]Claim{claim("auto.internal", 0), claim("tcp-echo.external-1.svc.cluster.local", 1)})
	if len(got) != 2 {
		t.Fatalf("got %d VIPs, want 2: %v", len(got), got)
	}
	seen := map[netip.Addr]bool{}
	for k, p := range got {
		if !PrefixV4.Contains(p.V4) || !PrefixV6.Contains(p.V6) {
			t.Errorf("%v: %v outside %v/%v", k, p, PrefixV4, PrefixV6)
		}
		if b := p.V4.As4(); b[3] == 0 || b[3] == 255 {
			t.Errorf("%v: VIP %v ends in .0 or .255", k, p.V4)
		}
		if seen[p.V4] || seen[p.V6] {
			t.Errorf("%v: VIP %v reused", k, p)
		}
		seen[p.V4], seen[p.V6] = true, true
	}
}

// As istiod does, two ServiceEntries naming one host get a VIP each, and a
// host listed twice in one entry gets one.
func TestAllocatePerServiceEntry(t *testing.T) {
	se1 := Claim{Host: "db.example", Owner: "a/se1", Created: t0}
	se2 := Claim{Host: "db.example", Owner: "b/se2", Created: t0.Add(time.Hour)}
	got := Allocate([]Claim{se1, se2, se2})
	if len(got) != 2 {
		t.Fatalf("got %d VIPs, want one per ServiceEntry: %v", len(got), got)
	}
	if got[keyOf(se1)] == got[keyOf(se2)] {
		t.Errorf("both ServiceEntries got %v", got[keyOf(se1)])
	}
	if got[keyOf(se1)] != pairOf(home("db.example")) {
		t.Errorf("the older entry %v did not get the host's own slot", got[keyOf(se1)])
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
	want := Allocate(claims)
	for round := range 5 {
		shuffled := append([]Claim(nil), claims...)
		rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		got := Allocate(shuffled)
		for k, p := range want {
			if got[k] != p {
				t.Fatalf("round %d: %v got %v, want %v", round, k, got[k], p)
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
	before := Allocate(claims[:19000])
	after := Allocate(claims)
	collided := 0
	for _, c := range claims[19000:] {
		if pairOf(home(c.Host)) != after[keyOf(c)] {
			collided++
		}
	}
	if collided == 0 {
		t.Fatal("test needs at least one collision among the added hosts")
	}
	for k, p := range before {
		if after[k] != p {
			t.Fatalf("%v moved from %v to %v when newer entries were added", k, p, after[k])
		}
	}
}

func TestAllocateExhaustion(t *testing.T) {
	claims := make([]Claim, 0, Slots+10)
	for i := range Slots + 10 {
		claims = append(claims, claim(fmt.Sprintf("h%d", i), 0))
	}
	got := Allocate(claims)
	if len(got) != Slots {
		t.Fatalf("allocated %d VIPs, want all %d slots and no more", len(got), Slots)
	}
}

// TestEligible pins istiod's rules (ShouldV2AutoAllocateIP and keepHost in
// pilot/pkg/controllers/ipallocate).
func TestEligible(t *testing.T) {
	base := model.ServiceEntry{Namespace: "ns", Name: "se", AutoAllocate: true, Resolution: model.ResolutionDNS}
	with := func(f func(*model.ServiceEntry)) *model.ServiceEntry { se := base; f(&se); return &se }
	tests := []struct {
		name        string
		se          *model.ServiceEntry
		eligible    bool
		plain, wild bool // HostEligible for "a.example" and "*.example"
	}{
		{"DNS", with(func(*model.ServiceEntry) {}), true, true, false},
		{"STATIC", with(func(se *model.ServiceEntry) { se.Resolution = model.ResolutionStatic }), true, true, false},
		{"DNS_ROUND_ROBIN", with(func(se *model.ServiceEntry) { se.Resolution = model.ResolutionDNSRoundRobin }), true, true, false},
		{"DYNAMIC_DNS", with(func(se *model.ServiceEntry) { se.Resolution = model.ResolutionDynamicDNS }), true, true, true},
		{"NONE", with(func(se *model.ServiceEntry) { se.Resolution = model.ResolutionNone }), false, true, false},
		{"opted out", with(func(se *model.ServiceEntry) { se.AutoAllocate = false }), false, true, false},
		{"spec.addresses", with(func(se *model.ServiceEntry) { se.HasSpecAddresses = true }), false, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Eligible(tt.se); got != tt.eligible {
				t.Errorf("Eligible = %v, want %v", got, tt.eligible)
			}
			if got := HostEligible(tt.se, "a.example"); got != tt.plain {
				t.Errorf("HostEligible(a.example) = %v, want %v", got, tt.plain)
			}
			if got := HostEligible(tt.se, "*.example"); got != tt.wild {
				t.Errorf("HostEligible(*.example) = %v, want %v", got, tt.wild)
			}
		})
	}
}

func TestParseSource(t *testing.T) {
	for in, want := range map[string]Source{"": SourceAuto, "auto": SourceAuto, "ztdns": SourceZtdns, "istiod": SourceIstiod, "none": SourceNone} {
		if got, err := ParseSource(in); err != nil || got != want {
			t.Errorf("ParseSource(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseSource("Istiod"); err == nil {
		t.Error(`ParseSource("Istiod") accepted a value the flag does not document`)
	}
	for _, tt := range []struct {
		src             Source
		istiodAllocates bool
		want            From
	}{
		{SourceAuto, false, FromAllocator}, {SourceAuto, true, FromStatus},
		{SourceZtdns, true, FromAllocator}, {SourceIstiod, false, FromStatus},
		{SourceNone, false, FromNowhere}, {SourceNone, true, FromNowhere},
	} {
		if got := tt.src.From(tt.istiodAllocates); got != tt.want {
			t.Errorf("%s.From(%v) = %v, want %v", tt.src, tt.istiodAllocates, got, tt.want)
		}
	}
}

func BenchmarkAllocate10k(b *testing.B) {
	claims := make([]Claim, 10000)
	for i := range claims {
		claims[i] = claim(fmt.Sprintf("h%d.example", i), i)
	}
	b.ReportAllocs()
	for b.Loop() {
		Allocate(claims)
	}
}

// Claims that share a home slot get the slots after it, in order, as
// walking the used slots one by one gives them; thousands of them cost
// little (they were quadratic).
func TestAllocateSharedHome(t *testing.T) {
	var claims []Claim
	for i := range 20_000 {
		claims = append(claims, Claim{Host: "same.example", Owner: fmt.Sprintf("ns/se%05d", i), Created: t0})
	}
	got := Allocate(claims)
	first := home("same.example")
	for i, c := range claims {
		if want := pairOf((first + uint32(i)) % Slots); got[keyOf(c)] != want {
			t.Fatalf("claim %d: %v, want %v", i, got[keyOf(c)], want)
		}
	}
}

// TestOlderEntryMovesYoungerVIP pins the limit the README states (VIPs:
// istiod's or ztdns's): an older entry that gains a host landing on a
// younger entry's slot takes it, and the younger host moves to the next
// slot; removing the host moves it back. Nothing in the cluster records
// the VIP a host had, so no node can keep it.
func TestOlderEntryMovesYoungerVIP(t *testing.T) {
	old := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	victim := Claim{Host: "db.victim.example", Owner: "victim/db", Created: old.AddDate(6, 0, 0)}
	k := Key{Owner: victim.Owner, Host: victim.Host}
	alone := Allocate([]Claim{victim, {Host: "a.tenant", Owner: "tenant/old", Created: old}})[k].V4
	taken := Allocate([]Claim{victim, {Host: "a.tenant", Owner: "tenant/old", Created: old},
		{Host: "x44082.tenant", Owner: "tenant/old", Created: old}})[k].V4
	if want := netip.MustParseAddr("240.240.165.86"); alone != want {
		t.Fatalf("%s alone at %v, want %v", victim.Host, alone, want)
	}
	if want := netip.MustParseAddr("240.240.165.87"); taken != want {
		t.Errorf("%s at %v after the older entry gained x44082.tenant, want %v", victim.Host, taken, want)
	}
}
