//go:build linux

package agent_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// TestConfigDirProblemsOnMetrics: a standalone agent (--config-dir) with
// one broken manifest beside a good one says so on /metrics, for an alert
// to see. (Before: /metrics had no series for the directory's problems.)
func TestConfigDirProblemsOnMetrics(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"good.yaml":   "apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n",
		"broken.yaml": "kind: [",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	metrics := testenv.FreePort(t)
	agenttest.Start(t, agent.Config{Source: configdir.New(dir), MetricsAddr: metrics.String(),
		Upstreams: []netip.AddrPort{testenv.DeadAddr(t)}})
	body := testenv.Metrics(t, metrics.String())
	lines := strings.Split(body, "\n")
	for _, want := range []string{
		"ztdns_configdir_problems 1",
		`ztdns_configdir_files{state="served"} 1`,
		`ztdns_configdir_files{state="refused"} 1`,
		`ztdns_configdir_files{state="blocked"} 0`,
		`ztdns_configdir_files{state="skipped"} 0`,
		`ztdns_configdir_files{state="unsettled"} 0`,
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if !strings.Contains(body, "\nztdns_configdir_scan_seconds ") {
		t.Error("/metrics lacks ztdns_configdir_scan_seconds")
	}
}
