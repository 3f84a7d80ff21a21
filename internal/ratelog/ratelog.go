// Package ratelog logs events a client can repeat at will (a caller
// refused, a connection closed for what its client did, a forwarded
// query's upstream exchange failing) at most once per Every: a client that
// repeats them must not fill the node's logs. The line after a quiet spell
// says how many events went unlogged; the metrics count every one.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Every is the least time between two lines of one Limiter.
const Every = 10 * time.Second

// Limiter logs at most one line per Every; its zero value is ready.
type Limiter struct {
	mu       sync.Mutex
	next     time.Time        // when the next line may be written
	unlogged int              // events since the last line
	now      func() time.Time // nil: time.Now (a test's clock)
}

// Log writes the line at level unless one was written within Every; it
// then counts the event, for the next line to say. At a level log leaves
// out it does nothing, and takes no lock: a debug line costs nothing more
// at the usual level than it did unspaced.
func (r *Limiter) Log(log *slog.Logger, level slog.Level, msg string, args ...any) {
	if !log.Enabled(context.Background(), level) {
		return
	}
	r.mu.Lock()
	clock := time.Now
	if r.now != nil {
		clock = r.now
	}
	now := clock()
	if now.Before(r.next) {
		r.unlogged++
		r.mu.Unlock()
		return
	}
	unlogged := r.unlogged
	r.unlogged = 0
	r.next = now.Add(Every)
	r.mu.Unlock()
	if unlogged > 0 {
		args = append(args, "unloggedBefore", unlogged)
	}
	log.Log(context.Background(), level, msg, args...)
}
