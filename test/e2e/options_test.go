//go:build linux

package e2e

import (
	"context"
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
// asked by the agent (the pod's query went through ztdns). podNameserver1
// and podNameserver2 answer every name, ServiceEntry hosts included, with
// forwarded4 and forwarded6, so a query that missed the capture prints
// those instead of the VIPs.
func TestClientOptionsResolveThroughCapture(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	testenv.LookPath(t, "getent")
	musl := testenv.BuildMuslGetaddrinfo(t)
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

	getentHosts := optionsClient{"getent hosts", testenv.CommandClient("getent", "hosts"), ipv6First}
	getentAhosts := optionsClient{"getent ahosts", testenv.CommandClient("getent", "ahosts"), both}
	glibc := []optionsClient{getentHosts, getentAhosts}
	ns12 := []string{podNameserver1, podNameserver2}
	for _, tc := range []optionsCase{
		{
			// A and AAAA go over one TCP connection (send_vc with two
			// queries), which the access log shows.
			name: "glibc use-vc", nameservers: ns12, options: []string{"use-vc"}, clients: glibc,
			check: func(t *testing.T, pod, name string) {
				for _, n := range []string{autoHost, name} {
					oneTCPConnection(t, accessLog, pod, n)
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
			// An OPT record and the AD bit on every query.
			name: "glibc edns0 trust-ad", nameservers: ns12, options: []string{"edns0", "trust-ad"}, clients: glibc,
		},
		{
			// A, then AAAA, from one socket.
			name: "glibc single-request", nameservers: ns12, options: []string{"single-request"}, clients: glibc,
		},
		{
			// A, then AAAA from a new socket.
			name: "glibc single-request-reopen", nameservers: ns12, options: []string{"single-request-reopen"}, clients: glibc,
		},
		{
			// No AAAA query at all (glibc 2.36): only IPv4 addresses.
			name: "glibc no-aaaa", nameservers: ns12, options: []string{"no-aaaa"}, minGlibc: 36,
			clients: []optionsClient{
				{"getent hosts", getentHosts.command, ipv4Only},
				{"getent ahosts", getentAhosts.command, ipv4Only},
			},
		},
		{
			name: "glibc same nameserver twice", nameservers: []string{podNameserver1, podNameserver1}, clients: glibc,
		},
		{
			// musl asks all three at once from one socket: the loopback
			// one is left alone, the same nameserver is asked twice.
			name: "musl loopback and the same nameserver twice", nameservers: []string{loopbackNS, podNameserver1, podNameserver1},
			clients: []optionsClient{{"musl getaddrinfo", testenv.CommandClient(musl), both}},
		},
		{
			// The first nameserver (through slot 0) never answers: glibc
			// asks the second (slot 1) after its timeout, musl takes the
			// second's answer.
			name: "second nameserver answers when the first is silent", nameservers: []string{silentNS, podNameserver2},
			options: []string{"timeout:1", "attempts:2"},
			clients: slices.Concat(glibc, []optionsClient{{"musl getaddrinfo", testenv.CommandClient(musl), both}}),
		},
		{
			// The first nameserver exists nowhere: the agent cannot
			// forward to it, and glibc asks the second on its SERVFAIL.
			name: "second nameserver answers when the first is absent", nameservers: []string{nowhere4, podNameserver2},
			options: []string{"timeout:1", "attempts:2"}, clients: glibc,
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
						ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
						defer cancel()
						out, err := cl.command(ctx, p, c.cg, h.name).CombinedOutput()
						if err != nil {
							t.Fatalf("%v\n%s", err, out)
						}
						got, want := testenv.ParseAddrs(string(out)), cl.prints(h.v4, h.v6)
						slices.SortFunc(got, netip.Addr.Compare)
						slices.SortFunc(want, netip.Addr.Compare)
						if !slices.Equal(got, want) {
							t.Errorf("printed %q: addresses %v, want %v", out, got, want)
						}
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
			// Each nameserver the pod asked holds one slot, however often
			// resolv.conf lists it; a loopback one holds none.
			slots := testenv.NameserverAddrs(c.podRow(t, name))
			for i, ns := range slots {
				if ap, err := netip.ParseAddrPort(ns); err != nil || ap.Port() != 53 || !slices.Contains(tc.nameservers, ap.Addr().String()) ||
					ap.Addr().IsLoopback() || slices.Contains(slots[:i], ns) {
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

// optionsCase is a pod's resolv.conf and the clients run in it.
type optionsCase struct {
	name        string
	nameservers []string
	options     []string
	clients     []optionsClient
	minGlibc    int // glibc 2.minGlibc or later, for the options
	// check, if set, runs after the clients with the pod's name and the
	// forwarded name they resolved.
	check func(t *testing.T, pod, name string)
}

// optionsClient is a client and what it prints for a host.
type optionsClient struct {
	name    string
	command testenv.Client
	prints  printsFunc
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

// oneTCPConnection checks, in the access log, that the pod asked for name
// only over TCP, and A and AAAA both from one client address and port:
// glibc's use-vc getaddrinfo.
func oneTCPConnection(t *testing.T, accessLog, pod, name string) {
	t.Helper()
	testenv.EventuallyNil(t, 5*time.Second, func() error {
		b, err := os.ReadFile(accessLog)
		if err != nil {
			return err
		}
		var lines []string
		udp := false
		types := map[string][]string{} // client address and port → the types it asked
		for _, l := range strings.Split(string(b), "\n") {
			if f := logfmtFields(l); f["pod"] == pod && f["name"] == name+"." {
				lines = append(lines, l)
				udp = udp || f["proto"] != "tcp"
				types[f["client"]] = append(types[f["client"]], f["type"])
			}
		}
		for _, ts := range types {
			if !udp && slices.Contains(ts, "A") && slices.Contains(ts, "AAAA") {
				return nil
			}
		}
		return fmt.Errorf("access log lines of pod %s for %s:\n%s\nwant all over TCP, A and AAAA from one client port", pod, name, strings.Join(lines, "\n"))
	})
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
