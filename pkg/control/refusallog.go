package control

import (
	"log/slog"
	"sync"
	"time"
)

// refusalLogEvery is the least time between two log lines about refused
// callers of one kind.
const refusalLogEvery = 10 * time.Second

// refusalLog logs refused callers at most once per refusalLogEvery: a
// caller that asks again and again (a socket-group member steering, or a
// caller let in by a loosened mode) must not fill the node's logs. The
// line after a quiet spell says how many refusals went unlogged; the
// metrics count every one.
type refusalLog struct {
	mu       sync.Mutex
	next     time.Time // when the next line may be written
	unlogged int       // refusals since the last line
}

func (r *refusalLog) warn(log *slog.Logger, msg string, args ...any) {
	r.mu.Lock()
	now := time.Now()
	if now.Before(r.next) {
		r.unlogged++
		r.mu.Unlock()
		return
	}
	unlogged := r.unlogged
	r.unlogged = 0
	r.next = now.Add(refusalLogEvery)
	r.mu.Unlock()
	if unlogged > 0 {
		args = append(args, "unloggedBefore", unlogged)
	}
	log.Warn(msg, args...)
}
