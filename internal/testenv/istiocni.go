//go:build linux

package testenv

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The ways istio-cni writes its in-pod rules, for InstallIstioDNSRules.
const (
	IstioIptables       = "iptables"        // iptables-restore / ip6tables-restore (iptables-nft)
	IstioIptablesLegacy = "iptables-legacy" // iptables-legacy-restore
	IstioNftables       = "nftables"        // istio-cni's nftables backend, nft -f
)

// istioIptablesDNSRules are the DNS rules istio-cni's iptables backend
// writes into an ambient pod with DNS capture on (istio/istio
// cni/pkg/iptables/iptables.go, as in testdata/default.golden): nat
// ISTIO_OUTPUT sends UDP not leaving through lo and TCP not to loopback,
// destination port 53, not carrying ztunnel's mark 0x539/0xfff, to
// ztunnel's DNS proxy on 15053; raw puts ztunnel's own upstream queries
// and their replies in conntrack zone 1. LOOPBACK is 127.0.0.1/32 or
// ::1/128.
const istioIptablesDNSRules = `*nat
:ISTIO_OUTPUT - [0:0]
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-ports 15053
-A ISTIO_OUTPUT ! -d LOOPBACK -p tcp -m tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053
COMMIT
*raw
:ISTIO_OUTPUT - [0:0]
:ISTIO_PRERT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p udp -m mark --mark 0x539/0xfff -m udp --dport 53 -j CT --zone 1
-A ISTIO_PRERT -p udp -m mark ! --mark 0x539/0xfff -m udp --sport 53 -j CT --zone 1
COMMIT
`

// istioNftablesDNSRules are the same rules as istio-cni's nftables backend
// writes them (cni/pkg/nftables/nftables.go, testdata/default_ipv6.golden).
const istioNftablesDNSRules = `add table inet istio-ambient-nat
add chain inet istio-ambient-nat output { type nat hook output priority -100 ; }
add chain inet istio-ambient-nat istio-output
add rule inet istio-ambient-nat output jump istio-output
add rule inet istio-ambient-nat istio-output oifname != lo mark and 0xfff != 0x539 udp dport 53 counter redirect to :15053
add rule inet istio-ambient-nat istio-output ip daddr != 127.0.0.1/32 tcp dport 53 mark and 0xfff != 0x539 counter redirect to :15053
add rule inet istio-ambient-nat istio-output ip6 daddr != ::1/128 tcp dport 53 mark and 0xfff != 0x539 counter redirect to :15053
add table inet istio-ambient-raw
add chain inet istio-ambient-raw prerouting { type filter hook prerouting priority -300 ; }
add chain inet istio-ambient-raw output { type filter hook output priority -300 ; }
add chain inet istio-ambient-raw istio-prerouting
add chain inet istio-ambient-raw istio-output
add rule inet istio-ambient-raw prerouting jump istio-prerouting
add rule inet istio-ambient-raw output jump istio-output
add rule inet istio-ambient-raw istio-output udp dport 53 meta mark and 0xfff == 0x539 counter ct zone set 1
add rule inet istio-ambient-raw istio-prerouting udp sport 53 meta mark and 0xfff != 0x539 counter ct zone set 1
`

// InstallIstioDNSRules installs, in the namespace, the DNS capture rules
// istio-cni installs in an ambient pod, with one of its backends
// (IstioIptables, IstioIptablesLegacy, IstioNftables), for IPv4 and IPv6.
// They go with the namespace.
func InstallIstioDNSRules(tb testing.TB, n *Netns, backend string) {
	tb.Helper()
	type load struct{ bin, rules string }
	var loads []load
	switch backend {
	case IstioIptables, IstioIptablesLegacy:
		suffix := ""
		if backend == IstioIptablesLegacy {
			suffix = "-legacy"
		}
		loads = []load{
			{"iptables" + suffix + "-restore", strings.ReplaceAll(istioIptablesDNSRules, "LOOPBACK", "127.0.0.1/32")},
			{"ip6tables" + suffix + "-restore", strings.ReplaceAll(istioIptablesDNSRules, "LOOPBACK", "::1/128")},
		}
	case IstioNftables:
		loads = []load{{"nft", istioNftablesDNSRules}}
	default:
		tb.Fatalf("testenv: no istio-cni backend %q", backend)
	}
	for _, l := range loads {
		loadRules(tb, n, l.bin, l.rules)
	}
}

// loadRules feeds rules to bin (an iptables-restore, which appends them,
// or nft) inside the namespace.
func loadRules(tb testing.TB, n *Netns, bin, rules string) {
	tb.Helper()
	LookPath(tb, bin)
	args := []string{"--noflush"}
	if bin == "nft" {
		args = []string{"-f", "-"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.Path(), bin}, args...)...)
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("testenv: %s in %s: %v\n%s", bin, n.Name, err, out)
	}
}

// istioIptablesOutboundRules are the rest of istio-cni's nat ISTIO_OUTPUT
// chain in an ambient pod (istio/istio cni/pkg/iptables/testdata/
// default.golden), after its DNS rules: every TCP connection not to
// loopback and not from ztunnel (mark 0x539/0xfff) goes to ztunnel's
// outbound port 15001. LOOPBACK is 127.0.0.1/32 or ::1/128.
const istioIptablesOutboundRules = `*nat
-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
-A ISTIO_OUTPUT ! -d LOOPBACK -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d LOOPBACK -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
COMMIT
`

// InstallIstioOutboundRules appends istio-cni's outbound TCP redirect to
// ztunnel (port 15001) to the rules InstallIstioDNSRules installed with the
// iptables backend, making the namespace a full ambient pod.
func InstallIstioOutboundRules(tb testing.TB, n *Netns) {
	tb.Helper()
	loadRules(tb, n, "iptables-restore", strings.ReplaceAll(istioIptablesOutboundRules, "LOOPBACK", "127.0.0.1/32"))
	loadRules(tb, n, "ip6tables-restore", strings.ReplaceAll(istioIptablesOutboundRules, "LOOPBACK", "::1/128"))
}
