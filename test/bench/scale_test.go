//go:build linux

package bench

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/ztdns/ztdns/bench/workload"
	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// scaleHeadlessEvery makes every tenth Service of the Scale cluster
// headless: their endpoints are answered by name.
const scaleHeadlessEvery = 10

// scaleCluster is the Scale benchmark's cluster from -scale: by default
// 100,000 Services (one in ten headless), 50,000 ServiceEntries (half with
// auto-allocated VIPs) and one EndpointSlice of 3 endpoints per Service,
// 300,000 endpoints.
func scaleCluster(tb testing.TB) workload.Config {
	tb.Helper()
	f := strings.Split(*flagScale, ",")
	var n [3]int
	for i := range n {
		var err error
		if len(f) != 3 {
			err = fmt.Errorf("want three numbers")
		} else {
			n[i], err = strconv.Atoi(strings.TrimSpace(f[i]))
		}
		if err != nil {
			tb.Fatalf("-scale %q: %v", *flagScale, err)
		}
	}
	c := workload.Config{Services: n[0], Entries: n[1], EndpointsPerService: n[2], HeadlessEvery: scaleHeadlessEvery}
	if err := c.Validate(); err != nil {
		tb.Fatalf("-scale %q: %v", *flagScale, err)
	}
	return c
}

// BenchmarkScale: an agent watching a real API server that holds a large
// cluster (-scale). It reports the memory each object costs the agent
// (resident and Go heap, over an agent that watches an empty cluster), the
// bytes it receives from the API server until it serves the whole table
// (the list), per change afterwards and per second when nothing changes
// (the watch), and how long -probes changes take from the API write to the
// agent's first right answer: Service creates, ServiceEntry address
// updates and EndpointSlice updates, in turn.
//
//	go test -run '^$' -bench Scale -benchtime 1x -timeout 2h ./test/bench/
func BenchmarkScale(b *testing.B) {
	c := scaleCluster(b)
	env := kubetest.Start(b, kubetest.WithServiceCIDRs(workload.ServiceCIDRv4, workload.ServiceCIDRv6))
	upstream := startUpstream(b)

	// The same agent before anything is loaded: what objects add is
	// measured over it.
	empty := startAgent(b, upstream, 1, "--kubeconfig", env.Kubeconfig)
	time.Sleep(*flagSettle)
	emptyMem, emptyHeap := sampleProc(b, empty.pid()), empty.heapInuse(b)
	empty.proc.Kill()

	snap := workload.Snapshot(c)
	loadObjects(b, env, workload.APIObjects(snap))
	tbl, _ := table.Build(snap, table.Options{Domain: workload.Domain})
	objects := c.Objects()

	for b.Loop() {
		fwd := testenv.ForwardTCP(b, nil, "127.0.0.1:0", strings.TrimPrefix(env.Config.Host, "https://"))
		began := time.Now()
		agent := startAgent(b, upstream, tbl.Len(), "--kubeconfig", throughForwarder(b, env, fwd))
		ready, listed := time.Since(began), fwd.Received()
		time.Sleep(*flagSettle)
		mem, heap := sampleProc(b, agent.pid()), agent.heapInuse(b)

		idleFrom, idleAt := fwd.Received(), time.Now()
		time.Sleep(10 * time.Second)
		idleRate := float64(fwd.Received()-idleFrom) / time.Since(idleAt).Seconds()

		kinds := listSizes(b, env)

		p := &prober{env: env, agent: agent, cluster: c}
		watchFrom := fwd.Received()
		inside := agentSide(b, agent)
		for i := range *flagProbes {
			p.probe(b, i)
		}
		perChange := float64(fwd.Received()-watchFrom) / float64(*flagProbes)
		inside = agentSide(b, agent).since(inside)

		b.ReportMetric(0, "ns/op")
		b.ReportMetric(float64(objects), "objects")
		b.ReportMetric(ready.Seconds(), "ready-s")
		b.ReportMetric(float64(listed)/mib, "list-MB")
		b.ReportMetric(perChange, "watch-B/change")
		b.ReportMetric(idleRate, "watch-idle-B/s")
		b.ReportMetric(float64(mem.rss)/mib, "rss-MB")
		b.ReportMetric(float64(mem.hwm)/mib, "peak-rss-MB")
		b.ReportMetric(float64(emptyMem.rss)/mib, "empty-rss-MB")
		b.ReportMetric(float64(mem.rss-emptyMem.rss)/float64(objects), "rss-B/object")
		b.ReportMetric((heap-emptyHeap)/float64(objects), "heap-B/object")
		for _, k := range kinds {
			b.ReportMetric(float64(k.bytes)/mib, "list-"+k.name+"-MB")
		}
		p.report(b)
		inside.report(b)
		b.Logf("%d objects (%d names): ready in %v after %.1f MB from the API server; RSS %.1f MB (empty %.1f), heap %.1f MB (empty %.1f); watch %.0f B/change, %.0f B/s idle",
			objects, tbl.Len(), ready.Round(time.Millisecond), float64(listed)/mib, float64(mem.rss)/mib, float64(emptyMem.rss)/mib,
			heap/mib, emptyHeap/mib, perChange, idleRate)
		agent.proc.Kill()
	}
}

// agentCounts are the agent's own counts of what changes cost it: the
// snapshots its source took and their delay (from the first change a
// watch saw to the table built from it), the tables it built and how long
// that took, and its garbage collections.
type agentCounts struct {
	snapshots, delay, builds, build, gcs float64
}

func agentSide(tb testing.TB, s *dnsServer) agentCounts {
	tb.Helper()
	return agentCounts{
		snapshots: s.metric(tb, "ztdns_kube_snapshot_delay_seconds_count"),
		delay:     s.metric(tb, "ztdns_kube_snapshot_delay_seconds_sum"),
		builds:    s.metric(tb, "ztdns_table_build_seconds_count"),
		build:     s.metric(tb, "ztdns_table_build_seconds_sum"),
		gcs:       s.metric(tb, "go_gc_duration_seconds_count"),
	}
}

func (a agentCounts) since(b agentCounts) agentCounts {
	return agentCounts{a.snapshots - b.snapshots, a.delay - b.delay, a.builds - b.builds, a.build - b.build, a.gcs - b.gcs}
}

// report gives the means over the probes: the part of a change's latency
// spent in the agent after its watch received the change.
func (a agentCounts) report(b *testing.B) {
	if a.snapshots > 0 {
		b.ReportMetric(1000*a.delay/a.snapshots, "agent-snapshot-delay-ms")
	}
	if a.builds > 0 {
		b.ReportMetric(1000*a.build/a.builds, "agent-build-ms")
		b.ReportMetric(a.gcs/a.builds, "agent-gc/build")
	}
}

// kindSize is what listing one kind costs.
type kindSize struct {
	name  string
	bytes int64
}

// listSizes watches each kind a node's agent may watch with client-go's
// shared informers, as the agent does (protobuf for built-in kinds, JSON
// for ServiceEntries), each through its own forwarder, and counts the bytes
// received until the informer has synced: what each watch costs a node at
// start, and what watching only headless Services' EndpointSlices would.
func listSizes(tb testing.TB, env *kubetest.Env) []kindSize {
	tb.Helper()
	headless := func(o *metav1.ListOptions) { o.LabelSelector = corev1.IsHeadlessService }
	kinds := []struct {
		name     string
		informer func(c *rest.Config) (start func(stop <-chan struct{}), synced cache.InformerSynced)
	}{
		{"services", func(c *rest.Config) (func(<-chan struct{}), cache.InformerSynced) {
			f := informers.NewSharedInformerFactory(kubernetes.NewForConfigOrDie(c), 0)
			return f.Start, f.Core().V1().Services().Informer().HasSynced
		}},
		{"endpointslices", func(c *rest.Config) (func(<-chan struct{}), cache.InformerSynced) {
			f := informers.NewSharedInformerFactory(kubernetes.NewForConfigOrDie(c), 0)
			return f.Start, f.Discovery().V1().EndpointSlices().Informer().HasSynced
		}},
		{"headless-endpointslices", func(c *rest.Config) (func(<-chan struct{}), cache.InformerSynced) {
			f := informers.NewSharedInformerFactoryWithOptions(kubernetes.NewForConfigOrDie(c), 0, informers.WithTweakListOptions(headless))
			return f.Start, f.Discovery().V1().EndpointSlices().Informer().HasSynced
		}},
		{"serviceentries", func(c *rest.Config) (func(<-chan struct{}), cache.InformerSynced) {
			f := istioinformers.NewSharedInformerFactory(istioclient.NewForConfigOrDie(c), 0)
			return f.Start, f.Networking().V1().ServiceEntries().Informer().HasSynced
		}},
	}
	var out []kindSize
	for _, k := range kinds {
		fwd := testenv.ForwardTCP(tb, nil, "127.0.0.1:0", strings.TrimPrefix(env.Config.Host, "https://"))
		cfg := rest.CopyConfig(env.Config)
		cfg.Host = "https://" + fwd.Addr
		cfg.ContentType = "application/vnd.kubernetes.protobuf"
		cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
		start, synced := k.informer(cfg)
		stop := make(chan struct{})
		start(stop)
		ok := cache.WaitForCacheSync(tb.Context().Done(), synced)
		close(stop)
		if !ok {
			tb.Fatalf("the %s informer did not sync", k.name)
		}
		out = append(out, kindSize{k.name, fwd.Received()})
	}
	return out
}

// prober makes changes in the API server and times them until the agent
// answers with them.
type prober struct {
	env     *kubetest.Env
	agent   *dnsServer
	cluster workload.Config
	// end to end (write start to answer), the API write alone, and write
	// start to the change's event at a bare watch of the object (the peer:
	// what the API server's own delivery costs)
	change, write, watched []time.Duration
}

// probe makes change i: a new Service, a ServiceEntry's new address, or a
// new named endpoint of a headless Service.
func (p *prober) probe(tb testing.TB, i int) {
	tb.Helper()
	ctx := tb.Context()
	kube, istio := p.env.Client(), p.env.IstioClient()
	var name string
	var want netip.Addr
	var write func() error
	// The peer: a watch of just the object, from before the write.
	arrived := make(chan time.Time, 1)
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	peer := func(w watch.Interface, err error) {
		if err != nil {
			tb.Fatalf("probe %d: watch: %v", i, err)
		}
		go func() {
			defer w.Stop()
			for ev := range w.ResultChan() {
				if ev.Type == watch.Added || ev.Type == watch.Modified {
					arrived <- time.Now()
					return
				}
			}
		}()
	}
	only := func(name, rv string) metav1.ListOptions {
		return metav1.ListOptions{FieldSelector: "metadata.name=" + name, ResourceVersion: rv}
	}
	switch i % len(probeKinds) {
	case 0:
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("probe-%d", i), Namespace: "ns-000"},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
		}
		name = svc.Name + ".ns-000.svc." + workload.Domain
		list, err := kube.CoreV1().Services(svc.Namespace).List(ctx, only(svc.Name, ""))
		if err != nil {
			tb.Fatal(err)
		}
		peer(kube.CoreV1().Services(svc.Namespace).Watch(watchCtx, only(svc.Name, list.ResourceVersion)))
		write = func() error {
			created, err := kube.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
			if err == nil {
				want, err = netip.ParseAddr(created.Spec.ClusterIP)
			}
			return err
		}
	case 1:
		// Odd ServiceEntries carry spec.addresses: move one to a new address.
		n := (2*i + 1) % p.cluster.Entries
		ns, seName := fmt.Sprintf("ns-%03d", n%workload.Namespaces), fmt.Sprintf("se-%05d", n)
		se, err := istio.NetworkingV1().ServiceEntries(ns).Get(ctx, seName, metav1.GetOptions{})
		if err != nil {
			tb.Fatal(err)
		}
		want = netip.AddrFrom4([4]byte{10, 113, byte(i >> 8), byte(i)})
		se.Spec.Addresses = []string{want.String()}
		name = workload.EntryHost(n)
		peer(istio.NetworkingV1().ServiceEntries(ns).Watch(watchCtx, only(seName, se.ResourceVersion)))
		write = func() error {
			_, err := istio.NetworkingV1().ServiceEntries(ns).Update(ctx, se, metav1.UpdateOptions{})
			return err
		}
	default:
		// Every scaleHeadlessEvery-th Service is headless: give one a new
		// named endpoint.
		n := (i*scaleHeadlessEvery + scaleHeadlessEvery - 1) % p.cluster.Services
		ns, svc := fmt.Sprintf("ns-%03d", n%workload.Namespaces), workload.ServiceName(n)
		es, err := kube.DiscoveryV1().EndpointSlices(ns).Get(ctx, svc+"-1", metav1.GetOptions{})
		if err != nil {
			tb.Fatal(err)
		}
		host, ready := fmt.Sprintf("probe-%d", i), true
		want = netip.AddrFrom4([4]byte{10, 114, byte(i >> 8), byte(i)})
		es.Endpoints = append(es.Endpoints, es.Endpoints[0])
		ep := &es.Endpoints[len(es.Endpoints)-1]
		ep.Addresses, ep.Hostname, ep.Conditions.Ready = []string{want.String()}, &host, &ready
		name = host + "." + workload.ServiceFQDN(n)
		peer(kube.DiscoveryV1().EndpointSlices(ns).Watch(watchCtx, only(es.Name, es.ResourceVersion)))
		write = func() error {
			_, err := kube.DiscoveryV1().EndpointSlices(ns).Update(ctx, es, metav1.UpdateOptions{})
			return err
		}
	}
	start := time.Now()
	if err := write(); err != nil {
		tb.Fatalf("probe %d: %v", i, err)
	}
	p.write = append(p.write, time.Since(start))
	deadline := start.Add(time.Minute)
	for {
		qctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		got, _ := lookup(qctx, p.agent.addr, name, dns.TypeA)
		cancel()
		if slices.Contains(got, want) {
			p.change = append(p.change, time.Since(start))
			select {
			case at := <-arrived:
				p.watched = append(p.watched, at.Sub(start))
			case <-time.After(time.Minute):
				tb.Fatalf("probe %d: the peer watch saw no event", i)
			}
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("probe %d: %s not answered with %s within a minute (last %v)", i, name, want, got)
		}
		time.Sleep(time.Millisecond)
	}
}

// probeKinds names the changes of probe i%3.
var probeKinds = [3]string{"service", "serviceentry", "endpoint"}

func (p *prober) report(b *testing.B) {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	// added is what the agent takes beyond the API server's delivery: per
	// change, its answer's time less the bare watch's event's time. The
	// two watches get the same event from the same server, so what one
	// waited for in the server the other did too.
	added := make([]time.Duration, len(p.change))
	// committed is from the write's return, when the change exists and
	// its writer knows it, to the agent's answer: a Service create's
	// call alone takes hundreds of milliseconds at this scale, which no
	// watcher of the API server can make up.
	committed := make([]time.Duration, len(p.change))
	for i := range p.change {
		added[i] = p.change[i] - p.watched[i]
		committed[i] = p.change[i] - p.write[i]
	}
	pct := func(name string, d []time.Duration) {
		d = slices.Sorted(slices.Values(d))
		b.ReportMetric(ms(percentile(d, 50)), name+"-p50-ms")
		b.ReportMetric(ms(percentile(d, 90)), name+"-p90-ms")
	}
	pct("change", p.change)
	pct("committed-change", committed)
	pct("peer-watch", p.watched)
	pct("agent-added", added)
	b.ReportMetric(ms(percentile(slices.Sorted(slices.Values(p.write)), 50)), "api-write-p50-ms")
	// The same by kind, in the log: which change the API server is slow
	// to deliver.
	for k, kind := range probeKinds {
		var change, watched, write []time.Duration
		for i := k; i < len(p.change); i += len(probeKinds) {
			change, watched, write = append(change, p.change[i]), append(watched, p.watched[i]), append(write, p.write[i])
		}
		slices.Sort(change)
		slices.Sort(watched)
		slices.Sort(write)
		b.Logf("%s changes: p50 %.0f ms, p90 %.0f ms; the API write p50 %.0f ms, p90 %.0f ms; the bare watch's event p50 %.0f ms, p90 %.0f ms", kind,
			ms(percentile(change, 50)), ms(percentile(change, 90)), ms(percentile(write, 50)), ms(percentile(write, 90)),
			ms(percentile(watched, 50)), ms(percentile(watched, 90)))
	}
}

// percentile of sorted durations.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, len(sorted)*p/100)]
}
