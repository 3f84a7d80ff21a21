//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
)

// TestClientsResolveThroughCapture runs, in marked pods whose nameservers
// exist nowhere, each stub resolver pods really use, and checks that every
// one resolves the examples' ServiceEntry hosts to what ztdns serves. An
// answer proves the whole path: the programs redirected the query to the
// agent, the agent answered from its table, and the programs restored the
// reply's source so the client accepted it.
func TestClientsResolveThroughCapture(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	testenv.LookPath(t, "getent")
	musl := testenv.BuildMuslGetaddrinfo(t)
	c.startReadyAgent(t)
	hosts := c.serviceEntryHosts(t)

	clients := realClients(musl)
	for _, cl := range clients {
		t.Run(cl.name, func(t *testing.T) {
			t.Parallel()
			p := c.markedPod(t, podName(cl.name), cl.nameservers...)
			for _, h := range hosts {
				t.Run(h.name, func(t *testing.T) {
					c.checkPrints(t, cl, p, h.name, cl.prints(h.v4, h.v6))
				})
			}
		})
	}
}

// TestUnmarkedPodIsNotRedirected checks that a pod ztdns was not told to
// capture keeps its DNS to itself: with the same resolv.conf as a marked
// pod that resolves, its queries go to a nameserver that exists nowhere and
// fail; with a real nameserver, that nameserver answers, asked by the pod
// itself.
func TestUnmarkedPodIsNotRedirected(t *testing.T) {
	t.Parallel()
	testenv.LookPath(t, "getent")
	c := newCluster(t)
	own := c.serve(t, podNameserver1, ownMarker)
	c.startReadyAgent(t)

	marked := c.markedPod(t, "marked", nowhere4)
	if got, err := c.dig(t, marked, addressHost); err != nil || !slices.Equal(got, []netip.Addr{addressVIP}) {
		t.Fatalf("marked pod: dig %s = %v, %v; want %s (the control for what follows)", addressHost, got, err, addressVIP)
	}

	unmarked := c.node.AddPod(t, testenv.PodConfig{Nameservers: []string{nowhere4}, Options: []string{"timeout:1", "attempts:1"}})
	for _, tc := range []struct {
		name string
		cmd  []string
	}{
		{name: "dig UDP", cmd: []string{"dig", "+short", "+time=1", "+tries=1", addressHost}},
		{name: "dig TCP", cmd: []string{"dig", "+short", "+time=1", "+tries=1", "+tcp", addressHost}},
		{name: "dig @IPv6 nameserver", cmd: []string{"dig", "+short", "+time=1", "+tries=1", "@" + nowhere6, addressHost}},
		{name: "glibc getent hosts", cmd: []string{"getent", "hosts", addressHost}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := c.inPod(t, unmarked, 10*time.Second, tc.cmd[0], tc.cmd[1:]...)
			if err == nil && len(testenv.ParseAddrs(out)) > 0 {
				t.Errorf("%s resolved in an unmarked pod whose nameserver exists nowhere: %q", strings.Join(tc.cmd, " "), out)
			}
		})
	}

	t.Run("own nameserver answers", func(t *testing.T) {
		direct := c.pod(t, podNameserver1)
		got, err := c.dig(t, direct, addressHost)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, []netip.Addr{ownMarker}) {
			t.Errorf("dig %s = %v, want %s from the pod's own nameserver, not ztdns's %s", addressHost, got, ownMarker, addressVIP)
		}
		if askers := askersOf(own, addressHost); !slices.Contains(askers, direct.IPv4) {
			t.Errorf("the pod's nameserver was asked by %v, want the pod itself (%s)", askers, direct.IPv4)
		}
	})
}

// serviceEntryHost is a ServiceEntry host of examples/ and the addresses
// ztdns serves for it.
type serviceEntryHost struct {
	name   string
	v4, v6 netip.Addr // v6 may be invalid: no AAAA (NODATA)
}

// serviceEntryHosts returns address.internal (its spec address, IPv4 only)
// and auto.internal (its auto-allocated VIPs, one IPv4 and one IPv6 as
// istiod allocates them, read from `ztdns table` and checked against
// Istio's allocation ranges).
func (c *cluster) serviceEntryHosts(t *testing.T) []serviceEntryHost {
	t.Helper()
	var rows []struct {
		Name   string   `json:"name"`
		Type   string   `json:"type"`
		Values []string `json:"values"`
	}
	out := c.ztdns(t, "table", "--socket", c.socket, "--namespace", "default", "-o", "json")
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("ztdns table -o json: %v\n%s", err, out)
	}
	auto := serviceEntryHost{name: autoHost}
	for _, r := range rows {
		if r.Name != autoHost+"." {
			continue
		}
		if len(r.Values) != 1 {
			t.Fatalf("table row %+v: want one VIP", r)
		}
		a, err := netip.ParseAddr(r.Values[0])
		switch {
		case err != nil:
			t.Fatalf("table row %+v: %v", r, err)
		case r.Type == "A" && autoVIPs4.Contains(a) && !auto.v4.IsValid():
			auto.v4 = a
		case r.Type == "AAAA" && autoVIPs6.Contains(a) && !auto.v6.IsValid():
			auto.v6 = a
		default:
			t.Fatalf("table row %+v: not an auto-allocated VIP (%s, %s), or a second of its family", r, autoVIPs4, autoVIPs6)
		}
	}
	if !auto.v4.IsValid() || !auto.v6.IsValid() {
		t.Fatalf("ztdns table has for %s IPv4 VIP %v, IPv6 VIP %v; want one of each, in %s and %s:\n%s", autoHost, auto.v4, auto.v6, autoVIPs4, autoVIPs6, out)
	}
	return []serviceEntryHost{{name: addressHost, v4: addressVIP}, auto}
}

// podName turns a subtest name into a pod name.
func podName(s string) string {
	return strings.NewReplacer(" ", "-", "@", "at-").Replace(strings.ToLower(s))
}

// digClient is `dig +short` with one try of two seconds, and args.
func digClient(args ...string) testenv.Client {
	return testenv.CommandClient("dig", append([]string{"+short", "+time=2", "+tries=1"}, args...)...)
}

// printsFunc says what a client prints for a host with addresses v4 and v6
// (v6 may be invalid: NODATA).
type printsFunc func(v4, v6 netip.Addr) []netip.Addr

func ipv4Only(v4, _ netip.Addr) []netip.Addr { return []netip.Addr{v4} }

func both(v4, v6 netip.Addr) []netip.Addr {
	if v6.IsValid() {
		return []netip.Addr{v4, v6}
	}
	return []netip.Addr{v4}
}

// ipv6First: getent hosts asks for AAAA first and falls back to A on NODATA.
func ipv6First(v4, v6 netip.Addr) []netip.Addr {
	if v6.IsValid() {
		return []netip.Addr{v6}
	}
	return []netip.Addr{v4}
}

// clientCase is a stub resolver pods really use, run in a pod whose
// resolv.conf names nameservers.
type clientCase struct {
	name        string
	nameservers []string
	command     testenv.Client
	prints      printsFunc
}

// checkPrints runs cl in the pod for host and checks that it prints the
// addresses want, in any order.
func (c *cluster) checkPrints(t *testing.T, cl clientCase, p *testenv.Pod, host string, want []netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	out, err := cl.command(ctx, p, c.cg, host).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", cl.name, host, err, out)
	}
	got := slices.SortedFunc(slices.Values(testenv.ParseAddrs(string(out))), netip.Addr.Compare)
	if want = slices.SortedFunc(slices.Values(want), netip.Addr.Compare); !slices.Equal(got, want) {
		t.Errorf("%s %s printed %q: addresses %v, want %v", cl.name, host, out, got, want)
	}
}

// glibc's clients, without nameservers: realClients gives them some, and
// TestClientOptionsResolveThroughCapture its pods' own.
var (
	getentHosts  = clientCase{name: "glibc getent hosts", command: testenv.CommandClient("getent", "hosts"), prints: ipv6First}
	getentAhosts = clientCase{name: "glibc getent ahosts", command: testenv.CommandClient("getent", "ahosts"), prints: both}
)

// asking returns cl run in pods whose resolv.conf names nameservers.
func (cl clientCase) asking(nameservers ...string) clientCase {
	cl.nameservers = nameservers
	return cl
}

// realClients are glibc, musl (built at musl), Go and dig, over UDP and
// TCP, to IPv4 and IPv6 nameservers; the nameservers exist nowhere.
func realClients(musl string) []clientCase {
	return []clientCase{
		getentHosts.asking(nowhere4),
		getentAhosts.asking(nowhere4),
		// musl sends every query to both nameservers at once from one
		// unconnected socket and drops replies from addresses it did not
		// send to.
		{name: "musl getaddrinfo two IPv4 nameservers", nameservers: []string{nowhere4, nowhere4b}, command: testenv.CommandClient(musl), prints: both},
		// With an IPv6 nameserver musl uses one AF_INET6 socket and reaches
		// the IPv4 one as ::ffff:203.0.113.53.
		{name: "musl getaddrinfo IPv6 and v4-mapped nameservers", nameservers: []string{nowhere6, nowhere4}, command: testenv.CommandClient(musl), prints: both},
		{name: "Go resolver PreferGo", nameservers: []string{nowhere4}, command: testenv.GoClient, prints: both},
		{name: "dig UDP", nameservers: []string{nowhere4}, command: digClient(), prints: ipv4Only},
		{name: "dig TCP", nameservers: []string{nowhere4}, command: digClient("+tcp"), prints: ipv4Only},
		{name: "dig @IPv6 nameserver", nameservers: []string{nowhere4}, command: digClient("@" + nowhere6), prints: ipv4Only},
		{name: "dig TCP @IPv6 nameserver", nameservers: []string{nowhere4}, command: digClient("+tcp", "@"+nowhere6), prints: ipv4Only},
	}
}
