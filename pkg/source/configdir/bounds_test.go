package configdir

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

// allocated returns the bytes f allocates, freed or not.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestAliasBombRefused: a document well under maxDocumentBytes whose aliases
// would expand it to gigabytes is refused before it is converted, naming
// the file and the line of the first alias; other files keep serving, and
// aliases that expand to little still work.
func TestAliasBombRefused(t *testing.T) {
	var bomb strings.Builder
	bomb.WriteString("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: bomb\n  annotations:\n    a: &x \"")
	bomb.WriteString(strings.Repeat("x", 1<<20))
	bomb.WriteString("\"\n    b: [")
	for i := range 1000 { // 1 GiB once expanded
		if i > 0 {
			bomb.WriteString(",")
		}
		bomb.WriteString("*x")
	}
	bomb.WriteString("]\n")
	if bomb.Len() > maxDocumentBytes {
		t.Fatalf("the bomb is %d bytes, over the document bound it must slip under", bomb.Len())
	}
	const small = `apiVersion: v1
kind: Service
metadata: {name: web, labels: &l {app: web}}
spec: {clusterIP: 10.96.0.1, selector: *l}
`
	var dir string
	var gotNames []string
	var errs []error
	alloc := allocated(func() {
		d, snap, e := loadFiles(t, map[string]string{
			"bomb.yaml":  goodNamespace + bomb.String(),
			"cycle.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: &m {name: c, x: [*m]}\n",
			"small.yaml": small,
		})
		dir, gotNames, errs = d, names(snap), e
	})
	want := []string{
		filepath.Join(dir, "bomb.yaml") + ":11: YAML aliases (the first: *x) expand this document to more than 8388608 bytes: write the values out instead (Kubernetes manifests do not need anchors and aliases)",
		filepath.Join(dir, "cycle.yaml") + ":3: YAML aliases (the first: *m) expand this document to more than 8388608 bytes: write the values out instead (Kubernetes manifests do not need anchors and aliases)",
	}
	wantErrors(t, errs, want)
	if w := []string{"service default/web"}; !reflect.DeepEqual(gotNames, w) {
		t.Errorf("objects %q, want %q (other files still apply)", gotNames, w)
	}
	// The bomb is 1 MiB; expanded it would be 1 GiB.
	if limit := uint64(200 << 20); alloc > limit {
		t.Errorf("loading allocated %d MiB, more than %d MiB", alloc>>20, limit>>20)
	}
}

// TestAliasesOfSmallValuesRefused: aliases that expand a document to few
// bytes but many values are refused, as bytes alone let through: 500,000
// empty maps (which keep go-yaml's alias ratio low) and an anchor of 1,000
// aliased 1,000 times, 1.5 MB of YAML, 4.5 MB of JSON, about 200 bytes a
// value decoded (300 MB).
func TestAliasesOfSmallValuesRefused(t *testing.T) {
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: Namespace\nmetadata: {name: maps}\nflat: [{}")
	b.WriteString(strings.Repeat(",{}", 500_000-1))
	b.WriteString("]\nmaps: &m [{}")
	b.WriteString(strings.Repeat(",{}", 999))
	b.WriteString("]\nmore: [*m")
	b.WriteString(strings.Repeat(",*m", 999))
	b.WriteString("]\n")
	if b.Len() > maxDocumentBytes {
		t.Fatalf("the document is %d bytes, over the document bound it must slip under", b.Len())
	}
	dir, snap, errs := loadFiles(t, map[string]string{"maps.yaml": b.String()})
	want := []string{filepath.Join(dir, "maps.yaml") + fmt.Sprintf(
		":6: YAML aliases (the first: *m) expand this document to more than %d values: write the values out instead (Kubernetes manifests do not need anchors and aliases)",
		maxExpandedNodes)}
	wantErrors(t, errs, want)
	if g := names(snap); len(g) > 0 {
		t.Errorf("objects %q, want none", g)
	}
}

// TestManyProblemsInOneObject: an object with thousands of rejected values
// reports at most maxProblemsPerFile, the last counting the rest, without a
// walk of the document for each (which made this quadratic).
func TestManyProblemsInOneObject(t *testing.T) {
	const n = 10_000
	var b strings.Builder
	b.WriteString("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web}\naddressType: IPv4\nendpoints:\n")
	for i := range n {
		fmt.Fprintf(&b, "- addresses: [\"10.0.%d.%d.%d\"]\n", i/250, i%250, i)
	}
	var errs []error
	var dir string
	alloc := allocated(func() {
		dir, _, errs = loadFiles(t, map[string]string{"many.yaml": b.String()})
	})
	if len(errs) != maxProblemsPerFile {
		t.Fatalf("%d problems, want %d", len(errs), maxProblemsPerFile)
	}
	path := filepath.Join(dir, "many.yaml")
	if first, want := errs[0].Error(), path+`:6: endpointslice default/web: address "10.0.0.0.0" is not an IP address`; !strings.HasPrefix(first, path+":6: ") || !strings.Contains(first, `"10.0.0.0.0"`) {
		t.Errorf("first problem %q, want one like %q", first, want)
	}
	if last, want := errs[len(errs)-1].Error(), fmt.Sprintf("%s: %d more problems not listed", path, n-maxProblemsPerFile+1); last != want {
		t.Errorf("last problem %q, want %q", last, want)
	}
	if limit := uint64(200 << 20); alloc > limit {
		t.Errorf("loading allocated %d MiB, more than %d MiB", alloc>>20, limit>>20)
	}
}

// TestManyBrokenDocuments: a file of many tiny broken documents reports the
// first problems and counts the rest, end to end through the YAML syntax
// errors (TestProblemsKeptAndCounted checks that the rest are not built).
func TestManyBrokenDocuments(t *testing.T) {
	const n = 10_000
	data := []byte(strings.Repeat("---\n[\n", n))
	p := parser{log: quietLogger(), limits: Limits{}.withDefaults()}
	_, errs, _ := p.parseFile("broken.yaml", data)
	if len(errs) != maxProblemsPerFile {
		t.Fatalf("%d problems, want %d", len(errs), maxProblemsPerFile)
	}
	if last, want := errs[len(errs)-1].Error(), fmt.Sprintf("broken.yaml: %d more problems not listed", n-maxProblemsPerFile+1); last != want {
		t.Errorf("last problem %q, want %q", last, want)
	}
}

// TestEmptyDocumentsCostNoParse: a file of 8 MiB of "---" lines (two
// million empty documents) and comments is read without a YAML parse per
// document: it took seconds and gigabytes allocated.
func TestEmptyDocumentsCostNoParse(t *testing.T) {
	last := "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: last}\n"
	empty := strings.Repeat("---\n", 1000) + strings.Repeat("--- # nothing\n  \n# more nothing\n", 1000)
	data := strings.Repeat(empty, (DefaultMaxFileBytes-len(last))/len(empty)) + last
	var gotNames []string
	var errs []error
	alloc := allocated(func() {
		_, snap, e := loadFiles(t, map[string]string{"empty.yaml": data})
		gotNames, errs = names(snap), e
	})
	if len(errs) > 0 || !reflect.DeepEqual(gotNames, []string{"namespace last"}) {
		t.Errorf("objects %q, errors %q; want namespace last and no errors", gotNames, errorStrings(errs))
	}
	// The file is read and written once each: 8 MiB apiece.
	if limit := uint64(128 << 20); alloc > limit {
		t.Errorf("loading allocated %d MiB, more than %d MiB", alloc>>20, limit>>20)
	}
}

// TestUnservedFilesHoldNoObjects: copies of a file, which collide with it,
// are reported but keep none of their parsed objects; when the file they
// collide with goes, the next copy is parsed again and served.
func TestUnservedFilesHoldNoObjects(t *testing.T) {
	var b strings.Builder
	for i := range 500 {
		fmt.Fprintf(&b, "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns-%d}\n---\n", i)
	}
	dir := t.TempDir()
	files := map[string]string{}
	for i := range 10 {
		files[fmt.Sprintf("copy-%d.yaml", i)] = b.String()
	}
	writeFiles(t, dir, files)
	st := newState(dir, parser{log: quietLogger()})
	if _, err := st.scan(t.Context()); err != nil {
		t.Fatal(err)
	}
	check := func(served string, copies int) {
		t.Helper()
		if n := len(st.snapshot().Namespaces); n != 500 {
			t.Errorf("%d namespaces served, want 500", n)
		}
		held, blocked := 0, 0
		for name, f := range st.files {
			if f.latest != nil && f.latest != f.served {
				t.Errorf("%s holds %d objects it does not serve", name, f.latest.len())
			}
			if f.served != nil {
				held++
				if name != served {
					t.Errorf("%s serves, want only %s", name, served)
				}
			}
			if f.blocked {
				blocked++
			}
		}
		if held != 1 || blocked != copies {
			t.Errorf("%d files serve and %d are blocked, want 1 and %d", held, blocked, copies)
		}
		if errs := st.errors(); len(errs) != copies*maxProblemsPerFile {
			t.Errorf("%d problems, want %d for each of %d copies", len(errs), maxProblemsPerFile, copies)
		}
	}
	check("copy-0.yaml", 9)
	if err := os.Remove(filepath.Join(dir, "copy-0.yaml")); err != nil {
		t.Fatal(err)
	}
	if _, err := st.scan(t.Context()); err != nil {
		t.Fatal(err)
	}
	check("copy-1.yaml", 8)
}

// TestTooManyFiles: past Limits.Files, files are skipped and named; those
// read before stay read, even when a new file sorts before them.
func TestTooManyFiles(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{}
	for i := range 30 {
		files[fmt.Sprintf("f%02d.yaml", i)] = namespaceYAML(fmt.Sprintf("ns-%02d", i))
	}
	writeFiles(t, dir, files)
	st := newState(dir, parser{log: quietLogger(), limits: Limits{Files: 5}})
	if _, err := st.scan(t.Context()); err != nil {
		t.Fatal(err)
	}
	errs := errorStrings(st.errors())
	want := []string{filepath.Join(dir, "f05.yaml") + ": skipped: the directory has 30 manifest files, more than the limit of 5 (--config-max-files)"}
	if len(errs) != maxProblemsPerFile || errs[0] != want[0] {
		t.Fatalf("%d problems, first %q; want %d, first %q", len(errs), errs[:1], maxProblemsPerFile, want[0])
	}
	if last, w := errs[len(errs)-1], dir+": 6 more files skipped: more than 5 manifest files (--config-max-files)"; last != w {
		t.Errorf("last problem %q, want %q", last, w)
	}
	wantNames := []string{"namespace ns-00", "namespace ns-01", "namespace ns-02", "namespace ns-03", "namespace ns-04"}
	if n := names(st.snapshot()); !reflect.DeepEqual(n, wantNames) {
		t.Errorf("served %q, want %q", n, wantNames)
	}
	writeFiles(t, dir, map[string]string{"a.yaml": namespaceYAML("new")})
	if _, err := st.scan(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := names(st.snapshot()); !reflect.DeepEqual(n, wantNames) {
		t.Errorf("after a new first file, served %q, want %q still", n, wantNames)
	}
	if errs := errorStrings(st.errors()); errs[0] != filepath.Join(dir, "a.yaml")+": skipped: the directory has 31 manifest files, more than the limit of 5 (--config-max-files)" {
		t.Errorf("first problem %q, want a.yaml skipped", errs[0])
	}
}

// scanCounting returns a scan of st that checks how many files it has read
// in all, and what it serves.
func scanCounting(t *testing.T, st *state) func(wantReads int, wantNames ...string) {
	return func(wantReads int, wantNames ...string) {
		t.Helper()
		if _, err := st.scan(t.Context()); err != nil {
			t.Fatal(err)
		}
		if st.reads != wantReads {
			t.Errorf("%d files read in all, want %d", st.reads, wantReads)
		}
		if n := names(st.snapshot()); !reflect.DeepEqual(n, wantNames) {
			t.Errorf("served %q, want %q", n, wantNames)
		}
	}
}

// TestUnchangedFilesAreNotReadAgain: a scan reads only the files whose
// identity, size or times changed since they were last read; a rewrite that
// keeps the size and sets the modification time back is still read, as its
// status change time moved. The clock is an hour ahead, so that the stats
// of the files just written are trusted (TestRacyStatIsNotTrusted is about
// those that are not).
func TestUnchangedFilesAreNotReadAgain(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a.yaml": namespaceYAML("ns-aa"),
		"b.yaml": namespaceYAML("ns-bb"),
		"c.yaml": namespaceYAML("ns-cc"),
	})
	st := newState(dir, parser{log: quietLogger()})
	st.now = func() time.Time { return time.Now().Add(time.Hour) }
	scan := scanCounting(t, st)
	scan(3, "namespace ns-aa", "namespace ns-bb", "namespace ns-cc")
	scan(3, "namespace ns-aa", "namespace ns-bb", "namespace ns-cc")

	path := filepath.Join(dir, "a.yaml")
	before, err := statOf(path)
	if err != nil {
		t.Fatal(err)
	}
	// The rewrite must come in a later timestamp tick, as it does when it
	// comes racyWindow after the read.
	waitForTimestampAfter(t, dir, before.ctime)
	writeFiles(t, dir, map[string]string{"a.yaml": namespaceYAML("ns-zz")})
	if err := os.Chtimes(path, time.Unix(0, before.mtime), time.Unix(0, before.mtime)); err != nil {
		t.Fatal(err)
	}
	if after, err := statOf(path); err != nil || after.size != before.size || after.mtime != before.mtime {
		t.Fatalf("the rewrite changed the size or time (%v): the test needs neither to", err)
	}
	scan(4, "namespace ns-zz", "namespace ns-bb", "namespace ns-cc")
	scan(4, "namespace ns-zz", "namespace ns-bb", "namespace ns-cc")
}

// waitForTimestampAfter waits until files written in dir get a status
// change time after ns.
func waitForTimestampAfter(tb testing.TB, dir string, ns int64) {
	tb.Helper()
	tick := filepath.Join(dir, ".tick") // hidden: not a manifest
	defer os.Remove(tick)
	for deadline := time.Now().Add(waitTimeout); ; {
		writeFile(tb, tick, "")
		if s, err := statOf(tick); err != nil {
			tb.Fatal(err)
		} else if s.ctime > ns {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("file times do not move past %d", ns)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestRacyStatIsNotTrusted: where timestamps tick coarsely, a rewrite that
// keeps the size, in the same tick as the read before it, leaves the stat as
// it was. A stat whose times are within racyWindow of the read is not
// trusted: the file is read on every scan, until a read finds its stat
// old enough.
func TestRacyStatIsNotTrusted(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.yaml")
	writeFile(t, path, namespaceYAML("ns-aa"))
	st := newState(dir, parser{log: quietLogger()})
	// Every write lands in the same one-second tick.
	tick := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	st.stat = func(path string) (fileStat, error) {
		s, err := statOf(path)
		if err == nil {
			s.mtime, s.ctime = tick.UnixNano(), tick.UnixNano()
		}
		return s, err
	}
	now := tick.Add(time.Second / 2)
	st.now = func() time.Time { return now }
	scan := scanCounting(t, st)
	scan(1, "namespace ns-aa")
	writeFile(t, path, namespaceYAML("ns-zz")) // same size, same stat
	scan(2, "namespace ns-zz")
	scan(3, "namespace ns-zz")
	// Later, the same stat is old: read once more, then trusted.
	now = tick.Add(time.Minute)
	scan(4, "namespace ns-zz")
	scan(4, "namespace ns-zz")
}

// nestedLists returns a flow-style document of depth Lists, one inside the
// other, around inner.
func nestedLists(depth int, inner string) string {
	var b strings.Builder
	for range depth {
		b.WriteString("{apiVersion: v1, kind: List, items: [")
	}
	b.WriteString(inner)
	for range depth {
		b.WriteString("]}")
	}
	b.WriteString("\n")
	return b.String()
}

// TestDeeplyNestedListsRefused: Lists nested far deeper than anyone writes
// them (kubectl writes one level) are refused with the file's path and
// line before their levels are decoded, each of which copied all it held:
// a 600 KB document of 300 Lists around one 512 KiB string and an 80 KB one
// of 2,000 empty Lists allocated 395 MB together (25 MB refused; a 2 MiB
// document, gigabytes). The file is not served, as for any problem; other
// files are; Lists nested maxListDepth deep still work.
func TestDeeplyNestedListsRefused(t *testing.T) {
	big := nestedLists(300, `{apiVersion: v1, kind: ConfigMap, metadata: {name: big}, data: {x: "`+strings.Repeat("x", 512<<10)+`"}}`)
	empty := nestedLists(2000, "")
	few := nestedLists(maxListDepth, "{apiVersion: v1, kind: Namespace, metadata: {name: deep}}")
	if len(big) > maxDocumentBytes || len(empty) > maxDocumentBytes {
		t.Fatalf("documents of %d and %d bytes, over the document bound they must slip under", len(big), len(empty))
	}
	var dir string
	var gotNames []string
	var errs []error
	alloc := allocated(func() {
		d, snap, e := loadFiles(t, map[string]string{
			"big.yaml":   goodNamespace + big,
			"empty.yaml": empty,
			"few.yaml":   few,
			"small.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.1}\n",
		})
		dir, gotNames, errs = d, names(snap), e
	})
	msg := fmt.Sprintf("a List nested more than %d deep: write its objects as the items of one List, or as separate documents (---)", maxListDepth)
	want := []string{
		filepath.Join(dir, "big.yaml") + ":5: " + msg,
		filepath.Join(dir, "empty.yaml") + ":1: " + msg,
	}
	wantErrors(t, errs, want)
	if w := []string{"namespace deep", "service default/web"}; !reflect.DeepEqual(gotNames, w) {
		t.Errorf("objects %q, want %q (other files still apply)", gotNames, w)
	}
	t.Logf("loading allocated %d MiB", alloc>>20)
	if limit := uint64(100 << 20); alloc > limit {
		t.Errorf("loading allocated %d MiB, more than %d MiB", alloc>>20, limit>>20)
	}
}
