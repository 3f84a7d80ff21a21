package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

// errNotSynced is the health of a source before its first snapshot.
var errNotSynced = errors.New("kubernetes source: waiting for the first full sync")

// failure is one watch that is currently failing.
type failure struct {
	since time.Time
	err   error // the latest error
}

// health follows whether the source's list and watch calls are succeeding.
// client-go's reflectors retry on their own, with backoff, and tell nobody:
// a watch that cannot reconnect (connection refused) backs off and retries
// without ever reaching a watch error handler. So every failed list and
// watch call, and every watch stream that fails (see judgeWatch), reports
// here, and a resource counts as failing from its first failure until a
// watch of it works again.
type health struct {
	log     *slog.Logger
	metrics *metrics

	mu      sync.Mutex
	synced  bool
	failing map[string]failure // by resource
	// behind holds, by resource, when the API server first answered that
	// it has not reached the resource version asked for, since the last
	// watch that worked (see observe).
	behind map[string]time.Time

	// Why ServiceEntries are missing from the snapshots, if they are: the
	// CRD's reason and message (followCRD), else seForbidden, RBAC's
	// refusal of them. seReason is what the metric and the log say now.
	// seKept is set while the refusal came after ServiceEntries were
	// read: the snapshots keep those.
	seCRDReason, seCRDMsg string
	seForbidden           error
	seKept                bool
	seReason, seMsg       string
	seLoggedKept          bool // whether seMsg says they are kept
	// crdForbidden is RBAC's refusal of the CRD, which discovery stands in
	// for every crdRetry.
	crdForbidden error
	crdRetry     time.Duration
}

func newHealth(log *slog.Logger, m *metrics) *health {
	return &health{log: log, metrics: m, failing: make(map[string]failure), behind: make(map[string]time.Time)}
}

// observe records a failure (err) or a watch that works (nil) of
// resource, for a call made with ctx. Calls whose ctx has ended are
// ignored: they belong to a watch that was stopped on purpose (see forget),
// and checking under the lock keeps a late call from marking a stopped
// watch failing.
//
// An API server whose watch cache has not reached the resource version
// asked for (another API server behind the same address served the last
// one) answers "too large resource version", and client-go's reflector
// asks again at once from the newest version, which works: that first
// answer is no failure. A second one before a watch works is: the API
// server stays behind, and the resource fails since the first.
func (h *health) observe(ctx context.Context, resource string, err error) {
	if expected(err) {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if ctx.Err() != nil {
		return
	}
	f, wasFailing := h.failing[resource]
	since := time.Now()
	switch {
	case err == nil:
		delete(h.behind, resource)
	case tooLargeResourceVersion(err) && !wasFailing:
		first, again := h.behind[resource]
		if !again {
			h.behind[resource] = since
			h.log.Debug("API server behind the resource version asked for; client-go asks again from the newest", "resource", resource, "error", err)
			return
		}
		since = first
	}
	switch {
	case err == nil && wasFailing:
		delete(h.failing, resource)
		h.metrics.watchFailing.WithLabelValues(resource).Set(0)
		h.log.Info("watch recovered", "resource", resource, "failedFor", time.Since(f.since).Round(time.Millisecond))
	case err != nil && !wasFailing:
		h.failing[resource] = failure{since: since, err: err}
		h.metrics.watchFailing.WithLabelValues(resource).Set(1)
		msg := "watch failing; serving the last state while client-go retries"
		if !h.synced {
			msg = "watch failing before the first full sync; no snapshot until every resource is listed, client-go retries"
		}
		h.log.Warn(msg, "resource", resource, "error", err)
	case err != nil:
		f.err = err
		h.failing[resource] = f
	}
}

// forget drops resource, which is no longer watched; the contexts of its
// calls must have ended before.
func (h *health) forget(resource string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.failing, resource)
	delete(h.behind, resource)
	h.metrics.watchFailing.WithLabelValues(resource).Set(0)
}

// setSynced records that the first snapshot was delivered.
func (h *health) setSynced() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.synced = true
}

// setServiceEntryCRD records why the CRD keeps ServiceEntries from the
// snapshots (reason and message), or that it does not (both empty).
func (h *health) setServiceEntryCRD(reason, msg string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seCRDReason, h.seCRDMsg = reason, msg
	h.updateServiceEntries()
}

// setServiceEntriesForbidden records RBAC's refusal of ServiceEntries
// (err), after they were read (kept: the snapshots keep those), or that
// they may be read (nil).
func (h *health) setServiceEntriesForbidden(err error, kept bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seForbidden, h.seKept = err, kept
	h.updateServiceEntries()
}

// updateServiceEntries brings the metric and the log in step with why
// ServiceEntries are missing. Called with h.mu held.
func (h *health) updateServiceEntries() {
	reason, msg := h.seCRDReason, h.seCRDMsg
	kept := false
	if reason == "" && h.seForbidden != nil {
		reason, kept = seForbidden, h.seKept
		msg = fmt.Sprintf("ServiceEntries: %v; running without ServiceEntries, asking again every few minutes", h.seForbidden)
		if kept {
			msg = fmt.Sprintf("ServiceEntries: %v; serving those read before, while the watch retries", h.seForbidden)
		}
	}
	// kept is only ever set with seForbidden.
	if reason == h.seReason && (reason != seNotServed || msg == h.seMsg) && kept == h.seLoggedKept {
		return // a refusal's message may say list or watch: the first one stays
	}
	h.seLoggedKept = kept
	h.seReason, h.seMsg = reason, msg
	for _, r := range seReasons {
		v := 0.0
		if r == reason {
			v = 1
		}
		h.metrics.serviceEntriesUnavailable.WithLabelValues(r).Set(v)
	}
	switch {
	case reason == "", reason == seNotInstalled: // the log of followCRD and startServiceEntries says it
	case kept:
		h.log.Warn("ServiceEntries refused after they were read; serving those read before", "reason", reason, "detail", msg)
	default:
		h.log.Warn("running without ServiceEntries", "reason", reason, "detail", msg)
	}
}

// setCRDForbidden records RBAC's refusal of the CRD (err; discovery is
// asked every retry instead), or that it may be read (nil).
func (h *health) setCRDForbidden(err error, retry time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil && h.crdForbidden == nil {
		h.log.Warn("cannot watch the ServiceEntry CRD; asking the discovery API instead, which sees the CRD come and go only that often",
			"crd", ServiceEntryCRD, "every", retry, "error", err)
	}
	h.crdForbidden, h.crdRetry = err, retry
}

// errors lists the failing resources, in name order.
func (h *health) errors() []error {
	h.mu.Lock()
	defer h.mu.Unlock()
	names := make([]string, 0, len(h.failing))
	for name := range h.failing {
		names = append(names, name)
	}
	slices.Sort(names)
	errs := make([]error, 0, len(names))
	for _, name := range names {
		f := h.failing[name]
		errs = append(errs, fmt.Errorf("watch of %s failing since %s: %w", name, f.since.UTC().Format(time.RFC3339), f.err))
	}
	return errs
}

// notes says what the source runs without, or how, though nothing fails:
// ServiceEntries missing, the CRD read through discovery.
func (h *health) notes() []error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var notes []error
	if h.seMsg != "" {
		notes = append(notes, errors.New(h.seMsg))
	}
	if h.crdForbidden != nil {
		notes = append(notes, fmt.Errorf("ServiceEntries: the CRD may not be watched, %v; asking the discovery API every %v instead",
			h.crdForbidden, h.crdRetry))
	}
	return notes
}

// err is nil when the source is synced and nothing is failing.
func (h *health) err() error {
	errs := h.errors()
	h.mu.Lock()
	synced := h.synced
	h.mu.Unlock()
	if !synced {
		errs = append([]error{errNotSynced}, errs...)
	}
	return errors.Join(errs...)
}

// expected reports whether err is part of the normal list/watch protocol
// rather than a failure: our own cancellation, or a resourceVersion that has
// been compacted away, after which the reflector lists again.
func expected(err error) bool {
	return errors.Is(err, context.Canceled) || apierrors.IsResourceExpired(err) || apierrors.IsGone(err)
}

// tooLargeResourceVersion reports whether err is an API server's answer
// that its watch cache has not reached the resource version asked for
// within 3 s (504, cause ResourceVersionTooLarge), after which client-go's
// reflector lists or watches again from the newest version at once
// (reflector.go isTooLargeResourceVersionError).
func tooLargeResourceVersion(err error) bool {
	return apierrors.HasStatusCause(err, metav1.CauseTypeResourceVersionTooLarge)
}

// setUnsynced records that the source stopped.
func (h *health) setUnsynced() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.synced = false
}

// minWatchOpen is how long a watch stream must stay open to count as
// working: client-go's reflector takes one that closes sooner with no event
// for a failure (VeryShortWatchError) and lists again only after backoff.
const minWatchOpen = time.Second

// errShortWatch is a watch stream that closed within minWatchOpen with no
// event: cut by a proxy, say.
var errShortWatch = fmt.Errorf("watch stream closed within %v, with no event", minWatchOpen)

// judgedWatch passes a watch's events on, reporting how its stream fares.
// The API server's answer (HTTP 200) proves nothing: a proxy that cuts
// streams, or a server that ends every watch with an error event, answers
// too. So the watch works once its stream has stayed open minWatchOpen
// (a quiet resource's stream may carry nothing for minutes), and fails at
// an error event or when the stream closes within minWatchOpen of the
// request with no event. One that ends sooner after events is neither: the
// reflector watches again at once. The second counts from the answer, not
// the request: an API server that takes seconds to answer (waiting for its
// watch cache) may send an error event right behind it, and that event,
// not the clock, says how the stream fared.
type judgedWatch struct {
	in   watch.Interface
	out  chan watch.Event
	stop chan struct{}
	once sync.Once
}

// judgeWatch wraps in, whose request was sent at start and answered at
// answered: report gets nil once the stream has stayed open minWatchOpen,
// and its error when it fails, after which nothing.
func judgeWatch(in watch.Interface, start, answered time.Time, report func(error)) watch.Interface {
	w := &judgedWatch{in: in, out: make(chan watch.Event), stop: make(chan struct{})}
	go w.run(start, answered, report)
	return w
}

func (w *judgedWatch) ResultChan() <-chan watch.Event { return w.out }

func (w *judgedWatch) Stop() {
	w.once.Do(func() { close(w.stop) })
	w.in.Stop()
}

func (w *judgedWatch) run(start, answered time.Time, report func(error)) {
	defer close(w.out)
	timer := time.NewTimer(time.Until(answered.Add(minWatchOpen)))
	defer timer.Stop()
	opened := timer.C // nil once the stream worked or failed
	gotEvent, failed := false, false
	for {
		select {
		case <-opened:
			opened = nil
			report(nil)
		case ev, ok := <-w.in.ResultChan():
			if !ok {
				select {
				case <-w.stop: // stopped by the reflector
				default:
					if opened != nil && !gotEvent && time.Since(start) < minWatchOpen {
						report(errShortWatch)
					}
				}
				return
			}
			gotEvent = true
			if ev.Type == watch.Error && !failed {
				opened, failed = nil, true
				report(apierrors.FromObject(ev.Object))
			}
			select {
			case w.out <- ev:
			case <-w.stop:
				return
			}
		case <-w.stop:
			return
		}
	}
}
