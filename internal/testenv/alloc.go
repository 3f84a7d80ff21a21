package testenv

import "runtime"

// BytesPerCall is what one call of fn allocates, on average over n calls,
// in the round of three that allocates least: the counts are the
// process's, and other goroutines (a server's, another test's still
// ending) may allocate meanwhile.
func BytesPerCall(n int, fn func()) uint64 {
	least := uint64(1 << 62)
	for range 3 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for range n {
			fn()
		}
		runtime.ReadMemStats(&after)
		least = min(least, (after.TotalAlloc-before.TotalAlloc)/uint64(n))
	}
	return least
}
