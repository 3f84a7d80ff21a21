//go:build linux

package istiocni

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/ztdns/ztdns/internal/testenv"
)

// TestInspect installs istio-cni's in-pod DNS rules with each of its
// backends in a fresh network namespace and checks that Inspect names the
// backend, and nothing in a namespace without them.
func TestInspect(t *testing.T) {
	testenv.RequireRoot(t)
	tests := []struct {
		backend string
		want    Finding
	}{
		{testenv.IstioIptables, Finding{BackendIptablesNft}},
		{testenv.IstioIptablesLegacy, Finding{BackendIptablesLegacy}},
		{testenv.IstioNftables, Finding{BackendNftables}},
	}
	for _, tt := range tests {
		t.Run(tt.backend, func(t *testing.T) {
			n := testenv.NewNetns(t, testenv.UniqueName("ztdns-istiocni-"))
			testenv.InstallIstioDNSRules(t, n, tt.backend)
			got, err := Inspect(n.Path())
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Inspect = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestInspectLeavesCleanNamespaceAlone: a namespace without rules reports
// none, other redirects (ztunnel's 15001) are not DNS capture, and reading
// creates no legacy table (which would turn on conntrack in the pod).
func TestInspectLeavesCleanNamespaceAlone(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNetns(t, testenv.UniqueName("ztdns-istiocni-"))
	if got, err := Inspect(n.Path()); err != nil || got.Present() {
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
	if got, err := Inspect(n.Path()); err != nil || got.Present() {
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
