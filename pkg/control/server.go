package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"time"

	"github.com/ztdns/ztdns/internal/ratelog"
)

// Bounds of the server. They hold for every caller, root included: a stuck
// or broken client cannot hold the agent's memory or its connection slots.
const (
	// MaxRequestBytes bounds a request body (a CNI ADD is a few hundred
	// bytes).
	MaxRequestBytes = 64 << 10
	// maxHeaderBytes bounds a request's headers.
	maxHeaderBytes = 8 << 10
	// ReadTimeout bounds the time to send a whole request: a half-sent one
	// is dropped then.
	ReadTimeout = 5 * time.Second
	// writeTimeout bounds the time from the end of the request to the end of
	// the answer; for a table, written as it is made (rowStream), the time
	// to take each chunk of it.
	writeTimeout = 30 * time.Second
	// memberWriteTimeout is writeTimeout for a socket-group member: what it
	// may ask for is computed in memory and read in milliseconds, so a
	// member that does not read its answer lets go of its slot (and of the
	// encoded answer) as soon as a half-sent request would.
	memberWriteTimeout = ReadTimeout
	// MaxConns bounds the connections open at once. A new one takes the
	// place of the oldest that has no request in (a kept-alive idle one,
	// or a half-sent request) while the server waits on it; when none may
	// be closed, root's waits in
	// the listener's queue (see MaxQueued), a member's is closed (see
	// MaxGroupConns). A new connection that has sent nothing yet is never
	// closed for another: the header timeout (ReadTimeout) bounds it.
	MaxConns = 32
	// MaxGroupConns bounds the connections of socket-group members, all
	// together, among the MaxConns: the other MaxConns-MaxGroupConns are
	// root's alone. A member's new connection only ever takes the place of
	// another member's that may be closed (see MaxConns: neither one with
	// a request in nor a new one); when there is none, or root's are
	// queued, it is closed unserved at once. So a member that keeps the 4
	// busy, or opens them anew every ReadTimeout, keeps other members out,
	// never root.
	MaxGroupConns = 4
	// MaxQueued bounds root's connections waiting for room, admitted in
	// the order they came as connections end, are answered, or become
	// closable. The listener keeps accepting meanwhile, so the kernel's
	// backlog does not fill behind a full house (then a connect fails at
	// once). Each holds one descriptor and nothing read; a node runs a few
	// hundred pods at most (the kubelet's maxPods is 110 by default), and
	// each pod's plugin makes one call at a time. With MaxQueued waiting,
	// those whose callers hung up are dropped first, then root's new one
	// is closed unserved.
	MaxQueued = 1024
)

// API is what the agent does for the control socket. Requests reach it
// decoded and validated; an error it returns becomes the answer's status
// (see Invalid and Refused; anything else is a 500).
type API interface {
	Status() Status
	// Table yields the rows one at a time, in order; the server stops
	// pulling them when the caller goes away, and ctx, the request's, is
	// done then too: rows made before the first (an index) stop with it.
	// Before the agent has a table to show it errs, Unavailable, rather
	// than yield none: an empty answer would read as a table without names.
	Table(ctx context.Context, namespace string) (iter.Seq[TableRow], error)
	Pods() ([]PodRow, error)
	CaptureAdd(CaptureRequest) (PodRow, error)
	CaptureDel(CaptureRequest) error
	CNIAdd(CNIAddRequest) (CNIAddResponse, error)
	CNIDel(CNIDelRequest) error
	SetAccessLog(AccessLogRequest) (AccessLog, error)
}

// statusError gives an error the HTTP status it is answered with.
type statusError struct {
	code int
	err  error
}

func (e *statusError) Error() string { return e.err.Error() }
func (e *statusError) Unwrap() error { return e.err }

// Invalid marks err as the caller's mistake (400).
func Invalid(err error) error { return &statusError{http.StatusBadRequest, err} }

// Refused marks err as a request the agent will not carry out (403): a
// caller that may not, or claims that do not match what the agent sees.
func Refused(err error) error { return &statusError{http.StatusForbidden, err} }

// Unavailable marks err as a request this agent cannot carry out now but
// it or another will (503), having done nothing of it: it handed over to a
// successor mid-request (the socket's next server, the successor, takes it
// sent again), or it was asked for its table before it had one (asked
// again once it is ready, it answers). Only those are answered 503: a
// caller may send the request again.
func Unavailable(err error) error { return &statusError{http.StatusServiceUnavailable, err} }

// StatusOf is the HTTP status err is answered with: that of Invalid,
// Refused or Unavailable, 500 for any other error.
func StatusOf(err error) int {
	if se := (*statusError)(nil); errors.As(err, &se) {
		return se.code
	}
	return http.StatusInternalServerError
}

// NewHandler serves api: every route of Routes, each request's caller
// checked against the route (only root may call a route that Mutates), its
// body bounded, decoded and validated before api sees it.
func NewHandler(api API, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	h := &handler{api: api, log: log, tableSlot: make(chan struct{}, 1)}
	mux := http.NewServeMux()
	h.handle(mux, RouteStatus, func(*http.Request) (any, error) { return api.Status(), nil })
	h.handle(mux, RouteTable, func(r *http.Request) (any, error) {
		ns := r.URL.Query().Get("namespace")
		if ns != "" {
			if err := validNamespace(ns); err != nil {
				return nil, Invalid(err)
			}
		}
		rows, err := api.Table(r.Context(), ns)
		if err != nil {
			return nil, err
		}
		return rowStream[TableRow]{rows: rows, slot: h.tableSlot}, nil
	})
	h.handle(mux, RoutePods, func(*http.Request) (any, error) { return api.Pods() })
	h.handle(mux, RouteCaptureAdd, func(r *http.Request) (any, error) {
		req, err := decodeRequest[CaptureRequest](r.Body)
		if err != nil {
			return nil, err
		}
		return api.CaptureAdd(req)
	})
	h.handle(mux, RouteCaptureDel, func(r *http.Request) (any, error) {
		req, err := decodeRequest[CaptureRequest](r.Body)
		if err != nil {
			return nil, err
		}
		return struct{}{}, api.CaptureDel(req)
	})
	h.handle(mux, RouteCNIAdd, func(r *http.Request) (any, error) {
		req, err := decodeRequest[CNIAddRequest](r.Body)
		if err != nil {
			return nil, err
		}
		return api.CNIAdd(req)
	})
	h.handle(mux, RouteCNIDel, func(r *http.Request) (any, error) {
		req, err := decodeRequest[CNIDelRequest](r.Body)
		if err != nil {
			return nil, err
		}
		return struct{}{}, api.CNIDel(req)
	})
	h.handle(mux, RouteAccessLog, func(r *http.Request) (any, error) {
		req, err := decodeRequest[AccessLogRequest](r.Body)
		if err != nil {
			return nil, err
		}
		return api.SetAccessLog(req)
	})
	return mux
}

type handler struct {
	api     API
	log     *slog.Logger
	refused ratelog.Limiter // refused callers, logged sparingly
	// tableSlot is held while a table answer is written: one at a time.
	tableSlot chan struct{}
}

func (h *handler) handle(mux *http.ServeMux, route Route, serve func(*http.Request) (any, error)) {
	mux.HandleFunc(route.Pattern(), func(w http.ResponseWriter, r *http.Request) {
		markAnswering(r.Context())
		peer, ok := PeerFrom(r.Context())
		root := ok && peer.root()
		if !root {
			// A member's answer may not hold its slot for long (the error
			// is for a ResponseWriter that has no deadline, in tests).
			_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(memberWriteTimeout))
		}
		if route.Mutates && !root {
			// A socket-group member: it may look, not steer.
			h.refused.Log(h.log, slog.LevelWarn, "control socket: refused a request that only root may make", "route", route.Name, "uid", peer.UID, "gid", peer.GID, "pid", peer.PID)
			h.count(route, http.StatusForbidden, writeError(w, http.StatusForbidden, fmt.Errorf("%s needs root (uid %d may only read)", route.Path, peer.UID)))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, MaxRequestBytes)
		v, err := serve(r)
		if err != nil {
			code := StatusOf(err)
			h.count(route, code, writeError(w, code, err))
			return
		}
		if s, ok := v.(streamer); ok {
			code, err := s.stream(w, r, root)
			h.count(route, code, err)
			return
		}
		h.count(route, http.StatusOK, writeJSON(w, http.StatusOK, v))
	})
}

// codeAborted labels a request whose answer did not reach its caller in
// full: the caller went away, or stopped reading, while it was written.
const codeAborted = "aborted"

// count counts a request by its outcome: the status code of its answer
// when it was written out, codeAborted when writing it failed (err).
func (h *handler) count(route Route, code int, err error) {
	if err != nil {
		h.log.Debug("control socket: answer not delivered", "route", route.Name, "code", code, "err", err)
		metricRequests.WithLabelValues(route.Name, codeAborted).Inc()
		return
	}
	metricRequests.WithLabelValues(route.Name, strconv.Itoa(code)).Inc()
}

// streamer is an answer written out as it is made, not encoded whole.
type streamer interface {
	// stream writes the answer to r on w and says with what status (0:
	// none written), and why it did not reach the caller in full; root is
	// whether the caller is root (see memberWriteTimeout).
	stream(w http.ResponseWriter, r *http.Request, root bool) (code int, err error)
}

const (
	// streamChunk is how much of a streamed answer is made before it is
	// written out: what an answer holds of the agent's memory, beside the
	// index of its rows (see table.Table.AllRows).
	streamChunk = 32 << 10
	// slotWait bounds how long a streamed answer waits for the one being
	// written before it (see rowStream) before it is answered 429.
	slotWait = ReadTimeout
)

// rowStream is a JSON array answered one row at a time: a chunk is made,
// written out and let go of before the next is made, so an answer holds a
// chunk of the agent's memory, whatever the number of rows. One is written
// at a time (slot): others wait up to slotWait for their turn, then are
// answered 429, to be asked again. Writing stops when the caller goes away
// or does not read a chunk within the write timeout (each chunk written
// extends it), and between chunks the answer yields the CPU to the DNS
// server.
type rowStream[T any] struct {
	rows iter.Seq[T]
	slot chan struct{}
}

func (s rowStream[T]) stream(w http.ResponseWriter, r *http.Request, root bool) (int, error) {
	ctx := r.Context()
	timeout := writeTimeout
	if !root {
		timeout = memberWriteTimeout
	}
	rc := http.NewResponseController(w)
	wait := time.NewTimer(slotWait)
	defer wait.Stop()
	select {
	case s.slot <- struct{}{}:
		defer func() { <-s.slot }()
	case <-wait.C:
		// A member's deadline, set when its request came, has passed
		// meanwhile: it is told all the same.
		_ = rc.SetWriteDeadline(time.Now().Add(timeout))
		return http.StatusTooManyRequests, writeError(w, http.StatusTooManyRequests, errors.New("another table answer is being written: try again"))
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	}
	var buf bytes.Buffer
	flush := func() error {
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		// The error is for a ResponseWriter without a deadline, in tests.
		_ = rc.SetWriteDeadline(time.Now().Add(timeout))
		if _, err := w.Write(buf.Bytes()); err != nil {
			return err
		}
		buf.Reset()
		if err := rc.Flush(); err != nil {
			return err
		}
		runtime.Gosched() // let the DNS server's goroutines run
		return nil
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(&buf)
	buf.WriteByte('[')
	sep := "\n"
	for row := range s.rows {
		buf.WriteString(sep)
		sep = ","
		if err := enc.Encode(row); err != nil {
			return http.StatusOK, err // a row always encodes: not reached
		}
		if buf.Len() >= streamChunk {
			if err := flush(); err != nil {
				return http.StatusOK, err
			}
		}
	}
	buf.WriteString("]\n")
	if err := flush(); err != nil {
		return http.StatusOK, err
	}
	return http.StatusOK, nil
}

// validator is a request type that checks its own fields.
type validator[T any] interface {
	*T
	Validate() error
}

// decodeRequest reads one JSON object of at most MaxRequestBytes from body
// and validates it (parseRequest). Its errors are Invalid (400), or 413 for
// a body over the bound.
func decodeRequest[T any, PT validator[T]](body io.Reader) (T, error) {
	data, err := io.ReadAll(io.LimitReader(body, MaxRequestBytes+1))
	if tooLarge := (*http.MaxBytesError)(nil); errors.As(err, &tooLarge) || len(data) > MaxRequestBytes {
		var zero T
		return zero, &statusError{http.StatusRequestEntityTooLarge, fmt.Errorf("request larger than %d bytes", MaxRequestBytes)}
	}
	if err != nil {
		var zero T
		return zero, Invalid(fmt.Errorf("reading the request: %w", err))
	}
	return parseRequest[T, PT](data)
}

// parseRequest decodes data, which must be exactly one JSON value, and
// validates it.
func parseRequest[T any, PT validator[T]](data []byte) (T, error) {
	var req T
	dec := json.NewDecoder(bytes.NewReader(data))
	err := dec.Decode(&req)
	if err == nil && dec.Decode(&struct{}{}) != io.EOF {
		err = errors.New("more than one JSON value")
	}
	if err != nil {
		return req, Invalid(fmt.Errorf("bad request: %w", err))
	}
	if n, ok := any(PT(&req)).(interface{ KeepPodAddrs() }); ok {
		n.KeepPodAddrs()
	}
	if err := PT(&req).Validate(); err != nil {
		return req, Invalid(err)
	}
	return req, nil
}

// writeJSON writes v as the answer, and says why when it did not reach
// the caller in full.
func writeJSON(w http.ResponseWriter, code int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err // every answer type encodes: not reached
	}
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	if _, err := w.Write(b); err != nil {
		return err
	}
	// Written out now: a write that fails once the handler has returned,
	// in net/http, goes unnoticed.
	return http.NewResponseController(w).Flush()
}

func writeError(w http.ResponseWriter, code int, err error) error {
	return writeJSON(w, code, errorBody{Error: err.Error()})
}

// shutdownTimeout bounds how long a stopped server waits for the requests
// it has read, or on connections it has taken, to be answered.
const shutdownTimeout = 2 * time.Second

// Serve serves h on ln until ctx is done, with the server's bounds on time
// and header size: the control API on the socket of Listen or Adopt, and
// the agent's metrics endpoint on TCP. It returns once the requests it
// took are answered (or shutdownTimeout has passed): an agent handing over
// carries out the CNI events it took before its successor acts. It closes
// ln.
//
// On a listener of Listen or Adopt, stopping leaves the connections not
// yet taken in the socket's backlog, for whoever serves it next (the agent
// it was handed to; closed for good, the socket resets them), and answers
// a request on every connection it took, however late the request arrives
// within shutdownTimeout, each connection closed after its answer. Past
// that, a request that arrives is left unread and its connection closed:
// its caller sees a reset, and the CNI plugin sends it again. No
// connection of a request the server read ends without an answer (EOF):
// the plugin cannot tell that from an agent that took the request. (The
// net/http server's own Shutdown would do that: it drops a request it
// reads on a new connection once it is shutting down.) On any other
// listener (the metrics endpoint's), it shuts down as net/http does.
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	gl, guarded := ln.(*guardedListener)
	if guarded {
		h = closingWhenDrained(gl, h)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       ReadTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ConnState: func(c net.Conn, st http.ConnState) {
			if pc, ok := c.(*peerConn); ok && st == http.StateIdle {
				pc.answered() // its answer is written out: see markAnswering
			}
		},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*peerConn); ok {
				return context.WithValue(ctx, connKey{}, pc)
			}
			return ctx
		},
	}
	shutDown := make(chan struct{})
	go func() {
		defer close(shutDown)
		<-ctx.Done()
		if guarded {
			// Not srv.Shutdown: see above. Once drained, ln fails Accept,
			// and srv.Serve returns; connections given up are served on
			// by their goroutines, refusing what arrives.
			gl.drain(time.Now().Add(shutdownTimeout))
			return
		}
		shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		srv.Shutdown(shutdownCtx)
	}()
	err := srv.Serve(ln)
	if ctx.Err() == nil || !guarded && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	<-shutDown
	return nil
}

// closingWhenDrained serves h, and once l drains, says in each answer
// that the connection closes after it: a kept-alive caller sends its next
// request on a new connection, which the socket's next server takes.
func closingWhenDrained(l *guardedListener, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if l.draining.Load() {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}
