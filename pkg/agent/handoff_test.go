package agent

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

const manifest = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-address}
spec:
  hosts: [address.internal]
  addresses: [198.51.100.1]
`

type testAgent struct {
	cancel context.CancelFunc
	done   chan error
}

// startTestAgent runs an agent on listen that reads dir and forwards to
// upstream, waits until it is ready and stops it when the test ends. Each
// of extra adjusts its Config before it starts.
func startTestAgent(t *testing.T, dir, socket string, listen netip.AddrPort, upstream netip.AddrPort, metrics string, extra ...func(*Config)) *testAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg := Config{
		Source:      configdir.New(dir, configdir.WithLogger(log)),
		Listen:      []netip.AddrPort{listen},
		Upstreams:   []netip.AddrPort{upstream},
		Socket:      socket,
		MetricsAddr: metrics,
		Logger:      log,
		// TestRestartLosesNoQuery's load is four clients on one address
		// as fast as they can: no per-source rate limit.
		Limits: quota.Limits{QPS: -1},
	}
	for _, f := range extra {
		f(&cfg)
	}
	ta := &testAgent{cancel: cancel, done: make(chan error, 1)}
	go func() { ta.done <- Run(ctx, cfg) }()
	t.Cleanup(ta.stop)
	waitReady(t, socket)
	return ta
}

func (ta *testAgent) stop() {
	ta.cancel()
	<-ta.done
	ta.done <- nil // a second stop returns at once
}

func waitReady(t *testing.T, socket string) {
	t.Helper()
	c := control.NewClient(socket, time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := c.Status(context.Background())
		if err == nil && st.Ready {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready within 10s: %v %+v", err, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRestartLosesNoQuery replaces a running agent with a new one while a
// client keeps asking, the way a DaemonSet rolling update with maxSurge
// does: the new agent takes over the sockets, then the old one is stopped.
// Every query must be answered.
func TestRestartLosesNoQuery(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "se.yaml"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(t.TempDir(), "ztdns.sock")
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.Zone{})
	listen := testenv.FreePort(t)
	metrics := testenv.FreePort(t).String() // in a DaemonSet both pods share the node's port
	old := startTestAgent(t, dir, socket, listen, up.Addr, metrics)

	var sent, lost atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 { // four clients, each waiting for its answer before the next query
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &dns.Client{Net: "udp", Timeout: time.Second}
			m := new(dns.Msg)
			m.SetQuestion("address.internal.", dns.TypeA)
			for {
				select {
				case <-stop:
					return
				default:
				}
				sent.Add(1)
				if r, _, err := c.Exchange(m, listen.String()); err != nil || len(r.Answer) != 1 {
					lost.Add(1)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	startTestAgent(t, dir, socket, listen, up.Addr, metrics) // takes over
	time.Sleep(200 * time.Millisecond)
	old.stop()
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("restart under load: %d queries sent, %d lost", sent.Load(), lost.Load())
	if sent.Load() < 100 {
		t.Fatalf("only %d queries sent: the load loop did not run", sent.Load())
	}
	if lost.Load() != 0 {
		t.Errorf("%d of %d queries lost across the restart", lost.Load(), sent.Load())
	}
	// The control socket and the probe port belong to the new agent now.
	waitReady(t, socket)
	resp, err := http.Get("http://" + metrics + "/readyz")
	if err != nil {
		t.Fatalf("probe port after the restart: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz after the restart: %s", resp.Status)
	}
	resp, err = http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{`ztdns_resolver_queries_total{outcome="local"}`, "ztdns_table_names", "ztdns_forward_cache_hits_total", "go_goroutines"} {
		if !strings.Contains(string(body), m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
}

// TestSocketsPerAddr: the agent opens as many UDP sockets on its address as
// configured (--udp-sockets), each answered.
func TestSocketsPerAddr(t *testing.T) {
	dir, socket := t.TempDir(), filepath.Join(t.TempDir(), "ztdns.sock")
	if err := os.WriteFile(filepath.Join(dir, "se.yaml"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	listen := testenv.FreePort(t)
	startTestAgent(t, dir, socket, listen, netip.MustParseAddrPort("127.0.0.1:9"), "",
		func(c *Config) { c.SocketsPerAddr = 3 })
	// /proc/net/udp lists every socket of this network namespace; the
	// port is this test's alone.
	table, err := os.ReadFile("/proc/self/net/udp")
	if err != nil {
		t.Fatal(err)
	}
	local := fmt.Sprintf(" %08X:%04X ", binary.LittleEndian.Uint32(listen.Addr().AsSlice()), listen.Port())
	if n := strings.Count(string(table), local); n != 3 {
		t.Fatalf("%d UDP sockets on %s, want 3", n, listen)
	}
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion("address.internal.", dns.TypeA)
	for range 20 { // each from a new source port: spread over the sockets
		if r, _, err := c.Exchange(m, listen.String()); err != nil || len(r.Answer) != 1 {
			t.Fatalf("address.internal: %v %v", r, err)
		}
	}
}
