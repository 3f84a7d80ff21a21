package agent

import (
	"context"
	"log/slog"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
)

// Loading the first table leaves the builder's garbage behind: it goes
// back to the OS as soon as the table is served, not at the second memory
// check 40 s later (in the middle of what the operator sees as the agent's
// first quiet minute, and what `make bench`'s footprint measures as idle),
// and the binary's pages only starting used are dropped after that.
func TestMemoryGoesBackOnceTheFirstTableIsServed(t *testing.T) {
	released := func() uint64 {
		s := []metrics.Sample{{Name: "/memory/classes/heap/released:bytes"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	// Garbage like a builder's: many small objects, dead by the time the
	// table is served, and no collection since.
	const garbage = 64 << 20
	junk := make([][]byte, 0, garbage/4096)
	for range cap(junk) {
		junk = append(junk, make([]byte, 4096))
	}
	runtime.KeepAlive(junk)
	junk = nil
	before := released()

	var log testenv.Log
	const want = "returned memory to the OS after loading the first table"
	// Then the binary's pages are dropped: after the collection, which
	// would map them again.
	afterLoad := make(chan bool, 1)
	loaded := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		returnMemoryAfterBursts(ctx, slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug})), loaded, func() {}, func() { afterLoad <- log.Contains(want) })
	}()
	t.Cleanup(func() { cancel(); <-done })

	close(loaded)
	select {
	case after := <-afterLoad:
		if !after {
			t.Errorf("afterLoad ran before the memory went back; log:\n%s", log.String())
		}
	case <-time.After(memoryCheckEvery / 2): // well before the first check
		t.Fatalf("no %q, or no afterLoad, in %v after the first table; log:\n%s", want, memoryCheckEvery/2, log.String())
	}
	// Compared, not subtracted: fewer bytes released than before (pages
	// the runtime took back meanwhile) must fail, not wrap around.
	if after := released(); after < before+garbage/2 {
		t.Fatalf("%d MiB released after %d MiB of garbage, %d MiB before; want at least half of it more", after>>20, garbage>>20, before>>20)
	}
}
