package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/ztdns/ztdns/pkg/model"
)

// waitTimeout bounds every wait for a snapshot or a health change. Changes
// show in milliseconds; the margin is for a loaded machine and client-go's
// reconnect backoff after an API server restart.
const waitTimeout = 45 * time.Second

// testLogger logs to the test output with -v, and nowhere otherwise.
func testLogger() *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// logWatcher is a slog handler that passes records on to the test logger
// and lets a test wait for a message: how it observes what the source did
// when nothing else shows it (it stopped an informer, say). A watcher made
// by about counts only the records of one resource.
type logWatcher struct {
	slog.Handler
	mu      *sync.Mutex
	records *[]logRecord
	next    *chan struct{}
	// resource, when set (about), is the only resource whose records
	// count and waitFor see.
	resource string
}

// logRecord is what a logWatcher keeps of a record: its message, and its
// resource and error attributes ("" when absent).
type logRecord struct {
	msg, resource, err string
}

func newLogWatcher() *logWatcher {
	next := make(chan struct{})
	return &logWatcher{Handler: testLogger().Handler(), mu: &sync.Mutex{}, records: &[]logRecord{}, next: &next}
}

// about returns a view of w that sees only the records about resource:
// what a test checks of the watch it breaks, which other watches failing a
// moment on a loaded machine (an API server's watch cache behind for two
// answers in a row, say) leave alone.
func (w *logWatcher) about(resource string) *logWatcher {
	c := *w
	c.resource = resource
	return &c
}

func (w *logWatcher) Handle(ctx context.Context, r slog.Record) error {
	rec := logRecord{msg: r.Message}
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "resource":
			rec.resource = a.Value.String()
		case "error":
			rec.err = a.Value.String()
		}
		return true
	})
	w.mu.Lock()
	*w.records = append(*w.records, rec)
	close(*w.next)
	*w.next = make(chan struct{})
	w.mu.Unlock()
	return w.Handler.Handle(ctx, r)
}

// Enabled passes Info and above, whatever the test logger keeps.
func (w *logWatcher) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (w *logWatcher) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *w
	c.Handler = w.Handler.WithAttrs(attrs)
	return &c
}

func (w *logWatcher) WithGroup(name string) slog.Handler {
	c := *w
	c.Handler = w.Handler.WithGroup(name)
	return &c
}

// matching returns the records w sees with one of msgs as their message.
func (w *logWatcher) matching(msgs ...string) []logRecord {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []logRecord
	for _, r := range *w.records {
		if slices.Contains(msgs, r.msg) && (w.resource == "" || r.resource == w.resource) {
			out = append(out, r)
		}
	}
	return out
}

// count returns how many records w sees had one of msgs as their message.
func (w *logWatcher) count(msgs ...string) int { return len(w.matching(msgs...)) }

// waitFor waits until w has seen n records with one of msgs as their
// message.
func (w *logWatcher) waitFor(tb testing.TB, n int, msgs ...string) {
	tb.Helper()
	deadline := time.After(waitTimeout)
	for {
		w.mu.Lock()
		next := *w.next
		w.mu.Unlock()
		if w.count(msgs...) >= n {
			return
		}
		select {
		case <-next:
		case <-deadline:
			tb.Fatalf("%q not logged %d times within %v", msgs, n, waitTimeout)
		}
	}
}

// delivery is one snapshot, when the source delivered it, and when the
// recorder's onDeliver (a table build, say) was done with it.
type delivery struct {
	snap *model.Snapshot
	at   time.Time
	done time.Time
}

// recorder keeps what a running Source delivers.
type recorder struct {
	src *Source

	mu         sync.Mutex
	deliveries []delivery
	// next is closed, and replaced, at every delivery.
	next chan struct{}
	// onDeliver, when set before Run, runs inside deliver, as the agent's
	// table build does.
	onDeliver func(*model.Snapshot)
}

// runSource runs a Source for cfg until the test ends, and checks that Run
// returns nil then.
func runSource(tb testing.TB, cfg *rest.Config, opts ...Option) *recorder {
	tb.Helper()
	return runRecorder(tb, &recorder{}, cfg, opts...)
}

func runRecorder(tb testing.TB, r *recorder, cfg *rest.Config, opts ...Option) *recorder {
	tb.Helper()
	r.src = New(cfg, append([]Option{WithLogger(testLogger())}, opts...)...)
	r.next = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.src.Run(ctx, r.deliver) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("Run returned %v, want nil after cancel", err)
			}
		case <-time.After(waitTimeout):
			tb.Errorf("Run did not return within %v of cancel", waitTimeout)
		}
	})
	return r
}

func (r *recorder) deliver(s *model.Snapshot) {
	at := time.Now()
	if r.onDeliver != nil {
		r.onDeliver(s)
	}
	done := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deliveries = append(r.deliveries, delivery{snap: s, at: at, done: done})
	close(r.next)
	r.next = make(chan struct{})
}

// latest returns the last delivery and how many there were.
func (r *recorder) latest() (delivery, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.deliveries) == 0 {
		return delivery{}, 0
	}
	return r.deliveries[len(r.deliveries)-1], len(r.deliveries)
}

// since returns the deliveries after the first n.
func (r *recorder) since(n int) []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivery(nil), r.deliveries[n:]...)
}

// waitFor waits until the latest snapshot satisfies ok, which returns nil
// when it does and otherwise what is missing, and returns that delivery.
func (r *recorder) waitFor(tb testing.TB, what string, ok func(*model.Snapshot) error) delivery {
	tb.Helper()
	deadline := time.After(waitTimeout)
	lastErr := errors.New("no snapshot delivered")
	for {
		r.mu.Lock()
		next := r.next
		r.mu.Unlock()
		if d, n := r.latest(); n > 0 {
			if lastErr = ok(d.snap); lastErr == nil {
				return d
			}
		}
		select {
		case <-next:
		case <-deadline:
			tb.Fatalf("no snapshot with %s within %v: %v", what, waitTimeout, lastErr)
		}
	}
}

// waitHealth polls Healthy until ok accepts its result.
func (r *recorder) waitHealth(tb testing.TB, what string, ok func(error) bool) {
	tb.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		err := r.src.Healthy()
		if ok(err) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("source not %s within %v: Healthy() = %v", what, waitTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// find returns the object called namespace/name in objs, by key.
func find[T any](objs []T, key func(*T) string, namespace, name string) *T {
	want := namespace + "/" + name
	if namespace == "" {
		want = name
	}
	for i := range objs {
		if key(&objs[i]) == want {
			return &objs[i]
		}
	}
	return nil
}

func serviceKey(s *model.Service) string           { return s.Key() }
func sliceKey(s *model.EndpointSlice) string       { return s.Namespace + "/" + s.Name }
func serviceEntryKey(s *model.ServiceEntry) string { return s.Key() }
func podKey(p *model.Pod) string                   { return p.Key() }
func namespaceKey(n *model.Namespace) string       { return n.Name }

// expect returns a check that the object found by get equals want, or is
// absent when want is nil.
func expect[T any](what string, get func(*model.Snapshot) *T, want *T) func(*model.Snapshot) error {
	return func(s *model.Snapshot) error {
		got := get(s)
		switch {
		case got == nil && want == nil:
			return nil
		case got == nil:
			return fmt.Errorf("%s missing", what)
		case want == nil:
			return fmt.Errorf("%s still there: %+v", what, *got)
		case !equalModel(got, want):
			return fmt.Errorf("%s = %+v, want %+v", what, *got, *want)
		}
		return nil
	}
}
