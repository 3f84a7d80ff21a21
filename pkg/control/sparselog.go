package control

import (
	"log/slog"
	"sync"
	"time"
)

// SparseLogEvery is the least time between two lines of one SparseLog.
const SparseLogEvery = 10 * time.Second

// SparseLog logs one kind of event at most once per SparseLogEvery: refused
// callers of the control socket (one that asks again and again, a
// socket-group member steering, or a caller let in by a loosened mode), or
// failed CNI events, must not fill the node's logs. The line after a quiet
// spell says how many events went unlogged; the metrics count every one.
// The zero value is ready to use.
type SparseLog struct {
	mu       sync.Mutex
	next     time.Time // when the next line may be written
	unlogged int       // events since the last line
}

// Warn logs msg at warning level unless a line was written less than
// SparseLogEvery ago.
func (r *SparseLog) Warn(log *slog.Logger, msg string, args ...any) {
	r.mu.Lock()
	now := time.Now()
	if now.Before(r.next) {
		r.unlogged++
		r.mu.Unlock()
		return
	}
	unlogged := r.unlogged
	r.unlogged = 0
	r.next = now.Add(SparseLogEvery)
	r.mu.Unlock()
	if unlogged > 0 {
		args = append(args, "unloggedBefore", unlogged)
	}
	log.Warn(msg, args...)
}
