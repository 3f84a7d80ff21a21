package configdir

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// writeLargeDirectory writes services Services and entries ServiceEntries,
// spread over a few files, into dir.
func writeLargeDirectory(tb testing.TB, dir string, services, entries int) {
	tb.Helper()
	const files = 2 // of each kind
	for f := range files {
		var b strings.Builder
		for i := f; i < services; i += files {
			fmt.Fprintf(&b, `---
apiVersion: v1
kind: Service
metadata:
  name: svc-%d
  namespace: ns-%d
  labels:
    app: svc-%d
spec:
  type: ClusterIP
  clusterIP: 10.96.%d.%d
  clusterIPs:
  - 10.96.%d.%d
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
  selector:
    app: svc-%d
`, i, i%50, i, i/250, i%250+1, i/250, i%250+1, i)
		}
		writeFile(tb, filepath.Join(dir, fmt.Sprintf("services-%d.yaml", f)), b.String())
		b.Reset()
		for i := f; i < entries; i += files {
			fmt.Fprintf(&b, `---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: se-%d
  namespace: ns-%d
spec:
  hosts:
  - host-%d.external.example
  ports:
  - name: tcp
    number: 9000
    protocol: TCP
  resolution: DNS
`, i, i%50, i)
		}
		writeFile(tb, filepath.Join(dir, fmt.Sprintf("entries-%d.yaml", f)), b.String())
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// BenchmarkLoad measures the first scan of 10,000 Services and 10,000
// ServiceEntries, and the heap the result keeps (retained-B/object).
func BenchmarkLoad(b *testing.B) {
	const services, entries = 10_000, 10_000
	dir := b.TempDir()
	writeLargeDirectory(b, dir, services, entries)
	b.ReportAllocs()
	var retained uint64
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		snap, errs := load(b, dir, WithLogger(quietLogger()))
		runtime.GC()
		runtime.ReadMemStats(&after)
		if len(errs) > 0 || len(snap.Services) != services || len(snap.ServiceEntries) != entries {
			b.Fatalf("loaded %d services, %d entries, errors %v", len(snap.Services), len(snap.ServiceEntries), errs)
		}
		retained = after.HeapAlloc - min(before.HeapAlloc, after.HeapAlloc)
		runtime.KeepAlive(snap)
	}
	b.ReportMetric(float64(retained)/(services+entries), "retained-B/object")
}

// TestLargeDirectory guards the load path against a quadratic slip or an API
// object kept alive by accident: what a load allocates per object is the
// same at 20,000 objects as at 2,000 (a copy of what was loaded so far, or
// a lookup rebuilt, for each object grows with the directory), and what
// it keeps is a model object's worth, not an API object's. The time it
// takes is logged; BenchmarkLoad measures it.
func TestLargeDirectory(t *testing.T) {
	if testing.Short() {
		t.Skip("loads 20,000 objects; skipped with -short")
	}
	small := measureLoad(t, 1_000, 1_000)
	large := measureLoad(t, 10_000, 10_000)
	for _, m := range []measuredLoad{small, large} {
		t.Logf("loaded %d objects in %v: %.0f allocations and %.0f bytes allocated, %.0f bytes retained per object",
			m.objects, m.took, m.allocsPerObject, m.bytesPerObject, m.retainedPerObject)
	}
	// Linear work allocates the same per object at any size; the margin
	// is for what a bigger map or slice allocates once.
	const margin = 1.5
	if large.allocsPerObject > margin*small.allocsPerObject {
		t.Errorf("%.0f allocations per object at %d objects, %.0f at %d: the load's work grows faster than the directory",
			large.allocsPerObject, large.objects, small.allocsPerObject, small.objects)
	}
	if large.bytesPerObject > margin*small.bytesPerObject {
		t.Errorf("%.0f bytes allocated per object at %d objects, %.0f at %d: the load's work grows faster than the directory",
			large.bytesPerObject, large.objects, small.bytesPerObject, small.objects)
	}
	// The state and the snapshot both hold the model objects; what an API
	// object would add (ObjectMeta, spec, status) is several KiB each.
	if limit := 2048.0; large.retainedPerObject > limit {
		t.Errorf("%.0f bytes retained per object, more than %.0f", large.retainedPerObject, limit)
	}
}

// measuredLoad is what loading a directory of generated objects cost.
type measuredLoad struct {
	objects                                            int
	took                                               time.Duration
	allocsPerObject, bytesPerObject, retainedPerObject float64
}

// measureLoad scans a directory of services Services and entries
// ServiceEntries and measures what that allocated and what the state and
// its snapshot keep.
func measureLoad(t *testing.T, services, entries int) measuredLoad {
	t.Helper()
	dir := t.TempDir()
	writeLargeDirectory(t, dir, services, entries)

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	st := newState(dir, parser{log: quietLogger()})
	if _, err := st.scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	snap := st.snapshot()
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	allocs, allocated := after.Mallocs-before.Mallocs, after.TotalAlloc-before.TotalAlloc
	runtime.GC()
	runtime.ReadMemStats(&after)

	if errs := st.errors(); len(errs) > 0 {
		t.Fatalf("errors: %v", errs[:min(len(errs), 5)])
	}
	if len(snap.Services) != services || len(snap.ServiceEntries) != entries {
		t.Fatalf("loaded %d services and %d entries, want %d and %d", len(snap.Services), len(snap.ServiceEntries), services, entries)
	}
	n := float64(services + entries)
	m := measuredLoad{
		objects:           services + entries,
		took:              took,
		allocsPerObject:   float64(allocs) / n,
		bytesPerObject:    float64(allocated) / n,
		retainedPerObject: float64(after.HeapAlloc-min(before.HeapAlloc, after.HeapAlloc)) / n,
	}
	runtime.KeepAlive(st)
	runtime.KeepAlive(snap)
	return m
}
