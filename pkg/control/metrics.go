package control

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	// metricRequests counts the control socket's requests by route and
	// outcome: the answer's status, or codeAborted.
	metricRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztdns_control_requests_total",
		Help: "Requests on the control socket by route and outcome: the HTTP status of an answer written out (400 invalid, 403 refused, 413 too large, 429 a table asked for while another is written), or aborted for one that did not reach its caller in full.",
	}, []string{"route", "code"})
	// metricRefused counts connections from callers that may not call.
	metricRefused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ztdns_control_refused_connections_total",
		Help: "Connections to the control socket refused because the caller (SO_PEERCRED) is neither root nor of the socket group by its primary group: its request answered 403, saying why (closed unserved when 4 are being answered already).",
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
		Help: fmt.Sprintf("Connections to the control socket closed to make room for a new one at the bound of %d: kept-alive idle ones and half-sent requests; never one with a request in, nor a new one that has sent nothing yet.", MaxConns),
	})
	// metricWaited counts root's connections that waited for room.
	metricWaited = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ztdns_control_waited_connections_total",
		Help: fmt.Sprintf("Root's connections to the control socket that found all %d with requests in (or new) and waited in the listener's queue for one to end or be closable (answered, or stalled half-sent, and waited on): a storm of callers, or root's connections held by a stuck one.", MaxConns),
	})
	// metricTurnedAway counts connections closed for want of room.
	metricTurnedAway = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ztdns_control_turned_away_connections_total",
		Help: fmt.Sprintf("Connections to the control socket closed unserved for want of room: a socket-group member's when no member's connection could be closed for it (all %d with requests in or new, or root's holding every one of the %d, or root's waiting); root's only when %d of root's already wait.", MaxGroupConns, MaxConns, MaxQueued),
	})
)

// Collectors returns the control socket's metrics for registration.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{metricRequests, metricRefused, metricConns, metricEvicted, metricWaited, metricTurnedAway}
}
