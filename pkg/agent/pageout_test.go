package agent

import "testing"

// Dropping the binary's pages shrinks what the process has mapped of it;
// the process keeps running on them (this test does, after the call).
func TestDropStartupPages(t *testing.T) {
	before, err := dropStartupPages()
	if err != nil {
		t.Fatal(err)
	}
	after, err := residentFile()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("binary pages mapped: %d KiB before, %d KiB after", before>>10, after>>10)
	if before <= 0 || after >= before/2 {
		t.Errorf("mapped file pages went from %d to %d bytes; want less than half", before, after)
	}
}
