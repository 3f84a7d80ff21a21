package agent

import (
	"testing"
	"time"
)

// HoldHealthRounds holds each /healthz round before its queries until n
// requests share it (or, should they never, for 30 s), until the test ends.
func HoldHealthRounds(tb testing.TB, n int) {
	before := beforeHealthRound
	tb.Cleanup(func() { beforeHealthRound = before })
	beforeHealthRound = func(sharing func() int) {
		for deadline := time.Now().Add(30 * time.Second); sharing() < n && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// MetricValue is metricValue, for the external tests.
var MetricValue = metricValue
