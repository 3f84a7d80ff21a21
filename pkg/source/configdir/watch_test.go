package configdir

import (
	"context"
	"errors"
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

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/vip"
)

func namespaceYAML(names ...string) string {
	var docs []string
	for _, n := range names {
		docs = append(docs, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: "+n+"\n")
	}
	return strings.Join(docs, "---\n")
}

func writeFile(tb testing.TB, path, content string) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		tb.Fatal(err)
	}
}

// replaceFile writes content the way editors and `kubectl cp`-style tools
// do: into a temporary file next to path, then renamed over it.
func replaceFile(tb testing.TB, path, content string) {
	tb.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	writeFile(tb, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatal(err)
	}
}

// watchModes runs a test with inotify (events only, no scans on a timer)
// and with polling.
func watchModes(t *testing.T, test func(t *testing.T, opts ...Option)) {
	t.Run("inotify", func(t *testing.T) { test(t, withoutRechecks()) })
	t.Run("polling", func(t *testing.T) { test(t, WithPolling(20*time.Millisecond)) })
}

func TestWatchFileChanges(t *testing.T) {
	watchModes(t, func(t *testing.T, opts ...Option) {
		dir := t.TempDir()
		writeFiles(t, dir, map[string]string{"a.yaml": namespaceYAML("a")})
		r := startSource(t, dir, opts...)
		if got := names(r.latest()); strings.Join(got, ",") != "namespace a" {
			t.Fatalf("first snapshot %q", got)
		}
		steps := []struct {
			name   string
			change func(t *testing.T)
			want   []string
		}{
			{"create", func(t *testing.T) { writeFile(t, filepath.Join(dir, "b.yaml"), namespaceYAML("b")) },
				[]string{"namespace a", "namespace b"}},
			{"modify in place", func(t *testing.T) { writeFile(t, filepath.Join(dir, "b.yaml"), namespaceYAML("b", "b2")) },
				[]string{"namespace a", "namespace b", "namespace b2"}},
			{"rename over", func(t *testing.T) { replaceFile(t, filepath.Join(dir, "a.yaml"), namespaceYAML("a3")) },
				[]string{"namespace a3", "namespace b", "namespace b2"}},
			{"rename a file in from elsewhere", func(t *testing.T) {
				outside := filepath.Join(t.TempDir(), "c.yaml")
				writeFile(t, outside, namespaceYAML("c"))
				if err := os.Rename(outside, filepath.Join(dir, "c.yaml")); err != nil {
					t.Fatal(err)
				}
			}, []string{"namespace a3", "namespace b", "namespace b2", "namespace c"}},
			{"delete", func(t *testing.T) {
				if err := os.Remove(filepath.Join(dir, "b.yaml")); err != nil {
					t.Fatal(err)
				}
			}, []string{"namespace a3", "namespace c"}},
			{"rename to a name that is not read", func(t *testing.T) {
				if err := os.Rename(filepath.Join(dir, "c.yaml"), filepath.Join(dir, "c.yaml.disabled")); err != nil {
					t.Fatal(err)
				}
			}, []string{"namespace a3"}},
		}
		for _, step := range steps {
			before := r.deliveries()
			step.change(t)
			r.waitFor(t, step.name+": "+strings.Join(step.want, ","), hasNames(step.want...))
			if n := r.deliveries() - before; n != 1 {
				t.Errorf("%s: %d deliveries, want 1", step.name, n)
			}
		}
		r.waitForErrors(t)
	})
}

// TestWatchConfigMapVolume follows the layout kubelet gives a ConfigMap
// volume: the files are symlinks through ..data, which points at a
// timestamped directory; an update writes a new directory and renames a new
// ..data symlink over the old one.
func TestWatchConfigMapVolume(t *testing.T) {
	watchModes(t, func(t *testing.T, opts ...Option) {
		dir := t.TempDir()
		publish := func(version string, files map[string]string) {
			t.Helper()
			data := "..2026_01_01_00_00_00." + version
			writeFiles(t, filepath.Join(dir, data), files)
			if err := os.Symlink(data, filepath.Join(dir, "..data_tmp")); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
				t.Fatal(err)
			}
			for name := range files {
				link := filepath.Join(dir, name)
				if _, err := os.Lstat(link); err == nil {
					continue
				}
				if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
					t.Fatal(err)
				}
			}
		}
		publish("1", map[string]string{"ns.yaml": namespaceYAML("v1")})
		// Each version is whole before ..data points at it.
		r := startSource(t, dir, append(opts, withoutSettle())...)
		if got := names(r.latest()); strings.Join(got, ",") != "namespace v1" {
			t.Fatalf("first snapshot %q", got)
		}

		publish("2", map[string]string{"ns.yaml": namespaceYAML("v2")})
		if err := os.RemoveAll(filepath.Join(dir, "..2026_01_01_00_00_00.1")); err != nil {
			t.Fatal(err)
		}
		r.waitFor(t, "the second version", hasNames("namespace v2"))

		// A broken update keeps what the last good one served.
		publish("3", map[string]string{"ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: [\n"})
		r.waitForErrors(t, filepath.Join(dir, "ns.yaml")+":3: invalid YAML: did not find expected node content")
		if got := names(r.latest()); strings.Join(got, ",") != "namespace v2" {
			t.Errorf("after a broken update: %q, want the v2 objects", got)
		}
		publish("4", map[string]string{"ns.yaml": namespaceYAML("v4")})
		r.waitFor(t, "the fourth version", hasNames("namespace v4"))
		r.waitForErrors(t)
	})
}

func TestBrokenEditKeepsPreviousObjects(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	writeFiles(t, dir, map[string]string{
		"a.yaml": namespaceYAML("a1", "a2"),
		"b.yaml": namespaceYAML("b"),
	})
	r := startSource(t, dir)

	// An invalid address in a.yaml: a keeps both objects it served.
	writeFile(t, a, namespaceYAML("a1", "a2")+`---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: x}
spec:
  hosts: [x.example]
  addresses:
  - 1.2.3
`)
	r.waitForErrors(t, a+`:17: serviceentry default/x: address "1.2.3" is not an IP address or CIDR`)
	// Other files' changes still apply meanwhile.
	writeFile(t, b, namespaceYAML("b", "b2"))
	r.waitFor(t, "b's change", hasNames("namespace a1", "namespace a2", "namespace b", "namespace b2"))
	if got := r.src.Errors(); len(got) != 1 {
		t.Errorf("errors %v, want a.yaml's one", got)
	}

	// Fixed: the new content replaces the old.
	writeFile(t, a, namespaceYAML("a1"))
	r.waitFor(t, "the fix", hasNames("namespace a1", "namespace b", "namespace b2"))
	r.waitForErrors(t)
}

func TestDuplicateResolvesWhenTheOwnerLetsGo(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	writeFiles(t, dir, map[string]string{"a.yaml": namespaceYAML("shared", "a")})
	r := startSource(t, dir)

	// b.yaml claims an object a.yaml serves: b is broken from the start.
	writeFile(t, b, namespaceYAML("b", "shared"))
	r.waitForErrors(t, b+":6: namespace shared is already defined at "+a+":1")
	if got := names(r.latest()); strings.Join(got, ",") != "namespace shared,namespace a" {
		t.Errorf("objects %q, want only a.yaml's", got)
	}
	// a.yaml lets go of it: b.yaml, unchanged, now applies.
	writeFile(t, a, namespaceYAML("a"))
	r.waitFor(t, "b.yaml applied", hasNames("namespace a", "namespace b", "namespace shared"))
	r.waitForErrors(t)
}

func TestDirectoryReplaced(t *testing.T) {
	parent := t.TempDir()
	dir, next := filepath.Join(parent, "manifests"), filepath.Join(parent, "next")
	writeFiles(t, dir, map[string]string{"a.yaml": namespaceYAML("old")})
	writeFiles(t, next, map[string]string{"a.yaml": namespaceYAML("new")})
	r := startSource(t, dir)

	// Swap the directories atomically, as a deploy script would.
	if err := unix.Renameat2(unix.AT_FDCWD, next, unix.AT_FDCWD, dir, unix.RENAME_EXCHANGE); err != nil {
		t.Fatalf("renameat2(RENAME_EXCHANGE): %v", err)
	}
	r.waitFor(t, "the new directory's objects", hasNames("namespace new"))
	// The watch must follow the new directory, not the old one.
	writeFile(t, filepath.Join(dir, "b.yaml"), namespaceYAML("later"))
	r.waitFor(t, "a change in the new directory", hasNames("namespace new", "namespace later"))
}

// TestSymlinkedDirectoryRepointed: a --config-dir that is a symlink
// re-pointed at another release (ln -s rel2 tmp && mv -T tmp current, the
// old release kept) is followed, and then changes in the new target are.
func TestSymlinkedDirectoryRepointed(t *testing.T) {
	watchModes(t, func(t *testing.T, opts ...Option) {
		testSymlinkedDirectoryRepointed(t, false, opts)
	})
	// A --config-dir given relative to the agent's working directory.
	t.Run("relative", func(t *testing.T) { testSymlinkedDirectoryRepointed(t, true, []Option{withoutRechecks()}) })
}

func testSymlinkedDirectoryRepointed(t *testing.T, relative bool, opts []Option) {
	parent := t.TempDir()
	writeFiles(t, filepath.Join(parent, "rel1"), map[string]string{"a.yaml": namespaceYAML("old")})
	writeFiles(t, filepath.Join(parent, "rel2"), map[string]string{"a.yaml": namespaceYAML("new")})
	current := filepath.Join(parent, "current")
	if err := os.Symlink("rel1", current); err != nil {
		t.Fatal(err)
	}
	dir := current
	if relative {
		t.Chdir(parent)
		dir = "current"
	}
	// Waits for eventual content only: a read of b.yaml halfway
	// through its write is read again.
	r := startSource(t, dir, append(opts, withoutSettle())...)
	r.waitFor(t, "the first release's objects", hasNames("namespace old"))

	tmp := filepath.Join(parent, "current.tmp")
	if err := os.Symlink("rel2", tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, current); err != nil {
		t.Fatal(err)
	}
	r.waitFor(t, "the second release's objects", hasNames("namespace new"))
	writeFile(t, filepath.Join(parent, "rel2", "b.yaml"), namespaceYAML("later"))
	r.waitFor(t, "a change in the second release", hasNames("namespace new", "namespace later"))
}

// TestDirectoryGoneKeepsServing: a --config-dir that goes for a moment (a
// config tool's rm -rf dir && mkdir dir && cp …, or a current symlink
// re-pointed at a release not there yet) keeps its last manifests served,
// is reported as a problem and as the source failing, and is read again
// once it is back, the watch following the new directory. Before, Run
// ended with "reading config dir: … no such file or directory", and the
// agent with it.
func TestDirectoryGoneKeepsServing(t *testing.T) {
	watchModes(t, func(t *testing.T, opts ...Option) {
		t.Run("removed and made again", func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "manifests")
			writeFiles(t, dir, map[string]string{"a.yaml": namespaceYAML("a")})
			testDirectoryGone(t, dir, opts, func() {
				if err := os.RemoveAll(dir); err != nil {
					t.Fatal(err)
				}
			}, func(files map[string]string) { writeFiles(t, dir, files) })
		})
		t.Run("symlink re-pointed at a release not there yet", func(t *testing.T) {
			parent := t.TempDir()
			writeFiles(t, filepath.Join(parent, "rel1"), map[string]string{"a.yaml": namespaceYAML("a")})
			current := filepath.Join(parent, "current")
			if err := os.Symlink("rel1", current); err != nil {
				t.Fatal(err)
			}
			testDirectoryGone(t, current, opts, func() {
				tmp := filepath.Join(parent, "current.tmp")
				if err := os.Symlink("rel2", tmp); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(tmp, current); err != nil {
					t.Fatal(err)
				}
			}, func(files map[string]string) { writeFiles(t, filepath.Join(parent, "rel2"), files) })
		})
	})
}

// testDirectoryGone runs a source on dir, which serves namespace a, makes
// it go with gone, checks that namespace a is still served and the
// directory reported, then makes it come back with back and checks that
// its new content is served, and then its changes.
func testDirectoryGone(t *testing.T, dir string, opts []Option, gone func(), back func(files map[string]string)) {
	log, logs := testLogger(t)
	r := &running{src: New(dir, append([]Option{WithLogger(log)}, opts...)...)}
	r.start(t)
	r.waitFor(t, "the directory's objects", hasNames("namespace a"))

	gone()
	waitUntil(t, "report of the missing directory", func() bool { return r.src.Healthy() != nil })
	wantErrors(t, r.src.Errors(), []string{
		dir + ": reading config dir: open " + dir + ": no such file or directory: serving the manifests last read until it is back"})
	if got := r.src.Healthy().Error(); got != "reading config dir: open "+dir+": no such file or directory" {
		t.Errorf("Healthy() = %q, want the directory missing", got)
	}
	if got := names(r.latest()); strings.Join(got, ",") != "namespace a" || r.deliveries() != 1 {
		t.Errorf("after the directory went: %d snapshots, the latest %q; want the first, namespace a, still served", r.deliveries(), got)
	}

	back(map[string]string{"b.yaml": namespaceYAML("b")})
	r.waitFor(t, "the new directory's objects", hasNames("namespace b"))
	r.waitForErrors(t)
	if err := r.src.Healthy(); err != nil {
		t.Errorf("Healthy() = %v once the directory is back", err)
	}
	writeFile(t, filepath.Join(dir, "c.yaml"), namespaceYAML("c"))
	r.waitFor(t, "a change in the new directory", hasNames("namespace b", "namespace c"))

	out := logs.String()
	if n := strings.Count(out, `level=WARN msg="cannot read the config dir; serving the last manifests read until it is back"`); n != 1 {
		t.Errorf("%d warnings that the directory went, want 1:\n%s", n, out)
	}
	if n := strings.Count(out, `level=INFO msg="the config dir is back; reading it again"`); n != 1 {
		t.Errorf("%d lines that the directory is back, want 1:\n%s", n, out)
	}
}

func TestFirstSnapshotDespiteBrokenFiles(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"good.yaml":   namespaceYAML("good"),
		"broken.yaml": "kind: [",
	})
	r := startSource(t, dir)
	if got := names(r.latest()); strings.Join(got, ",") != "namespace good" {
		t.Errorf("first snapshot %q, want the good file's objects", got)
	}
	if errs := r.src.Errors(); len(errs) != 1 || !strings.HasPrefix(errs[0].Error(), filepath.Join(dir, "broken.yaml")+":1: invalid YAML") {
		t.Errorf("errors %v, want broken.yaml's", errs)
	}
}

// TestScanReportsOnlyRealChanges checks the scan result directly: a rewrite
// that changes nothing served (a comment, the order of keys) must not cause
// a delivery.
func TestScanReportsOnlyRealChanges(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.yaml")
	writeFile(t, path, namespaceYAML("a"))
	log, _ := testLogger(t)
	st := newState(dir, parser{log: log})
	steps := []struct {
		name    string
		content string
		changed bool
	}{
		{"first scan", namespaceYAML("a"), true},
		{"nothing written", namespaceYAML("a"), false},
		{"comment added", "# hello\n" + namespaceYAML("a"), false},
		{"keys reordered", "kind: Namespace\nmetadata: {name: a}\napiVersion: v1\n", false},
		{"an ignored kind added", namespaceYAML("a") + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n", false},
		{"broken", "kind: [", false},
		{"fixed as before", namespaceYAML("a"), false},
		{"real change", namespaceYAML("b"), true},
		{"emptied", "", true},
	}
	for _, step := range steps {
		writeFile(t, path, step.content)
		changed, err := st.scan(context.Background())
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if changed != step.changed {
			t.Errorf("%s: changed = %v, want %v", step.name, changed, step.changed)
		}
	}
}

func TestRunStopsWithContext(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	log, _ := testLogger(t)
	go func() { done <- New(dir, WithLogger(log)).Run(ctx, func(*model.Snapshot) { cancel() }) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil after cancel", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Run did not return after its context ended")
	}
}

func TestFallsBackToPolling(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.yaml": namespaceYAML("a")})
	log, logs := testLogger(t)
	s := New(dir, WithLogger(log))
	s.startNotify = func(string, *slog.Logger, func() []string, time.Duration) (watcher, error) {
		return nil, errors.New("inotify_init1: too many open files")
	}
	r := &running{src: s}
	r.start(t)
	if !strings.Contains(logs.String(), `level=WARN msg="cannot watch the config dir with inotify; polling it instead" source=configdir dir=`+dir+` interval=1s error="inotify_init1: too many open files"`) {
		t.Errorf("the fallback is not logged:\n%s", logs.String())
	}
	writeFile(t, filepath.Join(dir, "a.yaml"), namespaceYAML("a", "b"))
	r.waitFor(t, "the change, found by polling", hasNames("namespace a", "namespace b"))
}

// TestPollFingerprintHasStatusChangeTime: a rewrite that keeps the size
// and sets the modification time back (cp -p, rsync --inplace -t) changes
// the poller's fingerprint: the status change time cannot be set back.
func TestPollFingerprintHasStatusChangeTime(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.yaml")
	writeFile(t, path, namespaceYAML("ns-aa"))
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	before, _ := fingerprint(dir, DefaultMaxFiles, nil, time.Now())
	st, err := statOf(path)
	if err != nil {
		t.Fatal(err)
	}
	waitForTimestampAfter(t, dir, st.ctime)
	writeFile(t, path, namespaceYAML("ns-zz"))
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	if after, _ := fingerprint(dir, DefaultMaxFiles, nil, time.Now()); after == before {
		t.Errorf("fingerprint unchanged by a same-size rewrite with its modification time kept:\n%s", after)
	}
}

// TestPollingScansWhileTimesAreRacy: while a file's times are within
// racyWindow of a poll, a same-size write in the same timestamp tick would
// leave the fingerprint as it was: the poller asks for scans anyway, with no
// change it can see, and stops once the times are old enough.
func TestPollingScansWhileTimesAreRacy(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.yaml")
	writeFile(t, path, namespaceYAML("a"))
	w := startPolling(dir, 10*time.Millisecond, DefaultMaxFiles, func() []string { return nil })
	defer w.close()
	for i := range 2 {
		select {
		case <-w.changes():
		case <-time.After(waitTimeout):
			t.Fatalf("no scan asked for within %v (%d so far) while the file's times are recent", waitTimeout, i)
		}
	}
	st, err := statOf(path)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "file times older than racyWindow", func() bool { return st.trustedAt(time.Now().Add(-100 * time.Millisecond)) })
	for len(w.changes()) > 0 {
		<-w.changes()
	}
	select {
	case <-w.changes():
		t.Error("scans still asked for after the file's times are old enough")
	case <-time.After(300 * time.Millisecond):
	}
}

// TestPollingTrustsAFutureModificationTime: a file whose modification time
// is ahead (touch -d tomorrow) is scanned again only when it changes: the
// status change time, which the kernel sets and a user cannot move ahead,
// tells whether a stat can see the next write (before: a future
// modification time made every poll ask for a scan, and every scan read the
// file, for as long as it was ahead).
func TestPollingTrustsAFutureModificationTime(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.yaml")
	writeFile(t, path, namespaceYAML("a"))
	tomorrow := time.Now().Add(24 * time.Hour)
	if err := os.Chtimes(path, tomorrow, tomorrow); err != nil {
		t.Fatal(err)
	}
	st, err := statOf(path)
	if err != nil {
		t.Fatal(err)
	}
	// The status change time ages as the clock runs.
	waitUntil(t, "a status change time older than racyWindow", func() bool {
		return st.ctime < time.Now().Add(-racyWindow-100*time.Millisecond).UnixNano()
	})

	// A scan reads the file once, and not again while it is unchanged.
	s := newState(dir, parser{log: quietLogger()})
	scan := scanCounting(t, s)
	scan(1, "namespace a")
	scan(1, "namespace a")

	w := startPolling(dir, 10*time.Millisecond, DefaultMaxFiles, func() []string { return nil })
	defer w.close()
	select {
	case <-w.changes():
		t.Error("scans asked for with no change: the modification time ahead of the clock is not trusted")
	case <-time.After(300 * time.Millisecond): // 30 polls
	}
}

// TestPollingWatchesTheFilesRead: past Limits.Files, the poller watches the
// files scan reads, those read before first, rather than the first ones by
// name: an edit to a file that serves is noticed after a new file that
// sorts before it.
func TestPollingWatchesTheFilesRead(t *testing.T) {
	dir := t.TempDir()
	a, c := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "c.yaml")
	writeFiles(t, dir, map[string]string{"b.yaml": namespaceYAML("b"), "c.yaml": namespaceYAML("c")})
	r := startSource(t, dir, WithPolling(20*time.Millisecond), WithLimits(Limits{Files: 2}))
	writeFile(t, a, namespaceYAML("a"))
	r.waitForErrors(t, a+": skipped: the directory has 3 manifest files, more than the limit of 2 (--config-max-files)")
	writeFile(t, c, namespaceYAML("c", "c2"))
	r.waitFor(t, "c.yaml's edit", hasNames("namespace b", "namespace c", "namespace c2"))
}

// TestWatchSymlinkTargets: a manifest that is a symlink to a file in
// another directory follows its target: edited in place, replaced by a
// rename, a dangling link's target created, and a link along a chain
// repointed, all without an event in the config directory (inotify watches
// the targets' directories too). Before, with inotify, the old objects
// stayed until something else happened in the directory.
func TestWatchSymlinkTargets(t *testing.T) {
	watchModes(t, func(t *testing.T, opts ...Option) {
		dir, shared, chain := t.TempDir(), t.TempDir(), t.TempDir()
		target := filepath.Join(shared, "se.yaml")
		writeFile(t, target, namespaceYAML("v1"))
		if err := os.Symlink(target, filepath.Join(dir, "se.yaml")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(shared, "later.yaml"), filepath.Join(dir, "later.yaml")); err != nil {
			t.Fatal(err)
		}
		// chain.yaml -> chain/hop.yaml -> shared/a.yaml, repointed to b.yaml.
		writeFile(t, filepath.Join(shared, "a.yaml"), namespaceYAML("a"))
		writeFile(t, filepath.Join(shared, "b.yaml"), namespaceYAML("b"))
		if err := os.Symlink(filepath.Join(shared, "a.yaml"), filepath.Join(chain, "hop.yaml")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(chain, "hop.yaml"), filepath.Join(dir, "chain.yaml")); err != nil {
			t.Fatal(err)
		}
		r := startSource(t, dir, opts...)
		if got := names(r.latest()); strings.Join(got, ",") != "namespace a,namespace v1" {
			t.Fatalf("first snapshot %q", got)
		}

		writeFile(t, target, namespaceYAML("v2"))
		r.waitFor(t, "the target edited in place", hasNames("namespace a", "namespace v2"))
		replaceFile(t, target, namespaceYAML("v3"))
		r.waitFor(t, "the target replaced", hasNames("namespace a", "namespace v3"))
		writeFile(t, filepath.Join(shared, "later.yaml"), namespaceYAML("later"))
		r.waitFor(t, "the dangling link's target created", hasNames("namespace a", "namespace later", "namespace v3"))
		r.waitForErrors(t)
		tmp := filepath.Join(chain, ".hop.tmp")
		if err := os.Symlink(filepath.Join(shared, "b.yaml"), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(chain, "hop.yaml")); err != nil {
			t.Fatal(err)
		}
		r.waitFor(t, "a link along the chain repointed", hasNames("namespace b", "namespace later", "namespace v3"))
		writeFile(t, filepath.Join(shared, "b.yaml"), namespaceYAML("b2"))
		r.waitFor(t, "the new end of the chain edited", hasNames("namespace b2", "namespace later", "namespace v3"))
	})
}

// TestLinkWatchesBounded: symlinked manifests pointing into more than
// maxLinkDirs directories get that many watches (besides the config dir's
// parent, watched for the directory's own name), and the directory is
// scanned every DefaultPollInterval as well, so an edit in a directory
// not watched is still seen; links gone, their watches go too.
func TestLinkWatchesBounded(t *testing.T) {
	dir, targets := t.TempDir(), t.TempDir()
	var files []string
	for i := range maxLinkDirs + 2 {
		sub := filepath.Join(targets, fmt.Sprintf("d%03d", i))
		name := fmt.Sprintf("l%03d.yaml", i)
		writeFiles(t, sub, map[string]string{"ns.yaml": namespaceYAML(fmt.Sprintf("n%03d", i))})
		if err := os.Symlink(filepath.Join(sub, "ns.yaml"), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
		files = append(files, name)
	}
	log, _ := testLogger(t)
	var mu sync.Mutex
	known := slices.Clone(files)
	wt, err := startNotify(dir, log, func() []string { mu.Lock(); defer mu.Unlock(); return known }, DefaultPollInterval)
	if err != nil {
		t.Fatal(err)
	}
	defer wt.close()
	w := wt.(*notifyWatcher)
	w.rearm()
	w.mu.Lock()
	watched := len(w.links)
	w.mu.Unlock()
	if watched != maxLinkDirs+1 || !w.unwatched.Load() {
		t.Errorf("%d directories watched, unwatched %v; want %d and true", watched, w.unwatched.Load(), maxLinkDirs+1)
	}
	if got := len(w.fw.WatchList()); got != maxLinkDirs+2 {
		t.Errorf("%d inotify watches, want %d: the config dir, its parent and the link directories", got, maxLinkDirs+2)
	}
	// The last directories by name are the ones past the bound. The
	// source's watcher counts the scans it is rearmed after: the first
	// scan's rearm adds the watches and asks for a second scan, whose
	// rearm adds none. Past that second one, the edit below (in a
	// directory not watched) can only be seen by the interval's scans.
	s := New(dir, WithLogger(log))
	sw := &scanCountingWatcher{}
	s.startNotify = func(d string, l *slog.Logger, k func() []string, every time.Duration) (watcher, error) {
		w, err := startNotify(d, l, k, every)
		if err != nil {
			return nil, err
		}
		sw.watcher = w
		return sw, nil
	}
	r := &running{src: s}
	r.start(t)
	waitUntil(t, "scan after the one that added the watches", func() bool { return sw.rearms.Load() >= 2 })
	last := fmt.Sprintf("n%03d", maxLinkDirs+1)
	writeFile(t, filepath.Join(targets, fmt.Sprintf("d%03d", maxLinkDirs+1), "ns.yaml"), namespaceYAML(last+"-b"))
	r.waitFor(t, "the edit in a directory past the bound", func(s *model.Snapshot) bool {
		return slices.ContainsFunc(s.Namespaces, func(n model.Namespace) bool { return n.Name == last+"-b" })
	})

	mu.Lock()
	known = files[:1]
	mu.Unlock()
	w.rearm()
	w.mu.Lock()
	watched = len(w.links)
	w.mu.Unlock()
	if watched != 2 || w.unwatched.Load() {
		t.Errorf("%d directories watched, unwatched %v; want 2 and false", watched, w.unwatched.Load())
	}
	// The watches themselves go, not only their bookkeeping.
	kept, err := filepath.EvalSymlinks(filepath.Join(targets, "d000"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := slices.Sorted(slices.Values(w.fw.WatchList())), slices.Sorted(slices.Values([]string{dir, filepath.Dir(dir), kept})); !slices.Equal(got, want) {
		t.Errorf("inotify watches %q, want %q: the config dir, its parent and the remaining link's directory", got, want)
	}
}

// TestChmodIsAChange: a chmod asks for a scan, so that a file that could
// not be read ("permission denied") is read once it is made readable. The
// tests run as root, whom no mode stops, so this checks the watcher's
// signal itself.
func TestChmodIsAChange(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.yaml")
	writeFile(t, path, namespaceYAML("a"))
	log, _ := testLogger(t)
	w, err := startNotify(dir, log, func() []string { return nil }, DefaultPollInterval)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.changes():
	case <-time.After(waitTimeout):
		t.Fatalf("no change signalled within %v after a chmod", waitTimeout)
	}
}

// scanCountingWatcher counts the rearms that follow each scan.
type scanCountingWatcher struct {
	watcher
	rearms atomic.Int32
}

func (w *scanCountingWatcher) rearm() {
	w.watcher.rearm()
	w.rearms.Add(1)
}

// vipsOf allocates the snapshot's VIPs as the table does with ztdns's
// allocator.
func vipsOf(s *model.Snapshot) map[vip.Key]vip.Pair {
	var claims []vip.Claim
	for i := range s.ServiceEntries {
		se := &s.ServiceEntries[i]
		if !vip.Eligible(se) {
			continue
		}
		for _, h := range se.Hosts {
			if vip.HostEligible(se, h) {
				claims = append(claims, vip.Claim{Host: h, Owner: se.Key(), Created: se.Created})
			}
		}
	}
	return vip.Allocate(claims)
}

// TestNewEntryKeepsExistingVIPs: a ServiceEntry without creationTimestamp
// (as hand-written manifests and examples/ are) is as old as the scan
// that first saw it, kept while the directory defines it, edits included.
// So a new entry naming the same host, whose owner sorts first, does not
// move the existing entry's VIP: before, both were created at the zero
// time, and the owner's name decided.
func TestNewEntryKeepsExistingVIPs(t *testing.T) {
	se := func(ns, name, port string) string {
		return "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: " + name + ", namespace: " + ns + "}\n" +
			"spec: {hosts: [db.example], resolution: DNS, ports: [{number: " + port + ", name: tcp, protocol: TCP}]}\n"
	}
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"default.yaml": se("default", "zz-db", "5432")})
	r := startSource(t, dir)
	old := vip.Key{Owner: "default/zz-db", Host: "db.example"}
	want, ok := vipsOf(r.latest())[old]
	if !ok {
		t.Fatalf("zz-db has no VIP: %v", vipsOf(r.latest()))
	}

	writeFile(t, filepath.Join(dir, "apps.yaml"), se("apps", "db", "5432"))
	s := r.waitFor(t, "the new entry", hasNames("serviceentry apps/db", "serviceentry default/zz-db"))
	vips := vipsOf(s)
	if got := vips[old]; got != want {
		t.Errorf("zz-db's VIP moved from %v to %v when apps/db (%v) was created", want, got, vips[vip.Key{Owner: "apps/db", Host: "db.example"}])
	}
	// An edit is no new entry.
	writeFile(t, filepath.Join(dir, "default.yaml"), se("default", "zz-db", "5433"))
	s = r.waitFor(t, "the edit", func(s *model.Snapshot) bool {
		return len(s.ServiceEntries) == 2 && s.ServiceEntries[1].Ports[0].Port == 5433
	})
	if got := vipsOf(s)[old]; got != want {
		t.Errorf("zz-db's VIP moved from %v to %v when it was edited", want, got)
	}
}

// TestStartAsksForOneScan: the watches on what the directory's own path
// resolves through are in place before the first scan, so its rearm adds
// none and asks for no second scan (one of a large directory costs the
// start a second pass over every file, and its garbage).
func TestStartAsksForOneScan(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "manifests")
	writeFiles(t, dir, map[string]string{"a.yaml": namespaceYAML("a")})
	log, _ := testLogger(t)
	wt, err := startNotify(dir, log, func() []string { return []string{"a.yaml"} }, DefaultPollInterval)
	if err != nil {
		t.Fatal(err)
	}
	defer wt.close()
	w := wt.(*notifyWatcher)
	w.rearm() // as after the first scan
	if n := len(w.ch); n != 0 {
		t.Errorf("the first scan's rearm asks for another scan")
	}
	w.mu.Lock()
	names := w.links[filepath.Dir(dir)]
	w.mu.Unlock()
	if !names["manifests"] {
		t.Errorf("the parent is watched for %v, want the directory's own name", names)
	}
}
