//go:build race

package resolver

// raceEnabled: the race detector is on, and memory costs more than it does.
const raceEnabled = true
