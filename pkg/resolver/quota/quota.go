// Package quota is what one source of DNS queries may take of the resolver:
// a query rate, forwarded queries in flight, TCP connections and bytes of
// replies in flight, and the count of what it was refused. A source is a pod (its Source hangs off the
// pod registry's record, so the lookup the resolver does for every query
// finds it) or, for an address no pod owns, an entry of a bounded Table.
//
// Everything here is lock-free on the query path: a rate check is one
// compare-and-swap (retried when another query took the bucket first); a
// bound is a few atomic operations: adds to what the source and the pool
// hold (and to the pool's holders when the source starts or stops holding
// some), a load of the holders for the fair share, and a load of the peak
// (a compare-and-swap when it rises). No bound waits for another. A reply
// read over TCP takes its bytes through a Hold, which takes the Budget's
// lock briefly each time it grows (a few times a reply), so that they can
// be taken back; the walk for a hold to take back happens only when a
// source within its share finds the budget spent.
package quota

import (
	"math"
	"sync/atomic"
	"time"
)

// Limits bound each source. A zero or negative field disables that bound.
type Limits struct {
	// QPS is the sustained rate of queries one source may send, and Burst
	// how many it may send at once after a quiet spell.
	QPS   float64
	Burst int
	// Forwarding bounds one source's queries waiting for an upstream.
	Forwarding int
	// TCPConns bounds one source's open TCP connections.
	TCPConns int
}

// Rate is a rate limit in the form the check uses: GCRA (the generic cell
// rate algorithm), a token bucket kept as one timestamp.
type Rate struct {
	interval  int64 // ns between queries at the sustained rate; 0: unlimited
	tolerance int64 // how far ahead of now the schedule may run: the burst
}

// NewRate returns the rate check for qps queries a second with bursts of
// burst (at least 1). qps <= 0 is unlimited.
func NewRate(qps float64, burst int) Rate {
	if qps <= 0 || math.IsInf(qps, 0) || math.IsNaN(qps) {
		return Rate{}
	}
	interval := max(int64(float64(time.Second)/qps), 1)
	return Rate{interval: interval, tolerance: interval * int64(max(burst, 1)-1)}
}

// Params are the rate in nanoseconds: the interval between queries at the
// sustained rate (0: unlimited), and how far ahead of now the schedule may
// run (the burst).
func (r Rate) Params() (interval, tolerance int64) { return r.interval, r.tolerance }

// Source is the state of one source. The zero value is ready to use.
type Source struct {
	// tat is the theoretical arrival time of the next query at the
	// sustained rate (ns on the caller's clock): the bucket is full when it
	// is not after now, and empty when it is tolerance ahead of now.
	tat atomic.Int64
	// What the source holds of each node pool: forwarded queries in
	// flight, open TCP connections, bytes of replies in flight.
	forwarding atomic.Int64
	tcpConns   atomic.Int64
	bytes      atomic.Int64

	rateLimited    atomic.Uint64
	forwardRefused atomic.Uint64
	bytesRefused   atomic.Uint64
	tcpRefused     atomic.Uint64
}

// Allow takes one query at now (ns on a monotonic clock) from the rate, or
// reports false, and counts it, when the source is over it.
func (s *Source) Allow(now int64, r Rate) bool {
	if r.interval == 0 {
		return true
	}
	for {
		tat := s.tat.Load()
		next := max(tat, now)
		if next-now > r.tolerance {
			s.rateLimited.Add(1)
			return false
		}
		if s.tat.CompareAndSwap(tat, next+r.interval) {
			return true
		}
	}
}

// Wait is how long after now the source's next query is allowed: 0 when
// it is now.
func (s *Source) Wait(now int64, r Rate) time.Duration {
	if r.interval == 0 {
		return 0
	}
	return time.Duration(max(s.tat.Load()-r.tolerance-now, 0))
}

// StartForward takes one forwarding slot for the source: one of its own
// max (<= 0: unbounded) and one of the node's pool, within its fair share
// of it (see Pool). Over its own bound or its share, it is refused and
// counted (OverSource); with the pool used up, refused (OverPool). Call
// EndForward with the same pool when the query is answered.
func (s *Source) StartForward(max int, pool *Pool) Verdict {
	v := pool.take(&s.forwarding, 1, int64(max))
	if v == OverSource {
		s.forwardRefused.Add(1)
	}
	return v
}

// EndForward returns a slot StartForward took.
func (s *Source) EndForward(pool *Pool) { pool.give(&s.forwarding, 1) }

// ForwardsOver is how many forwarding slots the source holds beyond share
// (a pool's Share; 0 or less: none).
func (s *Source) ForwardsOver(share int64) int64 { return s.forwarding.Load() - share }

// CountForwardRefused counts a forward of the source ended for being over
// its share.
func (s *Source) CountForwardRefused() { s.forwardRefused.Add(1) }

// OpenConn takes one TCP connection for the source, as StartForward takes
// a forwarding slot. Call CloseConn when the connection ends.
func (s *Source) OpenConn(max int, pool *Pool) Verdict {
	v := pool.take(&s.tcpConns, 1, int64(max))
	if v == OverSource {
		s.tcpRefused.Add(1)
	}
	return v
}

// CloseConn returns a connection OpenConn took.
func (s *Source) CloseConn(pool *Pool) { pool.give(&s.tcpConns, 1) }

// ConnsOver is how many TCP connections the source holds beyond share (a
// pool's Share; 0 or less: none).
func (s *Source) ConnsOver(share int64) int64 { return s.tcpConns.Load() - share }

// CountTCPRefused counts a connection of the source closed for being over
// its share.
func (s *Source) CountTCPRefused() { s.tcpRefused.Add(1) }

// CountBytesRefused counts a query of the source's a reply of which a
// Budget refused as OverSource: read from an upstream (its forward's, or a
// lookup the resolver made for it, such as a CNAME's target), or waiting
// to be written to its client. Its client got SERVFAIL, or an answer
// without what the refused lookup would have added. A nil source counts
// nothing.
func (s *Source) CountBytesRefused() {
	if s != nil {
		s.bytesRefused.Add(1)
	}
}

// bytesHeld is the source's part of a Budget; nil for a nil source.
func (s *Source) bytesHeld() *atomic.Int64 {
	if s == nil {
		return nil
	}
	return &s.bytes
}

// idle reports whether the source holds nothing and its bucket is full at
// now: forgetting it then changes nothing but its counters.
func (s *Source) idle(now int64) bool {
	return s.forwarding.Load() == 0 && s.tcpConns.Load() == 0 && s.bytes.Load() == 0 && s.tat.Load() <= now
}

// Usage is what a source holds and was refused, as `ztdns pods` shows it.
type Usage struct {
	// RateLimited counts queries over the rate (dropped over UDP, REFUSED
	// over TCP).
	RateLimited uint64 `json:"rateLimited"`
	// ForwardRefused counts queries answered SERVFAIL at once because the
	// source had Limits.Forwarding queries upstream already, or more than
	// its fair share of the node's (see Pool), and forwards ended early to
	// make room for a source under its share.
	ForwardRefused uint64 `json:"forwardRefused"`
	// BytesRefused counts queries a reply of which did not fit what the
	// source may hold of the replies in flight (its own bound or its fair
	// share of the node's budget, see Budget): read from the upstream, or
	// waiting to be written to its TCP client; and replies being read
	// whose bytes were taken back for a source under its share. Once per
	// query, however many of its replies (its forward's, the resolver's
	// lookups for it) were refused: its client got SERVFAIL, or an answer
	// without what a refused lookup would have added (a CNAME alone).
	BytesRefused uint64 `json:"bytesRefused"`
	// TCPRefused counts connections closed at once because the source had
	// Limits.TCPConns open already or more than its fair share of the
	// node's, and connections closed to make room for a source under its
	// share.
	TCPRefused uint64 `json:"tcpRefused"`
	// Forwarding and TCPConns are what it holds now.
	Forwarding int `json:"forwarding"`
	TCPConns   int `json:"tcpConns"`
	// InflightBytes is the bytes of replies it holds now.
	InflightBytes int64 `json:"inflightBytes,omitempty"`
}

// Usage returns the source's counters. A nil Source has none.
func (s *Source) Usage() Usage {
	if s == nil {
		return Usage{}
	}
	return Usage{
		RateLimited:    s.rateLimited.Load(),
		ForwardRefused: s.forwardRefused.Load(),
		BytesRefused:   s.bytesRefused.Load(),
		TCPRefused:     s.tcpRefused.Load(),
		Forwarding:     int(s.forwarding.Load()),
		TCPConns:       int(s.tcpConns.Load()),
		InflightBytes:  s.bytes.Load(),
	}
}
