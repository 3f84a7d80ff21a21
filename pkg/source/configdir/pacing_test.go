package configdir

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/clock"
	"github.com/ztdns/ztdns/pkg/model"
)

// fakeWatcher signals changes when the test says so.
type fakeWatcher struct{ ch chan struct{} }

func (w *fakeWatcher) changes() <-chan struct{} { return w.ch }
func (w *fakeWatcher) rearm()                   {}
func (w *fakeWatcher) close()                   {}

// clocked is a Source on a fake clock and a fake watcher, running until
// the test ends, with each delivery's time on that clock.
type clocked struct {
	clock   *clock.Fake
	watcher *fakeWatcher
	mu      sync.Mutex
	snaps   []*model.Snapshot
	at      []time.Time
}

func startClocked(t *testing.T, dir string, clk *clock.Fake, setup func(s *Source), opts ...Option) *clocked {
	t.Helper()
	log, _ := testLogger(t)
	c := &clocked{clock: clk, watcher: &fakeWatcher{ch: make(chan struct{}, 1)}}
	s := New(dir, append([]Option{WithLogger(log)}, opts...)...)
	s.clock = clk
	s.startNotify = func(string, *slog.Logger, func() []string) (watcher, error) { return c.watcher, nil }
	setup(s)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.Run(ctx, func(snap *model.Snapshot) {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.snaps = append(c.snaps, snap)
			c.at = append(c.at, clk.Now())
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	c.waitFor(t, "the first snapshot", func(*model.Snapshot) bool { return true })
	return c
}

// change tells the source that the directory changed, and waits until it
// has taken the signal and set a timer for its scan.
func (c *clocked) change(t *testing.T) {
	t.Helper()
	n, _ := c.clock.Calls()
	c.watcher.ch <- struct{}{}
	waitUntil(t, "timer set after the change", func() bool { m, _ := c.clock.Calls(); return m > n })
}

// waitFor waits for a delivery that satisfies ok and returns its time on
// the fake clock.
func (c *clocked) waitFor(t *testing.T, what string, ok func(*model.Snapshot) bool) time.Time {
	t.Helper()
	var at time.Time
	waitUntil(t, "snapshot with "+what, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, s := range c.snaps {
			if ok(s) {
				at = c.at[i]
				return true
			}
		}
		return false
	})
	return at
}

// TestRewriteStormIsPaced: a writer that rewrites a large file over and
// over (here: 20 comment edits within a second) gets it parsed a couple of
// times, not 20: a scan starts no sooner after the last one ended than
// that one took. Each parse of the file costs a second on the fake clock.
// An edit to another file meanwhile is served within two scans' time.
// (Before: every edit was parsed 50 ms later, back to back, and a 7.6 MB
// file of 25,000 ServiceEntries rewritten 5 times a second kept 1.2 of 2
// cores parsing.)
func TestRewriteStormIsPaced(t *testing.T) {
	const cost = time.Second
	dir := t.TempDir()
	big, other := filepath.Join(dir, "big.yaml"), filepath.Join(dir, "other.yaml")
	writeFiles(t, dir, map[string]string{"big.yaml": namespaceYAML("big"), "other.yaml": namespaceYAML("other")})
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	var parses atomic.Int32 // of big.yaml
	c := startClocked(t, dir, clk, func(s *Source) {
		s.parsed = func(path string) {
			if path == big {
				parses.Add(1)
				clk.Advance(cost)
			}
		}
	}, withoutSettle())
	if n := parses.Load(); n != 1 {
		t.Fatalf("big.yaml parsed %d times by the first scan", n)
	}

	for i := range 20 {
		replaceFile(t, big, fmt.Sprintf("# edit %d\n", i)+namespaceYAML("big"))
		c.change(t)
		clk.Advance(50 * time.Millisecond)
	}
	if n := parses.Load() - 1; n > 2 {
		t.Errorf("20 comment edits within a second parsed big.yaml %d times, want at most 2", n)
	}

	replaceFile(t, other, namespaceYAML("other2"))
	edited := clk.Now()
	c.change(t)
	_, due := clk.Calls()
	clk.AdvanceTo(due)
	served := c.waitFor(t, "other.yaml's edit", hasNames("namespace big", "namespace other2"))
	if wait := served.Sub(edited); wait > 2*cost+DefaultDebounce {
		t.Errorf("other.yaml's edit served %v after it was made, want within two scans of big.yaml (%v)", wait, 2*cost+DefaultDebounce)
	}
}

// TestHalfWrittenFileNotServed: a file written in place is not read until
// it has been left alone for the settle time (an hour here, on the fake
// clock), so a read halfway through the write, which cut an address short,
// serves nothing of it; it is read once it has settled, with no other
// event. (Before: the file was read 50 ms after the first write, and its
// cut address, 10.1.2.3 for 10.1.2.34, was served.)
func TestHalfWrittenFileNotServed(t *testing.T) {
	const settle = time.Hour
	dir := t.TempDir()
	path := filepath.Join(dir, "se.yaml")
	clk := clock.NewFake(time.Now())
	c := startClocked(t, dir, clk, func(s *Source) { s.settle = settle })
	full := `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example]
  addresses:
  - 10.1.2.34
`
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	half := strings.TrimSuffix(full, "4\n")
	if _, err := f.WriteString(half); err != nil {
		t.Fatal(err)
	}
	c.change(t)
	n, _ := clk.Calls()
	clk.Advance(DefaultDebounce) // the scan: se.yaml is not read yet
	waitUntil(t, "scan", func() bool {
		m, _ := clk.Calls()
		return m > n || c.delivered(func(s *model.Snapshot) bool { return len(s.ServiceEntries) > 0 })
	})
	c.checkAddresses(t, "halfway through the write", "[10.1.2.34]")
	if _, err := f.WriteString("4\n"); err != nil {
		t.Fatal(err)
	}
	_, due := clk.Calls() // the rescan once se.yaml has settled
	if want := clk.Now().Add(settle - time.Minute); due.Before(want) {
		t.Fatalf("rescan at %v, want one once se.yaml has settled, after %v", due, want)
	}
	clk.Advance(settle + time.Minute)
	c.waitFor(t, "se.yaml", func(s *model.Snapshot) bool { return len(s.ServiceEntries) == 1 })
	c.checkAddresses(t, "once written", "[10.1.2.34]")
}

// delivered reports whether a snapshot delivered so far satisfies ok.
func (c *clocked) delivered(ok func(*model.Snapshot) bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.ContainsFunc(c.snaps, ok)
}

// checkAddresses checks that every ServiceEntry delivered so far has the
// addresses want.
func (c *clocked) checkAddresses(t *testing.T, when, want string) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.snaps {
		for _, se := range s.ServiceEntries {
			if got := fmt.Sprint(se.Addresses); got != want {
				t.Errorf("%s: served addresses %s, want only the whole file's %s", when, got, want)
			}
		}
	}
}
