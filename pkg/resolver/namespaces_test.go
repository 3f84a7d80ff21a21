package resolver

import (
	"fmt"
	"maps"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
)

// namespaceSeries scrapes ztdns_dns_namespace_requests_total by client_namespace.
func namespaceSeries(t *testing.T, s *Server) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for k, v := range scrape(t, s.Collector(), "ztdns_dns_namespace_requests_total") {
		out[k[len(`ztdns_dns_namespace_requests_total{client_namespace="`):len(k)-2]] = v
	}
	return out
}

// waitNamespaceSeries waits for the series to be want (the UDP loop adds a
// batch's counts a moment after its answers) and fails the test if they
// never are.
func waitNamespaceSeries(t *testing.T, s *Server, want map[string]float64) {
	t.Helper()
	var got map[string]float64
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if got = namespaceSeries(t, s); maps.Equal(got, want) {
			return
		}
	}
	t.Fatalf("namespace series %v, want %v", got, want)
}

// TestNamespaceSeriesFollowPods: namespaces that ask fill the labels of
// their own; once their pods are gone, their series leave the output and a
// namespace that asks later gets a label of its own, not "_other". A
// namespace with a pod left, even one without an address, keeps its
// series, and one that comes back starts again at 0.
func TestNamespaceSeriesFollowPods(t *testing.T) {
	const max = 3
	ms := startMetricsServer(t, Options{MaxNamespaceSeries: max})
	// startLimitsServer asked once from 127.0.0.1, no pod: "_unknown".
	ip := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 0, byte(10 + i)}) }
	var preview []model.Pod
	for i := range 2 * max {
		preview = append(preview, model.Pod{Namespace: fmt.Sprintf("preview-%d", i), Name: "app", IPs: []netip.Addr{ip(i)}})
	}
	ms.pods.SetSourcePods(preview)
	for i := range preview {
		for _, proto := range []string{"udp", "tcp"} {
			if r := ms.query(t, ip(i), proto, tableName, dns.TypeA); r.Rcode != dns.RcodeSuccess {
				t.Fatalf("%s from %s: %s", proto, ip(i), dns.RcodeToString[r.Rcode])
			}
		}
	}
	waitNamespaceSeries(t, ms.Server, map[string]float64{"_unknown": 1, "_other": 6, "preview-0": 2, "preview-1": 2, "preview-2": 2})

	// The preview namespaces are deleted, but for preview-1, whose pod is
	// still there without an address; shop's pod asks.
	shop := ip(2 * max)
	ms.pods.SetSourcePods([]model.Pod{
		{Namespace: "preview-1", Name: "app"},
		{Namespace: "shop", Name: "web", IPs: []netip.Addr{shop}},
	})
	for _, proto := range []string{"udp", "tcp"} {
		ms.query(t, shop, proto, tableName, dns.TypeA)
	}
	waitNamespaceSeries(t, ms.Server, map[string]float64{"_unknown": 1, "_other": 6, "preview-1": 2, "shop": 2})

	// preview-0 comes back: a label of its own again, counting from 0.
	ms.pods.SetSourcePods([]model.Pod{
		{Namespace: "preview-0", Name: "app", IPs: []netip.Addr{ip(0)}},
		{Namespace: "preview-1", Name: "app"},
		{Namespace: "shop", Name: "web", IPs: []netip.Addr{shop}},
	})
	ms.query(t, ip(0), "udp", tableName, dns.TypeA)
	ms.query(t, shop, "udp", tableName, dns.TypeA)
	waitNamespaceSeries(t, ms.Server, map[string]float64{"_unknown": 1, "_other": 6, "preview-0": 1, "preview-1": 2, "shop": 3})
}

// TestNamespaceSlotFreedForOther: a pod that counted as "_other" while every
// label was taken gets the label freed next, though it looked its slot up
// before the registry's change reached the resolver.
func TestNamespaceSlotFreedForOther(t *testing.T) {
	s := New(Options{MaxNamespaceSeries: 1})
	t.Cleanup(func() { s.Close() })
	nc := &s.metrics.namespaces
	gone := &podcache.Pod{Namespace: "gone", Name: "a"}
	late := &podcache.Pod{Namespace: "late", Name: "b"}
	s.countAnswer(0, nc.slotOf(gone))
	s.countAnswer(0, nc.slotOf(late))
	nc.forget([]*podcache.Pod{late}) // the registry now has late's pod only
	s.countAnswer(0, nc.slotOf(late))
	if got, want := namespaceSeries(t, s), map[string]float64{"_other": 1, "late": 1}; !maps.Equal(got, want) {
		t.Errorf("namespace series %v, want %v", got, want)
	}
}

// TestNamespaceSeriesChurn counts queries of pods whose namespaces come and
// go while the registry changes and the series are scraped (run with -race:
// no data race). Once the churn ends and the registry changes once more,
// the series name only namespaces that have pods.
func TestNamespaceSeriesChurn(t *testing.T) {
	pods := podcache.New()
	s := New(Options{Pods: pods, MaxNamespaceSeries: 4})
	t.Cleanup(func() { s.Close() })
	ip := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}) }
	generation := func(g int) []model.Pod {
		var out []model.Pod
		for i := range 6 {
			out = append(out, model.Pod{Namespace: fmt.Sprintf("ns-%d", (g+i)%10), Name: "app", IPs: []netip.Addr{ip(i)}})
		}
		return out
	}
	pods.SetSourcePods(generation(0))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				s.countAnswer(0, s.metrics.namespaces.slotOf(pods.Lookup(ip(i))))
				runtime.Gosched() // leave the CPUs to the registry's changes
			}
		})
	}
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			namespaceSeries(t, s)
			time.Sleep(time.Millisecond)
		}
	})
	for g := range 200 {
		pods.SetSourcePods(generation(g))
		time.Sleep(100 * time.Microsecond)
	}
	close(stop)
	wg.Wait()

	last := generation(3)
	pods.SetSourcePods(last)
	live := map[string]bool{"_unknown": true, "_other": true}
	for _, p := range last {
		live[p.Namespace] = true
	}
	got := namespaceSeries(t, s)
	for ns := range got {
		if !live[ns] {
			t.Errorf("series of namespace %s, which has no pod: %v", ns, got)
		}
	}
	if len(got) > 4+2 {
		t.Errorf("%d namespace series, want at most 4 and _unknown and _other: %v", len(got), got)
	}
	// Every pod that asks now counts in a label of its namespace or in
	// "_other" (four labels for six namespaces).
	before := namespaceSeries(t, s)
	for _, p := range last {
		s.countAnswer(0, s.metrics.namespaces.slotOf(pods.Get(p.Namespace, p.Name)))
	}
	after := namespaceSeries(t, s)
	own := 0
	for ns := range live {
		if ns != "_other" && ns != "_unknown" && after[ns] > before[ns] {
			own++
		}
	}
	if own != 4 || after["_other"]-before["_other"] != 2 {
		t.Errorf("series before the last queries %v, after %v: want four namespaces with a label of their own, two in _other", before, after)
	}
}
