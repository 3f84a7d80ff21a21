package testenv

import (
	"fmt"
	"os"
	"testing"
)

// OpenFDs counts the open descriptors of process pid (os.Getpid() for the
// test's own): how a test sees that what it ran left none open.
func OpenFDs(tb testing.TB, pid int) int {
	tb.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		tb.Fatal(err)
	}
	return len(entries)
}
