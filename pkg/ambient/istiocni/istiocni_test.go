//go:build linux

package istiocni

import (
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/redirect"
)

// TestInspect installs istio-cni's in-pod DNS rules with each of its
// backends in a fresh network namespace and checks that Inspect names the
// backend, and nothing in a namespace without them.
func TestInspect(t *testing.T) {
	testenv.RequireRoot(t)
	tests := []struct {
		backend string
		want    Finding
		// flushV4 empties the IPv4 nat chain afterwards, so only the IPv6
		// rules (another layout of the REDIRECT target) are left.
		flushV4 string
	}{
		{testenv.IstioIptables, Finding{BackendIptablesNft}, "iptables-nft"},
		{testenv.IstioIptablesLegacy, Finding{BackendIptablesLegacy}, "iptables-legacy"},
		{testenv.IstioNftables, Finding{BackendNftables}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.backend, func(t *testing.T) {
			n := testenv.NewNetns(t, testenv.UniqueName("ztdns-istiocni-"))
			testenv.InstallIstioDNSRules(t, n, tt.backend)
			inspect := func(what string, want Finding) {
				got, err := Inspect(n.Path(), 0)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(got, want) {
					t.Errorf("%s: Inspect = %v, want %v", what, got, want)
				}
			}
			inspect("IPv4 and IPv6 rules", tt.want)
			if tt.flushV4 == "" {
				return
			}
			flush := func(bin string) {
				if out, err := exec.Command("nsenter", "--net="+n.Path(), bin, "-t", "nat", "-F", "ISTIO_OUTPUT").CombinedOutput(); err != nil {
					t.Fatalf("%s -F: %v\n%s", bin, err, out)
				}
			}
			flush(tt.flushV4)
			inspect("IPv6 rules only", tt.want)
			flush(strings.Replace(tt.flushV4, "iptables", "ip6tables", 1))
			inspect("no rules left", nil)
		})
	}
}

// TestInspectLeavesCleanNamespaceAlone: a namespace without rules reports
// none, other redirects (ztunnel's 15001) are not DNS capture, and reading
// creates no legacy table (which would turn on conntrack in the pod).
func TestInspectLeavesCleanNamespaceAlone(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNetns(t, testenv.UniqueName("ztdns-istiocni-"))
	if got, err := Inspect(n.Path(), 0); err != nil || got.Present() {
		t.Fatalf("Inspect of an empty namespace = %v, %v; want nothing", got, err)
	}
	if names := tablesNames(t, n); names != "" {
		t.Errorf("legacy tables exist after Inspect: %q", names)
	}
	testenv.LookPath(t, "iptables-legacy")
	out, err := exec.Command("nsenter", "--net="+n.Path(), "iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-p", "tcp",
		"-j", "REDIRECT", "--to-ports", "15001").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables-legacy: %v\n%s", err, out)
	}
	out, err = exec.Command("nsenter", "--net="+n.Path(), "nft", "add table inet t; add chain inet t o { type nat hook output priority -100 ; }; add rule inet t o tcp dport 80 redirect to :15001").CombinedOutput()
	if err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	if got, err := Inspect(n.Path(), 0); err != nil || got.Present() {
		t.Errorf("Inspect with only port-15001 redirects = %v, %v; want nothing", got, err)
	}
}

func tablesNames(t *testing.T, n *testenv.Netns) string {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+n.Path(), "cat", "/proc/net/ip_tables_names", "/proc/net/ip6_tables_names").CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestInspectChecksTheCookie: given the cookie of the namespace it should
// look at (an adopted pod's path is /proc/<pid>/ns/net, and the PID may be
// another process's by now), Inspect reports nothing of a namespace with
// another cookie, though it holds the rules.
func TestInspectChecksTheCookie(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNetns(t, testenv.UniqueName("ztdns-istiocni-"))
	testenv.InstallIstioDNSRules(t, n, testenv.IstioNftables)
	cookie, err := redirect.NetnsCookie(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Inspect(n.Path(), cookie); err != nil || !slices.Equal(got, Finding{BackendNftables}) {
		t.Errorf("Inspect with the namespace's cookie = %v, %v; want %v", got, err, Finding{BackendNftables})
	}
	if got, err := Inspect(n.Path(), cookie+1); !errors.Is(err, ErrOtherNetns) || got.Present() {
		t.Errorf("Inspect with another cookie = %v, %v; want ErrOtherNetns", got, err)
	}
}

// TestInspectBoundsTheNftablesListing: the nftables listing is read up to a
// bound (maxTableSize in Inspect), as the legacy tables are: a pod's root
// may fill its namespace with rules, and the agent must not read them all
// into memory. Here a bound smaller than istio-cni's rules.
func TestInspectBoundsTheNftablesListing(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNetns(t, testenv.UniqueName("ztdns-istiocni-"))
	testenv.InstallIstioDNSRules(t, n, testenv.IstioNftables)
	if got, err := inspectNftables(n.Path(), maxTableSize); err != nil || !slices.Contains(got, BackendNftables) {
		t.Fatalf("inspectNftables = %v, %v; want %s", got, err, BackendNftables)
	}
	if got, err := inspectNftables(n.Path(), 256); err == nil || !strings.Contains(err.Error(), "more than 256 bytes") {
		t.Errorf("inspectNftables bounded to 256 bytes = %v, %v; want an error", got, err)
	}
}
