// Package control is the one home of the agent's local control API: JSON
// over HTTP on a unix socket. `ztdns table`, `pods`, `capture` and `status`,
// the CNI plugin and the tests talk to the running agent through it. This
// package holds the routes, the request and response types, the typed client
// (Client) and the server side (Listen, Serve, NewHandler); the agent only
// implements API.
//
// `ztdns log on|off` switches the access log through it too.
//
// The socket trusts no one:
//   - its directory belongs to root and nobody else may write in it (a
//     directory others can write in is refused: they could plant a socket);
//     the agent creates it 0700 (0750 with a socket group);
//   - the socket is 0600 (0660 with a socket group), and every connection's
//     peer is checked with SO_PEERCRED: uid 0, or the socket group's gid,
//     which may only read (GET routes). (An agent run without root, as in
//     the standalone demo, also admits its own user, and owns its
//     directory.)
//   - requests are bounded in size (MaxRequestBytes), in time (a request
//     must arrive within ReadTimeout) and in number (MaxConns connections
//     at once, of which the socket group's members hold at most
//     MaxGroupConns: the rest are root's, so no member can keep a CNI ADD
//     waiting; at the bound an idle or half-sent connection makes room,
//     and one with a request in, or a new one, is never cut: a storm of
//     root's callers waits its turn in the listener's queue, bounded by
//     MaxQueued), and every field is validated before the agent sees it;
//   - the table, the one answer that grows with the cluster, is written as
//     it is made, a chunk at a time, one table at a time, and stops when
//     its caller goes away or stops reading (see rowStream).
package control

import "net/http"

// DefaultSocket is where the agent listens unless told otherwise.
const DefaultSocket = "/var/run/ztdns/ztdns.sock"

// Route is one operation of the API.
type Route struct {
	// Name labels the route in metrics and logs.
	Name   string
	Method string
	Path   string
	// Mutates marks routes that change what the agent does: only root may
	// call them, also when a socket group may connect.
	Mutates bool
}

// Pattern is the route as an http.ServeMux pattern.
func (r Route) Pattern() string { return r.Method + " " + r.Path }

// The routes. Nothing outside this package spells a path.
var (
	// RouteStatus answers a Status.
	RouteStatus = Route{Name: "status", Method: http.MethodGet, Path: "/v1/status"}
	// RouteTable answers the []TableRow a pod in the namespace given by the
	// "namespace" query parameter can resolve; 503 before the agent's first
	// table.
	RouteTable = Route{Name: "table", Method: http.MethodGet, Path: "/v1/table"}
	// RoutePods answers a []PodRow.
	RoutePods = Route{Name: "pods", Method: http.MethodGet, Path: "/v1/pods"}
	// RouteCaptureAdd takes a CaptureRequest and answers the PodRow of the
	// namespace it marked.
	RouteCaptureAdd = Route{Name: "capture_add", Method: http.MethodPost, Path: "/v1/capture", Mutates: true}
	// RouteCaptureDel takes a CaptureRequest and unmarks a namespace marked
	// by hand.
	RouteCaptureDel = Route{Name: "capture_del", Method: http.MethodDelete, Path: "/v1/capture", Mutates: true}
	// RouteCNIAdd takes a CNIAddRequest and answers 200 with a
	// CNIAddResponse. Any other status fails the pod's ADD with the agent's
	// error message: the agent answers non-2xx only when the request is
	// invalid or does not match the network namespace it names, or when it
	// cannot honour a capture decision it made; a pod it does not capture is
	// a 200 with Captured false.
	RouteCNIAdd = Route{Name: "cni_add", Method: http.MethodPost, Path: "/v1/cni/add", Mutates: true}
	// RouteCNIDel takes a CNIDelRequest and answers 200 with an empty
	// object. It is idempotent: a container the agent does not know is not
	// an error.
	RouteCNIDel = Route{Name: "cni_del", Method: http.MethodPost, Path: "/v1/cni/del", Mutates: true}
	// RouteAccessLog takes an AccessLogRequest, turns the access log on or
	// off, and answers the AccessLog now in force.
	RouteAccessLog = Route{Name: "access_log", Method: http.MethodPut, Path: "/v1/accesslog", Mutates: true}
)

// Routes lists every route.
var Routes = []Route{RouteStatus, RouteTable, RoutePods, RouteCaptureAdd, RouteCaptureDel, RouteCNIAdd, RouteCNIDel, RouteAccessLog}
