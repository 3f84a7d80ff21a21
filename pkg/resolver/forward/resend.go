package forward

import (
	"net/netip"
	"sync"
	"time"
)

// Why a UDP exchange's query was sent again, the values of the resend
// counter's "reason" label.
const (
	resendJoined = "joined" // a query joined the exchange (a client's retry, or another pod's query)
	resendTimer  = "timer"  // the exchange's own, half-way through the timeout
)

// resender sends the query of a shared UDP exchange again, with the same
// ID and from the same sockets, to every upstream it asked that has not
// answered yet: a datagram lost on the way to the upstream, or the reply
// on its way back, would otherwise cost every query sharing the exchange
// a SERVFAIL at the timeout, their clients' own retries included (they
// join the exchange and send nothing). It sends only once the query has
// been out resendInterval since it last went out (to any upstream),
// whatever the number of queries joining, so two datagrams of an exchange
// to one upstream are at least resendInterval apart, and it sends at most
// 1 + timeout/resendInterval to each.
// A nil resender (a TCP exchange, which the kernel retransmits, or a
// query forwarded for its client alone) sends nothing.
type resender struct {
	now     func() time.Time
	metrics *upstreamMetrics

	mu      sync.Mutex
	query   []byte    // as sent, with the exchange's ID
	waiting []waiter  // the sockets of the exchanges still waiting for a reply
	one     [1]waiter // waiting's first backing: one upstream, the usual case, costs no allocation
	last    time.Time // when the query last went out
}

// waiter is an exchange waiting for its upstream's reply on its socket
// fd, which stays open while it is among the resender's waiting: the
// resender writes to it under its lock, and the exchange forgets it
// (done) before it closes it, so a resend never reaches a descriptor
// number the agent reused since.
type waiter struct {
	fd       int
	upstream netip.AddrPort
}

// init readies a resender in place (it lives in its flight).
func (r *resender) init(now func() time.Time, m *upstreamMetrics) {
	r.now, r.metrics = now, m
	r.waiting = r.one[:0]
}

// sent records that query goes to upstream on fd, which waits for the
// reply until done is called with it.
func (r *resender) sent(fd int, upstream netip.AddrPort, query []byte) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.query = query
	r.waiting = append(r.waiting, waiter{fd, upstream})
	r.last = r.now()
}

// done forgets fd: its exchange ended, and closes it next.
func (r *resender) done(fd int) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, w := range r.waiting {
		if w.fd == fd {
			r.waiting = append(r.waiting[:i], r.waiting[i+1:]...)
			return
		}
	}
}

// resend sends the query again on every socket still waiting, if it last
// went out resendInterval ago or more, and counts it under reason.
func (r *resender) resend(reason string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	now := r.now()
	if len(r.waiting) == 0 || now.Sub(r.last) < resendInterval {
		r.mu.Unlock()
		return
	}
	r.last = now
	defer r.mu.Unlock()
	// Under the lock, which holds every socket waiting open; no write
	// waits (a socket with no room sends nothing, and nothing is
	// counted).
	for _, w := range r.waiting {
		if err := sendUDP(w.fd, r.query); err == nil {
			r.metrics.resent(w.upstream, reason)
		}
	}
}
