package table

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/vip"
)

// status is what istiod writes for one host: a v4 and a v6 VIP.
func status(host, v4, v6 string) []model.HostAddress {
	return []model.HostAddress{{Host: host, Address: netip.MustParseAddr(v4)}, {Host: host, Address: netip.MustParseAddr(v6)}}
}

// TestVIPSource checks which VIP every ServiceEntry shape answers with, per
// --vip-source and whether istiod allocates.
func TestVIPSource(t *testing.T) {
	ses := []model.ServiceEntry{
		{Namespace: "a", Name: "written", Created: t0, Hosts: []string{"written.example"}, Resolution: "DNS", AutoAllocate: true,
			StatusAddresses: status("written.example", "240.240.0.1", "2001:2::1")},
		{Namespace: "a", Name: "pending", Created: t0, Hosts: []string{"pending.example"}, Resolution: "DNS", AutoAllocate: true},
		// Opted out (or resolution NONE) with status istiod has not cleared
		// yet: istiod no longer serves it, neither does ztdns.
		{Namespace: "a", Name: "optout", Created: t0, Hosts: []string{"optout.example"}, Resolution: "DNS", AutoAllocate: false,
			StatusAddresses: status("optout.example", "240.240.0.2", "2001:2::2")},
		{Namespace: "a", Name: "none", Created: t0, Hosts: []string{"none.example"}, Resolution: "NONE", AutoAllocate: true,
			StatusAddresses: status("none.example", "240.240.0.3", "2001:2::3")},
		{Namespace: "a", Name: "dyn", Created: t0, Hosts: []string{"*.dyn.example"}, Resolution: "DYNAMIC_DNS", AutoAllocate: true,
			StatusAddresses: status("*.dyn.example", "240.240.0.4", "2001:2::4")},
		{Namespace: "a", Name: "static-wild", Created: t0, Hosts: []string{"*.static.example"}, Resolution: "STATIC", AutoAllocate: true},
		// One host, two entries: a VIP each, the older one answers.
		{Namespace: "a", Name: "shared-old", Created: t0, Hosts: []string{"shared.example"}, Resolution: "DNS", AutoAllocate: true,
			StatusAddresses: status("shared.example", "240.240.0.5", "2001:2::5")},
		{Namespace: "b", Name: "shared-new", Created: t0.Add(time.Minute), Hosts: []string{"shared.example"}, Resolution: "DNS", AutoAllocate: true,
			StatusAddresses: status("shared.example", "240.240.0.6", "2001:2::6")},
		// spec.addresses answer in every mode.
		{Namespace: "a", Name: "fixed", Created: t0, Hosts: []string{"fixed.example"}, Resolution: "STATIC", AutoAllocate: true,
			Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.7")}, HasSpecAddresses: true},
	}
	statusOnly := map[string][]string{
		"written.example.":    {"240.240.0.1"},
		"pending.example.":    nil,
		"optout.example.":     nil,
		"none.example.":       nil,
		"x.dyn.example.":      {"240.240.0.4"},
		"x.static.example.":   nil,
		"shared.example.":     {"240.240.0.5"},
		"x.y.dyn.example.":    {"240.240.0.4"},
		"dyn.example.":        nil,
		"unrelated.example.":  nil,
		"written.example.a.":  nil,
		"optout.example.a.b.": nil,
	}
	tests := []struct {
		name      string
		source    vip.Source
		withLock  bool // the source saw istiod's allocator
		noStatus  bool // no entry carries status.addresses
		allocated bool // every eligible host gets a VIP from vip.Allocate
		noVIPs    bool // every host is forwarded, status or not
	}{
		{name: "auto, status present", source: vip.SourceAuto},
		{name: "auto, allocator lock seen", source: vip.SourceAuto, withLock: true, noStatus: true},
		{name: "auto, no sign of istiod", source: vip.SourceAuto, noStatus: true, allocated: true},
		{name: "istiod", source: vip.SourceIstiod},
		{name: "istiod, nothing written yet", source: vip.SourceIstiod, noStatus: true},
		{name: "ztdns ignores status", source: vip.SourceZtdns, withLock: true, allocated: true},
		// istiod with PILOT_ENABLE_IP_AUTOALLOCATE off serves no VIP, but
		// leaves the lock and the status it wrote while it was on.
		{name: "none ignores status", source: vip.SourceNone, withLock: true, noVIPs: true},
		{name: "none, no sign of istiod", source: vip.SourceNone, noStatus: true, noVIPs: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := &model.Snapshot{ServiceEntries: slices.Clone(ses), IstiodAllocates: tt.withLock}
			if tt.noStatus {
				for i := range snap.ServiceEntries {
					snap.ServiceEntries[i].StatusAddresses = nil
				}
			}
			tbl, warnings := Build(snap, Options{VIPSource: tt.source})
			if len(warnings) > 0 {
				t.Errorf("warnings: %v", warnings)
			}
			if e := tbl.Resolve("fixed.example.", "a").Entry; e == nil || e.AddrSource() != FromSpec {
				t.Errorf("fixed.example = %+v, want its spec.addresses", e)
			} else if got := answerOf(t, tbl.Resolve("fixed.example.", "a"), "fixed.example.", dns.TypeA); !slices.Equal(got, []string{"198.51.100.7"}) {
				t.Errorf("fixed.example A = %v, want its spec.addresses' 198.51.100.7", got)
			}
			for qname, want := range statusOnly {
				e := tbl.Resolve(qname, "a").Entry
				switch {
				case tt.allocated:
					eligible := !slices.Contains([]string{"optout.example.", "none.example.", "x.static.example.", "dyn.example.",
						"unrelated.example.", "written.example.a.", "optout.example.a.b."}, qname)
					if !eligible {
						if e != nil {
							t.Errorf("%s answered %v, want forwarded", qname, e.Addrs)
						}
						continue
					}
					if e == nil || e.AddrSource() != FromAllocated || !vip.PrefixV4.Contains(e.Addrs[0]) {
						t.Errorf("%s = %+v, want a VIP from ztdns's allocator", qname, e)
					}
				case tt.noVIPs:
					if e != nil {
						t.Errorf("%s answered %v from %s, want forwarded: ztunnel knows no VIP", qname, e.Addrs, e.AddrSource())
					}
				case tt.noStatus || want == nil:
					if e != nil {
						t.Errorf("%s answered %v from %s, want forwarded: istiod wrote nothing for it", qname, e.Addrs, e.AddrSource())
					}
				default:
					if e == nil {
						t.Fatalf("%s forwarded, want istiod's %v", qname, want)
					}
					got := answerOf(t, tbl.Resolve(qname, "a"), qname, dns.TypeA)
					if e.AddrSource() != FromStatus || !slices.Equal(got, want) {
						t.Errorf("%s = %v from %s, want istiod's %v", qname, got, e.AddrSource(), want)
					}
				}
			}
		})
	}
}

// TestVIPSourceSwitch: once istiod's allocator shows up, every VIP ztdns
// allocated itself is gone at once, hosts istiod has not written included.
func TestVIPSourceSwitch(t *testing.T) {
	b := NewBuilder(Options{})
	snap := &model.Snapshot{ServiceEntries: []model.ServiceEntry{
		{Namespace: "a", Name: "one", Created: t0, Hosts: []string{"one.example"}, Resolution: "DNS", AutoAllocate: true},
		{Namespace: "a", Name: "two", Created: t0, Hosts: []string{"two.example"}, Resolution: "DNS", AutoAllocate: true},
	}}
	tbl, _ := b.Build(snap)
	if e := tbl.Resolve("one.example.", "a").Entry; e == nil || e.AddrSource() != FromAllocated {
		t.Fatalf("before istiod: one.example = %+v, want ztdns's VIP", e)
	}
	next := *snap
	next.ServiceEntries = slices.Clone(snap.ServiceEntries)
	next.ServiceEntries[0].StatusAddresses = status("one.example", "240.240.0.1", "2001:2::1")
	tbl, _ = b.Build(&next)
	if got := answerOf(t, tbl.Resolve("one.example.", "a"), "one.example.", dns.TypeAAAA); !slices.Equal(got, []string{"2001:2::1"}) {
		t.Errorf("one.example AAAA = %v, want istiod's 2001:2::1", got)
	}
	if e := tbl.Resolve("two.example.", "a").Entry; e != nil {
		t.Errorf("two.example answers %v, which istiod never wrote", e.Addrs)
	}
}
