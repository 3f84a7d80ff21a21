package control

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	// metricRequests counts the control socket's requests by route and
	// answer status.
	metricRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztdns_control_requests_total",
		Help: "Requests on the control socket by route and HTTP status (400 invalid, 403 refused, 413 too large).",
	}, []string{"route", "code"})
	// metricRefused counts connections from callers that may not connect.
	metricRefused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ztdns_control_refused_connections_total",
		Help: "Connections to the control socket closed unserved because the caller (SO_PEERCRED) is neither root nor in the socket group.",
	})
)

var (
	// metricConns is the number of open connections.
	metricConns = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ztdns_control_connections",
		Help: "Open connections to the control socket (at most 32).",
	})
	// metricEvicted counts connections closed to make room for a new one.
	metricEvicted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ztdns_control_evicted_connections_total",
		Help: fmt.Sprintf("Connections to the control socket closed to make room for a new one at the bound of %d: kept-alive idle ones, half-sent requests, and new ones that sent nothing for %v; never one with a request in.", MaxConns, newConnGrace),
	})
	// metricWaited counts root's connections that waited for room.
	metricWaited = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ztdns_control_waited_connections_total",
		Help: fmt.Sprintf("Root's connections to the control socket that found all %d with requests in (or new) and waited for one to be answered, end, or be closable: a storm of callers, or root's connections held by a stuck one.", MaxConns),
	})
	// metricTurnedAway counts members' connections closed for want of room.
	metricTurnedAway = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ztdns_control_turned_away_connections_total",
		Help: fmt.Sprintf("Connections of socket-group members closed unserved for want of room: no members' connection could be closed for them (all %d with requests in, or root's holding every one of the %d); root's are never turned away.", MaxGroupConns, MaxConns),
	})
)

// Collectors returns the control socket's metrics for registration.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{metricRequests, metricRefused, metricConns, metricEvicted, metricWaited, metricTurnedAway}
}
