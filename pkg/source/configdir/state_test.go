package configdir

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestBlockedFileDeletedDuringScan: a blocked file that could be served now
// but is deleted after the scan listed it is dropped, with what it served;
// the scan does not try it again and again.
func TestBlockedFileDeletedDuringScan(t *testing.T) {
	dir := t.TempDir()
	b, c := filepath.Join(dir, "b.yaml"), filepath.Join(dir, "c.yaml")
	writeFiles(t, dir, map[string]string{"b.yaml": namespaceYAML("shared"), "c.yaml": namespaceYAML("cns")})
	st := newState(dir, parser{log: quietLogger()})
	scan := func() bool {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		changed, err := st.scan(ctx)
		if err != nil {
			t.Fatalf("scan: %v", err)
		}
		return changed
	}
	scan()
	// c.yaml claims what b.yaml serves: blocked, it keeps serving cns.
	writeFile(t, c, namespaceYAML("shared"))
	scan()
	if f := st.files["c.yaml"]; f == nil || !f.blocked {
		t.Fatal("c.yaml is not blocked")
	}
	// b.yaml lets go of it, so c.yaml is tried again; it is deleted just
	// before.
	writeFile(t, b, namespaceYAML("other"))
	st.beforeRetry = func(name string) {
		if name == "c.yaml" {
			_ = os.Remove(c)
		}
	}
	if !scan() {
		t.Error("scan reports no change, but c.yaml's cns is gone")
	}
	if _, ok := st.files["c.yaml"]; ok || !reflect.DeepEqual(st.names, []string{"b.yaml"}) {
		t.Errorf("files %v, want only b.yaml", st.names)
	}
	if n := names(st.snapshot()); !reflect.DeepEqual(n, []string{"namespace other"}) {
		t.Errorf("served %q, want only b.yaml's", n)
	}
	if errs := st.errors(); len(errs) != 0 {
		t.Errorf("problems %v, want none", errs)
	}
}

// TestProblemsKeptAndCounted: a file keeps maxProblemsPerFile problems; past
// that, the last one kept gives way to the count of the rest, and problems
// past the first ones are not made.
func TestProblemsKeptAndCounted(t *testing.T) {
	for _, n := range []int{0, 1, maxProblemsPerFile - 1, maxProblemsPerFile, maxProblemsPerFile + 1, 1000} {
		pr := &problems{path: "f.yaml"}
		made := 0
		for i := range n {
			pr.addWith(func() (int, error) {
				made++
				return i + 1, fmt.Errorf("problem %d", i+1)
			})
		}
		got := errorStrings(pr.list())
		want := []string{}
		for i := range min(n, maxProblemsPerFile) {
			want = append(want, fmt.Sprintf("f.yaml:%d: problem %d", i+1, i+1))
		}
		if n > maxProblemsPerFile {
			want = append(want[:maxProblemsPerFile-1], fmt.Sprintf("f.yaml: %d more problems not listed", n-maxProblemsPerFile+1))
		}
		if pr.count() != n || made != min(n, maxProblemsPerFile) || strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("%d problems: count %d, %d made, listed\n%s\nwant\n%s", n, pr.count(), made, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
}

// TestBlockerGoneWithoutRoom: when the file a blocked file collided with is
// deleted but the directory has no room for it, its problem says so, and no
// longer names the deleted file; once there is room, it is served.
func TestBlockerGoneWithoutRoom(t *testing.T) {
	dir := t.TempDir()
	a, b, x := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml"), filepath.Join(dir, "x.yaml")
	writeFiles(t, dir, map[string]string{
		"a.yaml": namespaceYAML("shared"),
		"b.yaml": namespaceYAML("shared", "b1"),
		"x.yaml": namespaceYAML("x1", "x2"),
	})
	st := newState(dir, parser{log: quietLogger(), limits: Limits{Objects: 3}})
	scan := func(wantNames []string, wantErrs ...string) {
		t.Helper()
		if _, err := st.scan(t.Context()); err != nil {
			t.Fatal(err)
		}
		if n := names(st.snapshot()); !reflect.DeepEqual(n, wantNames) {
			t.Errorf("served %q, want %q", n, wantNames)
		}
		if errs := errorStrings(st.errors()); strings.Join(errs, "\n") != strings.Join(wantErrs, "\n") {
			t.Errorf("problems\n%s\nwant\n%s", strings.Join(errs, "\n"), strings.Join(wantErrs, "\n"))
		}
	}
	scan([]string{"namespace shared", "namespace x1", "namespace x2"},
		b+":1: namespace shared is already defined at "+a+":1")
	if err := os.Remove(a); err != nil {
		t.Fatal(err)
	}
	scan([]string{"namespace x1", "namespace x2"},
		b+": serving its 2 objects would make 4 in the directory, more than the limit of 3 (--config-max-objects)")
	if err := os.Remove(x); err != nil {
		t.Fatal(err)
	}
	scan([]string{"namespace shared", "namespace b1"})
}

// TestConflictsNameTheCurrentBlockers: a file blocked by objects other
// files serve is reported with one problem per collision, each naming the
// file that serves the object. When one of those files goes, or stops
// defining the object, while another still blocks it, the problems (what
// `ztdns status` shows) name only what blocks it now (before: the file let
// go of its objects and was parsed again only once every file it collided
// with had changed, so its problems kept naming the one that was gone).
// With three files defining one object, the second takes the first's
// place when it goes, and the third's problem names the second.
func TestConflictsNameTheCurrentBlockers(t *testing.T) {
	alreadyAt := func(dir, file string, line int, ns, at string) string {
		return fmt.Sprintf("%s:%d: namespace %s is already defined at %s:1", filepath.Join(dir, file), line, ns, filepath.Join(dir, at))
	}
	t.Run("two blockers, one deleted or changed", func(t *testing.T) {
		for _, change := range []string{"deleted", "no longer defines it"} {
			t.Run(change, func(t *testing.T) {
				dir := t.TempDir()
				writeFiles(t, dir, map[string]string{
					"a.yaml": namespaceYAML("from-a"),
					"b.yaml": namespaceYAML("from-b"),
					"c.yaml": namespaceYAML("from-a", "from-b", "own"),
				})
				r := startSource(t, dir)
				r.waitForErrors(t, alreadyAt(dir, "c.yaml", 1, "from-a", "a.yaml"), alreadyAt(dir, "c.yaml", 6, "from-b", "b.yaml"))
				if change == "deleted" {
					if err := os.Remove(filepath.Join(dir, "a.yaml")); err != nil {
						t.Fatal(err)
					}
					r.waitFor(t, "a.yaml's namespace gone", hasNames("namespace from-b"))
				} else {
					writeFile(t, filepath.Join(dir, "a.yaml"), namespaceYAML("other"))
					r.waitFor(t, "a.yaml's new namespace", hasNames("namespace other", "namespace from-b"))
				}
				r.waitForErrors(t, alreadyAt(dir, "c.yaml", 6, "from-b", "b.yaml"))
				if n := names(r.latest()); slices.Contains(n, "namespace own") {
					t.Errorf("c.yaml served while b.yaml still blocks it: %q", n)
				}
			})
		}
	})
	t.Run("three files define one object, the first deleted", func(t *testing.T) {
		dir := t.TempDir()
		writeFiles(t, dir, map[string]string{
			"a.yaml": namespaceYAML("shared"),
			"b.yaml": namespaceYAML("shared", "from-b"),
			"c.yaml": namespaceYAML("shared", "from-c"),
		})
		r := startSource(t, dir)
		r.waitForErrors(t, alreadyAt(dir, "b.yaml", 1, "shared", "a.yaml"), alreadyAt(dir, "c.yaml", 1, "shared", "a.yaml"))
		if err := os.Remove(filepath.Join(dir, "a.yaml")); err != nil {
			t.Fatal(err)
		}
		r.waitFor(t, "b.yaml served", hasNames("namespace shared", "namespace from-b"))
		r.waitForErrors(t, alreadyAt(dir, "c.yaml", 1, "shared", "b.yaml"))
	})
}
