//go:build linux

package agent

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/redirect"
)

// markRepairs is ztdns_capture_mark_repairs_total{kind} as the agent
// exports it.
func markRepairs(t *testing.T, kind string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(capture.Collectors()...)
	return metricValue(t, reg, "ztdns_capture_mark_repairs_total", map[string]string{"kind": kind})
}

// TestHousekeepingRestoresALostMark: a captured pod whose mark went from
// the pods map (bpftool map delete, say) was marked again only when the
// agent restarted: Redecide marks only a decision that changed, and
// `ztdns pods` showed the pod captured, not marked, uncaptured, for as long
// as the agent ran. Housekeeping marks it again, and counts it.
func TestHousekeepingRestoresALostMark(t *testing.T) {
	a, m := cniAgent(t)
	feedSource(a)
	n := podNetns(t, "203.0.113.121/32")
	cookie := cookieOf(t, n)
	ip := netip.MustParseAddr("203.0.113.121")
	if resp, err := a.cniAdd(control.CNIAddRequest{ContainerID: "5e7a11c0de01", Netns: n.Path(), IfName: "eth0", PodNamespace: "shop", PodName: "web-0",
		IPs: []netip.Addr{ip}, NetnsCookie: cookie}); err != nil || !resp.Captured {
		t.Fatalf("ADD = %+v, %v; want captured", resp, err)
	}
	restored := markRepairs(t, "mark_restored")

	if err := m.Unmark(cookie); err != nil { // as `bpftool map delete` does
		t.Fatal(err)
	}
	for range 3 {
		a.housekeep()
	}
	if got := m.cookies(); !slices.Equal(got, []uint64{cookie}) {
		t.Fatalf("after housekeeping the pods map holds %v, want the captured pod's %d", got, cookie)
	}
	m.mu.Lock()
	got := m.m[cookie]
	m.mu.Unlock()
	if got != (redirect.PodInfo{IPv4: ip}) {
		t.Errorf("marked again with %+v, want IPv4 %s", got, ip)
	}
	if d := markRepairs(t, "mark_restored") - restored; d != 1 {
		t.Errorf("ztdns_capture_mark_repairs_total{kind=mark_restored} grew by %v, want 1", d)
	}
}

// TestHousekeepingRemovesMarksNoRecordHolds: a CNI ADD that repeats a
// container ID with a new network namespace replaces the record, and the
// old namespace's mark stayed (two marks, one record), as did a mark whose
// unmark failed when its record went: until the agent restarted, each held
// a slot of the pods map, kept its nameserver slots from the sweep and
// counted as a marked pod. The replacing ADD unmarks the old namespace,
// and housekeeping removes a mark no record holds, and counts it.
func TestHousekeepingRemovesMarksNoRecordHolds(t *testing.T) {
	a, m := cniAgent(t)
	feedSource(a)
	ip := netip.MustParseAddr("203.0.113.122")
	add := func(cookie uint64, path string) {
		t.Helper()
		if resp, err := a.cniAdd(control.CNIAddRequest{ContainerID: "5e7a11c0de02", Netns: path, IfName: "eth0", PodNamespace: "shop", PodName: "web-1",
			IPs: []netip.Addr{ip}, NetnsCookie: cookie}); err != nil || !resp.Captured {
			t.Fatalf("ADD = %+v, %v; want captured", resp, err)
		}
	}
	first := podNetns(t, ip.String()+"/32")
	firstCookie := cookieOf(t, first)
	add(firstCookie, first.Path())
	second := podNetns(t, ip.String()+"/32")
	secondCookie := cookieOf(t, second)
	add(secondCookie, second.Path()) // the same container ID, another namespace
	if got := m.cookies(); !slices.Equal(got, []uint64{secondCookie}) {
		t.Errorf("after the repeated ADD the pods map holds %v, want only the new namespace's %d (the old one's was %d)", got, secondCookie, firstCookie)
	}

	// A mark no record holds: its record went while its unmark failed.
	const orphan = 1 << 60
	if err := m.Mark(orphan, redirect.PodInfo{IPv4: netip.MustParseAddr("203.0.113.123")}); err != nil {
		t.Fatal(err)
	}
	removed := markRepairs(t, "stale_mark_removed")
	a.housekeep()
	if got := m.cookies(); !slices.Equal(got, []uint64{secondCookie}) {
		t.Errorf("after housekeeping the pods map holds %v, want only the recorded pod's %d", got, secondCookie)
	}
	if d := markRepairs(t, "stale_mark_removed") - removed; d != 1 {
		t.Errorf("ztdns_capture_mark_repairs_total{kind=stale_mark_removed} grew by %v, want 1", d)
	}

	// The DEL releases the pod; nothing of it stays marked.
	if err := a.cniDel(control.CNIDelRequest{ContainerID: "5e7a11c0de02", Netns: second.Path(), PodNamespace: "shop", PodName: "web-1"}); err != nil {
		t.Fatal(err)
	}
	a.housekeep()
	if got := m.cookies(); len(got) != 0 {
		t.Errorf("after the DEL the pods map holds %v, want nothing", got)
	}
}
