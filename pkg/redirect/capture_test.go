//go:build linux

package redirect

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// TestRealClientsResolveThroughRedirect runs the stub resolvers pods really
// use inside a marked pod whose nameservers exist nowhere: each must get the
// test server's answer, the server must see the query arrive on the slot
// address of the nameserver the client addressed, and the slot must have
// learned that nameserver (what the resolver forwards a miss to).
func TestRealClientsResolveThroughRedirect(t *testing.T) {
	t.Parallel()
	e := newCaptureEnv(t, envOptions{})
	musl := testenv.BuildMuslGetaddrinfo(t)

	dig := func(args ...string) testenv.Client {
		return testenv.CommandClient("dig", append([]string{"+short", "+time=3", "+tries=1"}, args...)...)
	}

	tests := []struct {
		name        string
		nameservers []string // resolv.conf of the pod
		client      testenv.Client
		wantOut     []netip.Addr // answers the client must print
		wantNet     string       // transport every query must use
		wantServers []string     // nameservers the queries were meant for, each at least once
		wantRestore bool         // the client reads the reply's source: restored > 0
	}{{
		name:        "glibc getent hosts",
		nameservers: []string{nowhere4},
		client:      testenv.CommandClient("getent", "hosts"),
		wantOut:     []netip.Addr{marker6},
		wantNet:     "udp",
		wantServers: []string{nowhere4 + ":53"},
		wantRestore: true,
	}, {
		name:        "glibc getent ahosts",
		nameservers: []string{nowhere4},
		client:      testenv.CommandClient("getent", "ahosts"),
		wantOut:     []netip.Addr{marker4, marker6},
		wantNet:     "udp",
		wantServers: []string{nowhere4 + ":53"},
		wantRestore: true,
	}, {
		// musl sends to both nameservers in parallel from one unconnected
		// socket and takes the first reply whose source it sent to.
		name:        "musl getaddrinfo two IPv4 nameservers",
		nameservers: []string{nowhere4, nowhere4b},
		client:      testenv.CommandClient(musl),
		wantOut:     []netip.Addr{marker4, marker6},
		wantNet:     "udp",
		wantServers: []string{nowhere4 + ":53", nowhere4b + ":53"},
		wantRestore: true,
	}, {
		// With an IPv6 nameserver musl uses one AF_INET6 socket and sends
		// to the IPv4 one as ::ffff:203.0.113.53.
		name:        "musl getaddrinfo IPv6 and v4-mapped nameservers",
		nameservers: []string{nowhere6, nowhere4},
		client:      testenv.CommandClient(musl),
		wantOut:     []netip.Addr{marker4, marker6},
		wantNet:     "udp",
		wantServers: []string{"[" + nowhere6 + "]:53", nowhere4 + ":53"},
		wantRestore: true,
	}, {
		name:        "glibc getent ahosts IPv6-only resolv.conf",
		nameservers: []string{nowhere6},
		client:      testenv.CommandClient("getent", "ahosts"),
		wantOut:     []netip.Addr{marker4, marker6},
		wantNet:     "udp",
		wantServers: []string{"[" + nowhere6 + "]:53"},
		wantRestore: true,
	}, {
		// glibc keeps a v4-mapped nameserver as IPv6 and asks it from an
		// AF_INET6 socket.
		name:        "glibc getent ahosts v4-mapped nameserver",
		nameservers: []string{"::ffff:" + nowhere4},
		client:      testenv.CommandClient("getent", "ahosts"),
		wantOut:     []netip.Addr{marker4, marker6},
		wantNet:     "udp",
		wantServers: []string{nowhere4 + ":53"},
		wantRestore: true,
	}, {
		// TCP (use-vc) on that AF_INET6 socket: dig skips mapped
		// nameservers.
		name:        "glibc getent ahosts TCP v4-mapped nameserver",
		nameservers: []string{"::ffff:" + nowhere4},
		client:      testenv.CommandClient("env", "RES_OPTIONS=use-vc", "getent", "ahosts"),
		wantOut:     []netip.Addr{marker4, marker6},
		wantNet:     "tcp",
		wantServers: []string{nowhere4 + ":53"},
	}, {
		name:        "Go resolver PreferGo IPv6-only resolv.conf",
		nameservers: []string{nowhere6},
		client:      testenv.GoClient,
		wantOut:     []netip.Addr{marker4, marker6},
		wantNet:     "udp",
		wantServers: []string{"[" + nowhere6 + "]:53"},
	}, {
		name:        "Go resolver PreferGo v4-mapped nameserver",
		nameservers: []string{"::ffff:" + nowhere4},
		client:      testenv.GoClient,
		wantOut:     []netip.Addr{marker4, marker6},
		wantNet:     "udp",
		wantServers: []string{nowhere4 + ":53"},
	}, {
		name:        "Go resolver PreferGo",
		nameservers: []string{nowhere4},
		client:      testenv.GoClient,
		wantOut:     []netip.Addr{marker4, marker6},
		wantNet:     "udp",
		wantServers: []string{nowhere4 + ":53"},
	}, {
		name:        "dig UDP",
		nameservers: []string{nowhere4},
		client:      dig(),
		wantOut:     []netip.Addr{marker4},
		wantNet:     "udp",
		wantServers: []string{nowhere4 + ":53"},
		wantRestore: true,
	}, {
		name:        "dig TCP",
		nameservers: []string{nowhere4},
		client:      dig("+tcp"),
		wantOut:     []netip.Addr{marker4},
		wantNet:     "tcp",
		wantServers: []string{nowhere4 + ":53"},
	}, {
		name:        "dig @IPv6 nameserver",
		nameservers: []string{nowhere4},
		client:      dig("@"+nowhere6, "AAAA"),
		wantOut:     []netip.Addr{marker6},
		wantNet:     "udp",
		wantServers: []string{"[" + nowhere6 + "]:53"},
		wantRestore: true,
	}, {
		// The resolver's address on port 53 is a nameserver like any
		// other: redirected to a slot endpoint, reply restored.
		name:        "dig @the resolver's address, port 53",
		nameservers: []string{nowhere4},
		client:      dig("@" + DefaultResolver4()[1].Addr().String()),
		wantOut:     []netip.Addr{marker4},
		wantNet:     "udp",
		wantServers: []string{DefaultResolver4()[1].Addr().String() + ":53"},
		wantRestore: true,
	}, {
		name:        "dig TCP @IPv6 nameserver",
		nameservers: []string{nowhere4},
		client:      dig("+tcp", "@"+nowhere6, "AAAA"),
		wantOut:     []netip.Addr{marker6},
		wantNet:     "tcp",
		wantServers: []string{"[" + nowhere6 + "]:53"},
	}}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod, cookie := e.markedPod(t, 0, tt.nameservers...)
			name := uniqueName("client")

			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			out, err := tt.client(ctx, pod, e.cg, name).CombinedOutput()
			if err != nil {
				t.Fatalf("client failed: %v\n%s", err, out)
			}
			got := testenv.ParseAddrs(string(out))
			for _, want := range tt.wantOut {
				if !slices.Contains(got, want) {
					t.Errorf("client printed %q, want it to contain %s", out, want)
				}
			}

			// A client that asks several nameservers at once (musl) exits
			// with the first answer, maybe before the resolver has taken
			// the other queries off its socket: wait for them a little.
			meantFor := func(q dnstest.Query) string {
				slot := e.slotOf(q.Local)
				if slot < 0 {
					return ""
				}
				ns, _ := e.r.Nameserver(cookie, slot)
				return ns.String()
			}
			queries := e.dns.ReceivedFor(name)
			for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
				if !slices.ContainsFunc(tt.wantServers, func(want string) bool {
					return !slices.ContainsFunc(queries, func(q dnstest.Query) bool { return meantFor(q) == want })
				}) {
					break
				}
				time.Sleep(10 * time.Millisecond)
				queries = e.dns.ReceivedFor(name)
			}
			if len(queries) == 0 {
				t.Fatalf("the resolver saw no query for %s", name)
			}
			seen := map[string]bool{}
			for _, q := range queries {
				if q.Remote.Addr() != pod.IPv4 && q.Remote.Addr() != pod.IPv6 {
					t.Errorf("query %+v is not from the pod (%s, %s)", q, pod.IPv4, pod.IPv6)
				}
				if q.Net != tt.wantNet {
					t.Errorf("query %+v arrived over %s, want %s", q, q.Net, tt.wantNet)
				}
				slot := e.slotOf(q.Local)
				if slot < 0 {
					t.Fatalf("query %+v arrived on %s, not a resolver address", q, q.Local)
				}
				ns, ok := e.r.Nameserver(cookie, slot)
				if !ok {
					t.Fatalf("query arrived on slot %d (%s), but the slot learned no nameserver", slot, q.Local)
				}
				if ns.Addr().Is4() != q.Local.Addr().Is4() {
					t.Errorf("slot %d holds %s, but the query arrived on %s: families differ", slot, ns, q.Local)
				}
				seen[ns.String()] = true
			}
			for _, want := range tt.wantServers {
				if !seen[want] {
					t.Errorf("queries were meant for %v, want %s among them", keys(seen), want)
				}
			}
			for ns := range seen {
				if !slices.Contains(tt.wantServers, ns) {
					t.Errorf("a query was meant for %s, want only %v", ns, tt.wantServers)
				}
			}

			c := e.podCounters(t, cookie)
			if c.Redirected == 0 {
				t.Errorf("pod counters %+v: nothing redirected", c)
			}
			if tt.wantRestore && c.Restored == 0 {
				t.Errorf("pod counters %+v: no reply restored", c)
			}
		})
	}
}

// TestOthersAreLeftAlone checks that only sockets of marked pods in the
// attached cgroup, on port 53, to a nameserver, are redirected.
func TestOthersAreLeftAlone(t *testing.T) {
	t.Parallel()
	e := newCaptureEnv(t, envOptions{})

	tests := []struct {
		name string
		// run returns the dig output and error for a query of name.
		run        func(t *testing.T, name string) (string, error)
		wantAnswer bool // the query is answered (by the resolver, asked directly)
	}{{
		name: "unmarked pod",
		run: func(t *testing.T, name string) (string, error) {
			p := e.pod(t, nowhere4)
			return dig(t, &p.Netns, e.cg, name)
		},
	}, {
		name: "node namespace",
		run: func(t *testing.T, name string) (string, error) {
			return dig(t, &e.node.Netns, e.cg, "@"+nowhere4, name)
		},
	}, {
		name: "paused pod",
		run: func(t *testing.T, name string) (string, error) {
			p, _ := e.markedPod(t, PodPaused, nowhere4)
			return dig(t, &p.Netns, e.cg, name)
		},
	}, {
		name: "marked pod outside the cgroup",
		run: func(t *testing.T, name string) (string, error) {
			p, _ := e.markedPod(t, 0, nowhere4)
			return dig(t, &p.Netns, nil, name)
		},
	}, {
		name: "marked pod on another port",
		run: func(t *testing.T, name string) (string, error) {
			p, _ := e.markedPod(t, 0, nowhere4)
			return dig(t, &p.Netns, e.cg, "-p", "5353", name)
		},
	}, {
		// The pod learned 2 nameservers, so slot 1 is in use; a query sent
		// straight to slot 1's resolver endpoint must neither be
		// redirected nor have its reply's source rewritten (dig drops a
		// reply from an address it did not ask).
		name: "marked pod asking a resolver endpoint directly",
		run: func(t *testing.T, name string) (string, error) {
			p, cookie := e.markedPod(t, 0, nowhere4)
			for _, ns := range []string{nowhere4, nowhere4b} {
				if out, err := dig(t, &p.Netns, e.cg, "@"+ns, uniqueName("learn")); err != nil {
					t.Fatalf("dig @%s: %v\n%s", ns, err, out)
				}
			}
			if ns, ok := e.r.Nameserver(cookie, 1); !ok || ns.String() != nowhere4b+":53" {
				t.Fatalf("slot 1 holds %s, %v; want %s:53", ns, ok, nowhere4b)
			}
			before := e.podCounters(t, cookie)
			res := e.cfg.Resolver4[1]
			out, err := dig(t, &p.Netns, e.cg, "@"+res.Addr().String(), "-p", strconv.Itoa(int(res.Port())), name)
			if after := e.podCounters(t, cookie); after != before {
				t.Errorf("pod counters changed from %+v to %+v", before, after)
			}
			return out, err
		},
		wantAnswer: true,
	}}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := uniqueName("alone")
			before := e.counters(t).Redirected
			out, err := tt.run(t, name)
			queries := e.dns.ReceivedFor(name)

			if tt.wantAnswer {
				if err != nil || !slices.Contains(testenv.ParseAddrs(out), marker4) {
					t.Fatalf("dig: %v, printed %q; want %s", err, out, marker4)
				}
				if len(queries) != 1 || queries[0].Local != e.cfg.Resolver4[1] {
					t.Errorf("resolver saw %+v, want one query on %s", queries, e.cfg.Resolver4[1])
				}
			} else {
				if err == nil {
					t.Errorf("dig succeeded (%q), want it to fail: the nameserver exists nowhere", out)
				}
				if len(queries) != 0 {
					t.Errorf("the resolver saw %+v, want nothing", queries)
				}
				if after := e.counters(t).Redirected; after != before {
					t.Errorf("redirected counter went from %d to %d, want unchanged", before, after)
				}
			}
		})
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// What a pod's own DNS server, on its loopback, answers: an answer with
// these came from inside the pod, not through the redirect. Its link
// neighbour answers the others.
var (
	podLocal4  = netip.MustParseAddr("198.51.100.127")
	podLocal6  = netip.MustParseAddr("2001:db8:7f::1")
	neighbour4 = netip.MustParseAddr("198.51.100.254")
	neighbour6 = netip.MustParseAddr("2001:db8:fe80::1")
)

// TestPodLocalNameserverIsLeftAlone runs a DNS server on a marked pod's own
// loopback (a local cache, a DNS sidecar) and checks that real clients
// asking it (127.0.0.0/8, ::1, 0.0.0.0, ::, IPv4-mapped) get its answer:
// the query is neither redirected nor learned into a slot (the agent, in
// the node's network namespace, would forward it to the node's loopback),
// nor is the reply's source rewritten. istio-cni's in-pod rules leave such
// queries alone too. So with a nameserver on the pod's link, fe80::1%eth0
// (dnsPolicy: Default on a node whose resolv.conf names one): the agent
// could not reach it, a slot holding no scope id, and musl would drop a
// reply restored without one. A query to the pod's ordinary nameserver, or
// to an IPv4 link-local one (NodeLocal DNSCache's 169.254.20.10, on the
// node), from the same pod, is still captured.
func TestPodLocalNameserverIsLeftAlone(t *testing.T) {
	t.Parallel()
	e := newCaptureEnv(t, envOptions{})
	musl := testenv.BuildMuslGetaddrinfo(t)

	// A pod with the local server and the ordinary nameserver nowhere4.
	pod, cookie := e.markedPod(t, 0, nowhere4)
	// Pods whose resolv.conf names their own loopback, for the stub
	// resolvers that read it.
	localPod, localCookie := e.markedPod(t, 0, "127.0.0.1")
	local6Pod, local6Cookie := e.markedPod(t, 0, "::1", "127.0.0.1")
	// A pod whose nameserver is its link neighbour: the node's end of its
	// veth, on fe80::1.
	linkPod, linkCookie := e.markedPod(t, 0, "fe80::1%eth0")
	if out, err := exec.Command("ip", "-n", e.node.Name, "addr", "add", "fe80::1/64", "dev", linkPod.HostVeth, "nodad").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v\n%s", err, out)
	}
	neighbour := e.node.StartDNSServer(t, []netip.AddrPort{netip.MustParseAddrPort("[fe80::1%" + linkPod.HostVeth + "]:53")},
		dnstest.Marker(neighbour4, neighbour6))

	have6 := true
	var servers []*dnstest.Server
	for _, p := range []*testenv.Pod{pod, localPod, local6Pod} {
		addrs := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:53"), netip.MustParseAddrPort("127.0.0.53:53")}
		if hasIPv6Loopback(t, p) {
			addrs = append(addrs, netip.MustParseAddrPort("[::1]:53"))
		} else {
			have6 = false
		}
		servers = append(servers, p.StartDNSServer(t, addrs, dnstest.Marker(podLocal4, podLocal6)))
	}

	dig := func(args ...string) testenv.Client {
		return testenv.CommandClient("dig", append([]string{"+short", "+time=3", "+tries=1"}, args...)...)
	}
	tests := []struct {
		name    string
		pod     *testenv.Pod
		local   *dnstest.Server
		ipv6    bool // needs ::1 in the pod
		client  testenv.Client
		wantOut []netip.Addr
		wantNet string
		// Addresses of the pod's server that must each see the query.
		wantLocal    []netip.AddrPort
		sortConnects bool // the client connects to its answers on port 53
	}{
		{name: "dig @127.0.0.1", client: dig("@127.0.0.1"), wantOut: []netip.Addr{podLocal4}, wantNet: "udp"},
		{name: "dig TCP @127.0.0.1", client: dig("+tcp", "@127.0.0.1"), wantOut: []netip.Addr{podLocal4}, wantNet: "tcp"},
		{name: "dig @127.0.0.53", client: dig("@127.0.0.53"), wantOut: []netip.Addr{podLocal4}, wantNet: "udp"},
		{name: "dig @0.0.0.0", client: dig("@0.0.0.0"), wantOut: []netip.Addr{podLocal4}, wantNet: "udp"},
		{name: "dig TCP @0.0.0.0", client: dig("+tcp", "@0.0.0.0"), wantOut: []netip.Addr{podLocal4}, wantNet: "tcp"},
		{name: "dig @::1", ipv6: true, client: dig("@::1", "AAAA"), wantOut: []netip.Addr{podLocal6}, wantNet: "udp"},
		{name: "dig TCP @::1", ipv6: true, client: dig("+tcp", "@::1", "AAAA"), wantOut: []netip.Addr{podLocal6}, wantNet: "tcp"},
		{name: "dig @::", ipv6: true, client: dig("@::", "AAAA"), wantOut: []netip.Addr{podLocal6}, wantNet: "udp"},
		{name: "glibc getent ahosts, nameserver 127.0.0.1", pod: localPod, client: testenv.CommandClient("getent", "ahosts"),
			wantOut: []netip.Addr{podLocal4, podLocal6}, wantNet: "udp"},
		{name: "musl getaddrinfo, nameserver 127.0.0.1", pod: localPod, client: testenv.CommandClient(musl),
			wantOut: []netip.Addr{podLocal4, podLocal6}, wantNet: "udp"},
		// With an IPv6 nameserver musl sends from one AF_INET6 socket, to
		// 127.0.0.1 as ::ffff:127.0.0.1: both must reach the pod's server.
		{name: "musl getaddrinfo, nameservers ::1 and v4-mapped 127.0.0.1", pod: local6Pod, ipv6: true, client: testenv.CommandClient(musl),
			wantOut: []netip.Addr{podLocal4, podLocal6}, wantNet: "udp",
			wantLocal: []netip.AddrPort{netip.MustParseAddrPort("[::1]:53"), netip.MustParseAddrPort("127.0.0.1:53")}},
		// Go sorts its answers (RFC 6724) by connecting a UDP socket to
		// each on port 53: those connects are not local and are
		// redirected (nothing is sent), so only the query is checked.
		{name: "Go resolver, nameserver 127.0.0.1", pod: localPod, client: testenv.GoClient,
			wantOut: []netip.Addr{podLocal4, podLocal6}, wantNet: "udp", sortConnects: true},
		{name: "dig @fe80::1%eth0", pod: linkPod, client: dig("@fe80::1%eth0", "AAAA"), wantOut: []netip.Addr{neighbour6}, wantNet: "udp"},
		{name: "dig TCP @fe80::1%eth0", pod: linkPod, client: dig("+tcp", "@fe80::1%eth0", "AAAA"), wantOut: []netip.Addr{neighbour6}, wantNet: "tcp"},
		{name: "glibc getent ahosts, nameserver fe80::1%eth0", pod: linkPod, client: testenv.CommandClient("getent", "ahosts"),
			wantOut: []netip.Addr{neighbour4, neighbour6}, wantNet: "udp"},
		// musl accepts a reply only from the whole sockaddr_in6 it sent
		// to, scope id included.
		{name: "musl getaddrinfo, nameserver fe80::1%eth0", pod: linkPod, client: testenv.CommandClient(musl),
			wantOut: []netip.Addr{neighbour4, neighbour6}, wantNet: "udp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.ipv6 && !have6 {
				testenv.Unavailable(t, "no ::1 in the pod's namespace")
			}
			p, c, local := pod, cookie, servers[0]
			// Whether a query the server saw came from the pod itself.
			fromPod := func(a netip.Addr) bool { return a.IsLoopback() }
			switch tt.pod {
			case localPod:
				p, c, local = localPod, localCookie, servers[1]
			case local6Pod:
				p, c, local = local6Pod, local6Cookie, servers[2]
			case linkPod:
				p, c, local = linkPod, linkCookie, neighbour
				fromPod = func(a netip.Addr) bool {
					return a.WithZone("") == linkPod.IPv6 || a.IsLinkLocalUnicast() && a.Zone() == linkPod.HostVeth
				}
			}
			before, beforePod := e.counters(t), e.podCounters(t, c)
			name := uniqueName("local")

			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			out, err := tt.client(ctx, p, e.cg, name).CombinedOutput()
			if err != nil {
				t.Fatalf("client failed: %v\n%s", err, out)
			}
			got := testenv.ParseAddrs(string(out))
			for _, want := range tt.wantOut {
				if !slices.Contains(got, want) {
					t.Errorf("client printed %q, want it to contain %s (the pod's own server or link neighbour)", out, want)
				}
			}
			if slices.Contains(got, marker4) || slices.Contains(got, marker6) {
				t.Errorf("client printed %q: an answer of the node's resolver", out)
			}

			if qs := e.dns.ReceivedFor(name); len(qs) != 0 {
				t.Errorf("the node's resolver saw %+v, want nothing", qs)
			}
			qs := local.ReceivedFor(name)
			if len(qs) == 0 {
				t.Errorf("the pod's own server or link neighbour saw no query for %s", name)
			}
			// musl exits with the first answer, maybe before the server
			// has taken the other queries off its sockets.
			for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline) && !receivedOnAll(qs, tt.wantLocal); {
				time.Sleep(10 * time.Millisecond)
				qs = local.ReceivedFor(name)
			}
			if !receivedOnAll(qs, tt.wantLocal) {
				t.Errorf("the pod's own server saw %+v, want queries on each of %v", qs, tt.wantLocal)
			}
			for _, q := range qs {
				if !fromPod(q.Remote.Addr()) || q.Net != tt.wantNet {
					t.Errorf("the pod's own server or link neighbour saw %+v, want it from the pod over %s", q, tt.wantNet)
				}
			}

			for slot := range Slots {
				if ns, ok := e.r.Nameserver(c, slot); ok && PodLocal(ns.Addr()) {
					t.Errorf("slot %d learned %s, want no local address in any slot", slot, ns)
				}
			}
			after, afterPod := e.counters(t), e.podCounters(t, c)
			if tt.sortConnects {
				before.Redirected, before.Restored, beforePod = after.Redirected, after.Restored, afterPod
			}
			if after.Redirected != before.Redirected || after.Restored != before.Restored || afterPod != beforePod {
				t.Errorf("counters went from %+v to %+v (pod: %+v to %+v), want redirected and restored unchanged",
					before, after, beforePod, afterPod)
			}
			if after.SkippedLocal == before.SkippedLocal {
				t.Errorf("skipped_local stayed %d, want it to count the query", after.SkippedLocal)
			}
		})
	}

	// The same pod's queries to its ordinary nameserver are still captured,
	// over both transports, and so are those to an IPv4 link-local one: on
	// a node, 169.254.0.0/16 is NodeLocal DNSCache's, not the pod's link.
	for _, ns := range []string{nowhere4, "169.254.20.10"} {
		for _, args := range [][]string{nil, {"+tcp"}} {
			t.Run("dig "+strings.Join(append(args, "@"+ns), " ")+", still captured", func(t *testing.T) {
				name := uniqueName("captured")
				out, err := dig(append(args, "@"+ns)...)(t.Context(), pod, e.cg, name).CombinedOutput()
				if err != nil || !slices.Contains(testenv.ParseAddrs(string(out)), marker4) {
					t.Fatalf("dig: %v, printed %q; want %s from the node's resolver", err, out, marker4)
				}
				if qs := servers[0].ReceivedFor(name); len(qs) != 0 {
					t.Errorf("the pod's own server saw %+v, want nothing", qs)
				}
				qs := e.dns.ReceivedFor(name)
				if len(qs) != 1 || e.slotOf(qs[0].Local) < 0 {
					t.Fatalf("the node's resolver saw %+v, want one query on a slot address", qs)
				}
				slot := e.slotOf(qs[0].Local)
				if held, ok := e.r.Nameserver(cookie, slot); !ok || held.String() != ns+":53" {
					t.Errorf("slot %d, where the query arrived, holds %s, %v; want %s:53", slot, held, ok, ns)
				}
			})
		}
	}
}

// TestPodLocalMatchesThePrograms keeps PodLocal, which the agent and the
// capture list go by, in step with the programs' is_local: a marked pod
// sends a query with sendto() to each edge of each pod-local prefix and to
// the addresses just outside, IPv4 ones also IPv4-mapped from an AF_INET6
// socket, and so to multicast groups and the limited broadcast. The
// programs leave it alone (skipped_local) exactly when PodLocal says so,
// and otherwise send it to the node's resolver. Nothing leaves the
// machine either way: the pod's routes lead only to the node namespace,
// which has none off it.
func TestPodLocalMatchesThePrograms(t *testing.T) {
	t.Parallel()
	e := newCaptureEnv(t, envOptions{})
	pod, cookie := e.markedPod(t, 0)
	h := testenv.StartHelper(t, t.Context(), pod, e.cg, "ready", helperEnv+"="+helperSendTo)
	for _, tt := range []struct {
		addr  string
		local bool
	}{
		{"126.255.255.255", false},
		{"127.0.0.0", true},
		{"127.0.0.1", true},
		{"127.255.255.255", true},
		{"128.0.0.0", false},
		{"0.0.0.0", true},
		{"0.0.0.1", false},
		{"::", true},
		{"::1", true},
		{"::2", false},
		{"::7f00:1", false}, // IPv4-compatible ::127.0.0.1, no loopback
		{"fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false},
		{"fe80::%eth0", true},
		{"febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff%eth0", true},
		{"fec0::", false},
		// The addresses of many hosts: a query to them stays on the
		// pod's link without ztdns, and must not leave from the node.
		{"223.255.255.255", false},
		{"224.0.0.0", true},
		{"224.0.0.1", true},
		{"239.255.255.255", true},
		{"240.0.0.0", false},
		{"255.255.255.254", false},
		{"255.255.255.255", true},
		{"feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false},
		{"ff02::1%eth0", true},
		{"ff0e::1", true},
		{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true},
	} {
		a := netip.MustParseAddr(tt.addr)
		dsts := []netip.Addr{a}
		if a.Is4() {
			dsts = append(dsts, netip.AddrFrom16(a.As16()))
		}
		for _, dst := range dsts {
			if got := PodLocal(dst); got != tt.local {
				t.Errorf("PodLocal(%s) = %v, want %v", dst, got, tt.local)
			}
			// Each destination takes a slot of its own, and the pod has
			// only Slots: idle, the pod's slots may be given to the next.
			e.idleSlots(t, cookie)
			name := uniqueName("edge")
			before := e.counters(t)
			sent := h.Do(t, dst.String()+" "+name)
			after := e.counters(t)
			skipped := after.SkippedLocal - before.SkippedLocal
			redirected := after.Redirected - before.Redirected
			if tt.local {
				// Delivered in the pod, or dropped on its link; the send
				// may fail after the programs ran (127.255.255.255 is
				// loopback's broadcast).
				if skipped != 1 || redirected != 0 {
					t.Errorf("a query to %s (%s) counted %d skipped_local, %d redirected; want 1, 0 (is_local)", dst, sent, skipped, redirected)
				}
				continue
			}
			if sent != "sent" || skipped != 0 || redirected != 1 {
				t.Errorf("a query to %s (%s) counted %d skipped_local, %d redirected; want sent, 0, 1 (not is_local)", dst, sent, skipped, redirected)
				continue
			}
			testenv.Eventually(t, 10*time.Second, "the node's resolver sees the query to "+dst.String(), func() bool {
				return len(e.dns.ReceivedFor(name)) == 1
			})
		}
	}
}

// receivedOnAll reports whether some query in qs arrived on each address
// of want.
func receivedOnAll(qs []dnstest.Query, want []netip.AddrPort) bool {
	for _, w := range want {
		if !slices.ContainsFunc(qs, func(q dnstest.Query) bool { return q.Local == w }) {
			return false
		}
	}
	return true
}

// hasIPv6Loopback reports whether ::1 is on the pod's loopback (IPv6 may
// be off in network namespaces on this machine).
func hasIPv6Loopback(tb testing.TB, p *testenv.Pod) bool {
	tb.Helper()
	var found bool
	if err := p.Do(func() error {
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			return err
		}
		addrs, err := lo.Addrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(net.IPv6loopback) {
				found = true
			}
		}
		return nil
	}); err != nil {
		tb.Fatalf("addresses of lo in %s: %v", p.Name, err)
	}
	return found
}
