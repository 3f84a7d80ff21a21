package configdir

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
)

// TestMain fails the run when a watcher goroutine outlives the Run that
// started it.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := waitForNoLeaks(5 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

func waitForNoLeaks(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		var leaked []string
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "fsnotify") || strings.Contains(g, "configdir.startPolling") ||
				strings.Contains(g, "configdir.(*notifyWatcher)") || strings.Contains(g, "configdir.(*Source).Run") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("goroutines still running after all tests:\n%s", strings.Join(leaked, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// logBuffer collects log lines, for tests that assert on them, and also
// hands them to the test's log.
type logBuffer struct {
	tb  testing.TB
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tb.Log(strings.TrimSuffix(string(p), "\n"))
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func testLogger(tb testing.TB) (*slog.Logger, *logBuffer) {
	tb.Helper()
	lb := &logBuffer{tb: tb}
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

// writeFiles writes name → content into dir, creating dir.
func writeFiles(tb testing.TB, dir string, files map[string]string) {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
}

// load runs a Source on dir until its first snapshot and returns it with the
// source's errors. The files just written are read at once (they are not
// being written any more: see withoutSettle).
func load(tb testing.TB, dir string, opts ...Option) (*model.Snapshot, []error) {
	tb.Helper()
	snap, errs, _ := loadWithWarnings(tb, dir, opts...)
	return snap, errs
}

// loadWithWarnings is load, returning the source's warnings too.
func loadWithWarnings(tb testing.TB, dir string, opts ...Option) (*model.Snapshot, []error, []error) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := New(dir, append([]Option{withoutSettle()}, opts...)...)
	var snap *model.Snapshot
	err := s.Run(ctx, func(got *model.Snapshot) {
		snap = got
		cancel()
	})
	if err != nil {
		tb.Fatalf("Run: %v", err)
	}
	if snap == nil {
		tb.Fatal("Run returned without delivering a snapshot")
	}
	return snap, s.Errors(), s.Warnings()
}

// loadFiles writes files into a new directory and loads it.
func loadFiles(tb testing.TB, files map[string]string) (dir string, snap *model.Snapshot, errs []error) {
	tb.Helper()
	dir = tb.TempDir()
	writeFiles(tb, dir, files)
	log, _ := testLogger(tb)
	snap, errs = load(tb, dir, WithLogger(log))
	return dir, snap, errs
}

// withoutSettle reads files at once, however recently written: for tests
// about what a file says, not about when it is read.
func withoutSettle() Option { return func(s *Source) { s.settle = 0 } }

// withoutRechecks keeps an inotify-watched directory from being scanned on
// a timer even when something it resolves through cannot be watched: for
// tests that show events alone are followed.
func withoutRechecks() Option { return func(s *Source) { s.recheckEvery = time.Hour } }

// running is a Source running in the background for the length of a test.
type running struct {
	src   *Source
	mu    sync.Mutex
	snaps []*model.Snapshot
}

func startSource(tb testing.TB, dir string, opts ...Option) *running {
	tb.Helper()
	log, _ := testLogger(tb)
	r := &running{src: New(dir, append([]Option{WithLogger(log)}, opts...)...)}
	r.start(tb)
	return r
}

// start runs the source until the test ends and waits for its first
// snapshot.
func (r *running) start(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- r.src.Run(ctx, func(s *model.Snapshot) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.snaps = append(r.snaps, s)
		})
	}()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Run: %v", err)
		}
	})
	r.waitFor(tb, "the first snapshot", func(*model.Snapshot) bool { return true })
}

func (r *running) deliveries() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.snaps)
}

func (r *running) latest() *model.Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.snaps) == 0 {
		return nil
	}
	return r.snaps[len(r.snaps)-1]
}

// waitTimeout bounds every wait for a change to be noticed; a change normally
// shows up within the debounce period.
const waitTimeout = 10 * time.Second

// waitFor polls until the latest snapshot satisfies ok.
func (r *running) waitFor(tb testing.TB, what string, ok func(*model.Snapshot) bool) *model.Snapshot {
	tb.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		if s := r.latest(); s != nil && ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no snapshot with %s within %v; latest: %s", what, waitTimeout, describe(r.latest()))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitUntil polls until ok holds, for a wait on something other than the
// snapshots; the failure reads "no <what> within ...".
func waitUntil(tb testing.TB, what string, ok func() bool) {
	tb.Helper()
	for deadline := time.Now().Add(waitTimeout); !ok(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatalf("no %s within %v", what, waitTimeout)
		}
	}
}

// waitForErrors polls until the source's errors are exactly want.
func (r *running) waitForErrors(tb testing.TB, want ...string) {
	tb.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		got := errorStrings(r.src.Errors())
		if strings.Join(got, "\n") == strings.Join(want, "\n") {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("errors are\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// wantErrors checks that errs are want, in order (as errorStrings has them).
func wantErrors(tb testing.TB, errs []error, want []string) {
	tb.Helper()
	if got := errorStrings(errs); !reflect.DeepEqual(got, want) {
		tb.Errorf("errors\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func errorStrings(errs []error) []string {
	var out []string
	for _, err := range errs {
		var fe *FileError
		if !errors.As(err, &fe) {
			out = append(out, "not a *FileError: "+err.Error())
			continue
		}
		out = append(out, err.Error())
	}
	return out
}

// names lists the snapshot's objects as "kind ns/name", for compact
// comparisons.
func names(s *model.Snapshot) []string {
	if s == nil {
		return nil
	}
	var out []string
	for _, o := range s.Namespaces {
		out = append(out, "namespace "+o.Name)
	}
	for _, o := range s.Services {
		out = append(out, "service "+o.Key())
	}
	for _, o := range s.EndpointSlices {
		out = append(out, "endpointslice "+o.Namespace+"/"+o.Name)
	}
	for _, o := range s.ServiceEntries {
		out = append(out, "serviceentry "+o.Key())
	}
	for _, o := range s.Pods {
		out = append(out, "pod "+o.Key())
	}
	return out
}

func describe(s *model.Snapshot) string {
	if s == nil {
		return "none"
	}
	return fmt.Sprintf("%+v", *s)
}

func hasNames(want ...string) func(*model.Snapshot) bool {
	return func(s *model.Snapshot) bool { return strings.Join(names(s), ",") == strings.Join(want, ",") }
}

// firstSeen checks that the ServiceEntries of s without a creationTimestamp
// were given one scan's time, at or after since, and sets it back to zero
// for comparisons with a snapshot written out. Those with a
// creationTimestamp (before since) keep it.
func firstSeen(tb testing.TB, s *model.Snapshot, since time.Time) {
	tb.Helper()
	var scan time.Time
	for i := range s.ServiceEntries {
		se := &s.ServiceEntries[i]
		if se.Created.Before(since) {
			continue
		}
		if !scan.IsZero() && !se.Created.Equal(scan) {
			tb.Errorf("serviceentry %s first seen at %v, the others at %v: want one scan's time", se.Key(), se.Created, scan)
		}
		scan = se.Created
		se.Created = time.Time{}
	}
}
