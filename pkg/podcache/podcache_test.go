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
	c := New()
	c.SetSourcePods([]model.Pod{{Namespace: "default", Name: "curl", IPs: []netip.Addr{ip2}}})
	p := c.Lookup(ip2)
	if p == nil || p.Key() != "default/curl" {
		t.Fatalf("Lookup(%v) = %+v", ip2, p)
	}
	if c.Lookup(netip.MustParseAddr("::ffff:10.0.0.2")) != p {
		t.Error("a v4-mapped source address should find the same pod")
	}
}

func TestAttachmentMergesWithSource(t *testing.T) {
	c := New()
	c.Attach(Attachment{ContainerID: "c1", Namespace: "default", Name: "curl", NetnsCookie: 42, IPs: []netip.Addr{ip3}, Captured: true})
	if p := c.ByCookie(42); p == nil || p.Spec != nil {
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
	if !slices.Equal(p.Spec.DNSSearches, []string{"corp.example"}) {
		t.Errorf("spec = %+v, want the source's dnsConfig searches", p.Spec)
	}
	if a, ok := c.Detach("c1"); !ok || a.NetnsCookie != 42 {
		t.Fatalf("Detach = %+v, %v", a, ok)
	}
	if c.ByCookie(42) != nil || c.Lookup(ip2) == nil {
		t.Error("after Detach the pod should be source-only again")
	}
}

func TestIPReusedByNewPod(t *testing.T) {
	c := New()
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
	c := New()
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
	c := New()
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
	c := New()
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
	c := New()
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
	c := New()
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
	c := New()
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

// TestNewestRecordOwnsAReusedIP: an old pod's record lingers (its DEL late,
// or pending while no agent answered; a completed Job pod whose Pod object
// stays) when a new pod is given its IP. The new pod's queries are its
// own, whichever pod's name sorts last. (Before: the record of
// team-z/job-1, sorting after team-b/web, kept the IP.)
func TestNewestRecordOwnsAReusedIP(t *testing.T) {
	c := New()
	c.Attach(Attachment{ContainerID: "c-old", Namespace: "team-z", Name: "job-1", NetnsCookie: 7, IPs: []netip.Addr{ip2}})
	c.Attach(Attachment{ContainerID: "c-new", Namespace: "team-b", Name: "web", NetnsCookie: 8, IPs: []netip.Addr{ip2}})
	if p := c.Lookup(ip2); p == nil || p.Key() != "team-b/web" {
		t.Fatalf("Lookup(%s) = %v, want team-b/web: the newer record", ip2, p)
	}
	// A decision changed on the old record (Redecide re-applies it) does
	// not make it the newer.
	old, _ := c.Attachment("c-old")
	old.Captured = true
	c.Attach(old)
	if p := c.Lookup(ip2); p == nil || p.Key() != "team-b/web" {
		t.Errorf("after the old record is re-applied, Lookup(%s) = %v, want team-b/web", ip2, p)
	}
	// The old pod's DEL comes at last: the IP stays the new pod's.
	c.Detach("c-old")
	if p := c.Lookup(ip2); p == nil || p.Key() != "team-b/web" {
		t.Errorf("after the old DEL, Lookup(%s) = %v, want team-b/web", ip2, p)
	}
}

// TestNewestSandboxIsThePods: a pod's sandbox was replaced before the old
// one's DEL came: the pod is the new sandbox's (its IPs, its capture),
// whichever container ID sorts last. (Before: the old sandbox ffff-old
// sorted after 0000-new, so the pod showed the old IP and the new
// sandbox's IP was nobody's: a client outside every namespace.)
func TestNewestSandboxIsThePods(t *testing.T) {
	c := New()
	ip9 := netip.MustParseAddr("10.0.0.9")
	c.Attach(Attachment{ContainerID: "ffff-old", Namespace: "prod", Name: "web", NetnsCookie: 7, IPs: []netip.Addr{ip2}, Captured: true})
	c.Attach(Attachment{ContainerID: "0000-new", Namespace: "prod", Name: "web", NetnsCookie: 8, IPs: []netip.Addr{ip9}, Reason: "released"})
	p := c.Lookup(ip9)
	if p == nil || p.Key() != "prod/web" {
		t.Fatalf("Lookup(%s) = %v, want prod/web: its live sandbox's IP", ip9, p)
	}
	if p.Attachment.ContainerID != "0000-new" || !slices.Equal(p.IPs, []netip.Addr{ip9}) || !p.Uncaptured() {
		t.Errorf("prod/web shows record %s with IPs %v (uncaptured %v), want 0000-new's", p.Attachment.ContainerID, p.IPs, p.Uncaptured())
	}
	if got := c.Get("prod", "web"); got != p {
		t.Errorf("Get = %+v, want the pod Lookup found", got)
	}
}

// TestAttachOrderComesBack: records restored with their AttachOrder (a
// restarted agent reads them from disk, in any order) keep it, and a
// record attached after them is newer than all.
func TestAttachOrderComesBack(t *testing.T) {
	c := New()
	c.Attach(Attachment{ContainerID: "c-new", Namespace: "team-b", Name: "web", NetnsCookie: 8, IPs: []netip.Addr{ip2}, AttachOrder: 41})
	c.Attach(Attachment{ContainerID: "c-old", Namespace: "team-z", Name: "job-1", NetnsCookie: 7, IPs: []netip.Addr{ip2}, AttachOrder: 40})
	if p := c.Lookup(ip2); p == nil || p.Key() != "team-b/web" {
		t.Fatalf("Lookup(%s) = %v, want team-b/web: restored as the newer", ip2, p)
	}
	c.Attach(Attachment{ContainerID: "c-next", Namespace: "team-a", Name: "api", NetnsCookie: 9, IPs: []netip.Addr{ip2}})
	if a, _ := c.Attachment("c-next"); a.AttachOrder != 42 {
		t.Errorf("the next record's order is %d, want 42", a.AttachOrder)
	}
	if p := c.Lookup(ip2); p == nil || p.Key() != "team-a/api" {
		t.Errorf("Lookup(%s) = %v, want team-a/api: attached after the restored ones", ip2, p)
	}
}

// TestFamilies: a pod's families are those of its addresses, the runtime's
// when it has a record (the live sandbox's), and follow a rebuild.
func TestFamilies(t *testing.T) {
	c := New()
	v6, mapped := netip.MustParseAddr("fd00::7"), netip.MustParseAddr("::ffff:10.0.0.8")
	c.SetSourcePods([]model.Pod{
		{Namespace: "default", Name: "v4", IPs: []netip.Addr{ip2}},
		{Namespace: "default", Name: "v6", IPs: []netip.Addr{v6}},
		{Namespace: "default", Name: "dual", IPs: []netip.Addr{ip3, netip.MustParseAddr("fd00::3")}},
		{Namespace: "default", Name: "mapped", IPs: []netip.Addr{mapped}},
		{Namespace: "default", Name: "none"},
		{Namespace: "default", Name: "moved", IPs: []netip.Addr{netip.MustParseAddr("fd00::9")}},
	})
	c.Attach(Attachment{ContainerID: "c1", Namespace: "default", Name: "moved", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.9")}, Captured: true})
	for _, tc := range []struct {
		name string
		want uint8
	}{{"v4", 1}, {"v6", 2}, {"dual", 3}, {"mapped", 1}, {"none", 0}, {"moved", 1}} {
		if got := c.Get("default", tc.name).Families(); got != tc.want {
			t.Errorf("%s: Families() = %d, want %d", tc.name, got, tc.want)
		}
	}
	if got := (*Pod)(nil).Families(); got != 0 {
		t.Errorf("nil pod: Families() = %d, want 0", got)
	}
}
