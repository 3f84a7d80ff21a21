package table

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/vip"
)

// TestHostsWithoutVIP: the table counts, by reason, the ServiceEntry hosts
// istiod's rules give a VIP that have none (or, from istiod, no IPv4 one),
// across builds as entries and their status change, and the hosts holding
// an IPv4 VIP. Hosts those rules give none (opted out, resolution NONE, a
// STATIC wildcard, spec.addresses) are not counted. (Before, nothing
// counted them: a host istiod never allocated, or one ztdns's full
// allocator left out, was forwarded as silently as one istiod allocates
// within milliseconds.)
func TestHostsWithoutVIP(t *testing.T) {
	v6only := []model.HostAddress{{Host: "late.example", Address: netip.MustParseAddr("2001:2::9")}}
	ses := []model.ServiceEntry{
		{Namespace: "a", Name: "written", Created: t0, Hosts: []string{"written.example"}, Resolution: "DNS", AutoAllocate: true,
			StatusAddresses: status("written.example", "240.240.0.1", "2001:2::1")},
		// Two hosts istiod has not written, one of them under
		// .svc.<domain> (held without records, forwarded).
		{Namespace: "a", Name: "pending", Created: t0, Hosts: []string{"pending.example", "pending.a.svc.cluster.local"}, Resolution: "DNS", AutoAllocate: true},
		// istiod's IPv4 range exhausted: it writes the IPv6 VIP alone.
		{Namespace: "a", Name: "late", Created: t0, Hosts: []string{"late.example"}, Resolution: "DNS", AutoAllocate: true, StatusAddresses: v6only},
		{Namespace: "a", Name: "optout", Created: t0, Hosts: []string{"optout.example"}, Resolution: "DNS"},
		{Namespace: "a", Name: "none", Created: t0, Hosts: []string{"none.example"}, Resolution: "NONE", AutoAllocate: true},
		{Namespace: "a", Name: "static-wild", Created: t0, Hosts: []string{"*.static.example"}, Resolution: "STATIC", AutoAllocate: true},
		{Namespace: "a", Name: "fixed", Created: t0, Hosts: []string{"fixed.example"}, Resolution: "STATIC", AutoAllocate: true,
			Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.7")}, HasSpecAddresses: true},
	}
	want := func(pending, noIPv4, exhausted, none int) map[string]int {
		return map[string]int{NoVIPIstiodPending: pending, NoVIPIstiodNoIPv4: noIPv4, NoVIPPoolExhausted: exhausted, NoVIPSourceNone: none}
	}
	check := func(t *testing.T, tbl *Table, without map[string]int, ipv4 int) {
		t.Helper()
		if got := tbl.HostsWithoutVIP(); !maps.Equal(got, without) {
			t.Errorf("hosts without a VIP %v, want %v", got, without)
		}
		if got := tbl.AllocatedIPv4VIPs(); got != ipv4 {
			t.Errorf("hosts with an IPv4 VIP %d, want %d", got, ipv4)
		}
	}

	t.Run("istiod", func(t *testing.T) {
		b := NewBuilder(Options{VIPSource: vip.SourceIstiod})
		snap := &model.Snapshot{ServiceEntries: slices.Clone(ses)}
		tbl, _ := b.Build(snap)
		check(t, tbl, want(2, 1, 0, 0), 1)
		for _, r := range tbl.Rows("a") {
			if r.Name == "pending.a.svc.cluster.local." && r.Reason != "no VIP: istiod has not allocated one (no status.addresses)" {
				t.Errorf("ztdns table: %+v", r)
			}
		}

		// istiod writes one of the hosts: one is left.
		next := *snap
		next.ServiceEntries = slices.Clone(snap.ServiceEntries)
		next.ServiceEntries[1].StatusAddresses = status("pending.example", "240.240.0.2", "2001:2::2")
		tbl, _ = b.Build(&next)
		check(t, tbl, want(1, 1, 0, 0), 2)

		// The entries go: nothing is missing, nothing held.
		tbl, _ = b.Build(&model.Snapshot{ServiceEntries: slices.Clone(ses[3:])})
		check(t, tbl, want(0, 0, 0, 0), 0)
	})

	t.Run("none", func(t *testing.T) {
		tbl, _ := Build(&model.Snapshot{ServiceEntries: slices.Clone(ses), IstiodAllocates: true}, Options{VIPSource: vip.SourceNone})
		check(t, tbl, want(0, 0, 0, 4), 0)
	})

	// ztdns's allocator: an older entry holding every VIP leaves none for a
	// younger one's hosts.
	t.Run("ztdns, pool exhausted", func(t *testing.T) {
		big := model.ServiceEntry{Namespace: "old", Name: "big", Created: t0, Resolution: "DNS", AutoAllocate: true}
		for i := range vip.Slots {
			big.Hosts = append(big.Hosts, fmt.Sprintf("h%d.big.example", i))
		}
		young := model.ServiceEntry{Namespace: "tenant", Name: "db", Created: t0.Add(time.Hour), Resolution: "DNS", AutoAllocate: true,
			Hosts: []string{"db.tenant.example", "cache.tenant.example"}}
		b := NewBuilder(Options{VIPSource: vip.SourceZtdns})
		tbl, _ := b.Build(&model.Snapshot{ServiceEntries: []model.ServiceEntry{big, young}})
		check(t, tbl, want(0, 0, 2, 0), vip.Slots)
		for _, r := range tbl.Rows("tenant") {
			if r.Name == "db.tenant.example." && (!r.Forwarded || r.Reason != "no VIP: none left to allocate") {
				t.Errorf("ztdns table: %+v", r)
			}
		}

		// The big one loses a host: one of the young one's gets its VIP.
		big.Hosts = big.Hosts[1:]
		tbl, _ = b.Build(&model.Snapshot{ServiceEntries: []model.ServiceEntry{big, young}})
		check(t, tbl, want(0, 0, 1, 0), vip.Slots)
	})
}
