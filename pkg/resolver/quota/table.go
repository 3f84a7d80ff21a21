package quota

import (
	"maps"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// sweepEvery bounds how often a full Table looks for idle entries to
// forget: a flood of new addresses must not make every query a sweep.
const sweepEvery = time.Second

// Table keeps a Source per address for sources that are no known pod (the
// node itself, host-network pods, anything not in the registry). It holds
// at most max addresses; past that, new addresses share one overflow
// Source until idle entries are forgotten, so a flood of addresses (spoofed
// ones, say) costs bounded memory and competes only with itself.
//
// Reads are lock-free (one atomic load of an immutable map); adding an
// address copies the map, which is rare and bounded.
type Table struct {
	max int
	m   atomic.Pointer[map[netip.Addr]*Source]

	mu        sync.Mutex // serialises writers
	lastSweep int64
	overflow  Source
}

// NewTable returns a table of at most size addresses (at least 1).
func NewTable(size int) *Table {
	t := &Table{max: max(size, 1), lastSweep: -int64(sweepEvery)}
	t.m.Store(&map[netip.Addr]*Source{})
	return t
}

// Get returns the Source of ip at now (ns on a monotonic clock), adding it
// when there is room.
func (t *Table) Get(ip netip.Addr, now int64) *Source {
	ip = ip.Unmap()
	if s := (*t.m.Load())[ip]; s != nil {
		return s
	}
	return t.add(ip, now)
}

func (t *Table) add(ip netip.Addr, now int64) *Source {
	t.mu.Lock()
	defer t.mu.Unlock()
	cur := *t.m.Load()
	if s := cur[ip]; s != nil {
		return s
	}
	next := cur
	if len(cur) >= t.max {
		if now-t.lastSweep < int64(sweepEvery) {
			return &t.overflow
		}
		t.lastSweep = now
		next = make(map[netip.Addr]*Source, len(cur))
		for a, s := range cur {
			if !s.idle(now) {
				next[a] = s
			}
		}
		if len(next) >= t.max {
			t.m.Store(&next)
			return &t.overflow
		}
	} else {
		next = maps.Clone(cur)
	}
	s := new(Source)
	next[ip] = s
	t.m.Store(&next)
	return s
}

// Len is the number of addresses with an entry of their own.
func (t *Table) Len() int { return len(*t.m.Load()) }
