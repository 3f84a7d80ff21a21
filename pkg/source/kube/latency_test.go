package kube

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	istionetworkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

const (
	// loadNamespaces spreads the loaded objects, as a real cluster would.
	loadNamespaces = 50
	// loadWorkers write in parallel; the API server, not the client, is
	// the bottleneck.
	loadWorkers = 16
	// maxRetainedPerObject bounds the heap the source keeps per loaded
	// object: model objects take a few hundred bytes, an API object (its
	// ObjectMeta, managed fields, spec and status) several KiB.
	maxRetainedPerObject = 2048
)

// TestUpdateLatency measures, with 5,000 Services and 5,000 ServiceEntries
// in the API server, how long a write takes to reach a snapshot, and to reach
// a name table built from it (incrementally, inside deliver, as in the
// agent), and prints both. It fails when the source keeps more memory per
// object than a stripped model object needs. BenchmarkUpdateLatency
// measures the same at the 10,000 of each, which takes minutes to
// load.
func TestUpdateLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("loads 10,000 objects into an API server; skipped with -short")
	}
	const services, entries, probes = 5_000, 5_000, 20
	l := startLoaded(t, services, entries)
	for i := range probes {
		l.probe(t, i)
	}
	// Timings are reported, never asserted: the machines are shared and
	// noisy. The README quotes BenchmarkUpdateLatency's figures.
	l.report(t)
	if l.retainedPerObject > maxRetainedPerObject {
		t.Errorf("the source keeps %.0f bytes per object, more than %d: are API objects cached?", l.retainedPerObject, maxRetainedPerObject)
	}
}

// BenchmarkUpdateLatency is TestUpdateLatency at 10,000 Services and 10,000
// ServiceEntries, the scale; each iteration is one timed write:
//
//	go test -run '^$' -bench UpdateLatency -benchtime 40x -timeout 30m ./pkg/source/kube/
func BenchmarkUpdateLatency(b *testing.B) {
	const services, entries = 10_000, 10_000
	l := startLoaded(b, services, entries)
	i := 0
	for b.Loop() {
		l.probe(b, i)
		i++
	}
	l.report(b)
	b.ReportMetric(float64(median(l.toSnapshot).Microseconds())/1000, "ms-to-snapshot")
	b.ReportMetric(float64(median(l.toTable).Microseconds())/1000, "ms-to-table")
	b.ReportMetric(l.retainedPerObject, "retained-B/object")
}

// loaded is a source running against a loaded API server, and the timings
// of the probes so far.
type loaded struct {
	services, entries int
	rec               *recorder
	kube              kubernetes.Interface
	istio             istioclient.Interface
	// retainedPerObject is the heap the synced source (informer caches and
	// the last snapshot) added, per loaded object.
	retainedPerObject float64
	toSnapshot        []time.Duration
	toTable           []time.Duration
}

// startLoaded starts an API server, loads it, and runs a source that builds
// a name table from every snapshot, as the agent does.
func startLoaded(tb testing.TB, services, entries int) *loaded {
	tb.Helper()
	env := kubetest.Start(tb)
	began := time.Now()
	loadCluster(tb, env, services, entries)
	tb.Logf("created %d Services and %d ServiceEntries in %v", services, entries, time.Since(began).Round(time.Millisecond))
	l := &loaded{services: services, entries: entries, kube: env.Client(), istio: env.IstioClient()}
	createNamespace(tb, l.kube, "probes")

	before := heapAlloc()
	var retained uint64
	builder := table.NewBuilder(table.Options{}) // incremental, as the agent builds
	l.rec = &recorder{onDeliver: func(s *model.Snapshot) {
		if retained == 0 { // the first snapshot: what the source holds
			now := heapAlloc()
			retained = now - min(before, now)
		}
		builder.Build(s)
	}}
	began = time.Now()
	runRecorder(tb, l.rec, env.Config)
	first := l.rec.waitFor(tb, "the loaded cluster", func(s *model.Snapshot) error {
		if len(s.Services) < services || len(s.ServiceEntries) < entries {
			return fmt.Errorf("%d services and %d serviceentries", len(s.Services), len(s.ServiceEntries))
		}
		return nil
	})
	l.retainedPerObject = float64(retained) / float64(services+entries)
	tb.Logf("first snapshot %v after start, its name table built %v after start; the source keeps %.0f bytes per object",
		first.at.Sub(began).Round(time.Millisecond), first.done.Sub(began).Round(time.Millisecond), l.retainedPerObject)
	return l
}

// heapAlloc returns the live heap after a collection.
func heapAlloc() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// probe makes write i and times it until a snapshot, and a table, have it:
// even writes create a Service, odd ones play istiod and write an address
// into a loaded ServiceEntry's status.
func (l *loaded) probe(tb testing.TB, i int) {
	tb.Helper()
	ctx := tb.Context()
	var write func() error
	var seen func(*model.Snapshot) error
	if i%2 == 0 {
		name := fmt.Sprintf("probe-%d", i)
		write = func() error {
			_, err := l.kube.CoreV1().Services("probes").Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
			}, metav1.CreateOptions{})
			return err
		}
		seen = func(s *model.Snapshot) error {
			if find(s.Services, serviceKey, "probes", name) == nil {
				return fmt.Errorf("service probes/%s missing", name)
			}
			return nil
		}
	} else {
		n := i % l.entries
		name, ns := fmt.Sprintf("se-%d", n), fmt.Sprintf("ns-%d", n%loadNamespaces)
		addr := netip.AddrFrom4([4]byte{240, 240, byte(i >> 8), byte(i)})
		se, err := l.istio.NetworkingV1().ServiceEntries(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			tb.Fatalf("get ServiceEntry %s/%s: %v", ns, name, err)
		}
		se.Status.Addresses = []*networkingv1alpha3.ServiceEntryAddress{{Value: addr.String(), Host: se.Spec.Hosts[0]}}
		write = func() error {
			_, err := l.istio.NetworkingV1().ServiceEntries(ns).UpdateStatus(ctx, se, metav1.UpdateOptions{})
			return err
		}
		seen = func(s *model.Snapshot) error {
			got := find(s.ServiceEntries, serviceEntryKey, ns, name)
			if got == nil || len(got.StatusAddresses) == 0 || got.StatusAddresses[0].Address != addr {
				return fmt.Errorf("serviceentry %s/%s without status address %s", ns, name, addr)
			}
			return nil
		}
	}
	start := time.Now()
	if err := write(); err != nil {
		tb.Fatalf("probe %d: %v", i, err)
	}
	d := l.rec.waitFor(tb, fmt.Sprintf("probe %d", i), seen)
	l.toSnapshot = append(l.toSnapshot, d.at.Sub(start))
	l.toTable = append(l.toTable, d.done.Sub(start))
}

// report logs the timings, sorting them.
func (l *loaded) report(tb testing.TB) {
	tb.Helper()
	slices.Sort(l.toSnapshot)
	slices.Sort(l.toTable)
	tb.Logf("API write -> snapshot delivered, %d writes at %d Services + %d ServiceEntries: median %v, p90 %v, max %v",
		len(l.toSnapshot), l.services, l.entries,
		median(l.toSnapshot).Round(time.Millisecond/10), percentile(l.toSnapshot, 90).Round(time.Millisecond/10), l.toSnapshot[len(l.toSnapshot)-1].Round(time.Millisecond/10))
	tb.Logf("API write -> name table rebuilt from it (incremental table.Builder inside deliver): median %v, p90 %v, max %v",
		median(l.toTable).Round(time.Millisecond/10), percentile(l.toTable, 90).Round(time.Millisecond/10), l.toTable[len(l.toTable)-1].Round(time.Millisecond/10))
}

// loadCluster creates services Services and entries ServiceEntries, spread
// over loadNamespaces namespaces.
func loadCluster(tb testing.TB, env *kubetest.Env, services, entries int) {
	tb.Helper()
	kube, istio := env.Client(), env.IstioClient()
	for i := range loadNamespaces {
		createNamespace(tb, kube, fmt.Sprintf("ns-%d", i))
	}
	ctx, cancel := context.WithCancel(tb.Context())
	defer cancel()
	jobs := make(chan func(context.Context) error)
	errs := make(chan error, loadWorkers)
	var wg sync.WaitGroup
	for range loadWorkers {
		wg.Go(func() {
			for job := range jobs {
				if err := job(ctx); err != nil {
					errs <- err
					cancel()
					return
				}
			}
		})
	}
	send := func(job func(context.Context) error) bool {
		select {
		case jobs <- job:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for i := 0; i < max(services, entries); i++ {
		ns := fmt.Sprintf("ns-%d", i%loadNamespaces)
		if i < services && !send(func(ctx context.Context) error {
			_, err := kube.CoreV1().Services(ns).Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d", i), Labels: map[string]string{"app": "load"}},
				Spec: corev1.ServiceSpec{
					Selector: map[string]string{"app": fmt.Sprintf("svc-%d", i)},
					Ports:    []corev1.ServicePort{{Name: "http", Port: 80}},
				},
			}, metav1.CreateOptions{})
			return err
		}) {
			break
		}
		if i < entries && !send(func(ctx context.Context) error {
			se := &istionetworkingv1.ServiceEntry{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("se-%d", i)}}
			se.Spec.Hosts = []string{fmt.Sprintf("host-%d.external.example", i)}
			se.Spec.Resolution = networkingv1alpha3.ServiceEntry_DNS
			se.Spec.Ports = []*networkingv1alpha3.ServicePort{{Number: 9000, Name: "tcp", Protocol: "TCP"}}
			_, err := istio.NetworkingV1().ServiceEntries(ns).Create(ctx, se, metav1.CreateOptions{})
			return err
		}) {
			break
		}
	}
	close(jobs)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		tb.Fatalf("load the cluster: %v", err)
	}
}

func median(sorted []time.Duration) time.Duration { return percentile(sorted, 50) }

func percentile(sorted []time.Duration, p int) time.Duration {
	return sorted[min(len(sorted)-1, len(sorted)*p/100)]
}
