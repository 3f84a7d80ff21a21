// Package ratelog logs events a client can repeat at will (a caller
// refused, a connection closed for what its client did, a forwarded
// query's upstream exchange failing), or that a cluster's churn repeats (a
// table build, a manifest change), at most once per Every (or a Limiter's
// Interval): a client, or a busy cluster, must not fill the node's logs.
// The line after a quiet spell says how many events went unlogged; the
// metrics count every one.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Every is the least time between two lines of one Limiter, unless its
// Interval says otherwise.
const Every = 10 * time.Second

// Limiter logs at most one line per Interval; its zero value is ready.
type Limiter struct {
	// Interval is the least time between two lines; 0: Every.
	Interval time.Duration
	// Now is the clock; nil: time.Now (a test's clock).
	Now func() time.Time

	mu       sync.Mutex
	next     time.Time // when the next line may be written
	unlogged int       // events since the last line
}

// Log writes the line at level unless one was written within the
// Interval; it then counts the event, for the next line to say, and
// reports false. At a level log leaves out it does nothing, and takes no
// lock: a debug line costs nothing more at the usual level than it did
// unspaced.
func (r *Limiter) Log(log *slog.Logger, level slog.Level, msg string, args ...any) (logged bool) {
	if !log.Enabled(context.Background(), level) {
		return false
	}
	r.mu.Lock()
	clock := time.Now
	if r.Now != nil {
		clock = r.Now
	}
	every := Every
	if r.Interval > 0 {
		every = r.Interval
	}
	now := clock()
	if now.Before(r.next) {
		r.unlogged++
		r.mu.Unlock()
		return false
	}
	unlogged := r.unlogged
	r.unlogged = 0
	r.next = now.Add(every)
	r.mu.Unlock()
	if unlogged > 0 {
		args = append(args, "unloggedBefore", unlogged)
	}
	log.Log(context.Background(), level, msg, args...)
	return true
}

// InfoElseDebug logs routine events (a table build, a manifest change)
// that churn repeats: at INFO as Log spaces them, and each one Log holds
// back at DEBUG, for a debug log to have them all.
func (r *Limiter) InfoElseDebug(log *slog.Logger, msg string, args ...any) {
	if !r.Log(log, slog.LevelInfo, msg, args...) {
		log.Debug(msg, args...)
	}
}
