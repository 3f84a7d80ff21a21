package agent

import (
	"context"
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// DefaultSocketsPerAddr is Config.SocketsPerAddr's default. One socket's
// reader answers over 130,000 queries a second, far more than a node's
// pods ask, and each socket may hold 2 MiB of queued queries in the kernel
// (see resolver.ListenUDP) and up to ~280 KiB of batch buffers. A second
// reader also costs CPU per query at the rates nodes see: two goroutines
// wake two threads in turn, which the kernel places on another CPU than
// the client's more often than one (README, Performance).
const DefaultSocketsPerAddr = 1

// MaxSocketsPerAddr bounds Config.SocketsPerAddr: each socket may queue
// 2 MiB in the kernel, so a typo must not cost the node's memory.
const MaxSocketsPerAddr = 64

// Returning memory after a burst: see returnMemoryAfterBursts.
const (
	memoryCheckEvery = 20 * time.Second
	// memorySlack is how much the Go runtime may keep above what it kept
	// after the last return before a quiet agent hands memory back.
	memorySlack = 8 << 20
)

// returnMemoryAfterBursts hands memory back to the OS once a burst is over.
//
// Between garbage collections the runtime cannot tell garbage from live
// objects, and a quiet agent allocates too little to start a collection
// (the runtime forces one only every two minutes); the scavenger then
// returns free pages at its own pace. So every memoryCheckEvery: when no
// collection ran since the last check (the agent is quiet) and the runtime
// holds more than memorySlack above what it held after the last return,
// collect and return everything free at once (debug.FreeOSMemory). A busy
// agent collects on its own and is left alone; a quiet one that did not
// grow costs nothing. After a burst, memory goes back within two checks.
//
// Loading the first table is a burst every agent has, and the moment it
// ends is known: when loaded closes, memory goes back at once (not two
// checks later, in the middle of what is the agent's first quiet minute),
// and then afterLoad runs.
//
// Each check first runs limit (memoryLimiter.check): the Go runtime's
// memory limit follows the cgroup's.
func returnMemoryAfterBursts(ctx context.Context, log *slog.Logger, loaded <-chan struct{}, limit, afterLoad func()) {
	samples := []metrics.Sample{
		{Name: "/gc/cycles/total:gc-cycles"},
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
	}
	read := func() (cycles, held uint64) {
		metrics.Read(samples)
		return samples[0].Value.Uint64(), samples[1].Value.Uint64() - samples[2].Value.Uint64()
	}
	lastCycles, floor := read()
	tick := time.NewTicker(memoryCheckEvery)
	defer tick.Stop()
	giveBack := func(why string) {
		_, before := read()
		debug.FreeOSMemory()
		lastCycles, floor = read()
		log.Debug("returned memory to the OS "+why, "heldBefore", before, "heldAfter", floor)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-loaded:
			loaded = nil // once
			giveBack("after loading the first table")
			afterLoad()
			continue
		case <-tick.C:
		}
		limit()
		cycles, held := read()
		if cycles == lastCycles && held > floor+memorySlack {
			giveBack("after a burst")
			continue
		}
		floor = min(floor, held)
		lastCycles = cycles
	}
}
