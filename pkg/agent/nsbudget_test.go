//go:build linux

package agent_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// TestNamespaceBudgetInConfigDir: with --config-dir, a namespace whose
// manifests make more names than --max-names-per-namespace keeps its
// oldest objects answered and loses its newest, named in ztdns status and
// counted on /metrics; another namespace's names are all answered.
// (Before: no budget, every host of every namespace in the table.)
func TestNamespaceBudgetInConfigDir(t *testing.T) {
	dir := t.TempDir()
	entry := func(ns, name, created string, hosts int, addr string) string {
		var hs []string
		for i := range hosts {
			hs = append(hs, fmt.Sprintf("%q", fmt.Sprintf("h%d.%s.%s.example", i, name, ns)))
		}
		return fmt.Sprintf("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: %s, namespace: %s, creationTimestamp: %q}\n"+
			"spec:\n  resolution: STATIC\n  hosts: [%s]\n  addresses: [%s]\n", name, ns, created, strings.Join(hs, ", "), addr)
	}
	files := map[string]string{
		// tenant: old (4 names) fits a budget of 10; bulk (11) does not.
		"tenant.yaml": entry("tenant", "bulk", "2025-01-01T00:00:00Z", 10, "198.51.100.2") + "---\n" +
			entry("tenant", "old", "2024-01-01T00:00:00Z", 3, "198.51.100.1"),
		"other.yaml": entry("other", "ext", "2025-06-01T00:00:00Z", 8, "198.51.100.3"),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	metrics := testenv.FreePort(t)
	a := agenttest.Start(t, agent.Config{Source: configdir.New(dir), MetricsAddr: metrics.String(), MaxNamesPerNamespace: 10,
		Upstreams: []netip.AddrPort{testenv.DeadAddr(t)}})
	loopback := netip.MustParseAddr("127.0.0.1")
	for _, c := range []struct {
		qname string
		want  []string
	}{
		{"h2.old.tenant.example", []string{"198.51.100.1"}},
		{"h7.ext.other.example", []string{"198.51.100.3"}},
		{"h0.bulk.tenant.example", []string{"SERVFAIL"}}, // left out: forwarded, to a dead upstream
	} {
		if got := a.Addrs(t, loopback, c.qname, dns.TypeA); !slices.Equal(got, c.want) {
			t.Errorf("%s: %q, want %q", c.qname, got, c.want)
		}
	}
	st, err := a.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Warnings) != 1 || !strings.Contains(st.Warnings[0], "namespace tenant:") || !strings.Contains(st.Warnings[0], "ServiceEntry bulk (11 names)") {
		t.Errorf("status warnings %q, want one naming namespace tenant and bulk", st.Warnings)
	}
	lines := strings.Split(testenv.Metrics(t, metrics.String()), "\n")
	for _, want := range []string{"ztdns_table_namespaces_over_budget 1", "ztdns_table_objects_over_budget 1"} {
		if !slices.Contains(lines, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
