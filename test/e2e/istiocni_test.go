//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/redirect"
)

// What the stand-in ztunnel answers for every name, so a test can tell who
// answered.
var (
	ztunnelMarker4 = netip.MustParseAddr("203.0.113.15")
	ztunnelMarker6 = netip.MustParseAddr("2001:db8::15")
)

// TestBesideIstioCNIDNSRules gives pods exactly the DNS capture rules
// istio-cni installs in an ambient pod (with each of its backends) and a
// stand-in for ztunnel's DNS proxy on 127.0.0.1:15053 and [::1]:15053 in
// the pod, and runs each real client over UDP and TCP:
//   - in a pod ztdns captures, ztdns answers, whatever the rules say: its
//     redirect goes to --capture-port, which they do not match, and ztunnel
//     is never asked; `ztdns pods`, `ztdns status` and the metrics say that
//     Istio's capture is on for the pod too;
//   - in a pod ztdns does not capture, Istio's behaviour is untouched:
//     ztunnel answers.
func TestBesideIstioCNIDNSRules(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	testenv.LookPath(t, "getent")
	testenv.LookPath(t, "curl")
	musl := testenv.BuildMuslGetaddrinfo(t)
	a := testenv.StartAgent(t, c.node, c.bin, append(c.agentArgs(), "--metrics", metricsAddr)...)
	c.waitReady(t, a)

	clients := realClients(musl)
	backends := map[string]string{ // istio-cni backend → what ztdns pods calls it
		testenv.IstioIptables:       "iptables-nft",
		testenv.IstioIptablesLegacy: "iptables-legacy",
		testenv.IstioNftables:       "nftables",
	}
	for _, backend := range slices.Sorted(maps.Keys(backends)) {
		for _, captured := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/captured=%v", backend, captured), func(t *testing.T) {
				for _, cl := range clients {
					t.Run(cl.name, func(t *testing.T) {
						p := c.pod(t, cl.nameservers...)
						testenv.InstallIstioDNSRules(t, &p.Netns, backend)
						ztunnel := p.StartDNSServer(t, []netip.AddrPort{
							netip.MustParseAddrPort("127.0.0.1:15053"), netip.MustParseAddrPort("[::1]:15053"),
						}, dnstest.Marker(ztunnelMarker4, ztunnelMarker6))
						want := cl.prints(ztunnelMarker4, ztunnelMarker6)
						if captured {
							name := podName(backend + "-" + cl.name)
							c.capture(t, p, name)
							want = cl.prints(addressVIP, netip.Addr{})
						}
						c.checkPrints(t, cl, p, addressHost, want)
						if asked := ztunnel.Queries(addressHost + "."); captured && asked > 0 {
							t.Errorf("ztunnel's DNS proxy was asked %d times for a pod ztdns captured", asked)
						} else if !captured && asked == 0 {
							t.Errorf("ztunnel's DNS proxy was never asked: istio-cni's rules did not take the query")
						}
						if captured {
							c.checkDoublyCaptured(t, backends[backend], podName(backend+"-"+cl.name), metricsAddr)
						}
					})
				}
			})
		}
	}
}

var doublyCapturedMetric = regexp.MustCompile(`(?m)^ztdns_capture_istio_dns_rules_pods (\d+)$`)

// checkDoublyCaptured checks that ztdns pods, ztdns status and the metrics
// say that the captured pod p carries istio-cni's DNS rules (backend).
func (c *cluster) checkDoublyCaptured(t *testing.T, backend, name, metricsAddr string) {
	t.Helper()
	pod := "default/" + name
	if row := c.podRow(t, name); row.IstioDNSRules != backend {
		t.Errorf("ztdns pods: istioDNSRules = %q, want %q", row.IstioDNSRules, backend)
	}
	st := c.status(t)
	if !slices.ContainsFunc(st.Warnings, func(w string) bool {
		return strings.Contains(w, "istio-cni's DNS capture rules") && strings.Contains(w, pod+" ("+backend+")")
	}) {
		t.Errorf("ztdns status does not warn about %s: %q", pod, st.Warnings)
	}
	out, err := c.node.Output(t, nil, 10*time.Second, "curl", "-sf", "http://"+metricsAddr+"/metrics")
	if err != nil {
		t.Fatalf("curl /metrics: %v\n%s", err, out)
	}
	m := doublyCapturedMetric.FindStringSubmatch(out)
	if m == nil {
		t.Fatal("/metrics has no ztdns_capture_istio_dns_rules_pods")
	}
	if n, _ := strconv.Atoi(m[1]); n < 1 {
		t.Errorf("/metrics: ztdns_capture_istio_dns_rules_pods = %d, want at least 1", n)
	}
}

// status returns `ztdns status`.
func (c *cluster) status(t *testing.T) control.Status {
	t.Helper()
	var st control.Status
	out := c.ztdns(t, "status", "--socket", c.socket, "-o", "json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("ztdns status: %v\n%s", err, out)
	}
	return st
}

// TestDNSOverTCPThroughZtunnel makes a captured pod a full ambient pod:
// istio-cni's DNS rules with its outbound rule, which sends every TCP
// connection not to loopback to ztunnel's port 15001, and stand-ins for
// ztunnel's DNS proxy (15053) and its outbound passthrough (15001). A query
// over TCP is redirected by ztdns to the resolver's --capture-port, taken
// by the outbound rule to ztunnel, and reaches ztdns through ztunnel's
// passthrough, from the pod's own address: ztdns answers it. A query over
// UDP never passes ztunnel.
func TestDNSOverTCPThroughZtunnel(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.startReadyAgent(t)
	for _, cl := range []clientCase{
		{name: "dig TCP", nameservers: []string{nowhere4}, command: digClient("+tcp"), prints: ipv4Only},
		{name: "dig UDP", nameservers: []string{nowhere4}, command: digClient(), prints: ipv4Only},
	} {
		t.Run(cl.name, func(t *testing.T) {
			p := c.pod(t, cl.nameservers...)
			testenv.InstallIstioDNSRules(t, &p.Netns, testenv.IstioIptables)
			testenv.InstallIstioOutboundRules(t, &p.Netns)
			ztunnelDNS := p.StartDNSServer(t, []netip.AddrPort{
				netip.MustParseAddrPort("127.0.0.1:15053"), netip.MustParseAddrPort("[::1]:15053"),
			}, dnstest.Marker(ztunnelMarker4, ztunnelMarker6))
			passthrough := p.StartPassthrough(t, 15001)
			c.capture(t, p, podName("ambient-"+cl.name))

			c.checkPrints(t, cl, p, addressHost, cl.prints(addressVIP, netip.Addr{}))
			if asked := ztunnelDNS.Queries(addressHost + "."); asked > 0 {
				t.Errorf("ztunnel's DNS proxy was asked %d times for a pod ztdns captured", asked)
			}
			var toResolver int
			for _, dst := range passthrough.Destinations() {
				if dst.Port() == redirect.DefaultPort {
					toResolver++
				}
			}
			tcp := strings.Contains(cl.name, "TCP")
			if tcp && toResolver == 0 {
				t.Errorf("the query did not pass ztunnel's outbound listener (it took %v): istio-cni's outbound rule did not apply", passthrough.Destinations())
			} else if !tcp && toResolver > 0 {
				t.Errorf("a UDP query's client made %d TCP connections to the resolver through ztunnel", toResolver)
			}
		})
	}
}
