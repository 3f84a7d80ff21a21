//go:build race

package forward

// raceEnabled: the race detector is on, and memory costs more than it does.
const raceEnabled = true
