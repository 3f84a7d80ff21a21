package configdir

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// brokenServices is n Services whose clusterIP is no address: n problems.
func brokenServices(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "apiVersion: v1\nkind: Service\nmetadata: {name: s%d}\nspec: {clusterIP: not-an-ip}\n---\n", i)
	}
	return b.String()
}

// TestEveryBrokenFileListed: files with many problems do not hide the
// problems of the files after them. Six files of 20 problems each come
// first; then a file of bad YAML, a file blocked by another's object, and
// a file past --config-max-files: each of them gets a line in Errors (and
// so in `ztdns status`), from the first scan on, and the line counting
// the problems left out names their files. (Before: the first 100
// problems in file order were kept, all of the first five files', and the
// three others were only counted.)
func TestEveryBrokenFileListed(t *testing.T) {
	files := map[string]string{
		"a.yaml":      namespaceYAML("shared"),
		"g.yaml":      "kind: [",
		"h.yaml":      namespaceYAML("shared"),
		"z-past.yaml": namespaceYAML("z"),
	}
	for i := range 6 {
		files[fmt.Sprintf("f%d.yaml", i)] = brokenServices(maxProblemsPerFile)
	}
	dir := t.TempDir()
	writeFiles(t, dir, files)
	log, _ := testLogger(t)
	_, errs := load(t, dir, WithLogger(log), WithLimits(Limits{Files: len(files) - 1}))
	if len(errs) != maxProblems {
		t.Errorf("%d problems kept, want %d", len(errs), maxProblems)
	}
	var paths []string
	for _, err := range errs {
		if p := pathOf(err); !slices.Contains(paths, p) {
			paths = append(paths, p)
		}
	}
	for _, name := range []string{"f0.yaml", "f5.yaml", "g.yaml", "h.yaml", "z-past.yaml"} {
		if !slices.Contains(paths, filepath.Join(dir, name)) {
			t.Errorf("no problem of %s listed; the files listed: %q", name, paths)
		}
	}
	last := errs[len(errs)-1].Error()
	if want := dir + ": 24 more problems not listed, in f4.yaml, f5.yaml"; last != want {
		t.Errorf("last problem %q, want %q", last, want)
	}
}

// TestProblemLogSaysWhatIsServed: a broken edit of a file that serves
// objects is logged as keeping them; a new broken file, as serving nothing.
// (Before: both were said to keep serving their last good objects.)
func TestProblemLogSaysWhatIsServed(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	writeFiles(t, dir, map[string]string{"a.yaml": namespaceYAML("a")})
	log, logs := testLogger(t)
	r := &running{src: New(dir, WithLogger(log))}
	r.start(t)
	writeFile(t, a, "kind: [")
	writeFile(t, b, "kind: [")
	r.waitForErrors(t, a+":1: invalid YAML: did not find expected node content", b+":1: invalid YAML: did not find expected node content")
	for path, want := range map[string]string{
		a: `msg="manifest problem; the file keeps serving its last good objects"`,
		b: `msg="manifest problem; the file serves nothing"`,
	} {
		found := false
		for _, line := range strings.Split(logs.String(), "\n") {
			if strings.Contains(line, `error="`+path+":1:") {
				found = true
				if !strings.Contains(line, want) {
					t.Errorf("logged %s\nwant %s", line, want)
				}
			}
		}
		if !found {
			t.Errorf("no problem of %s logged", path)
		}
	}
}
