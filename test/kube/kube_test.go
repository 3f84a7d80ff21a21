// Package kube runs ztdns agents against a real kube-apiserver and etcd on
// loopback (internal/kubetest) and checks, after every API write, the DNS
// answers the running agent gives: the DNS Proxying walkthrough through the
// API, exportTo, an API server restart, two nodes that must agree on every
// VIP, and, beside a real istiod, exactly istiod's VIPs.
package kube

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	istionetworkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/source/kube"
)

const node = "node-a"

// Askers: pods on node-a whose status.podIP the tests set to these. curl
// is dual-stack (curlIP6 is never a source): it gets both families'
// auto-allocated VIPs, where an IPv4-only pod gets IPv4's alone.
var (
	curlIP  = netip.MustParseAddr("127.0.0.2")
	curlIP6 = netip.MustParseAddr("fd00::2")
	teamAIP = netip.MustParseAddr("127.0.0.4")
	teamBIP = netip.MustParseAddr("127.0.0.5")
)

var vip4 = regexp.MustCompile(`^240\.240\.\d+\.\d+$`)

// cluster is an API server with a few namespaces and pods, and the helpers
// to write to it.
type cluster struct {
	env *kubetest.Env
	ctx context.Context
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	c := &cluster{env: kubetest.Start(t), ctx: context.Background()}
	for _, ns := range []string{"team-a", "team-b"} {
		c.namespace(t, ns, nil)
	}
	c.pod(t, "default", "curl", curlIP, curlIP6)
	c.pod(t, "team-a", "app", teamAIP)
	c.pod(t, "team-b", "app", teamBIP)
	return c
}

func (c *cluster) namespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	_, err := c.env.Client().CoreV1().Namespaces().Create(c.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// pod creates a pod on node-a and writes its IPs into its status, as the
// kubelet would.
func (c *cluster) pod(t *testing.T, ns, name string, ip netip.Addr, more ...netip.Addr) {
	t.Helper()
	c.env.RunningPod(c.ctx, ns, name, node, append([]netip.Addr{ip}, more...)...)
}

// clusterIPService creates a Service with one port and returns its
// ClusterIP.
func (c *cluster) clusterIPService(t *testing.T, ns, name string) string {
	t.Helper()
	svc, err := c.env.Client().CoreV1().Services(ns).Create(c.ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc.Spec.ClusterIP
}

// seSpec is the part of a ServiceEntry spec the tests vary. (The generated
// spec type holds a mutex and must not be copied.)
type seSpec struct {
	hosts, addresses, exportTo []string
	ports                      []*networkingv1alpha3.ServicePort
	resolution                 networkingv1alpha3.ServiceEntry_Resolution
}

func (c *cluster) serviceEntry(t *testing.T, ns, name string, labels map[string]string, spec seSpec) *istionetworkingv1.ServiceEntry {
	t.Helper()
	se := &istionetworkingv1.ServiceEntry{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels}}
	se.Spec.Hosts, se.Spec.Addresses, se.Spec.ExportTo = spec.hosts, spec.addresses, spec.exportTo
	se.Spec.Ports, se.Spec.Resolution = spec.ports, spec.resolution
	se, err := c.env.IstioClient().NetworkingV1().ServiceEntries(ns).Create(c.ctx, se, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return se
}

// dnsSE is a ServiceEntry of host with resolution DNS and port 80, seen
// from the namespaces exportTo lists (none: the default).
func dnsSE(host string, exportTo ...string) seSpec {
	return seSpec{hosts: []string{host}, resolution: networkingv1alpha3.ServiceEntry_DNS, ports: httpPort(), exportTo: exportTo}
}

func httpPort() []*networkingv1alpha3.ServicePort {
	return []*networkingv1alpha3.ServicePort{{Name: "http", Number: 80, Protocol: "HTTP"}}
}

func tcpPort(name string) []*networkingv1alpha3.ServicePort {
	return []*networkingv1alpha3.ServicePort{{Name: name, Number: 9000, Protocol: "TCP"}}
}

// startAgent runs an agent for node-a watching the cluster.
func startAgent(t *testing.T, c *cluster, upstream netip.AddrPort) *agenttest.Agent {
	t.Helper()
	rc, err := kube.RESTConfig(c.env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return agenttest.Start(t, agent.Config{
		Source:    kube.New(rc, kube.WithNodeName(node)),
		Upstreams: []netip.AddrPort{upstream},
	})
}

// What markerUpstream answers every A and every AAAA question with,
// whatever the name: an answer an agent forwarded is told from one ztdns
// gives itself, its own NXDOMAIN included.
const (
	forwarded4 = "203.0.113.99"
	forwarded6 = "2001:db8::99"
)

// markerUpstream starts an upstream that answers forwarded4 and
// forwarded6 (TTL 0: no agent caches them).
func markerUpstream(t *testing.T) *dnstest.Server {
	t.Helper()
	return dnstest.Start(t, "127.0.0.1:0", dnstest.Marker(netip.MustParseAddr(forwarded4), netip.MustParseAddr(forwarded6)))
}

// waitSeen waits until a's table, as pods in ns see it (`ztdns table`),
// lists a name of each origin ("ServiceEntry default/web"): the agent has
// those objects, so a check that follows, one that would pass as well
// before the agent had them, is decided by them and not by how soon the
// watch delivered them.
func waitSeen(t *testing.T, a *agenttest.Agent, ns string, origins ...string) {
	t.Helper()
	agenttest.Eventually(t, 10*time.Second, func() error {
		rows, err := a.Table(ns)
		if err != nil {
			return err
		}
		for _, o := range origins {
			if !slices.ContainsFunc(rows, func(r control.TableRow) bool { return r.Origin == o }) {
				return fmt.Errorf("ztdns table (namespace %q) lists no name of %s", ns, o)
			}
		}
		return nil
	})
}

// expect waits until qname answers want (addresses, or an rcode name).
func expect(t *testing.T, a *agenttest.Agent, from netip.Addr, qname string, qtype uint16, want ...string) {
	t.Helper()
	agenttest.Eventually(t, 10*time.Second, func() error {
		if got := a.Addrs(t, from, qname, qtype); !slices.Equal(got, want) {
			return fmt.Errorf("%s from %s = %q, want %q", qname, from, got, want)
		}
		return nil
	})
}

// expectVIP waits until qname answers one 240.240.x.y address and returns it.
func expectVIP(t *testing.T, a *agenttest.Agent, from netip.Addr, qname string) string {
	t.Helper()
	var vip string
	agenttest.Eventually(t, 10*time.Second, func() error {
		got := a.Addrs(t, from, qname, dns.TypeA)
		if len(got) != 1 || !vip4.MatchString(got[0]) {
			return fmt.Errorf("%s = %q, want one 240.240.x.y VIP", qname, got)
		}
		vip = got[0]
		return nil
	})
	return vip
}

// TestSeedWalkthroughThroughTheAPI follows Istio's DNS Proxying page, every
// step an API write, every check a DNS query to the running agent.
func TestSeedWalkthroughThroughTheAPI(t *testing.T) {
	c := newCluster(t)
	up := markerUpstream(t)
	a := startAgent(t, c, up.Addr)

	c.serviceEntry(t, "default", "external-address", nil, seSpec{
		hosts: []string{"address.internal"}, addresses: []string{"198.51.100.1"}, ports: httpPort()})
	expect(t, a, curlIP, "address.internal", dns.TypeA, "198.51.100.1")

	auto := c.serviceEntry(t, "default", "external-auto", nil, dnsSE("auto.internal"))
	allocated := expectVIP(t, a, curlIP, "auto.internal")

	// Two TCP services on one port, two VIPs (ztdns's own allocator: no
	// istiod allocates here yet).
	c.serviceEntry(t, "default", "external-svc-1", nil, seSpec{
		hosts: []string{"tcp-echo.external-1.svc.cluster.local"}, ports: tcpPort("external-svc-1"), resolution: networkingv1alpha3.ServiceEntry_DNS})
	c.serviceEntry(t, "default", "external-svc-2", nil, seSpec{
		hosts: []string{"tcp-echo.external-2.svc.cluster.local"}, ports: tcpPort("external-svc-2"), resolution: networkingv1alpha3.ServiceEntry_DNS})
	e1 := expectVIP(t, a, curlIP, "tcp-echo.external-1.svc.cluster.local")
	e2 := expectVIP(t, a, curlIP, "tcp-echo.external-2.svc.cluster.local")
	if e1 == e2 {
		t.Errorf("both tcp-echo ServiceEntries got %s", e1)
	}

	// istiod's IP auto-allocation controller writes status.addresses (here
	// by hand; TestIstiodVIPs runs the real one). From then on istiod
	// allocates, and only its VIPs are answered: the tcp-echo hosts, which
	// it has not written, are forwarded until it does.
	auto.Status.Addresses = []*networkingv1alpha3.ServiceEntryAddress{{Host: "auto.internal", Value: "240.240.0.1"}}
	auto, err := c.env.IstioClient().NetworkingV1().ServiceEntries("default").UpdateStatus(c.ctx, auto, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	expect(t, a, curlIP, "auto.internal", dns.TypeA, "240.240.0.1")
	expect(t, a, curlIP, "tcp-echo.external-1.svc.cluster.local", dns.TypeA, forwarded4)
	t.Logf("auto.internal: ztdns allocated %s, then istiod's status said 240.240.0.1", allocated)

	// The opt-out label: no VIP, so the name is forwarded (the polls of
	// expectVIP above may have forwarded it before the agent had the
	// entry: count from here).
	asked := up.Queries("auto.internal.")
	auto.Labels = map[string]string{"networking.istio.io/enable-autoallocate-ip": "false"}
	if _, err := c.env.IstioClient().NetworkingV1().ServiceEntries("default").Update(c.ctx, auto, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect(t, a, curlIP, "auto.internal", dns.TypeA, forwarded4)
	if up.Queries("auto.internal.") == asked {
		t.Error("the opted-out name was not forwarded")
	}
}

func TestExportToAndServices(t *testing.T) {
	c := newCluster(t)
	up := markerUpstream(t)
	a := startAgent(t, c, up.Addr)

	c.serviceEntry(t, "team-a", "private", nil, seSpec{
		hosts: []string{"private.internal"}, addresses: []string{"198.51.100.20"}, exportTo: []string{"."}, ports: httpPort()})
	expect(t, a, teamAIP, "private.internal", dns.TypeA, "198.51.100.20")
	expect(t, a, teamBIP, "private.internal", dns.TypeA, forwarded4) // the agent has it: team-a got it

	ip := c.clusterIPService(t, "team-a", "web")
	expect(t, a, teamAIP, "web", dns.TypeA, ip)                          // short name in its own namespace
	expect(t, a, teamBIP, "web.team-a.svc.cluster.local", dns.TypeA, ip) // fqdn from elsewhere
	expect(t, a, teamBIP, "web", dns.TypeA, forwarded4)                  // not team-b's
	if err := c.env.Client().CoreV1().Services("team-a").Delete(c.ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expect(t, a, teamAIP, "web.team-a.svc.cluster.local", dns.TypeA, forwarded4)
}

// TestAPIServerRestart: while the API server is down the agent keeps
// answering from its last table, stays ready (as CoreDNS does once synced)
// and says so in its status; afterwards it picks up what changed.
func TestAPIServerRestart(t *testing.T) {
	c := newCluster(t)
	up := markerUpstream(t)
	a := startAgent(t, c, up.Addr)
	c.serviceEntry(t, "default", "external-address", nil, seSpec{
		hosts: []string{"address.internal"}, addresses: []string{"198.51.100.1"}, ports: httpPort()})
	expect(t, a, curlIP, "address.internal", dns.TypeA, "198.51.100.1")

	c.env.Stop()
	agenttest.Eventually(t, 60*time.Second, func() error {
		st, err := a.Status()
		if err != nil {
			return err
		}
		if !st.Ready || st.SourceFailing == "" {
			return fmt.Errorf("with the API server down: ready %v (%s), source failing %q; want ready, naming the failure", st.Ready, st.NotReady, st.SourceFailing)
		}
		t.Logf("while the API server is down: %s", st.SourceFailing)
		return nil
	})
	expect(t, a, curlIP, "address.internal", dns.TypeA, "198.51.100.1")

	c.env.Restart()
	c.serviceEntry(t, "default", "after-restart", nil, seSpec{
		hosts: []string{"later.internal"}, addresses: []string{"198.51.100.2"}, ports: httpPort()})
	agenttest.Eventually(t, 60*time.Second, func() error {
		if got := a.Addrs(t, curlIP, "later.internal", dns.TypeA); !slices.Equal(got, []string{"198.51.100.2"}) {
			return fmt.Errorf("later.internal = %q", got)
		}
		if st, err := a.Status(); err != nil || !st.Ready || st.SourceFailing != "" {
			return fmt.Errorf("not ready, or still failing, again: %v %s %s", err, st.NotReady, st.SourceFailing)
		}
		return nil
	})
}

// TestTwoNodesOneAnswer: without istiod, two agents watching one API
// server give every auto-allocated host the same VIP from ztdns's own
// allocator, although one saw the objects arrive one
// by one and the other listed them all at once; adding a ServiceEntry moves
// no existing host.
func TestTwoNodesOneAnswer(t *testing.T) {
	c := newCluster(t)
	up := markerUpstream(t)
	nodeA := startAgent(t, c, up.Addr) // sees each create as an event

	var hosts []string
	for i := range 40 {
		host := fmt.Sprintf("db-%02d.example", i)
		hosts = append(hosts, host)
		c.serviceEntry(t, fmt.Sprintf("team-%c", 'a'+i%2), fmt.Sprintf("db-%02d", i), nil, seSpec{
			hosts: []string{host}, ports: tcpPort("tcp"), resolution: networkingv1alpha3.ServiceEntry_DNS})
	}
	nodeB := startAgent(t, c, up.Addr) // lists them all in one go
	vips := map[string]string{}
	for _, h := range hosts {
		a := expectVIP(t, nodeA, curlIP, h)
		b := expectVIP(t, nodeB, curlIP, h)
		if a != b {
			t.Errorf("%s: node A says %s, node B says %s", h, a, b)
		}
		vips[h] = a
	}
	c.serviceEntry(t, "default", "newcomer", nil, seSpec{
		hosts: []string{"newcomer.example"}, ports: tcpPort("tcp"), resolution: networkingv1alpha3.ServiceEntry_DNS})
	expectVIP(t, nodeA, curlIP, "newcomer.example")
	expectVIP(t, nodeB, curlIP, "newcomer.example")
	for _, h := range hosts {
		for name, n := range map[string]*agenttest.Agent{"A": nodeA, "B": nodeB} {
			if got := n.Addrs(t, curlIP, h, dns.TypeA); !slices.Equal(got, []string{vips[h]}) {
				t.Errorf("node %s: adding a ServiceEntry moved %s from %s to %q", name, h, vips[h], got)
			}
		}
	}
}
