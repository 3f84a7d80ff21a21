package conformance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// Askers: loopback addresses claimed by Pod manifests in testdata, and one
// that no pod claims.
var (
	fromDefault = netip.MustParseAddr("127.0.0.2")
	fromTeamA   = netip.MustParseAddr("127.0.0.4")
	fromTeamB   = netip.MustParseAddr("127.0.0.5")
	fromUnknown = netip.MustParseAddr("127.0.0.9")
)

// running is an agent serving a manifest directory.
type running struct {
	addr   netip.AddrPort
	dir    string
	socket string
}

type agentOpts struct {
	upstreams []netip.AddrPort
	autopath  bool
	timeout   time.Duration
}

// startAgent copies the manifest directories into a temporary one and runs a
// real agent on it, on a free loopback port, until the test ends.
func startAgent(t *testing.T, o agentOpts, manifestDirs ...string) *running {
	t.Helper()
	dir := t.TempDir()
	for _, src := range manifestDirs {
		copyDir(t, src, dir)
	}
	r := &running{addr: freePort(t), dir: dir, socket: filepath.Join(t.TempDir(), "ztdns.sock")}
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	done := make(chan error, 1)
	go func() {
		done <- agent.Run(ctx, agent.Config{
			Source:         configdir.New(dir, configdir.WithLogger(log), configdir.WithDebounce(10*time.Millisecond)),
			Listen:         []netip.AddrPort{r.addr},
			Upstreams:      o.upstreams,
			ForwardTimeout: o.timeout,
			Autopath:       o.autopath,
			Socket:         r.socket,
			Logger:         log,
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	r.waitReady(t)
	return r
}

func (r *running) waitReady(t *testing.T) {
	t.Helper()
	c := control.NewClient(r.socket, time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var st agent.Status
		err := c.Do(context.Background(), "GET", "/v1/status", nil, &st)
		if err == nil && st.Ready {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready after 10s: %v %+v", err, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// query sends one question from the given source address over proto ("udp"
// or "tcp") and returns the reply.
func (r *running) query(t *testing.T, proto string, from netip.Addr, qname string, qtype uint16, edns bool) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(qname, qtype)
	if edns {
		m.SetEdns0(1232, false)
	}
	return r.exchange(t, proto, from, m)
}

func (r *running) exchange(t *testing.T, proto string, from netip.Addr, m *dns.Msg) *dns.Msg {
	t.Helper()
	var local net.Addr = &net.UDPAddr{IP: from.AsSlice()}
	if proto == "tcp" {
		local = &net.TCPAddr{IP: from.AsSlice()}
	}
	c := &dns.Client{Net: proto, Timeout: 5 * time.Second, Dialer: &net.Dialer{LocalAddr: local, Timeout: 5 * time.Second}}
	resp, _, err := c.Exchange(m, r.addr.String())
	if err != nil {
		t.Fatalf("%s query %s %s from %s: %v", proto, m.Question[0].Name, dns.TypeToString[m.Question[0].Qtype], from, err)
	}
	return resp
}

// rrText renders records without TTL and class, sorted: "name TYPE rdata".
func rrText(rrs []dns.RR) []string {
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		h := rr.Header()
		rdata := strings.TrimPrefix(rr.String(), h.String())
		out = append(out, h.Name+" "+dns.TypeToString[h.Rrtype]+" "+rdata)
	}
	slices.Sort(out)
	return out
}

func freePort(t *testing.T) netip.AddrPort {
	t.Helper()
	for range 50 {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		ln, err := net.Listen("tcp4", addr.String())
		pc.Close()
		if err != nil {
			continue
		}
		ln.Close()
		return addr
	}
	t.Fatal("no free loopback port")
	return netip.AddrPort{}
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dst, e.Name()), b)
	}
}

// writeFile replaces a file atomically, as editors and ConfigMaps do.
func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".tmp~"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// eventually retries f until it returns nil or the deadline passes.
func eventually(t *testing.T, within time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// upstream starts the test's upstream nameserver on loopback.
func upstream(t *testing.T) *dnstest.Server {
	t.Helper()
	var big []string
	for i := range 40 {
		big = append(big, fmt.Sprintf("big.example.com. 60 IN TXT \"%s-%d\"", strings.Repeat("x", 60), i))
	}
	zone := dnstest.ZoneOf(t, append(big,
		"example.com. 120 IN A 203.0.113.10",
		"example.com. 120 IN MX 10 mail.example.com.",
		"docs.example.com. 120 IN A 203.0.113.20",
	)...)
	return dnstest.Start(t, "127.0.0.1:0", zone)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

var _ io.Writer = testWriter{}

// sendRaw writes bytes to the resolver over UDP and returns the reply, or
// nil when none arrives within wait.
func (r *running) sendRaw(t *testing.T, pkt []byte, wait time.Duration) []byte {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(r.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}
