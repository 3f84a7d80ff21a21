package agent

import "testing"

// TestNoBeatAfterStop: a first table that arrives as the agent stops must
// not start the heartbeat after stopBeating made it stale, or the pods of a
// stopping agent would be captured again. Here the start comes after the
// stop; it must do nothing (with no redirector, a heartbeat would panic).
func TestNoBeatAfterStop(t *testing.T) {
	c := &dataplane{stopBeat: make(chan struct{})}
	c.stopBeating(false)
	c.startBeating()
	c.stopBeating(false) // and a second stop neither blocks nor panics
}
