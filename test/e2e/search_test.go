//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// The pod of TestSearchListResolvesThroughCapture: in the namespace of
// examples/services.yaml's tcp-echo, with the resolv.conf kubelet writes
// for a ClusterFirst pod there, its nameserver kube-dns's usual ClusterIP
// (on the node, a stand-in).
const (
	searchNamespace = "external-1"
	echoService     = "tcp-echo"
	kubeDNS         = "10.96.0.10"
)

var kubeletSearch = []string{searchNamespace + ".svc.cluster.local", "svc.cluster.local", "cluster.local"}

// What the kube-dns stand-in answers for every name outside cluster.local.
var (
	externalMarker4 = netip.MustParseAddr("203.0.113.71")
	externalMarker6 = netip.MustParseAddr("2001:db8:71::1")
)

// TestSearchListResolvesThroughCapture runs glibc, musl and Go in marked
// pods of namespace external-1 whose resolv.conf is a ClusterFirst pod's
// (the three search domains, ndots:5, kube-dns as nameserver), so each
// walks the search list as pods resolve Services (`curl tcp-echo`), and
// checks what each prints: the Service's ClusterIP from ztdns's table for
// tcp-echo and tcp-echo.external-1, the ServiceEntry hosts' VIPs, and for
// a name ztdns does not know, kube-dns's answer once each search-list
// candidate was forwarded to it and denied. The kube-dns stand-in denies
// every name under cluster.local and answers every other with a marker, so
// a Service or ServiceEntry name that missed ztdns prints no ClusterIP or
// VIP, and one that missed the capture prints the marker.
func TestSearchListResolvesThroughCapture(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	testenv.LookPath(t, "getent")
	musl := testenv.BuildMuslGetaddrinfo(t)
	standIn := c.node.ServeNameserver(t, netip.MustParseAddr(kubeDNS), dnstest.KubeDNS(30, dnstest.Marker(externalMarker4, externalMarker6)))
	accessLog := filepath.Join(t.TempDir(), "access.log")
	a := testenv.StartAgent(t, c.node, c.bin, append(c.agentArgs(), "--access-log", accessLog)...)
	c.waitReady(t, a)
	hosts := c.serviceEntryHosts(t)
	echoIP := c.serviceClusterIP(t, echoService, searchNamespace)

	for _, cl := range []clientCase{
		getentHosts,
		getentAhosts,
		{name: "musl getaddrinfo", command: testenv.CommandClient(musl), prints: both},
		{name: "Go resolver PreferGo", command: testenv.GoClient, prints: both},
	} {
		t.Run(cl.name, func(t *testing.T) {
			t.Parallel()
			pod := podName(cl.name)
			p := c.node.AddPod(t, testenv.PodConfig{Nameservers: []string{kubeDNS}, Search: kubeletSearch, Options: []string{"ndots:5"}})
			c.captureIn(t, p, searchNamespace, pod)

			// Names ztdns answers: the first candidate of each is the
			// pod's first query, answered from the table (tcp-echo's
			// full name; for tcp-echo.external-1 and the hosts, the
			// expansion, a CNAME to the name meant), so neither it nor
			// the bare name reaches kube-dns. The access log showing
			// the candidate asked is what shows the search list walked:
			// without one, the short forms and the hosts' bare names
			// print the same addresses.
			answered := []serviceEntryHost{
				{name: echoService, v4: echoIP},
				{name: echoService + "." + searchNamespace, v4: echoIP},
			}
			for _, h := range slices.Concat(answered, hosts) {
				t.Run(h.name, func(t *testing.T) {
					c.checkPrints(t, cl, p, h.name, cl.prints(h.v4, h.v6))
					first := candidates(h.name)[0]
					answeredBy(t, accessLog, pod, first, func(f map[string]string) bool { return f["answered"] == "table" }, "the table")
					for _, n := range []string{first, h.name + "."} {
						if asked := standIn.ReceivedFor(n); len(asked) > 0 {
							t.Errorf("kube-dns was asked %+v for %s, which ztdns answers", asked, n)
						}
					}
				})
			}

			// A name ztdns does not know: each candidate under
			// cluster.local is forwarded and denied, in the search
			// list's order, and only then the bare name, whose answer
			// the client prints.
			fwd := pod + ".forwarded.example"
			t.Run(fwd, func(t *testing.T) {
				c.checkPrints(t, cl, p, fwd, cl.prints(externalMarker4, externalMarker6))
				got := standIn.Received()
				at, prev := -1, ""
				for _, n := range candidates(fwd) {
					i := slices.IndexFunc(got, func(q dnstest.Query) bool { return q.Name == n })
					if i < 0 {
						t.Errorf("kube-dns was never asked %s", n)
						continue
					}
					if i < at {
						t.Errorf("kube-dns was asked %s before %s: want the search list's order, then the bare name", n, prev)
					}
					at, prev = i, n
					if askers := askersOf(standIn, n); slices.Contains(askers, p.IPv4) || slices.Contains(askers, p.IPv6) {
						t.Errorf("kube-dns was asked %s by the pod itself (%v): not captured", n, askers)
					}
				}
				// The pod got kube-dns's own denials: none made by ztdns.
				for _, n := range candidates(fwd)[:len(kubeletSearch)] {
					answeredBy(t, accessLog, pod, n, func(f map[string]string) bool {
						return f["rcode"] == "NXDOMAIN" && (f["answered"] == "cache" || f["answered"] == "upstream" && f["upstream"] == kubeDNS+":53")
					}, "kube-dns's NXDOMAIN")
				}
			})
		})
	}
}

// candidates are the names a pod with kubeletSearch and ndots:5 asks for
// name (fewer than five dots), fully qualified and in order: name under
// each search domain, then name itself.
func candidates(name string) []string {
	var names []string
	for _, d := range kubeletSearch {
		names = append(names, name+"."+d+".")
	}
	return append(names, name+".")
}

// captureIn marks the pod with `ztdns capture add` as pod name in
// namespace, whose Services' short forms it then resolves.
func (c *cluster) captureIn(t *testing.T, p *testenv.Pod, namespace, name string) {
	t.Helper()
	out := c.ztdns(t, "capture", "add", "--socket", c.socket, "--netns", p.Path(), "--namespace", namespace, "--name", name)
	if !strings.Contains(out, "captured "+namespace+"/"+name) {
		t.Fatalf("ztdns capture add printed %q", out)
	}
}

// serviceClusterIP returns the one IPv4 address `ztdns table` lists for
// the Service's full name.
func (c *cluster) serviceClusterIP(t *testing.T, service, namespace string) netip.Addr {
	t.Helper()
	var rows []struct {
		Name   string   `json:"name"`
		Type   string   `json:"type"`
		Values []string `json:"values"`
	}
	out := c.ztdns(t, "table", "--socket", c.socket, "--namespace", namespace, "-o", "json")
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("ztdns table -o json: %v\n%s", err, out)
	}
	full := service + "." + namespace + ".svc.cluster.local."
	for _, r := range rows {
		if r.Name == full && r.Type == "A" {
			if len(r.Values) != 1 {
				t.Fatalf("table row %+v: want one ClusterIP", r)
			}
			a, err := netip.ParseAddr(r.Values[0])
			if err != nil {
				t.Fatalf("table row %+v: %v", r, err)
			}
			return a
		}
	}
	t.Fatalf("ztdns table has no A row for %s:\n%s", full, out)
	return netip.Addr{}
}

// answeredBy checks, in the access log, that the pod asked name and that
// each of its queries for it got an answer ok accepts (from what says).
func answeredBy(t *testing.T, accessLog, pod, name string, ok func(f map[string]string) bool, what string) {
	t.Helper()
	accessLogLines(t, accessLog, pod, func(lines []map[string]string) error {
		asked := false
		for _, f := range lines {
			if f["name"] != name {
				continue
			}
			asked = true
			if !ok(f) {
				return fmt.Errorf("the pod's query for %s got rcode=%s answered=%s upstream=%s, want %s", name, f["rcode"], f["answered"], f["upstream"], what)
			}
		}
		if !asked {
			return fmt.Errorf("the pod never asked %s: its search list was not walked", name)
		}
		return nil
	})
}
