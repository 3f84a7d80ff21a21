//go:build linux

package agent_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/resolver"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// startHealthzAgent runs an agent with limits, serving /healthz; it
// returns the registry of its metrics and /healthz's URL.
func startHealthzAgent(t *testing.T, limits quota.Limits) (*agenttest.Agent, *prometheus.Registry, string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ns.yaml"), []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	metrics := testenv.FreePort(t)
	reg := prometheus.NewRegistry()
	a := agenttest.Start(t, agent.Config{Source: configdir.New(dir), MetricsAddr: metrics.String(), Registry: reg, Limits: limits})
	return a, reg, "http://" + metrics.String() + "/healthz"
}

// getHealthz is /healthz's status and body.
func getHealthz(url string) (int, string, error) {
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(body)), nil
}

// TestHealthzWhileTheAddressIsHeld: a process on the node holds more TCP
// connections from the resolver's address than one source may have, and
// floods UDP queries from it far over its rate: every process on the node
// sends from that address to it, the liveness probe too. /healthz stays
// 200 (its queries, from a privileged port, are held to no per-source
// limit) while the flood is still limited: its datagrams dropped in the
// kernel, its connections past the bound refused. Before, the probe's TCP
// connection was reset and its UDP query dropped with the flood's, and the
// kubelet restarted the agent.
func TestHealthzWhileTheAddressIsHeld(t *testing.T) {
	testenv.RequireRoot(t) // the kernel's rate filter, as in a node's agent
	const qps = 50
	a, reg, url := startHealthzAgent(t, quota.Limits{QPS: qps, Burst: qps})
	if got := agent.MetricValue(t, reg, "ztdns_resolver_kernel_rate_limited_total", nil); got != 0 {
		t.Fatalf("ztdns_resolver_kernel_rate_limited_total = %v before the flood", got)
	}
	server := a.Addr.String()
	flooder := a.Addr.Addr() // the address itself, as a process on the node sends from

	// More connections than the source may hold, each kept open (one
	// past the bound may be reset before its dial returns).
	for range resolver.DefaultPodTCPConns + 8 {
		c, err := net.DialTCP("tcp", &net.TCPAddr{IP: flooder.AsSlice()}, net.TCPAddrFromAddrPort(a.Addr))
		if errors.Is(err, syscall.ECONNRESET) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	rejected := func() float64 {
		return agent.MetricValue(t, reg, "ztdns_resolver_tcp_rejected_total", map[string]string{"limit": "source"})
	}
	testenv.Eventually(t, 30*time.Second, "the connections past the source's bound are refused", func() bool { return rejected() >= 8 })

	// The UDP flood, about 2,000 queries a second (40 times the rate),
	// until the test ends.
	conn, err := net.DialUDP("udp", &net.UDPAddr{IP: flooder.AsSlice()}, net.UDPAddrFromAddrPort(a.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	m := new(dns.Msg)
	m.SetQuestion("flood.example.", dns.TypeA)
	q, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	stop, stopped := make(chan struct{}), make(chan struct{})
	defer func() { close(stop); <-stopped }()
	go func() {
		defer close(stopped)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for range 20 {
				conn.Write(q)
			}
		}
	}()
	drops := func() float64 { return agent.MetricValue(t, reg, "ztdns_resolver_kernel_rate_limited_total", nil) }
	testenv.Eventually(t, 30*time.Second, "the kernel drops the flood over its rate", func() bool { return drops() > 500 })

	for i := range 5 {
		status, body, err := getHealthz(url)
		if err != nil {
			t.Fatal(err)
		}
		if status != http.StatusOK {
			t.Fatalf("/healthz #%d with %s's connections held and its rate flooded = %d %q, want 200", i+1, server, status, body)
		}
	}

	// Still limited: the flood dropped on, another connection refused.
	before, beforeRejected := drops(), rejected()
	testenv.Eventually(t, 30*time.Second, "the kernel still drops the flood", func() bool { return drops() > before+100 })
	c, err := net.DialTCP("tcp", &net.TCPAddr{IP: flooder.AsSlice()}, net.TCPAddrFromAddrPort(a.Addr))
	if err == nil {
		defer c.Close()
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "one more connection from the address is refused", func() bool { return rejected() > beforeRejected })
}

// TestHealthzRequestsShareARound: many /healthz requests at once (it is
// reachable from any pod) share one round of the probe's queries, all
// answered 200; the resolver sees one round's queries, not one round a
// request. The round is held until every request has come.
func TestHealthzRequestsShareARound(t *testing.T) {
	const requests = 100
	agent.HoldHealthRounds(t, requests)
	_, reg, url := startHealthzAgent(t, quota.Limits{})
	probes := func() float64 {
		return agent.MetricValue(t, reg, "ztdns_dns_requests_total", map[string]string{"rcode": "BADVERS"})
	}
	before := probes()

	var wg sync.WaitGroup
	errs := make(chan error, requests)
	for range requests {
		wg.Go(func() {
			status, body, err := getHealthz(url)
			if err == nil && status != http.StatusOK {
				err = fmt.Errorf("%d %q", status, body)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("/healthz: %v, want 200", err)
	}
	const round = 2 // the agent's one address, over UDP and TCP
	testenv.Eventually(t, 30*time.Second, "the round's queries are counted", func() bool { return probes()-before >= round })
	if got := probes() - before; got != round {
		t.Errorf("%d concurrent /healthz sent %v queries, want one round's %d", requests, got, round)
	}
}
