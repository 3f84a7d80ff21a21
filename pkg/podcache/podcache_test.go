package podcache

import (
	"maps"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/ztdns/ztdns/pkg/model"
)

var (
	ip2 = netip.MustParseAddr("10.0.0.2")
	ip3 = netip.MustParseAddr("10.0.0.3")
)

func TestSourceOnly(t *testing.T) {
	c := New("cluster.local")
	c.SetSourcePods([]model.Pod{{Namespace: "default", Name: "curl", IPs: []netip.Addr{ip2}}})
	p := c.Lookup(ip2)
	if p == nil || p.Key() != "default/curl" {
		t.Fatalf("Lookup(%v) = %+v", ip2, p)
	}
	want := []string{"default.svc.cluster.local", "svc.cluster.local", "cluster.local"}
	if !slices.Equal(p.Search, want) {
		t.Errorf("search = %v, want %v", p.Search, want)
	}
	if c.Lookup(netip.MustParseAddr("::ffff:10.0.0.2")) != p {
		t.Error("a v4-mapped source address should find the same pod")
	}
}

func TestAttachmentMergesWithSource(t *testing.T) {
	c := New("cluster.local")
	c.Attach(Attachment{ContainerID: "c1", Namespace: "default", Name: "curl", NetnsCookie: 42, IPs: []netip.Addr{ip3}, Captured: true})
	if p := c.ByCookie(42); p == nil || p.Spec != nil || p.Search[0] != "default.svc.cluster.local" {
		t.Fatalf("runtime-only pod = %+v", p)
	}
	c.SetSourcePods([]model.Pod{{Namespace: "default", Name: "curl", UID: "u1", IPs: []netip.Addr{ip2},
		DNSSearches: []string{"corp.example"}}})
	p := c.Lookup(ip3)
	if p == nil || p.Spec == nil || p.Attachment == nil || p.UID != "u1" {
		t.Fatalf("merged pod = %+v", p)
	}
	if c.Lookup(ip2) != nil {
		t.Error("the runtime's IPs replace the source's stale ones")
	}
	if p.Search[len(p.Search)-1] != "corp.example" {
		t.Errorf("search = %v, want dnsConfig searches appended", p.Search)
	}
	if a, ok := c.Detach("c1"); !ok || a.NetnsCookie != 42 {
		t.Fatalf("Detach = %+v, %v", a, ok)
	}
	if c.ByCookie(42) != nil || c.Lookup(ip2) == nil {
		t.Error("after Detach the pod should be source-only again")
	}
}

func TestIPReusedByNewPod(t *testing.T) {
	c := New("cluster.local")
	c.SetSourcePods([]model.Pod{{Namespace: "a", Name: "old", IPs: []netip.Addr{ip2}}})
	c.Attach(Attachment{ContainerID: "new", Namespace: "b", Name: "new", IPs: []netip.Addr{ip2}})
	if p := c.Lookup(ip2); p == nil || p.Key() != "b/new" {
		t.Fatalf("Lookup = %+v, want the attached pod b/new", p)
	}
	if c.Get("a", "old") == nil || c.Get("b", "new") == nil || c.Get("c", "x") != nil {
		t.Error("Get by key")
	}
}

// Pods on the host's network share the node's IP: whichever of them sorted
// last used to own it. None does; the rest of the registry is unchanged.
func TestHostNetworkPodsAreNotIndexedByIP(t *testing.T) {
	c := New("cluster.local")
	node := netip.MustParseAddr("198.51.100.10")
	c.SetSourcePods([]model.Pod{
		{Namespace: "kube-system", Name: "kube-proxy", IPs: []netip.Addr{node}, HostNetwork: true},
		{Namespace: "secret", Name: "node-exporter", IPs: []netip.Addr{node}, HostNetwork: true},
		{Namespace: "default", Name: "curl", IPs: []netip.Addr{ip2}},
	})
	if p := c.Lookup(node); p != nil {
		t.Errorf("Lookup(node IP) = %s, want nobody: the node's IP is no pod's", p.Key())
	}
	if p := c.Lookup(ip2); p == nil || p.Key() != "default/curl" {
		t.Errorf("Lookup(%s) = %+v, want default/curl", ip2, p)
	}
	if c.Get("secret", "node-exporter") == nil {
		t.Error("the host-network pod is still listed")
	}
	// An attachment for such a pod (marked by hand under its name) does not
	// index the node's IP either.
	c.Attach(Attachment{Namespace: "secret", Name: "node-exporter", NetnsCookie: 7, IPs: []netip.Addr{node}})
	if p := c.Lookup(node); p != nil {
		t.Errorf("after an attachment, Lookup(node IP) = %s, want nobody", p.Key())
	}
}

// Readers never block on writers: run with -race.
func TestConcurrentReadWrite(t *testing.T) {
	c := New("cluster.local")
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				if p := c.Lookup(ip2); p != nil && p.Name == "" {
					t.Error("torn pod")
				}
			}
		}
	}()
	for i := range 1000 {
		c.Attach(Attachment{ContainerID: "c", Namespace: "n", Name: "p", NetnsCookie: uint64(i), IPs: []netip.Addr{ip2}})
	}
	close(stop)
	wg.Wait()
}

func BenchmarkLookup(b *testing.B) {
	c := New("cluster.local")
	var pods []model.Pod
	for i := range 250 {
		pods = append(pods, model.Pod{Namespace: "n", Name: string(rune('a'+i%26)) + string(rune(i)), IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 1, byte(i)})}})
	}
	c.SetSourcePods(pods)
	ip := netip.AddrFrom4([4]byte{10, 0, 1, 7})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if c.Lookup(ip) == nil {
				b.Fatal("miss")
			}
		}
	})
}

// TestOnChange: a watcher is called after every change and finds the new
// owners of each address; after stop it is not called again.
func TestOnChange(t *testing.T) {
	c := New("cluster.local")
	var seen []map[netip.Addr]*Pod
	stop := c.OnChange(func() { seen = append(seen, c.Owners()) })
	c.SetSourcePods([]model.Pod{{Namespace: "default", Name: "a", IPs: []netip.Addr{ip2, ip3}}})
	c.Attach(Attachment{ContainerID: "c1", Namespace: "default", Name: "b", IPs: []netip.Addr{ip3}})
	c.Detach("c1")
	stop()
	c.SetSourcePods(nil)
	if len(seen) != 3 {
		t.Fatalf("%d calls, want 3 (one per change before stop)", len(seen))
	}
	for i, want := range []map[netip.Addr]string{
		{ip2: "default/a", ip3: "default/a"},
		{ip2: "default/a", ip3: "default/b"}, // an attached pod owns its IP
		{ip2: "default/a", ip3: "default/a"},
	} {
		got := map[netip.Addr]string{}
		for ip, p := range seen[i] {
			got[ip] = p.Key()
		}
		if !maps.Equal(got, want) {
			t.Errorf("call %d: owners %v, want %v", i+1, got, want)
		}
	}
}

// TestByCookieFindsEveryRecord: two records of one pod (a sandbox restart
// before the old DEL) both hold their network namespaces: ByCookie finds
// the pod through either, not only through the record the pod shows.
func TestByCookieFindsEveryRecord(t *testing.T) {
	c := New("cluster.local")
	c.Attach(Attachment{ContainerID: "aaa", Namespace: "prod", Name: "web", NetnsCookie: 7, IPs: []netip.Addr{ip2}})
	c.Attach(Attachment{ContainerID: "bbb", Namespace: "prod", Name: "web", NetnsCookie: 8, IPs: []netip.Addr{ip3}})
	for _, cookie := range []uint64{7, 8} {
		if p := c.ByCookie(cookie); p == nil || p.Key() != "prod/web" {
			t.Errorf("ByCookie(%d) = %v, want prod/web", cookie, p)
		}
	}
}

// TestUncaptured: a pod is uncaptured when the runtime's record says so;
// one the source alone knows, and no pod, are not.
func TestUncaptured(t *testing.T) {
	c := New("cluster.local")
	c.SetSourcePods([]model.Pod{{Namespace: "default", Name: "source-only", IPs: []netip.Addr{ip2}}})
	c.Attach(Attachment{ContainerID: "c1", Namespace: "default", Name: "captured", IPs: []netip.Addr{ip3}, Captured: true})
	c.Attach(Attachment{ContainerID: "c2", Namespace: "default", Name: "released", Reason: "released"})
	for _, tc := range []struct {
		name string
		pod  *Pod
		want bool
	}{
		{"no pod", c.Get("default", "nobody"), false},
		{"source only", c.Get("default", "source-only"), false},
		{"captured", c.Get("default", "captured"), false},
		{"released", c.Get("default", "released"), true},
	} {
		if got := tc.pod.Uncaptured(); got != tc.want {
			t.Errorf("%s: Uncaptured() = %v, want %v", tc.name, got, tc.want)
		}
	}
	// Captured again: the rebuilt pod says so.
	c.Attach(Attachment{ContainerID: "c2", Namespace: "default", Name: "released", Captured: true})
	if c.Get("default", "released").Uncaptured() {
		t.Error("captured again: Uncaptured() = true, want false")
	}
}
