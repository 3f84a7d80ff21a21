package kube

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"

	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/model/kubeapi"
)

const (
	logFailing = "watch failing; serving the last state while client-go retries"
	// logFailingUnsynced is the log of a failure that starts before the
	// first sync, when there is no last state to serve.
	logFailingUnsynced = "watch failing before the first full sync; no snapshot until every resource is listed, client-go retries"
	logRecovered       = "watch recovered"
)

// breaker answers the source's requests for path as a failing API server
// or proxy would while its switches are on: a watch with HTTP 200 and then
// an error event (500), or, with cut, nothing (a proxy that closes the
// stream); a list with a 500.
type breaker struct {
	path                       string
	cut                        bool
	watches, lists             atomic.Bool
	brokenWatches, brokenLists atomic.Int64
}

// statusWatchListForbidden is how an API server without the WatchList
// feature refuses a watch-list request.
const statusWatchListForbidden = `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled","reason":"Invalid","code":422}`

const status500 = `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"injected","reason":"InternalError","code":500}`

func (b *breaker) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.URL.Path != b.path {
			return rt.RoundTrip(r)
		}
		watching := r.URL.Query().Get("watch") == "true"
		switch {
		case watching && b.watches.Load():
			b.brokenWatches.Add(1)
			if b.cut {
				return jsonResponse(r, http.StatusOK, ""), nil
			}
			return jsonResponse(r, http.StatusOK, `{"type":"ERROR","object":`+status500+"}\n"), nil
		case !watching && b.lists.Load():
			b.brokenLists.Add(1)
			return jsonResponse(r, http.StatusInternalServerError, status500), nil
		}
		return rt.RoundTrip(r)
	})
}

func jsonResponse(r *http.Request, code int, body string) *http.Response {
	return &http.Response{
		StatusCode: code, Status: http.StatusText(code), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:  http.Header{"Content-Type": {"application/json"}},
		Body:    io.NopCloser(strings.NewReader(body)),
		Request: r,
	}
}

// waitCount waits until n reaches want.
func waitCount(tb testing.TB, what string, n *atomic.Int64, want int64) {
	tb.Helper()
	deadline := time.Now().Add(waitTimeout)
	for n.Load() < want {
		if time.Now().After(deadline) {
			tb.Fatalf("%d %s within %v, want %d", n.Load(), what, waitTimeout, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// failingEntry returns resource's entry in Errors(), "" if none.
func failingEntry(src *Source, resource string) string {
	for _, err := range src.Errors() {
		if strings.HasPrefix(err.Error(), "watch of "+resource+" failing") {
			return err.Error()
		}
	}
	return ""
}

// stillFailing checks that Services still fail since the same moment after
// more retries (after): Errors() still says failing, as it did then, the
// gauge stays 1, and the failure was logged once, its recovery never (logs
// is about Services).
func stillFailing(t *testing.T, src *Source, logs *logWatcher, failing, after string) {
	t.Helper()
	if got := failingEntry(src, "services"); got != failing {
		t.Errorf("after %s Errors() says %q, want still %q", after, got, failing)
	}
	if v := testutil.ToFloat64(src.metrics.watchFailing.WithLabelValues("services")); v != 1 {
		t.Errorf("ztdns_kube_watch_failing{resource=services} = %v after %s, want 1", v, after)
	}
	if n, m := logs.count(logFailing, logFailingUnsynced), logs.count(logRecovered); n != 1 || m != 0 {
		t.Errorf("logged the failure %d times and %q %d times, want once and never", n, logRecovered, m)
	}
}

// TestWatchStreamFailureIsFailure: an API server (or a proxy) that
// accepts every watch of Services and then ends it with an error event, or
// closes it at once, while lists work, leaves new Services to the
// reflector's relists after backoff. The source syncs, but says it is
// failing (Healthy, Errors, the gauge, one log line) and keeps saying so,
// from the same moment, across the lists that work between the watches;
// once watches work it recovers.
func TestWatchStreamFailureIsFailure(t *testing.T) {
	env := kubetest.Start(t)
	for _, tc := range []struct {
		name string
		cut  bool
		want string // in the error
	}{
		{"error event", false, "injected"},
		{"closed at once", true, errShortWatch.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := breaker{path: "/api/v1/services", cut: tc.cut}
			b.watches.Store(true)
			cfg := rest.CopyConfig(env.Config)
			cfg.Wrap(b.wrap)
			all := newLogWatcher()
			rec := runSource(t, cfg, WithLogger(slog.New(all)))
			logs := all.about("services")
			gauge := rec.src.metrics.watchFailing.WithLabelValues("services")

			rec.waitFor(t, "the first sync (lists work)", func(*model.Snapshot) error { return nil })
			rec.waitHealth(t, "failing for Services", func(err error) bool {
				return err != nil && strings.Contains(err.Error(), "watch of services failing")
			})
			logs.waitFor(t, 1, logFailing, logFailingUnsynced) // the first may come before the first sync
			failing := failingEntry(rec.src, "services")
			if !strings.Contains(failing, tc.want) {
				t.Errorf("Errors() says %q, want it to say %q", failing, tc.want)
			}
			if v := testutil.ToFloat64(gauge); v != 1 {
				t.Errorf("ztdns_kube_watch_failing{resource=services} = %v, want 1", v)
			}

			// Each retry is a watch-list, a list that works and a watch:
			// three more broken watches take in a list that works.
			waitCount(t, "broken watches", &b.brokenWatches, b.brokenWatches.Load()+3)
			stillFailing(t, rec.src, logs, failing, "more broken watches")

			b.watches.Store(false)
			rec.waitHealth(t, "healthy once watches work", func(err error) bool { return err == nil })
			logs.waitFor(t, 1, logRecovered)
			if v := testutil.ToFloat64(gauge); v != 0 {
				t.Errorf("ztdns_kube_watch_failing{resource=services} = %v after recovery, want 0", v)
			}
			if n := logs.count(logFailing, logFailingUnsynced); n != 1 {
				t.Errorf("logged the failure %d times, want once", n)
			}
		})
	}
}

// TestWatchListRefusedIsNoFailure: an API server without the WatchList
// feature refuses every watch-list request (sendInitialEvents) as invalid,
// and the reflector lists and watches instead, at its start and at each
// relist. That is no failure: the source is healthy, logs no failure for
// it, and follows changes.
func TestWatchListRefusedIsNoFailure(t *testing.T) {
	env := kubetest.Start(t)
	var refused atomic.Int64
	cfg := rest.CopyConfig(env.Config)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if r.URL.Query().Get("sendInitialEvents") == "true" {
				refused.Add(1)
				return jsonResponse(r, http.StatusUnprocessableEntity, statusWatchListForbidden), nil
			}
			return rt.RoundTrip(r)
		})
	})
	logs := newLogWatcher()
	rec := runSource(t, cfg, WithLogger(slog.New(logs)))
	rec.waitFor(t, "the first sync", func(*model.Snapshot) error { return nil })
	if refused.Load() == 0 {
		t.Fatal("no watch-list request was made: the test shows nothing")
	}
	kube := env.Client()
	ns := createNamespace(t, kube, "refused")
	if _, err := kube.CoreV1().Services(ns).Create(t.Context(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create Service: %v", err)
	}
	rec.waitFor(t, "the new Service", func(s *model.Snapshot) error {
		if find(s.Services, serviceKey, ns, "web") == nil {
			return errors.New("service web missing")
		}
		return nil
	})
	if err := rec.src.Healthy(); err != nil {
		t.Errorf("Healthy() = %v with watch-list refused and lists and watches working", err)
	}
	// Another watch may fail a moment on a loaded machine: one answer "too
	// large resource version" (the watch cache behind its list) no longer
	// counts, but a second before a watch works does. Only a failure for
	// the refusal counts.
	for _, r := range logs.matching(logFailing, logFailingUnsynced) {
		if strings.Contains(r.err, "sendInitialEvents") {
			t.Errorf("logged a failure of %s for a refused watch-list request: %s", r.resource, r.err)
		}
	}
}

// TestWatchOpenClearsNoFailure: with lists failing too, every retry opens
// a watch (HTTP 200) before its list fails. The opening is no recovery:
// the failure is logged once, never "recovered", and its start holds, so
// that an alert waiting 10 minutes on the gauge is not reset.
func TestWatchOpenClearsNoFailure(t *testing.T) {
	env := kubetest.Start(t)
	b := breaker{path: "/api/v1/services"}
	b.watches.Store(true)
	b.lists.Store(true)
	cfg := rest.CopyConfig(env.Config)
	cfg.Wrap(b.wrap)
	all := newLogWatcher()
	rec := runSource(t, cfg, WithLogger(slog.New(all)))
	logs := all.about("services")

	logs.waitFor(t, 1, logFailingUnsynced) // lists fail: no first sync
	failing := failingEntry(rec.src, "services")
	if failing == "" {
		t.Fatalf("Errors() = %v, want Services failing", rec.src.Errors())
	}
	// Two more retries, each a broken watch and a broken list.
	waitCount(t, "broken watches", &b.brokenWatches, b.brokenWatches.Load()+2)
	waitCount(t, "broken lists", &b.brokenLists, b.brokenLists.Load()+2)
	stillFailing(t, rec.src, logs, failing, "more retries")
	if err := rec.src.Healthy(); err == nil {
		t.Errorf("Healthy() = nil with every list and watch of Services failing")
	}
}

// TestForbiddenLockWatchWorks: the source may not read istiod's lock, and
// its watch of the lock failed for a while; once the API server answers
// again (refusing), the source is healthy: running without the lock is no
// failure.
func TestForbiddenLockWatchWorks(t *testing.T) {
	env := kubetest.Start(t)
	const ns, account = "ztdns-old", "ztdns"
	createNamespace(t, env.Client(), ns)
	rules := slices.DeleteFunc(PolicyRules(), func(r PolicyRule) bool { return slices.Contains(r.Resources, "configmaps") })
	cfg := grant(t, env, "ztdns-old", ns, account, rules)
	b := breaker{path: "/api/v1/namespaces/" + DefaultIstioNamespace + "/configmaps"}
	b.watches.Store(true)
	cfg.Wrap(b.wrap)
	rec := runSource(t, cfg, WithNodeName("node-a"), withForbiddenRetry(500*time.Millisecond))
	lock := kindIstiodAllocator.String()

	rec.waitFor(t, "the first sync", func(*model.Snapshot) error { return nil })
	rec.waitHealth(t, "failing for the lock", func(err error) bool {
		return err != nil && strings.Contains(err.Error(), "watch of "+lock+" failing")
	})
	b.watches.Store(false)
	rec.waitHealth(t, "healthy with the lock refused", func(err error) bool { return err == nil })
	if v := testutil.ToFloat64(rec.src.metrics.watchFailing.WithLabelValues(lock)); v != 0 {
		t.Errorf("ztdns_kube_watch_failing{resource=%s} = %v, want 0", lock, v)
	}
}

// judged is a watch under judgeWatch, fed by a fake API server stream.
type judged struct {
	server  *watch.FakeWatcher
	w       watch.Interface
	reports chan error
	done    chan struct{}
	events  []watch.EventType
}

func judge(start time.Time) *judged { return judgeAnswered(start, start) }

// judgeAnswered is judge of a watch whose request was sent at start and
// answered at answered.
func judgeAnswered(start, answered time.Time) *judged {
	j := &judged{server: watch.NewFake(), reports: make(chan error, 10), done: make(chan struct{})}
	j.w = judgeWatch(j.server, start, answered, func(err error) { j.reports <- err })
	go func() {
		defer close(j.done)
		for ev := range j.w.ResultChan() {
			j.events = append(j.events, ev.Type)
		}
	}()
	return j
}

// next waits for a report.
func (j *judged) next(tb testing.TB) error {
	tb.Helper()
	select {
	case err := <-j.reports:
		return err
	case <-time.After(waitTimeout):
		tb.Fatalf("no report within %v", waitTimeout)
		return nil
	}
}

// end waits until the watch has closed its channel and returns the reports
// not taken yet: none can follow.
func (j *judged) end(tb testing.TB) []error {
	tb.Helper()
	select {
	case <-j.done:
	case <-time.After(waitTimeout):
		tb.Fatalf("watch not closed within %v", waitTimeout)
	}
	close(j.reports)
	var out []error
	for err := range j.reports {
		out = append(out, err)
	}
	return out
}

// TestJudgeWatch: a stream works once it stayed open a second, also with
// nothing in it (a quiet resource); it fails at an error event or when it
// closes sooner with no event; one closed sooner after events, or stopped
// by the reflector, is neither.
func TestJudgeWatch(t *testing.T) {
	// A start this far off never reaches the one-second mark in the test;
	// one a second ago reaches it at once, without the test waiting.
	notYet, aSecondAgo := time.Now().Add(time.Hour), time.Now().Add(-minWatchOpen)
	internal := &metav1.Status{Status: metav1.StatusFailure, Code: http.StatusInternalServerError,
		Reason: metav1.StatusReasonInternalError, Message: "injected"}

	t.Run("quiet stream works", func(t *testing.T) {
		j := judge(aSecondAgo)
		if err := j.next(t); err != nil {
			t.Errorf("a quiet stream open a second reported %v, want nil", err)
		}
		j.w.Stop()
		if rest := j.end(t); len(rest) != 0 {
			t.Errorf("reports after the stop: %v", rest)
		}
	})
	t.Run("closed at once", func(t *testing.T) {
		j := judge(notYet)
		j.server.Stop()
		if got := j.end(t); len(got) != 1 || !errors.Is(got[0], errShortWatch) {
			t.Errorf("reports %v, want %v", got, errShortWatch)
		}
	})
	t.Run("error event", func(t *testing.T) {
		j := judge(notYet)
		j.server.Error(internal)
		j.server.Stop()
		got := j.end(t)
		if len(got) != 1 || !apierrors.IsInternalError(got[0]) {
			t.Errorf("reports %v, want the event's internal error", got)
		}
		if len(j.events) != 1 || j.events[0] != watch.Error {
			t.Errorf("events passed on %v, want the error event", j.events)
		}
	})
	t.Run("error event after working", func(t *testing.T) {
		j := judge(aSecondAgo)
		if err := j.next(t); err != nil {
			t.Fatalf("first report %v, want nil", err)
		}
		j.server.Error(internal)
		j.server.Stop()
		if got := j.end(t); len(got) != 1 || !apierrors.IsInternalError(got[0]) {
			t.Errorf("reports %v, want the event's internal error", got)
		}
	})
	// An API server waiting for its watch cache answers seconds after the
	// request, and may send an error right behind its answer.
	t.Run("error event right after a slow answer", func(t *testing.T) {
		j := judgeAnswered(aSecondAgo, notYet)
		j.server.Error(internal)
		j.server.Stop()
		if got := j.end(t); len(got) != 1 || !apierrors.IsInternalError(got[0]) {
			t.Errorf("reports %v, want the event's internal error alone", got)
		}
	})
	t.Run("closed soon after a slow answer", func(t *testing.T) {
		j := judgeAnswered(aSecondAgo, notYet)
		j.server.Stop()
		if got := j.end(t); len(got) != 0 {
			t.Errorf("reports %v, want none: the reflector watches again at once", got)
		}
	})
	t.Run("events then closed", func(t *testing.T) {
		j := judge(notYet)
		j.server.Add(&kubeapi.Service{})
		j.server.Action(watch.Bookmark, &kubeapi.Service{})
		j.server.Stop()
		if got := j.end(t); len(got) != 0 {
			t.Errorf("reports %v, want none", got)
		}
		if len(j.events) != 2 {
			t.Errorf("events passed on %v, want both", j.events)
		}
	})
	t.Run("stopped by the reflector", func(t *testing.T) {
		j := judge(notYet)
		j.w.Stop()
		if got := j.end(t); len(got) != 0 {
			t.Errorf("reports %v, want none", got)
		}
	})
}

// farAhead is a resource version no test API server reaches.
const farAhead = "1000000000000"

// aheadOfServer makes the source's watch of ServiceEntries ask the real
// API server for resource versions it has not reached, as a client does
// whose last answers came from another API server further ahead behind
// the same address (a lagging one's watch cache, say): the API server
// waits 3 s and answers "too large resource version". The reflector asks
// from its last version only when it starts over, after a watch ended in
// an error; the one it takes in its stride, and so does the source, is
// 410, a version compacted away. So every watch asks the API server to
// end it after a few seconds (timeoutSeconds), and once armed the next
// plain watch asks from resource version 1, older than anything the
// ServiceEntries' watch cache holds (it started with the CRD), and the
// API server answers 410; the watch-lists after it ask from farAhead.
type aheadOfServer struct {
	mu     sync.Mutex
	expire bool // the next plain watch asks from resource version 1
	ahead  int  // how many watch-lists to ask from farAhead; -1 all
	// expired and tooLarge count the API server's answers 410 (reason
	// Expired) and "too large resource version" (a status with cause
	// ResourceVersionTooLarge).
	expired, tooLarge atomic.Int64
}

// serviceEntriesPath is where the source lists and watches ServiceEntries.
const serviceEntriesPath = "/apis/" + serviceEntryGroupVersion + "/" + serviceEntryResource

// arm sets off the next plain watch's 410, and asks n watch-lists after it
// (-1: all) from farAhead; arm(0) passes the watches on as they are, but
// for their timeout.
func (a *aheadOfServer) arm(n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.expire, a.ahead = n != 0, n
}

func (a *aheadOfServer) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		q := r.URL.Query()
		if r.URL.Path != serviceEntriesPath || q.Get("watch") != "true" {
			return rt.RoundTrip(r)
		}
		q.Set("timeoutSeconds", "5")
		watchList := q.Get("sendInitialEvents") == "true"
		a.mu.Lock()
		switch {
		case !watchList && a.expire && q.Get("resourceVersion") != "":
			a.expire = false
			q.Set("resourceVersion", "1")
		case watchList && !a.expire && a.ahead != 0:
			a.ahead = max(a.ahead-1, -1)
			q.Set("resourceVersion", farAhead)
		}
		a.mu.Unlock()
		r = r.Clone(r.Context())
		r.URL.RawQuery = q.Encode()
		resp, err := rt.RoundTrip(r)
		if err == nil {
			resp.Body = &sniffer{ReadCloser: resp.Body, counts: map[string]*atomic.Int64{
				`"reason":"Expired"`: &a.expired,
				`"reason":"` + string(metav1.CauseTypeResourceVersionTooLarge) + `"`: &a.tooLarge,
			}}
		}
		return resp, err
	})
}

// sniffer counts in counts the watch streams it passes on that hold each
// key, once a stream.
type sniffer struct {
	io.ReadCloser
	counts map[string]*atomic.Int64
	tail   []byte // the end of what was read, for a key split between reads
}

func (s *sniffer) Read(p []byte) (int, error) {
	n, err := s.ReadCloser.Read(p)
	s.tail = append(s.tail, p[:n]...)
	for key, count := range s.counts {
		if strings.Contains(string(s.tail), key) {
			count.Add(1)
			delete(s.counts, key)
		}
	}
	s.tail = s.tail[max(0, len(s.tail)-64):]
	return n, err
}

// TestTooLargeResourceVersionIsNoFailure: an API server that has not
// reached the resource version a watch of ServiceEntries asks for (the
// agent's last answers came from another API server, further ahead)
// answers "too large resource version", and client-go asks again from the
// newest, which works. That is no failure: nothing logged, Healthy nil,
// the gauge 0, and the ServiceEntry made next arrives. An API server that
// stays behind, answering so every time, is one: failing from its first
// such answer, saying why, until it catches up. (Before: each such answer
// was logged as a failure, with /readyz's body and `ztdns status` saying
// the source failed, and ztdns_kube_watch_failing 1, until the next watch
// had stayed open a second.)
func TestTooLargeResourceVersionIsNoFailure(t *testing.T) {
	env := kubetest.Start(t)
	var ahead aheadOfServer
	cfg := rest.CopyConfig(env.Config)
	cfg.Wrap(ahead.wrap)
	all := newLogWatcher()
	rec := runSource(t, cfg, WithLogger(slog.New(all)))
	resource := kindServiceEntries.String()
	logs := all.about(resource)
	gauge := rec.src.metrics.watchFailing.WithLabelValues(resource)
	rec.waitFor(t, "the first sync", func(*model.Snapshot) error { return nil })
	rec.waitHealth(t, "healthy", func(err error) bool { return err == nil })

	ahead.arm(1)
	waitCount(t, "answers 410", &ahead.expired, 1)
	waitCount(t, `answers "too large resource version"`, &ahead.tooLarge, 1)
	createServiceEntry(t, env, "mesh", "after")
	rec.waitFor(t, "the ServiceEntry made after the answer", func(s *model.Snapshot) error {
		if find(s.ServiceEntries, serviceEntryKey, "mesh", "after") == nil {
			return errors.New("serviceentry mesh/after missing")
		}
		return nil
	})
	for _, r := range logs.matching(logFailing, logFailingUnsynced) {
		t.Errorf("logged a failure of %s for one answer client-go retries at once: %s", resource, r.err)
	}
	if err := rec.src.Healthy(); err != nil {
		t.Errorf("Healthy() = %v after one answer client-go retries at once", err)
	}
	if v := testutil.ToFloat64(gauge); v != 0 {
		t.Errorf("ztdns_kube_watch_failing{resource=%s} = %v, want 0", resource, v)
	}

	// Behind for good: every watch-list is answered so.
	n := ahead.tooLarge.Load()
	ahead.arm(-1)
	logs.waitFor(t, 1, logFailing)
	if got := ahead.tooLarge.Load() - n; got < 2 {
		t.Errorf("failing after %d answers \"too large resource version\", want the second", got)
	}
	if failing := failingEntry(rec.src, resource); !strings.Contains(failing, "Too large resource version") {
		t.Errorf("Errors() says %q, want the API server's answer", failing)
	}
	if v := testutil.ToFloat64(gauge); v != 1 {
		t.Errorf("ztdns_kube_watch_failing{resource=%s} = %v with the API server behind, want 1", resource, v)
	}
	ahead.arm(0)
	rec.waitHealth(t, "healthy once the API server caught up", func(err error) bool { return err == nil })
	logs.waitFor(t, 1, logRecovered)
}
