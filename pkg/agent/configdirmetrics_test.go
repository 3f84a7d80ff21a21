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
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/control"
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

// TestConfigDirGoneKeepsAnswering: a --config-dir removed under a running
// agent (a config tool's rm -rf dir && mkdir dir && cp …) leaves it
// answering from its last table, ready, saying why in `ztdns status` and
// on /metrics; once the directory is back, its new content is served and
// the report goes. (Before: the agent exited 1 with "source: reading
// config dir: open …: no such file or directory".)
func TestConfigDirGoneKeepsAnswering(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "manifests")
	service := func(ip string) string {
		return "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: " + ip + "}\n"
	}
	write := func(ip string) {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "web.yaml"), []byte(service(ip)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("10.96.0.20")
	metrics := testenv.FreePort(t)
	a := agenttest.Start(t, agent.Config{Source: configdir.New(dir), MetricsAddr: metrics.String(),
		Upstreams: []netip.AddrPort{testenv.DeadAddr(t)}})
	loopback := netip.MustParseAddr("127.0.0.1")
	const name = "web.shop.svc.cluster.local"
	if got := a.Addrs(t, loopback, name, dns.TypeA); !slices.Equal(got, []string{"10.96.0.20"}) {
		t.Fatalf("%s: %q, want 10.96.0.20", name, got)
	}

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	missing := "reading config dir: open " + dir + ": no such file or directory"
	var st control.Status
	agenttest.Eventually(t, 10*time.Second, func() (err error) {
		if st, err = a.Status(); err == nil && st.SourceFailing == "" {
			err = fmt.Errorf("status does not say the source is failing yet: %+v", st)
		}
		return err
	})
	if want := "serving the last table; the source is failing: " + missing; !st.Ready || st.SourceFailing != want {
		t.Errorf("status: ready %v, sourceFailing %q; want ready, %q", st.Ready, st.SourceFailing, want)
	}
	if want := []string{dir + ": " + missing + ": serving the manifests last read until it is back"}; !slices.Equal(st.SourceErrors, want) {
		t.Errorf("source errors %q, want %q", st.SourceErrors, want)
	}
	if lines := strings.Split(testenv.Metrics(t, metrics.String()), "\n"); !slices.Contains(lines, "ztdns_configdir_problems 1") {
		t.Error("/metrics lacks ztdns_configdir_problems 1 while the directory is gone")
	}
	if got := a.Addrs(t, loopback, name, dns.TypeA); !slices.Equal(got, []string{"10.96.0.20"}) {
		t.Errorf("%s with the directory gone: %q, want the last table's 10.96.0.20", name, got)
	}

	write("10.96.0.21")
	agenttest.Eventually(t, 10*time.Second, func() error {
		if got := a.Addrs(t, loopback, name, dns.TypeA); !slices.Equal(got, []string{"10.96.0.21"}) {
			return fmt.Errorf("%s: %q, want the new directory's 10.96.0.21", name, got)
		}
		return nil
	})
	agenttest.Eventually(t, 10*time.Second, func() (err error) {
		if st, err = a.Status(); err == nil && (st.SourceFailing != "" || len(st.SourceErrors) > 0) {
			err = fmt.Errorf("status still reports the directory: %q %q", st.SourceFailing, st.SourceErrors)
		}
		return err
	})
}

// TestConfigDirWarningsInStatusAndMetrics: a misspelt field (adresses,
// in a STATIC ServiceEntry, which then answers an allocated VIP instead of
// its address) is listed by `ztdns status` under Source warnings, at the
// field's own line, and counted by ztdns_configdir_warnings; it is no
// problem (ztdns_configdir_problems 0): the file is served. (Before: one
// log line, at the object's first line, and nothing else.)
func TestConfigDirWarningsInStatusAndMetrics(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(path, []byte(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: shop}
spec:
  hosts: [db.example]
  resolution: STATIC
  adresses: [198.51.100.13]
  ports: [{number: 5432, name: pg, protocol: TCP}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	metrics := testenv.FreePort(t)
	a := agenttest.Start(t, agent.Config{Source: configdir.New(dir), MetricsAddr: metrics.String(),
		Upstreams: []netip.AddrPort{testenv.DeadAddr(t)}})
	st, err := a.Status()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{path + `:7: serviceentry shop/db: unknown field "spec.adresses" ignored: the object is served without it`}
	if !slices.Equal(st.SourceWarnings, want) || len(st.SourceErrors) > 0 {
		t.Errorf("status: source warnings %q, errors %q; want warnings %q and no error", st.SourceWarnings, st.SourceErrors, want)
	}
	lines := strings.Split(testenv.Metrics(t, metrics.String()), "\n")
	for _, want := range []string{"ztdns_configdir_warnings 1", "ztdns_configdir_problems 0", `ztdns_configdir_files{state="served"} 1`} {
		if !slices.Contains(lines, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
