package model

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"unsafe"
)

// TestServiceEntrySize keeps ServiceEntry at 232 bytes on 64-bit machines:
// the source holds one per ServiceEntry of the cluster and the snapshot
// another, so 8 bytes more cost 160 KB at 10,000 ServiceEntries on every
// node. A new small field belongs in the word Folded, HasSpecAddresses and
// AutoAllocate share (two bytes are free there), not in a word of its own;
// one that most entries leave empty, as Folded was ([]bool, 24 bytes on
// every entry), is better encoded so that empty costs nothing.
func TestServiceEntrySize(t *testing.T) {
	if got := unsafe.Sizeof(ServiceEntry{}); got > 232 {
		t.Errorf("ServiceEntry takes %d bytes, want at most 232", got)
	}
}

// The hosts written otherwise than asked are the last Folded of Hosts.
func TestHostFolded(t *testing.T) {
	se := ServiceEntry{Hosts: []string{"b.example", "a.example", "c.example"}, Folded: 2}
	for i, want := range []bool{false, true, true} {
		if got := se.HostFolded(i); got != want {
			t.Errorf("HostFolded(%d) of %q, Folded 2: %v, want %v", i, se.Hosts, got, want)
		}
	}
	se.Folded = 0
	for i := range se.Hosts {
		if se.HostFolded(i) {
			t.Errorf("HostFolded(%d) with Folded 0: true, want false", i)
		}
	}
}

// TestSearchListIsKubelets holds SearchList to the search line kubelet
// writes (pkg/kubelet/network/dns GetPodDNS): per dnsPolicy, the node's
// domains where it puts them, duplicates left out, cut to its limits.
func TestSearchListIsKubelets(t *testing.T) {
	cluster := []string{"ns1.svc.cluster.local", "svc.cluster.local", "cluster.local"}
	node := []string{"node.example.", "corp.example"} // as resolv.conf has them: kubelet drops the dot
	own := []string{"pod.example", "corp.example", "svc.cluster.local"}
	cat := func(lists ...[]string) []string { return slices.Concat(lists...) }
	for _, tc := range []struct {
		policy      string
		hostNetwork bool
		want        []string
	}{
		{"", false, cat(cluster, []string{"node.example", "corp.example", "pod.example"})},
		{DNSClusterFirst, false, cat(cluster, []string{"node.example", "corp.example", "pod.example"})},
		{DNSClusterFirst, true, []string{"node.example", "corp.example", "pod.example", "svc.cluster.local"}},
		{DNSClusterFirstWithHostNet, true, cat(cluster, []string{"node.example", "corp.example", "pod.example"})},
		{DNSDefault, false, []string{"node.example", "corp.example", "pod.example", "svc.cluster.local"}},
		{DNSNone, false, own},
	} {
		p := Pod{Namespace: "ns1", DNSPolicy: tc.policy, HostNetwork: tc.hostNetwork, DNSSearches: own}
		if got := p.SearchList("cluster.local", node); !slices.Equal(got, tc.want) {
			t.Errorf("dnsPolicy %q hostNetwork %v: %q, want %q", tc.policy, tc.hostNetwork, got, tc.want)
		}
	}

	// Limits: 32 domains, none over 253 characters, 2048 in all.
	var many []string
	for i := range 40 {
		many = append(many, fmt.Sprintf("d%d.example", i))
	}
	got := (&Pod{Namespace: "ns1", DNSSearches: many}).SearchList("cluster.local", nil)
	if len(got) != 32 || got[31] != "d28.example" {
		t.Errorf("40 domains of the pod's: %d kept, the last %q; want 32, d28.example", len(got), got[len(got)-1])
	}
	long := strings.Repeat("a", 250) + ".example" // 258 characters
	got = (&Pod{DNSPolicy: DNSNone, DNSSearches: []string{"a.example", long, "b.example"}}).SearchList("cluster.local", nil)
	if !slices.Equal(got, []string{"a.example", "b.example"}) {
		t.Errorf("a domain over 253 characters: %q, want it left out", got)
	}
	var wide []string
	for i := range 12 {
		wide = append(wide, fmt.Sprintf("%s%02d.example", strings.Repeat("w", 190), i)) // 200 characters each
	}
	got = (&Pod{DNSPolicy: DNSNone, DNSSearches: wide}).SearchList("cluster.local", nil)
	if !slices.Equal(got, wide[:10]) { // 10 and their 9 spaces: 2009 characters; 11: 2210
		t.Errorf("12 domains of 200 characters: %d kept, want the first 10", len(got))
	}
}
