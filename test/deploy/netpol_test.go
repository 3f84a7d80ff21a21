//go:build linux

package deploy

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/ztdns/ztdns/pkg/redirect"
)

// TestNetworkPolicySampleMatchesTheChart checks the egress rule
// deploy/README.md tells users to add next to their DNS rule: a captured
// query leaves the pod for the resolver's slot addresses on the capture
// port, and a rule that allows other addresses or ports loses the pod its
// DNS. The rule must name exactly what the chart's defaults make the agent
// use: the first IPv4 and IPv6 address of --listen and the two after each,
// on --capture-port, UDP and TCP.
func TestNetworkPolicySampleMatchesTheChart(t *testing.T) {
	var listen, port string
	for _, a := range renderChart(t).daemonSet.Spec.Template.Spec.Containers[0].Args {
		if v, ok := strings.CutPrefix(a, "--listen="); ok {
			listen = v
		}
		if v, ok := strings.CutPrefix(a, "--capture-port="); ok {
			port = v
		}
	}
	var addrs []netip.AddrPort
	for _, l := range strings.Split(listen, ",") {
		ap, err := netip.ParseAddrPort(l)
		if err != nil {
			t.Fatalf("--listen=%s: %v", listen, err)
		}
		addrs = append(addrs, ap)
	}
	wantPort, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		t.Fatalf("chart args: --capture-port=%q", port)
	}
	r4, r6, err := redirect.ResolverSlots(addrs, uint16(wantPort))
	if err != nil || !r4[0].IsValid() || !r6[0].IsValid() {
		t.Fatalf("chart args: --listen=%q: slots %v %v: %v", listen, r4, r6, err)
	}
	var want []string
	for _, ap := range append(r4[:], r6[:]...) {
		want = append(want, netip.PrefixFrom(ap.Addr(), ap.Addr().BitLen()).String())
	}

	var doc struct {
		Egress []networkingv1.NetworkPolicyEgressRule `json:"egress"`
	}
	if err := yaml.UnmarshalStrict([]byte(readmeEgressSample(t)), &doc); err != nil {
		t.Fatalf("the sample rule in deploy/README.md: %v", err)
	}
	if len(doc.Egress) != 1 {
		t.Fatalf("the sample has %d egress rules, want 1", len(doc.Egress))
	}
	rule := doc.Egress[0]
	var got []string
	for _, peer := range rule.To {
		if peer.IPBlock == nil || len(peer.IPBlock.Except) != 0 || peer.PodSelector != nil || peer.NamespaceSelector != nil {
			t.Errorf("peer %+v: want a plain ipBlock", peer)
			continue
		}
		got = append(got, peer.IPBlock.CIDR)
	}
	if slices.Sort(got); !slices.Equal(got, sorted(want)) {
		t.Errorf("the sample allows %q, want the resolver's slot addresses %q", got, sorted(want))
	}
	var protos []string
	for _, p := range rule.Ports {
		if p.Port == nil || p.Port.IntValue() != int(wantPort) || p.EndPort != nil || p.Protocol == nil {
			var proto corev1.Protocol
			if p.Protocol != nil {
				proto = *p.Protocol
			}
			t.Errorf("port %v %q: want %d with a protocol", p.Port, proto, wantPort)
			continue
		}
		protos = append(protos, string(*p.Protocol))
	}
	if slices.Sort(protos); !slices.Equal(protos, []string{string(corev1.ProtocolTCP), string(corev1.ProtocolUDP)}) {
		t.Errorf("the sample allows protocols %q, want TCP and UDP", protos)
	}
}

// readmeEgressSample returns the yaml block of deploy/README.md's
// requirement about egress NetworkPolicy, unindented.
func readmeEgressSample(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "**Egress NetworkPolicy")
	if !ok {
		t.Fatal("deploy/README.md has no requirement about egress NetworkPolicy")
	}
	lines := strings.Split(rest, "\n")
	start := slices.IndexFunc(lines, func(l string) bool { return strings.TrimSpace(l) == "```yaml" })
	if start < 0 {
		t.Fatal("the egress NetworkPolicy requirement has no yaml sample")
	}
	indent := lines[start][:len(lines[start])-len(strings.TrimLeft(lines[start], " "))]
	var out []string
	for _, l := range lines[start+1:] {
		if strings.TrimSpace(l) == "```" {
			return strings.Join(out, "\n")
		}
		out = append(out, strings.TrimPrefix(l, indent))
	}
	t.Fatal("the yaml sample does not end")
	return ""
}
