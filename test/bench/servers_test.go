//go:build linux

package bench

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// readyTimeout bounds an agent's start: loading 20,000 objects takes a few
// seconds, a cluster of 450,000 objects a minute or more on a busy machine.
const readyTimeout = 10 * time.Minute

// dnsServer is a server under load: a process and where it answers DNS.
type dnsServer struct {
	proc *testenv.Agent
	addr netip.AddrPort
	// ztdns only: its control socket and /metrics address.
	ctl     *agenttest.Agent
	metrics netip.AddrPort
	// pprof is agentprof's /debug/pprof/ URL.
	pprof string
	// netns is where the server listens when not in the test's own
	// network namespace (an agent in a node).
	netns *testenv.Netns
}

func (s *dnsServer) pid() int { return s.proc.Pid() }

// startAgent starts the ztdns binary on a free loopback port with capture
// off, source (--config-dir DIR or --kubeconfig PATH) and upstream, an empty
// resolv.conf (no search domain or nameserver from the machine), its
// control socket and /metrics, and waits until it reports ready with at
// least names names in its table.
func startAgent(tb testing.TB, upstream netip.AddrPort, names int, source ...string) *dnsServer {
	tb.Helper()
	return startAgentBin(tb, ztdnsBinary(tb), upstream, names, source...)
}

// startAgentBin is startAgent with the ztdns binary bin.
func startAgentBin(tb testing.TB, bin string, upstream netip.AddrPort, names int, source ...string) *dnsServer {
	tb.Helper()
	dir := tb.TempDir()
	resolv, socket := filepath.Join(dir, "resolv.conf"), filepath.Join(dir, "ztdns.sock")
	if err := os.WriteFile(resolv, nil, 0o644); err != nil {
		tb.Fatal(err)
	}
	addr, metrics := testenv.FreePort(tb), testenv.FreePort(tb)
	args := append([]string{"agent", "--capture=false", "--listen", addr.String(), "--upstream", upstream.String(),
		"--resolv-conf", resolv, "--socket", socket, "--metrics", metrics.String(), "--log-level", "warn",
		"--pod-qps", "0"}, source...) // --pod-qps 0: dnsperf is one source at full speed
	s := &dnsServer{
		proc:    testenv.StartLocal(tb, bin, args...),
		addr:    addr,
		ctl:     &agenttest.Agent{Addr: addr, Socket: socket},
		metrics: metrics,
	}
	s.waitLoaded(tb, names)
	return s
}

// waitLoaded waits until the agent is ready with at least names names.
func (s *dnsServer) waitLoaded(tb testing.TB, names int) {
	tb.Helper()
	deadline := time.Now().Add(readyTimeout)
	for {
		st, err := s.ctl.Status()
		if err == nil && st.Ready && st.Names >= names {
			return
		}
		if !s.proc.Running() {
			tb.Fatalf("the agent exited:\n%s", s.proc.Log())
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the agent is not ready with %d names after %v: %+v %v", names, readyTimeout, st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// heapInuse reads go_memstats_heap_inuse_bytes from the agent's /metrics.
func (s *dnsServer) heapInuse(tb testing.TB) float64 {
	tb.Helper()
	return s.metric(tb, "go_memstats_heap_inuse_bytes")
}

// metric reads one unlabelled value from the agent's /metrics.
func (s *dnsServer) metric(tb testing.TB, name string) float64 {
	tb.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			var d net.Dialer
			if s.netns == nil {
				return d.DialContext(ctx, network, addr)
			}
			err = s.netns.Do(func() error { // the socket belongs to the namespace it is made in
				conn, err = d.DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://" + s.metrics.String() + "/metrics")
	if err != nil {
		tb.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				tb.Fatalf("metrics: %s: %v", sc.Text(), err)
			}
			return f
		}
	}
	tb.Fatalf("metrics: no %s on http://%s/metrics (%v)", name, s.metrics, sc.Err())
	return 0
}

// startUnbound runs unbound, one thread, on a free loopback port, serving
// only the local-data in zone and refusing to recurse anywhere, and waits
// until it answers names.
func startUnbound(tb testing.TB, zone string, names ...string) *dnsServer {
	tb.Helper()
	s, _ := startUnboundIn(tb, tb.TempDir(), unboundLocal(zone, ""), names...)
	return s
}

// unboundLocal is the configuration, after startUnboundIn's, of an unbound
// that answers only from the local-data in zone and never recurses
// anywhere, with its remote-control on the socket control ("": none).
func unboundLocal(zone, control string) string {
	remote := "  control-enable: no\n"
	if control != "" {
		remote = fmt.Sprintf("  control-enable: yes\n  control-interface: %q\n  control-use-cert: no\n", control)
	}
	return fmt.Sprintf(`  # Answer only from local data; never recurse anywhere.
  local-zone: "." static
  include: %q
remote-control:
%s`, zone, remote)
}

// startUnboundIn runs unbound in dir, one thread, on a free loopback port,
// with the server options every benchmark's unbound has followed by more
// (server options of its own, then its other sections), and waits until
// it answers names. conf is its configuration file.
func startUnboundIn(tb testing.TB, dir, more string, names ...string) (s *dnsServer, conf string) {
	tb.Helper()
	bin := testenv.LookPath(tb, "unbound")
	addr := testenv.FreePort(tb)
	conf = filepath.Join(dir, "unbound.conf")
	err := os.WriteFile(conf, fmt.Appendf(nil, `server:
  interface: %s
  port: %d
  num-threads: 1
  do-ip6: no
  username: ""
  chroot: ""
  directory: %q
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  do-daemonize: no
%s`, addr.Addr(), addr.Port(), dir, more), 0o644)
	if err != nil {
		tb.Fatal(err)
	}
	s = &dnsServer{proc: testenv.StartLocal(tb, bin, "-d", "-c", conf), addr: addr}
	waitAnswers(tb, s, names...)
	return s, conf
}

// startUpstream runs a test DNS server on loopback that answers NXDOMAIN to
// everything: the upstream of agents whose table answers every name the
// benchmark asks (a miss must not wait for a timeout).
func startUpstream(tb testing.TB) netip.AddrPort {
	tb.Helper()
	return dnstest.Start(tb, "127.0.0.1:0", dnstest.Zone{}).Addr
}

// lookup asks addr for name's records of type qtype over UDP and returns the
// addresses in the answer, sorted.
func lookup(ctx context.Context, addr netip.AddrPort, name string, qtype uint16) ([]netip.Addr, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Timeout: 2 * time.Second}
	resp, _, err := c.ExchangeContext(ctx, m, addr.String())
	if err != nil {
		return nil, err
	}
	if resp.Rcode != dns.RcodeSuccess {
		return nil, fmt.Errorf("%s %s: %s", name, dns.TypeToString[qtype], dns.RcodeToString[resp.Rcode])
	}
	var out []netip.Addr
	for _, rr := range resp.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			a, _ := netip.AddrFromSlice(rr.A.To4())
			out = append(out, a)
		case *dns.AAAA:
			a, _ := netip.AddrFromSlice(rr.AAAA)
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// waitAnswers waits until s answers each name with an address.
func waitAnswers(tb testing.TB, s *dnsServer, names ...string) {
	tb.Helper()
	deadline := time.Now().Add(time.Minute)
	for _, n := range names {
		for {
			addrs, err := lookup(tb.Context(), s.addr, n, dns.TypeA)
			if err == nil && len(addrs) > 0 {
				break
			}
			if !s.proc.Running() {
				tb.Fatalf("%s exited:\n%s", s.proc.Bin, s.proc.Log())
			}
			if time.Now().After(deadline) {
				tb.Fatalf("%s on %s does not answer %s: %v %v", s.proc.Bin, s.addr, n, addrs, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// sameAnswers checks that a and b give the same addresses for every
// stride-th name, A and AAAA: the servers compared must do the same work.
func sameAnswers(tb testing.TB, a, b *dnsServer, names []string, stride int) {
	tb.Helper()
	n := 0
	for i := 0; i < len(names); i += stride {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
			x, errA := lookup(tb.Context(), a.addr, names[i], qt)
			y, errB := lookup(tb.Context(), b.addr, names[i], qt)
			if errA != nil || errB != nil || !slices.Equal(x, y) || (qt == dns.TypeA && len(x) == 0) {
				tb.Fatalf("%s %s: %s answers %v (%v), %s answers %v (%v)", names[i], dns.TypeToString[qt],
					filepath.Base(a.proc.Bin), x, errA, filepath.Base(b.proc.Bin), y, errB)
			}
			n++
		}
	}
	tb.Logf("%d sampled questions: the same answers from both servers", n)
}
