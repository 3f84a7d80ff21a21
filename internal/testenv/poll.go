package testenv

import (
	"testing"
	"time"
)

// Eventually calls cond until it holds, failing the test, with what it
// waited for, if it still does not after within.
func Eventually(tb testing.TB, within time.Duration, what string, cond func() bool) {
	tb.Helper()
	if !poll(within, cond) {
		tb.Fatalf("still not so after %v: %s", within, what)
	}
}

// EventuallyNil calls f until it returns nil, failing the test with f's
// last error if it still does not after within.
func EventuallyNil(tb testing.TB, within time.Duration, f func() error) {
	tb.Helper()
	var err error
	if !poll(within, func() bool { err = f(); return err == nil }) {
		tb.Fatalf("not within %v: %v", within, err)
	}
}

// poll calls cond until it holds, and reports whether it did before within
// passed. It waits 1 ms after the first call, twice as long after each
// next one, up to 20 ms: a condition soon true is seen at once, one that
// takes long (or is costly to check) is not asked hundreds of times a
// second.
func poll(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for pause := time.Millisecond; !cond(); pause = min(2*pause, 20*time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
	}
	return true
}
