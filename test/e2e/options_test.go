//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// Nameservers of the resolv.conf option cases, on the node: silentNS takes
// every query and answers none; nothing listens on a pod's 127.0.0.1.
const (
	silentNS   = "198.51.100.56"
	loopbackNS = "127.0.0.1"
)

// What podNameserver1 and podNameserver2 answer, in
// TestClientOptionsResolveThroughCapture, for every name (the ServiceEntry
// hosts too: a query that reached them without ztdns gets these).
var (
	forwarded4 = netip.MustParseAddr("203.0.113.61")
	forwarded6 = netip.MustParseAddr("2001:db8:61::1")
)

// TestClientOptionsResolveThroughCapture runs glibc and musl in marked pods
// whose resolv.conf has less common options and nameserver lists, and
// checks that each prints what ztdns serves for the ServiceEntry hosts and
// what the pod's own nameserver answers for a name ztdns does not know,
// asked by the agent (the pod's query went through ztdns), and that every
// nameserver the agent forwarded the pod's queries to holds exactly one of
// its slots. podNameserver1 and podNameserver2 answer every name,
// ServiceEntry hosts included, with forwarded4 and forwarded6, so a query
// that missed the capture prints those instead of the VIPs.
func TestClientOptionsResolveThroughCapture(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	testenv.LookPath(t, "getent")
	musl := clientCase{name: "musl getaddrinfo", command: testenv.CommandClient(testenv.BuildMuslGetaddrinfo(t)), prints: both}
	for _, ns := range []string{podNameserver1, podNameserver2} {
		c.node.AddAddr(t, ns+"/32", "lo")
	}
	own := c.node.StartDNSServer(t, []netip.AddrPort{
		netip.AddrPortFrom(netip.MustParseAddr(podNameserver1), 53),
		netip.AddrPortFrom(netip.MustParseAddr(podNameserver2), 53),
	}, dnstest.Marker(forwarded4, forwarded6))
	silent := c.node.ServeNameserver(t, netip.MustParseAddr(silentNS), dnstest.Silent)
	accessLog := filepath.Join(t.TempDir(), "access.log")
	a := testenv.StartAgent(t, c.node, c.bin, append(c.agentArgs(), "--access-log", accessLog)...)
	c.waitReady(t, a)
	hosts := c.serviceEntryHosts(t)

	glibc := []clientCase{getentHosts, getentAhosts}
	ns12 := []string{podNameserver1, podNameserver2}
	for _, tc := range []optionsCase{
		{
			// A and AAAA go over one TCP connection (send_vc with two
			// queries), which the access log shows.
			name: "glibc use-vc", nameservers: ns12, options: []string{"use-vc"}, clients: glibc,
			check: func(t *testing.T, pod, name string) {
				for _, n := range []string{autoHost, name} {
					clientSockets(t, accessLog, pod, n, "tcp", true)
				}
			},
		},
		{
			// Each query starts at another nameserver; the loopback one
			// (not captured, nothing listening) refuses.
			name: "glibc rotate with a loopback nameserver", nameservers: []string{podNameserver1, loopbackNS, podNameserver2},
			options: []string{"rotate", "timeout:1", "attempts:5"}, clients: glibc,
		},
		{
			// Go's resolver connects a UDP socket, writes and reads: no
			// hook sees a send naming the nameserver or a reply read with
			// its source, so only the agent's forwarding confirms the slot
			// (checked for every case below).
			name: "Go resolver", nameservers: ns12,
			clients: []clientCase{{name: "Go resolver PreferGo", command: testenv.GoClient, prints: both}},
		},
		{
			// An OPT record (and the AD bit) on every query: the agent
			// asks the pod's nameserver with an OPT record of its own
			// for an EDNS client, and with none for another. (It sets AD
			// on every query it forwards: trust-ad leaves no trace there.)
			name: "glibc edns0 trust-ad", nameservers: ns12, options: []string{"edns0", "trust-ad"}, clients: glibc,
			check: func(t *testing.T, _, name string) {
				asked := own.ReceivedFor(name)
				if len(asked) == 0 || slices.ContainsFunc(asked, func(q dnstest.Query) bool { return !q.EDNS }) {
					t.Errorf("the pod's nameserver got %+v for %s, want queries with an OPT record only", asked, name)
				}
			},
		},
		{
			// A, then AAAA, from one socket: the access log shows one
			// client port for both.
			name: "glibc single-request", nameservers: ns12, options: []string{"single-request"}, clients: glibc,
			check: func(t *testing.T, pod, name string) { clientSockets(t, accessLog, pod, name, "udp", true) },
		},
		{
			// A, then AAAA from a new socket: the access log shows
			// another client port for each.
			name: "glibc single-request-reopen", nameservers: ns12, options: []string{"single-request-reopen"}, clients: glibc,
			check: func(t *testing.T, pod, name string) { clientSockets(t, accessLog, pod, name, "udp", false) },
		},
		{
			// No AAAA query at all (glibc 2.36): only IPv4 addresses.
			name: "glibc no-aaaa", nameservers: ns12, options: []string{"no-aaaa"}, minGlibc: 36,
			clients: []clientCase{printing(getentHosts, ipv4Only), printing(getentAhosts, ipv4Only)},
		},
		{
			// musl asks all three at once from one socket: the loopback
			// one is left alone, the same nameserver is asked twice.
			// (glibc would ask the second listing only after the first
			// failed, which it never does.)
			name: "musl loopback and the same nameserver twice", nameservers: []string{loopbackNS, podNameserver1, podNameserver1},
			clients: []clientCase{musl},
		},
		{
			// The first nameserver (through slot 0) never answers: glibc
			// asks the second (slot 1) after its timeout, musl takes the
			// second's answer.
			name: "second nameserver answers when the first is silent", nameservers: []string{silentNS, podNameserver2},
			options: []string{"timeout:1", "attempts:2"},
			clients: slices.Concat(glibc, []clientCase{musl}),
		},
		{
			// The first nameserver exists nowhere: the agent cannot
			// forward to it and answers SERVFAIL at once, not at
			// --forward-timeout, and glibc asks the second on it.
			name: "second nameserver answers when the first is absent", nameservers: []string{nowhere4, podNameserver2},
			options: []string{"timeout:1", "attempts:2"}, clients: glibc,
			check: func(t *testing.T, pod, name string) { unreachedAtOnce(t, accessLog, pod, name, nowhere4) },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.minGlibc > 0 {
				requireGlibc(t, tc.minGlibc)
			}
			name := podName(tc.name)
			p := c.node.AddPod(t, testenv.PodConfig{Nameservers: tc.nameservers, Options: tc.options})
			c.capture(t, p, name)
			fwd := name + ".forwarded.example"
			for _, cl := range tc.clients {
				for _, h := range slices.Concat(hosts, []serviceEntryHost{{name: fwd, v4: forwarded4, v6: forwarded6}}) {
					t.Run(cl.name+" "+h.name, func(t *testing.T) {
						c.checkPrints(t, cl, p, h.name, cl.prints(h.v4, h.v6))
					})
				}
			}
			askers := askersOf(own, fwd)
			if len(askers) == 0 || slices.Contains(askers, p.IPv4) || slices.Contains(askers, p.IPv6) {
				t.Errorf("the pod's nameservers were asked for %s by %v, want the agent only (the pod is %s)", fwd, askers, p.IPv4)
			}
			if askers := askersOf(silent, fwd); slices.Contains(askers, p.IPv4) || slices.Contains(askers, p.IPv6) {
				t.Errorf("%s was asked for %s by the pod itself (%v): not captured", silentNS, fwd, askers)
			} else if len(askers) == 0 && slices.Contains(tc.nameservers, silentNS) {
				t.Errorf("%s, the pod's first nameserver, was never asked for %s", silentNS, fwd)
			}
			// Each nameserver the pod's queries were forwarded to holds
			// one slot, however often resolv.conf lists it; a loopback
			// one holds none. Forwarding confirmed it: Go's sockets (a
			// connect, then write and read) confirm nothing in the
			// programs, and an unconfirmed slot may be taken after 2 s.
			reached := forwardedTo(t, accessLog, name, fwd)
			row := c.podRow(t, name)
			slots := testenv.NameserverAddrs(row)
			for _, ns := range reached {
				if n := countOf(slots, ns); n != 1 {
					t.Errorf("ztdns pods: the pod's slots hold %v, %d of them %s, which its queries were forwarded to; want one", slots, n, ns)
				}
				for _, slot := range row.Nameservers {
					if slot.Address == ns && slot.Unconfirmed {
						t.Errorf("ztdns pods: slot %d (%s) is unconfirmed, though the agent forwarded the pod's queries through it", slot.Slot, ns)
					}
				}
			}
			// Besides them, only Go's address-sorting probes (a UDP
			// connect to port 53 of each answer address, never sent on)
			// hold slots, unconfirmed.
			for _, slot := range row.Nameservers {
				if slot.Unconfirmed && !slices.Contains(reached, slot.Address) {
					continue
				}
				ns := slot.Address
				if ap, err := netip.ParseAddrPort(ns); err != nil || ap.Port() != 53 || !slices.Contains(tc.nameservers, ap.Addr().String()) ||
					ap.Addr().IsLoopback() || countOf(slots, ns) > 1 {
					t.Errorf("ztdns pods: the pod's slots hold %v, want each of its non-loopback nameservers %v at most once", slots, tc.nameservers)
					break
				}
			}
			if tc.check != nil {
				tc.check(t, name, fwd)
			}
		})
	}
}

// optionsCase is a pod's resolv.conf and the clients run in it (their own
// nameservers unused).
type optionsCase struct {
	name        string
	nameservers []string
	options     []string
	clients     []clientCase
	minGlibc    int // glibc 2.minGlibc or later, for the options
	// check, if set, runs after the clients with the pod's name and the
	// forwarded name they resolved.
	check func(t *testing.T, pod, name string)
}

// printing returns cl expected to print what prints gives.
func printing(cl clientCase, prints printsFunc) clientCase {
	cl.prints = prints
	return cl
}

// countOf returns how many of s are v.
func countOf(s []string, v string) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}

// requireGlibc stops the test unless the machine's glibc is 2.minor or
// later.
func requireGlibc(t *testing.T, minor int) {
	t.Helper()
	out, err := exec.Command("getconf", "GNU_LIBC_VERSION").Output()
	if err != nil {
		testenv.Unavailable(t, "getconf GNU_LIBC_VERSION: %v", err)
	}
	v, _ := strings.CutPrefix(strings.TrimSpace(string(out)), "glibc 2.")
	if n, err := strconv.Atoi(strings.SplitN(v, ".", 2)[0]); err != nil || n < minor {
		testenv.Unavailable(t, "needs glibc 2.%d or later, have %q", minor, strings.TrimSpace(string(out)))
	}
}

// accessLogLines waits until check accepts the access log's lines of pod
// (their key=value fields), and fails the test with check's last error if
// it never does.
func accessLogLines(t *testing.T, accessLog, pod string, check func(lines []map[string]string) error) {
	t.Helper()
	testenv.EventuallyNil(t, 5*time.Second, func() error {
		b, err := os.ReadFile(accessLog)
		if err != nil {
			return err
		}
		var lines []map[string]string
		var raw []string
		for _, l := range strings.Split(string(b), "\n") {
			if f := logfmtFields(l); f["pod"] == pod {
				lines = append(lines, f)
				raw = append(raw, l)
			}
		}
		if err := check(lines); err != nil {
			return fmt.Errorf("%w; access log lines of pod %s:\n%s", err, pod, strings.Join(raw, "\n"))
		}
		return nil
	})
}

// clientSockets checks, in the access log, that the pod asked for name
// only over proto, and, if one, A and AAAA both from one client address and
// port (glibc's getaddrinfo over one socket; with use-vc, one TCP
// connection), else A and AAAA each from another.
func clientSockets(t *testing.T, accessLog, pod, name, proto string, one bool) {
	t.Helper()
	accessLogLines(t, accessLog, pod, func(lines []map[string]string) error {
		other, a, aaaa, both := false, false, false, false
		aaaaLines := 0
		types := map[string][]string{} // client address and port → the types it asked
		for _, f := range lines {
			if f["name"] == name+"." {
				other = other || f["proto"] != proto
				types[f["client"]] = append(types[f["client"]], f["type"])
				if f["type"] == "AAAA" {
					aaaaLines++
				}
			}
		}
		for _, ts := range types {
			a, aaaa = a || slices.Contains(ts, "A"), aaaa || slices.Contains(ts, "AAAA")
			both = both || slices.Contains(ts, "A") && slices.Contains(ts, "AAAA")
		}
		switch {
		case other:
			return fmt.Errorf("want every query for %s over %s", name, proto)
		case one && !both:
			return fmt.Errorf("want A and AAAA for %s from one client port", name)
		case !one && aaaaLines < 2:
			// getent hosts asks AAAA alone, then getent ahosts A and then
			// AAAA: judge the ports once ahosts' AAAA is logged (the log
			// keeps the order), or a late one could hide a shared port.
			return fmt.Errorf("want the AAAA queries of getent hosts and ahosts for %s logged", name)
		case !one && (!a || !aaaa || both):
			return fmt.Errorf("want A and AAAA for %s, each from another client port", name)
		}
		return nil
	})
}

// unreachedAtOnce checks, in the access log, that the pod's queries for
// name forwarded to nameserver, which exists nowhere, got the agent's
// SERVFAIL with a result other than timeout: it told at once that it could
// not reach the nameserver, as it cannot tell of a silent one.
func unreachedAtOnce(t *testing.T, accessLog, pod, name, nameserver string) {
	t.Helper()
	upstream := nameserver + ":53"
	accessLogLines(t, accessLog, pod, func(lines []map[string]string) error {
		n := 0
		for _, f := range lines {
			if f["name"] != name+"." || f["upstream"] != upstream {
				continue
			}
			if f["rcode"] != "SERVFAIL" || f["result"] == "" || f["result"] == "timeout" {
				return fmt.Errorf("a query for %s forwarded to %s got rcode=%s result=%s, want SERVFAIL with a result other than timeout", name, upstream, f["rcode"], f["result"])
			}
			n++
		}
		if n == 0 {
			return fmt.Errorf("no query for %s was forwarded to %s", name, upstream)
		}
		return nil
	})
}

// forwardedTo returns the nameservers (address:port) the access log shows
// the pod's queries forwarded to, once it shows one for name.
func forwardedTo(t *testing.T, accessLog, pod, name string) []string {
	t.Helper()
	var upstreams []string
	accessLogLines(t, accessLog, pod, func(lines []map[string]string) error {
		upstreams = nil
		seen := false
		for _, f := range lines {
			if u := f["upstream"]; u != "" {
				seen = seen || f["name"] == name+"."
				if !slices.Contains(upstreams, u) {
					upstreams = append(upstreams, u)
				}
			}
		}
		if !seen {
			return fmt.Errorf("no query for %s was forwarded", name)
		}
		return nil
	})
	return upstreams
}

// logfmtFields returns the key=value fields of an access log line whose
// values have no spaces.
func logfmtFields(line string) map[string]string {
	f := map[string]string{}
	for _, w := range strings.Fields(line) {
		if k, v, ok := strings.Cut(w, "="); ok {
			f[k] = v
		}
	}
	return f
}
