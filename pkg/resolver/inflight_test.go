package resolver

import "testing"

// TestDefaultPodInflightBytes: a sixteenth of the budget, but room for two
// of the largest replies whenever the budget has it.
func TestDefaultPodInflightBytes(t *testing.T) {
	for inflight, want := range map[int64]int64{
		8 << 20:   512 << 10,
		2 << 20:   128 << 10,
		1 << 20:   128 << 10,
		512 << 10: 128 << 10,
		100 << 10: 100 << 10,
	} {
		if got := DefaultPodInflightBytes(inflight); got != want {
			t.Errorf("DefaultPodInflightBytes(%d) = %d, want %d", inflight, got, want)
		}
	}
}
