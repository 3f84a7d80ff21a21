package conformance

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/pkg/agent"
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
	*agenttest.Agent
	addr netip.AddrPort
	dir  string
	// socket is the agent's control socket.
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
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	a := agenttest.Start(t, agent.Config{
		Source:         configdir.New(dir, configdir.WithLogger(log), configdir.WithDebounce(10*time.Millisecond)),
		Upstreams:      o.upstreams,
		ForwardTimeout: o.timeout,
		Autopath:       o.autopath,
		Logger:         log,
	})
	return &running{Agent: a, addr: a.Addr, dir: dir, socket: a.Socket}
}

// query sends one question from the given source address over proto ("udp"
// or "tcp") and returns the reply.
func (r *running) query(t *testing.T, proto string, from netip.Addr, qname string, qtype uint16, edns bool) *dns.Msg {
	t.Helper()
	return r.Query(t, proto, from, qname, qtype, edns)
}

func (r *running) exchange(t *testing.T, proto string, from netip.Addr, m *dns.Msg) *dns.Msg {
	t.Helper()
	return r.Exchange(t, proto, from, m)
}

var rrText = agenttest.RRText

func eventually(t *testing.T, within time.Duration, f func() error) {
	t.Helper()
	agenttest.Eventually(t, within, f)
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

// upstream starts the test's upstream nameserver on loopback.
func upstream(t *testing.T) *dnstest.Server {
	t.Helper()
	var records []string
	for i := range 40 {
		records = append(records, fmt.Sprintf("big.example.com. 60 IN TXT \"%s-%d\"", strings.Repeat("x", 60), i))
	}
	return startUpstream(t, append(records,
		"example.com. 120 IN A 203.0.113.10",
		"example.com. 120 IN MX 10 mail.example.com.",
		"docs.example.com. 120 IN A 203.0.113.20",
		// A ServiceEntry host's and a wildcard name's other records:
		// upstream's, not the table's.
		"address.internal. 120 IN MX 10 mail.address.internal.",
		"api.wild.example. 120 IN TXT \"v=spf1 -all\"",
	)...)
}

// startUpstream starts an upstream nameserver on loopback serving records
// (zone-file lines); other names get NXDOMAIN with an SOA.
func startUpstream(t *testing.T, records ...string) *dnstest.Server {
	t.Helper()
	return dnstest.Start(t, "127.0.0.1:0", dnstest.ZoneOf(t, records...))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

var _ io.Writer = testWriter{}

// replyWait bounds how long a test waits for a reply that must come: a
// loaded machine answers late, and the wait ends as soon as it comes.
const replyWait = 5 * time.Second

// rawConn is a UDP socket to the resolver from fromDefault.
func (r *running) rawConn(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(fromDefault, 0)), net.UDPAddrFromAddrPort(r.addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readDatagram returns the next datagram c receives within replyWait.
func readDatagram(t *testing.T, c *net.UDPConn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(replyWait))
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no reply within %v: %v", replyWait, err)
	}
	return buf[:n]
}

// sendRaw writes bytes to the resolver over UDP and returns the first
// datagram that comes back.
func (r *running) sendRaw(t *testing.T, pkt []byte) []byte {
	t.Helper()
	c := r.rawConn(t)
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
	return readDatagram(t, c)
}

// followUpID is the ID of the query requireNoReply sends after the packet.
const followUpID = 0x5eed

var followUps atomic.Int64

// requireNoReply writes bytes to the resolver over UDP, then a valid query
// on the same socket, and fails if the first datagram back is not that
// query's reply: a reply to the bytes, however late, comes before it. The
// query is for a name never asked before, so it is forwarded upstream and
// answered after anything the resolver does at once.
func (r *running) requireNoReply(t *testing.T, pkt []byte) {
	t.Helper()
	c := r.rawConn(t)
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
	q := new(dns.Msg)
	q.SetQuestion(fmt.Sprintf("follow-up-%d.example.com.", followUps.Add(1)), dns.TypeA)
	q.Id = followUpID
	wire, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(wire); err != nil {
		t.Fatal(err)
	}
	reply := readDatagram(t, c)
	m := new(dns.Msg)
	if err := m.Unpack(reply); err != nil || m.Id != followUpID || !m.Response {
		t.Fatalf("got a reply %x to a packet that deserves none (before the reply to the query after it)", reply)
	}
}
