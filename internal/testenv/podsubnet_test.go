//go:build linux

package testenv

import (
	"os"
	"path/filepath"
	"testing"
)

// TestPodSubnetsAreTheMachines: each claim takes a subnet no running
// process holds, and takes back one whose holder is gone (killed before
// its cleanup), so that pods of tests running at once never share an IP.
func TestPodSubnetsAreTheMachines(t *testing.T) {
	dir := t.TempDir()
	oldLedgers := ledgerDir
	ledgerDir = t.TempDir()
	t.Cleanup(func() { ledgerDir = oldLedgers })
	claim := func() int {
		t.Helper()
		n, err := claimPodSubnet(dir)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if a, b := claim(), claim(); a != 1 || b != 2 {
		t.Fatalf("two claims took %d and %d, want 1 and 2", a, b)
	}
	// Held by a process that is gone: PID 1 started at another time.
	if err := os.WriteFile(filepath.Join(dir, "3"), []byte("1-0"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Held by a running process: this one.
	me, err := processID(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "4"), []byte(me), 0o600); err != nil {
		t.Fatal(err)
	}
	// The gone process's ledger: swept before its subnet is taken back,
	// so no namespace it left holds the subnet's IP.
	gone := filepath.Join(ledgerDir, "1-0")
	if err := os.WriteFile(gone, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if n := claim(); n != 3 {
		t.Errorf("with 3 held by a process that is gone, the claim took %d, want 3", n)
	}
	if _, err := os.Stat(gone); err == nil {
		t.Errorf("subnet 3 was taken back with its holder's ledger not swept")
	}
	if n := claim(); n != 5 {
		t.Errorf("with 1 to 4 held by running processes, the claim took %d, want 5", n)
	}
}
