package configdir

import (
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// allocated returns the bytes f allocates, freed or not.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
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

// TestManyBrokenDocuments: a file of many tiny broken documents costs a
// count, not an error each.
func TestManyBrokenDocuments(t *testing.T) {
	const n = 100_000
	data := []byte(strings.Repeat("---\n[\n", n))
	p := parser{log: quietLogger(), limits: Limits{}.withDefaults()}
	var errs []error
	alloc := allocated(func() { _, errs = p.parseFile("broken.yaml", data) })
	if len(errs) != maxProblemsPerFile {
		t.Fatalf("%d problems, want %d", len(errs), maxProblemsPerFile)
	}
	if last, want := errs[len(errs)-1].Error(), fmt.Sprintf("broken.yaml: %d more problems not listed", n-maxProblemsPerFile+1); last != want {
		t.Errorf("last problem %q, want %q", last, want)
	}
	t.Logf("allocated %d MiB", alloc>>20)
}
