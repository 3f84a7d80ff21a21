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
	s.startNotify = func(string, *slog.Logger, func() []string, time.Duration) (watcher, error) { return c.watcher, nil }
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
// over gets it parsed at most about half the time: a scan starts no sooner
// after the last one ended than that one took. Each parse of the file costs
// a second on the fake clock. The settle time is on, as in production, and
// the rewrites come further apart than it, so each could be read: the
// pacing is what keeps the parses down. An edit to another file meanwhile
// is served within two scans and the settle time. A file rewritten more
// often than the settle time is not read until the writer pauses, then
// with its last content. (Before: every edit was parsed 50 ms later, back
// to back, and a 7.6 MB file of 25,000 ServiceEntries rewritten 5 times a
// second kept 1.2 of 2 cores parsing.)
func TestRewriteStormIsPaced(t *testing.T) {
	const (
		cost     = time.Second
		rewrites = 20
		every    = DefaultSettle + 100*time.Millisecond // each rewrite settles before the next
	)
	dir := t.TempDir()
	big, other := filepath.Join(dir, "big.yaml"), filepath.Join(dir, "other.yaml")
	// The fake clock runs an hour behind the system's: the files' status
	// change times, which only the kernel sets, are ahead of it by more
	// than the settle time, which says nothing of a writer (settledAt), and
	// their modification times, set to the fake clock's at each write, are
	// what settles.
	clk := clock.NewFake(time.Now().Add(-time.Hour))
	write := func(path, content string, at time.Time) {
		t.Helper()
		tmp := filepath.Join(dir, "."+filepath.Base(path)+".tmp")
		writeFile(t, tmp, content)
		if err := os.Chtimes(tmp, at, at); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(big, namespaceYAML("big"), clk.Now().Add(-DefaultSettle))
	write(other, namespaceYAML("other"), clk.Now().Add(-DefaultSettle))
	var parses atomic.Int32 // of big.yaml
	c := startClocked(t, dir, clk, func(s *Source) {
		s.parsed = func(path string) {
			if path == big {
				clk.Advance(cost)
				parses.Add(1)
			}
		}
	})
	if n := parses.Load(); n != 1 {
		t.Fatalf("big.yaml parsed %d times by the first scan", n)
	}

	start := clk.Now()
	for i := range rewrites {
		write(big, fmt.Sprintf("# edit %d\n", i)+namespaceYAML("big"), clk.Now())
		c.change(t)
		// The writer waits as long as the source takes to act on its
		// rewrite (a scan now due), as it would on the system's clock.
		n := parses.Load()
		_, due := clk.Calls()
		clk.Advance(every)
		if !due.After(clk.Now()) {
			waitUntil(t, "big.yaml parsed", func() bool { return parses.Load() > n })
		}
	}
	edited := clk.Now()
	write(other, namespaceYAML("other2"), edited)
	c.change(t)
	served := c.runUntil(t, "other.yaml's edit", hasNames("namespace big", "namespace other2"))
	if wait, most := served.Sub(edited), 2*cost+DefaultSettle; wait > most {
		t.Errorf("other.yaml's edit served %v after it was made, want within two scans of big.yaml and the settle time (%v)", wait, most)
	}
	n := parses.Load() - 1
	if busy, elapsed := time.Duration(n)*cost, served.Sub(start); busy > elapsed/2+cost {
		t.Errorf("%d rewrites %v apart parsed big.yaml %d times, %v of %v on the clock: want half the time at most",
			rewrites, every, n, busy, elapsed)
	}

	// Rewritten faster than it settles: not read until the writer pauses.
	before := parses.Load()
	for i := range 10 {
		write(big, namespaceYAML(fmt.Sprintf("fast%d", i)), clk.Now())
		c.change(t)
		clk.Advance(DefaultSettle - 100*time.Millisecond)
	}
	if n := parses.Load() - before; n != 0 {
		t.Errorf("big.yaml, rewritten every %v, parsed %d times while its writer went on", DefaultSettle-100*time.Millisecond, n)
	}
	c.runUntil(t, "the last rewrite, once the writer paused", hasNames("namespace fast9", "namespace other2"))
	if c.delivered(func(s *model.Snapshot) bool {
		return slices.ContainsFunc(names(s), func(n string) bool {
			return strings.HasPrefix(n, "namespace fast") && n != "namespace fast9"
		})
	}) {
		t.Error("a rewrite before the last was served")
	}
}

// runUntil moves the clock on to each timer the source sets until a
// delivery satisfies ok, and returns that delivery's time on the clock.
func (c *clocked) runUntil(t *testing.T, what string, ok func(*model.Snapshot) bool) time.Time {
	t.Helper()
	var at time.Time
	waitUntil(t, "snapshot with "+what, func() bool {
		c.mu.Lock()
		for i, s := range c.snaps {
			if ok(s) {
				at = c.at[i]
				c.mu.Unlock()
				return true
			}
		}
		c.mu.Unlock()
		_, due := c.clock.Calls()
		c.clock.AdvanceTo(due)
		return false
	})
	return at
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
