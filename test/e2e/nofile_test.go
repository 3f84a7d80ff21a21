//go:build linux

package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// TestAgentServesOnPastItsOpenFileLimit: an agent left a few descriptors
// more than it holds once started (its open-file limit lowered with
// prlimit, as a container runtime's low nofile limit would leave it) gets
// 48 TCP connections from 4 sources, 12 each, within every bound of its
// own. It takes what its limit allows, the rest wait in the backlog, and
// meanwhile a table name is answered over UDP and a forwarded name gets
// SERVFAIL (no socket for the exchange, counted as such, not as the
// upstream's failure). Once the clients close
// their connections the agent is still running and answers table and
// forwarded names over UDP and TCP, and /metrics counts the failed
// accepts. Before, the first failed accept stopped the agent: "ztdns
// agent: tcp 127.0.0.1:…: accept … accept4: too many open files", exit
// status 1, and the node's DNS with it.
func TestAgentServesOnPastItsOpenFileLimit(t *testing.T) {
	t.Parallel()
	bin := ztdnsBinary(t)
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.Marker(netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("2001:db8::7")))
	ag := &agenttest.Agent{Addr: testenv.FreePort(t), Socket: filepath.Join(t.TempDir(), "run", "ztdns.sock")}
	metrics := testenv.FreePort(t).String()
	// Idle connections are kept for the whole test: none the agent took
	// frees its descriptor before the clients close theirs.
	proc := testenv.StartLocal(t, bin, "agent", "--capture=false", "--config-dir", "../../examples", "--listen", ag.Addr.String(),
		"--upstream", up.Addr.String(), "--socket", ag.Socket, "--metrics", metrics, "--tcp-idle-timeout=5m")
	agenttest.Eventually(t, 30*time.Second, func() error {
		if !proc.Running() {
			t.Fatalf("the agent exited: %v\n%s", proc.Wait(t, 0), proc.Log())
		}
		st, err := ag.Status()
		if err == nil && !st.Ready {
			err = fmt.Errorf("not ready: %s", st.NotReady)
		}
		return err
	})
	if got := askOver(ag, "udp", "address.internal."); got != "198.51.100.1" {
		t.Fatalf("before the limit: address.internal over UDP: %s", got)
	}

	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", proc.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	limit := uint64(len(fds) + 6)
	if err := unix.Prlimit(proc.Pid(), unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: limit, Max: limit}, nil); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
	t.Logf("the agent holds %d descriptors; its open-file limit is now %d", len(fds), limit)

	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := range 48 {
		from := netip.AddrFrom4([4]byte{127, 0, 0, byte(2 + i%4)})
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 0)), Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", ag.Addr.String())
		if err != nil {
			t.Fatalf("connection %d from %s: %v", i, from, err)
		}
		conns = append(conns, c)
	}
	const outOfDescriptors = "accept failed: out of file descriptors"
	testenv.Eventually(t, 30*time.Second, "the agent fails an accept, or exits", func() bool {
		return !proc.Running() || proc.LogContains(outOfDescriptors)
	})
	if !proc.Running() {
		t.Fatalf("the agent stopped at its open-file limit: %v\n%s", proc.Wait(t, 0), proc.Log())
	}
	// A table answer over UDP needs no descriptor.
	if got := askOver(ag, "udp", "address.internal."); got != "198.51.100.1" {
		t.Errorf("address.internal over UDP at the open-file limit: %s", got)
	}
	// No socket for the exchange: SERVFAIL at once, and the agent serves
	// on. A name of its own each time: a descriptor the agent freed since
	// (a control connection closing, say) stays free until its accept
	// loop, pausing up to a second, takes the next waiting connection into
	// it, and a forward in between gets its socket.
	tries := 0
	agenttest.Eventually(t, 30*time.Second, func() error {
		tries++
		name := fmt.Sprintf("at-the-limit-%d.example.", tries)
		if got := askOver(ag, "udp", name); got != "rcode:SERVFAIL" {
			return fmt.Errorf("%s at the open-file limit: %s, want SERVFAIL", name, got)
		}
		return nil
	})

	for _, c := range conns {
		c.Close()
	}
	// The agent frees the descriptors of the connections it took, then
	// takes and closes those that waited in the backlog.
	for _, q := range []struct{ proto, name, want string }{
		{"udp", "address.internal.", "198.51.100.1"},
		{"tcp", "address.internal.", "198.51.100.1"},
		{"udp", "after-the-limit.example.", "203.0.113.7"},
		{"tcp", "after-the-limit-tcp.example.", "203.0.113.7"},
	} {
		agenttest.Eventually(t, 30*time.Second, func() error {
			if !proc.Running() {
				t.Fatalf("the agent exited: %v\n%s", proc.Wait(t, 0), proc.Log())
			}
			if got := askOver(ag, q.proto, q.name); got != q.want {
				return fmt.Errorf("%s over %s: %s, want %s", q.name, q.proto, got, q.want)
			}
			return nil
		})
	}

	body := testenv.Metrics(t, metrics)
	if n := metricValue(body, `ztdns_accept_errors_total{listener="dns",reason="descriptors"}`); n < 1 {
		t.Errorf("ztdns_accept_errors_total{listener=\"dns\",reason=\"descriptors\"} = %v, want at least 1", n)
	}
	noSocket := fmt.Sprintf(`ztdns_forward_upstream_queries_total{result="no_socket",to=%q}`, up.Addr.String())
	if n := metricValue(body, noSocket); n < 1 {
		t.Errorf("%s = %v, want at least 1", noSocket, n)
	}
	if !proc.Running() {
		t.Fatalf("the agent exited: %v\n%s", proc.Wait(t, 0), proc.Log())
	}
}

// TestLowOpenFileLimitWarned: an agent started with an open-file limit of
// 1024 (a container runtime's default_ulimits 1024:1024: Go raises the soft
// limit to the hard one, which stays 1024) below what its bounds may take
// says so at start and in `ztdns status`, with the budget's terms, so an
// operator learns it before connections past the limit wait and forwarded
// queries get SERVFAIL. The defaults on one address: 1024 TCP connections,
// 1024 forwarding sockets, 1056 control connections (32 open, 1024
// queued), a UDP socket and a TCP listener, 128 more: 3234.
func TestLowOpenFileLimitWarned(t *testing.T) {
	t.Parallel()
	prlimit := testenv.LookPath(t, "prlimit")
	bin := ztdnsBinary(t)
	socket := filepath.Join(t.TempDir(), "run", "ztdns.sock")
	proc := testenv.StartLocal(t, prlimit, "--nofile=1024:1024", bin, "agent", "--capture=false", "--config-dir", "../../examples",
		"--listen", testenv.FreePort(t).String(), "--upstream", testenv.DeadAddr(t).String(), "--socket", socket)
	const want = "the open-file limit (RLIMIT_NOFILE) is 1024, below the 3234 descriptors the agent may hold at its bounds " +
		"(--max-tcp 1024, --max-forwarding 1024 × 1 (the upstreams one query asks at once), 1056 control connections open and queued, 2 DNS sockets, 128 more)"
	var status string
	agenttest.Eventually(t, 30*time.Second, func() error {
		if !proc.Running() {
			t.Fatalf("the agent exited: %v\n%s", proc.Wait(t, 0), proc.Log())
		}
		out, err := exec.Command(bin, "status", "--socket", socket).Output()
		status = string(out)
		return err
	})
	if !proc.LogContains(`level=WARN msg="` + want) {
		t.Errorf("the agent's log lacks the warning %q:\n%s", want, proc.Log())
	}
	if !regexp.MustCompile(`(?m)^Warnings:\s+` + regexp.QuoteMeta(want)).MatchString(status) {
		t.Errorf("ztdns status lacks the warning %q:\n%s", want, status)
	}
}

// askOver asks name's A record from ag over proto: its outcome (see
// outcome), or the error.
func askOver(ag *agenttest.Agent, proto, name string) string {
	c := &dns.Client{Net: proto, Timeout: 2 * time.Second}
	r, _, err := c.Exchange(new(dns.Msg).SetQuestion(name, dns.TypeA), ag.Addr.String())
	if err != nil {
		return err.Error()
	}
	return outcome(r)
}

// metricValue is the value of series (its name and labels as /metrics
// prints them) in body, or -1 when body has no such series.
func metricValue(body, series string) float64 {
	for line := range strings.Lines(body) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), series+" "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
}
