package model

import (
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
