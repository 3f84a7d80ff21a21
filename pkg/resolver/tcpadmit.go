package resolver

// Admission of TCP connections and the pressure they put on the server:
// who may open one (admitConn), whose is closed to make room for it
// (makeRoom), and how the share of TCPMaxConns open shortens the idle
// timeout (connLevel, idleTimeout).

import (
	"net"
	"net/netip"
	"time"

	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// Levels of TCP connection pressure, by the share of TCPMaxConns open. The
// fuller the table, the sooner an idle connection is closed (unbound's
// tcp-idle-timeout does the same): at half, a tenth of TCPIdleTimeout; at
// three quarters, a hundredth.
const (
	connsRelaxed int32 = iota
	connsBusy
	connsCrowded
)

// admitConn starts serving a new connection unless its source has all the
// connections it may have (its own bound, or past half of TCPMaxConns its
// fair share: quota.Pool) or the server has. A source within its share
// that finds every connection taken gets one anyway: a connection of the
// source most over its share is closed for it (makeRoom). Connections do
// not end on their own as forwarded queries do: one that keeps sending a
// query now and then is never idle, and without this, sources that took
// their connections while the server was quieter would keep the others
// out for good.
//
// The node's own health probe (isNodeProbe: from the address it asks, from
// a privileged port) has a source of its own, with no bound of its own: a
// process on the node holding that address's connections must not keep
// it out. It still takes its place in the pool, and makes room as any
// source within its share does.
func (s *Server) admitConn(c *net.TCPConn, local netip.AddrPort) bool {
	src := tcpPeer(c)
	var (
		source *quota.Source
		bound  = s.opts.Limits.TCPConns
	)
	if isNodeProbe(src, addrPortOf(c.LocalAddr()).Addr()) { // the connection's own address: local may be a wildcard
		source, bound = &s.nodeProbe, 0
	} else {
		_, source = s.sourceOf(src.Addr(), s.clock())
	}
	v := source.OpenConn(bound, s.tcpOpen)
	if v == quota.OverPool && s.makeRoom(source) {
		v = source.OpenConn(bound, s.tcpOpen)
	}
	switch v {
	case quota.OverSource:
		metricTCPRejected.source.Inc()
		return false
	case quota.OverPool:
		metricTCPRejected.total.Inc()
		return false
	}
	tc := &tcpConn{s: s, c: c, src: src, source: source}
	tc.w.init(tc)
	metricTCPConns.Inc()
	if !s.trackConn(tc) {
		s.releaseConn(tc)
		return false
	}
	s.raiseConnLevel()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.releaseConn(tc)
		defer s.untrackConn(tc)
		s.serveTCPConn(tc, local)
	}()
	return true
}

// makeRoom closes a connection of the source that holds the most
// connections beyond its fair share (an idle one if it has one), other
// than asking, and gives its slot back at once. It reports false when no
// source is over its share.
func (s *Server) makeRoom(asking *quota.Source) bool {
	share, some := s.tcpOpen.OverShare() // one reading for every connection compared
	if !some {
		return false
	}
	s.mu.Lock()
	var (
		pick     *tcpConn
		most     int64
		pickIdle bool
	)
	for tc := range s.tcp {
		if tc.source == asking || tc.evicted.Load() {
			continue
		}
		// The most over; of its connections, an idle one.
		over := tc.source.ConnsOver(share)
		if over <= 0 || over < most || over == most && (pick.source != tc.source || pickIdle) {
			continue
		}
		idle := tc.isIdle()
		if over == most && !idle {
			continue
		}
		pick, most, pickIdle = tc, over, idle
	}
	if pick == nil {
		s.mu.Unlock()
		return false
	}
	pick.evicted.Store(true) // under mu, where the walk skips the evicted
	s.mu.Unlock()
	pick.source.CountTCPRefused()
	metricTCPRejected.source.Inc()
	s.releaseConn(pick)
	pick.c.SetLinger(0)
	// Closed before it stops, which would have a waiting reader end for
	// the server stopping; its goroutine ends at once, without waiting for
	// its forwarded queries.
	pick.w.close(closedEvicted, 0)
	pick.stop() // a pausing reader too
	return true
}

func (s *Server) releaseConn(tc *tcpConn) {
	if !tc.released.CompareAndSwap(false, true) {
		return
	}
	tc.source.CloseConn(s.tcpOpen)
	metricTCPConns.Dec()
	s.tcpLevel.Store(s.connLevel())
}

// connLevel is the pressure the open connections put on the server.
func (s *Server) connLevel() int32 {
	open, max := int(s.tcpOpen.Used()), s.opts.TCPMaxConns
	switch {
	case 4*open >= 3*max:
		return connsCrowded
	case 2*open >= max:
		return connsBusy
	}
	return connsRelaxed
}

// idleTimeout is how long a connection may sit idle at a pressure level.
func (s *Server) idleTimeout(level int32) time.Duration {
	switch level {
	case connsCrowded:
		return s.opts.TCPIdleTimeout / 100
	case connsBusy:
		return s.opts.TCPIdleTimeout / 10
	}
	return s.opts.TCPIdleTimeout
}

// raiseConnLevel records the pressure after a new connection; when it rose,
// connections already idle get the shorter timeout too.
func (s *Server) raiseConnLevel() {
	level := s.connLevel()
	if s.tcpLevel.Swap(level) >= level {
		return
	}
	timeout := s.idleTimeout(level)
	s.mu.Lock()
	defer s.mu.Unlock()
	for tc := range s.tcp {
		tc.shortenIdle(timeout)
	}
}
