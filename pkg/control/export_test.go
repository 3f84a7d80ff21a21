package control

import (
	"net"

	dto "github.com/prometheus/client_model/go"
)

// ListenerStats is what one listener from Listen did, for tests: the
// metrics are the process's, which a listener closed by an earlier test
// may still move.
type ListenerStats struct {
	// Open and Queued are the connections admitted and waiting now.
	Open, Queued int
	// Evicted, Waited and TurnedAway count the connections closed to make
	// room, queued for room, and closed for want of it.
	Evicted, Waited, TurnedAway int
}

// StatsOf returns ln's ListenerStats; ln must come from Listen.
func StatsOf(ln net.Listener) ListenerStats {
	l := ln.(*guardedListener)
	l.mu.Lock()
	defer l.mu.Unlock()
	return ListenerStats{
		Open: len(l.conns), Queued: len(l.queue),
		Evicted: l.stats.evicted, Waited: l.stats.queued, TurnedAway: l.stats.turnedAway,
	}
}

// AcceptStopped is closed once ln, from Listen, takes no more connections
// from the socket: its server has begun to stop.
func AcceptStopped(ln net.Listener) <-chan struct{} {
	return ln.(*guardedListener).done
}

// Requests is ztdns_control_requests_total of route and code.
func Requests(route Route, code string) float64 {
	var m dto.Metric
	if err := metricRequests.WithLabelValues(route.Name, code).Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
