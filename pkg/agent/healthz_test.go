//go:build linux

package agent_test

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// TestHealthzAsksTheResolver: /healthz, the chart's liveness probe, is
// 200 when the resolver answers on its address over UDP and TCP, even with
// an upstream that answers nothing: one that takes the queries (over UDP
// and TCP) and never replies, with a forward timeout well past the probe's,
// so a probe that waited on it would fail.
func TestHealthzAsksTheResolver(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ns.yaml"), []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	metrics := testenv.FreePort(t)
	silent, ln := testenv.ListenPair(t)
	defer silent.Close()
	defer ln.Close()
	agenttest.Start(t, agent.Config{Source: configdir.New(dir), MetricsAddr: metrics.String(),
		Upstreams: []netip.AddrPort{silent.LocalAddr().(*net.UDPAddr).AddrPort()}, ForwardTimeout: time.Minute})
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + metrics.String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "ok" {
		t.Errorf("/healthz = %s %q, want 200 ok", resp.Status, body)
	}
}
