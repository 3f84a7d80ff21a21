// Package acceptretry keeps an accept loop going through the errors it can
// outlive: the process or the system out of file descriptors (EMFILE,
// ENFILE), the kernel out of memory for a socket (ENOBUFS, ENOMEM), or a
// connection that failed before it was taken (ECONNABORTED, EPROTO, …, which
// accept(2) asks its caller to retry). A loop that returned on them would
// stop the agent, and connections past its open-file limit would then take
// the node's DNS down with it. As net/http's Server does, the loop waits
// instead, 5 ms the first time and twice as long each time after, up to a
// second, and accepts again; new connections wait in the listener's backlog
// meanwhile, and those the agent holds free descriptors as they end. Every
// such error is counted (ztdns_accept_errors_total) and logged, at most a
// line every ratelog.Every.
package acceptretry

import (
	"errors"
	"log/slog"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztdns/ztdns/internal/ratelog"
)

// The listeners, the listener label's values.
const (
	DNS     = "dns"     // the resolver's TCP sockets
	Control = "control" // the control socket
	Handoff = "handoff" // the socket a successor asks for the resolver's sockets on
)

// The reasons, the reason label's values.
const (
	// ReasonDescriptors: EMFILE or ENFILE, the process's open-file limit
	// (RLIMIT_NOFILE) or the system's (fs.file-max) reached.
	ReasonDescriptors = "descriptors"
	// ReasonMemory: ENOBUFS or ENOMEM, the kernel short of memory for a
	// socket.
	ReasonMemory = "memory"
	// ReasonConnection: the connection failed before it was taken
	// (aborted, a protocol or network error pending on it, a firewall's
	// refusal).
	ReasonConnection = "connection"
)

// Backoff bounds, as net/http's Server.
const (
	firstPause = 5 * time.Millisecond
	maxPause   = time.Second
)

// metricErrors counts the accept errors waited out.
var metricErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "ztdns_accept_errors_total",
	Help: "Failed accepts the agent waited out (5 ms, doubling to 1 s) and retried, by listener (dns: the resolver's TCP sockets; control; handoff) " +
		"and reason: descriptors (EMFILE, ENFILE: the open-file limit reached), memory (ENOBUFS, ENOMEM), " +
		"connection (a connection that failed before it was accepted).",
}, []string{"listener", "reason"})

// Collectors returns the package's metrics for registration.
func Collectors() []prometheus.Collector { return []prometheus.Collector{metricErrors} }

// Backoff is one accept loop's: its pause, its counter and its log lines.
// Wait and Accepted are called from the loop's goroutine alone.
type Backoff struct {
	listener string
	pause    time.Duration
	logged   ratelog.Limiter
	sleep    func(time.Duration) // time.Sleep; a test's
}

// New returns the Backoff of an accept loop of listener (DNS, Control or
// Handoff). Its series for running out of descriptors is exported from
// then on, at 0, so that increase() sees the first.
func New(listener string) *Backoff {
	metricErrors.WithLabelValues(listener, ReasonDescriptors)
	return &Backoff{listener: listener, sleep: time.Sleep}
}

// Wait reports whether err, from Accept, is one to wait out. If it is, Wait
// counts it, logs it on log, and sleeps before it returns true: the caller
// accepts again. Otherwise it returns false at once, and the caller stops
// (a closed listener, an error no retry mends). A timeout is not waited
// out: a caller that sets deadlines handles them first.
func (b *Backoff) Wait(log *slog.Logger, err error) bool {
	reason := Reason(err)
	if reason == "" {
		return false
	}
	b.pause = min(max(2*b.pause, firstPause), maxPause)
	metricErrors.WithLabelValues(b.listener, reason).Inc()
	msg := "accept failed; retrying"
	if reason == ReasonDescriptors {
		msg = "accept failed: out of file descriptors; retrying (new connections wait meanwhile: raise the agent's open-file limit, see the README's descriptor budget)"
	}
	b.logged.Log(log, slog.LevelWarn, msg, "listener", b.listener, "reason", reason, "err", err, "in", b.pause)
	b.sleep(b.pause)
	return true
}

// Accepted starts the pause afresh: the loop accepted a connection.
func (b *Backoff) Accepted() { b.pause = 0 }

// Reason is the reason label of an accept error to wait out, or "" for
// one to stop on.
func Reason(err error) string {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return ""
	}
	switch errno {
	case syscall.EMFILE, syscall.ENFILE:
		return ReasonDescriptors
	case syscall.ENOBUFS, syscall.ENOMEM:
		return ReasonMemory
	// accept(2): errors pending on the new connection, to be treated as
	// EAGAIN; ECONNABORTED and EINTR the runtime retries itself.
	case syscall.ECONNABORTED, syscall.EINTR, syscall.EPROTO, syscall.ENETDOWN, syscall.ENOPROTOOPT, syscall.EHOSTDOWN,
		syscall.ENONET, syscall.EHOSTUNREACH, syscall.EOPNOTSUPP, syscall.ENETUNREACH, syscall.EPERM:
		return ReasonConnection
	}
	return ""
}
