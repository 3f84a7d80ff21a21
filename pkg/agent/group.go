// The group that runs the agent's parts: the first to fail stops the agent,
// and a stopping agent waits a bounded time for the others.

package agent

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// group runs the agent's parts; the first to fail stops the agent.
type group struct {
	wg      sync.WaitGroup
	cancel  context.CancelCauseFunc
	mu      sync.Mutex
	running map[string]int // parts still running, by name
}

func (g *group) spawn(part string, f func() error) {
	g.wg.Add(1)
	g.mu.Lock()
	if g.running == nil {
		g.running = map[string]int{}
	}
	g.running[part]++
	g.mu.Unlock()
	go func() {
		defer g.wg.Done()
		defer func() {
			g.mu.Lock()
			if g.running[part]--; g.running[part] == 0 {
				delete(g.running, part)
			}
			g.mu.Unlock()
		}()
		if err := f(); err != nil {
			g.cancel(fmt.Errorf("%s: %w", part, err))
		}
	}()
}

// waitStopped waits up to within for every part to return, and names those
// that did not: the agent then exits without them.
func (g *group) waitStopped(log *slog.Logger, within time.Duration) {
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(within):
		g.mu.Lock()
		parts := slices.Sorted(maps.Keys(g.running))
		g.mu.Unlock()
		log.Warn("parts of the agent did not stop in time; exiting without them", "parts", parts, "waited", within)
	}
}

// unlessSet wraps a server whose end is no failure once done is set: the
// successor took its socket (handedOver), or it served a retired one
// (retiredDone).
func unlessSet(done *atomic.Bool, serve func() error) func() error {
	return func() error {
		err := serve()
		if done.Load() {
			return nil
		}
		return err
	}
}
