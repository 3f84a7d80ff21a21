//go:build linux

package redirect

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// Nameservers of TestCaptureNameservers that are not on its list: real
// servers on the node, answering direct4/direct6 themselves. Each is next
// to a listed address, so a mask one bit too short would take it in.
var (
	unlisted4 = netip.MustParseAddr("203.0.113.54")  // between 203.0.113.53/32 and 203.0.113.56/29
	unlisted6 = netip.MustParseAddr("2001:db8::153") // nowhere6 is in 2001:db8::/120
)

// TestCaptureNameservers: with Config.CaptureNameservers set, a marked
// pod's query to a listed nameserver is redirected to the resolver, while
// one to any other nameserver is left alone: it reaches that nameserver
// from the pod's own address, is answered by it, takes no slot, and counts
// as skipped_not_listed. With the list empty, both are redirected. Every
// way a stub resolver sends is covered: connected UDP (dig, and a socket
// connected and written to), unconnected sendto (musl), TCP, IPv6, and an
// IPv4 nameserver addressed v4-mapped from an AF_INET6 socket.
func TestCaptureNameservers(t *testing.T) {
	t.Parallel()
	musl := testenv.BuildMuslGetaddrinfo(t)
	// nowhere4 matches only the last entry: the programs must look past a
	// prefix that just misses it and one of the other family. The
	// IPv4-mapped prefix is given as on the command line and matches IPv4
	// destinations (stored as 198.51.100.48/28).
	listed := []netip.Prefix{
		netip.MustParsePrefix("203.0.113.56/29"),
		netip.MustParsePrefix("2001:db8::/120"),
		netip.MustParsePrefix("::ffff:198.51.100.48/124"),
		netip.MustParsePrefix(nowhere4 + "/32"),
	}

	type target struct {
		v4, v6 netip.Addr
	}
	listedTarget := target{netip.MustParseAddr(nowhere4), netip.MustParseAddr(nowhere6)}
	// In the upper halves of the /29, the /120 and the /28 (the /124): a
	// mask one bit too long would leave them out.
	inPrefixTarget := target{netip.MustParseAddr("203.0.113.61"), netip.MustParseAddr("2001:db8::ab")}
	inMappedTarget := target{netip.MustParseAddr("198.51.100.60"), netip.MustParseAddr(nowhere6)}
	unlistedTarget := target{unlisted4, unlisted6}

	dig := func(args ...string) testenv.Client {
		return testenv.CommandClient("dig", append([]string{"+short", "+time=3", "+tries=1"}, args...)...)
	}
	clients := []struct {
		name string
		// nameservers of the pod's resolv.conf, for the clients that read it
		nameservers func(target) []string
		// run sends an A or AAAA query for name to tgt and returns what the
		// client printed.
		run func(t *testing.T, e *captureEnv, p *testenv.Pod, tgt target, name string) (string, error)
		// the address family of the answer the client prints
		v6 bool
		// addresses a query must reach (at least one each)
		servers func(target) []netip.Addr
	}{{
		name: "dig UDP, connected",
		run: func(t *testing.T, e *captureEnv, p *testenv.Pod, tgt target, name string) (string, error) {
			return run(t, e, p, dig("@"+tgt.v4.String()), name)
		},
		servers: func(tgt target) []netip.Addr { return []netip.Addr{tgt.v4} },
	}, {
		name: "dig TCP",
		run: func(t *testing.T, e *captureEnv, p *testenv.Pod, tgt target, name string) (string, error) {
			return run(t, e, p, dig("+tcp", "@"+tgt.v4.String()), name)
		},
		servers: func(tgt target) []netip.Addr { return []netip.Addr{tgt.v4} },
	}, {
		name: "dig UDP @IPv6",
		run: func(t *testing.T, e *captureEnv, p *testenv.Pod, tgt target, name string) (string, error) {
			return run(t, e, p, dig("@"+tgt.v6.String(), "AAAA"), name)
		},
		v6:      true,
		servers: func(tgt target) []netip.Addr { return []netip.Addr{tgt.v6} },
	}, {
		name: "dig TCP @IPv6",
		run: func(t *testing.T, e *captureEnv, p *testenv.Pod, tgt target, name string) (string, error) {
			return run(t, e, p, dig("+tcp", "@"+tgt.v6.String(), "AAAA"), name)
		},
		v6:      true,
		servers: func(tgt target) []netip.Addr { return []netip.Addr{tgt.v6} },
	}, {
		name:        "musl, unconnected sendto",
		nameservers: func(tgt target) []string { return []string{tgt.v4.String()} },
		run: func(t *testing.T, e *captureEnv, p *testenv.Pod, tgt target, name string) (string, error) {
			return run(t, e, p, testenv.CommandClient(musl), name)
		},
		servers: func(tgt target) []netip.Addr { return []netip.Addr{tgt.v4} },
	}, {
		// One AF_INET6 socket; the IPv4 nameserver as ::ffff:a.b.c.d.
		name:        "musl, unconnected sendto to IPv6 and v4-mapped",
		nameservers: func(tgt target) []string { return []string{tgt.v6.String(), tgt.v4.String()} },
		run: func(t *testing.T, e *captureEnv, p *testenv.Pod, tgt target, name string) (string, error) {
			return run(t, e, p, testenv.CommandClient(musl), name)
		},
		servers: func(tgt target) []netip.Addr { return []netip.Addr{tgt.v6, tgt.v4} },
	}, {
		name: "AF_INET6 socket connected to ::ffff:a.b.c.d, write",
		run: func(t *testing.T, e *captureEnv, p *testenv.Pod, tgt target, name string) (string, error) {
			return runConnected(t, e, p, "inet6", netip.AddrPortFrom(netip.AddrFrom16(tgt.v4.As16()), 53), name)
		},
		servers: func(tgt target) []netip.Addr { return []netip.Addr{tgt.v4} },
	}, {
		name: "AF_INET socket connected, sendto the peer",
		run: func(t *testing.T, e *captureEnv, p *testenv.Pod, tgt target, name string) (string, error) {
			return runConnectedSend(t, e, p, "inet", netip.AddrPortFrom(tgt.v4, 53), "sendto", name)
		},
		servers: func(tgt target) []netip.Addr { return []netip.Addr{tgt.v4} },
	}}

	for _, list := range []struct {
		name        string
		captureOnly []netip.Prefix
	}{{"listed only", listed}, {"list empty", nil}} {
		t.Run(list.name, func(t *testing.T) {
			t.Parallel()
			e := newCaptureEnv(t, envOptions{captureOnly: list.captureOnly})
			direct := map[netip.Addr]*dnstest.Server{}
			for _, a := range []netip.Addr{unlisted4, unlisted6} {
				direct[a] = e.node.ServeNameserver(t, a, dnstest.Marker(direct4, direct6))
			}

			for _, tt := range clients {
				for _, tgt := range []struct {
					name string
					target
					redirected bool
				}{
					{"listed", listedTarget, true},
					{"inside a listed prefix", inPrefixTarget, true},
					{"inside a listed IPv4-mapped prefix", inMappedTarget, true},
					{"unlisted", unlistedTarget, list.captureOnly == nil},
				} {
					t.Run(tt.name+", "+tgt.name, func(t *testing.T) {
						var nameservers []string
						if tt.nameservers != nil {
							nameservers = tt.nameservers(tgt.target)
						}
						p, cookie := e.markedPod(t, 0, nameservers...)
						name := uniqueName("capturens")
						before := e.counters(t)

						out, err := tt.run(t, e, p, tgt.target, name)
						want, wrong := marker4, direct4
						if tt.v6 {
							want, wrong = marker6, direct6
						}
						who := "the resolver"
						if !tgt.redirected {
							want, wrong = wrong, want
							who = "the nameserver itself"
						}
						got := testenv.ParseAddrs(out)
						if err != nil || !slices.Contains(got, want) || slices.Contains(got, wrong) {
							t.Fatalf("client: %v, printed %q; want %s from %s", err, out, want, who)
						}

						servers := tt.servers(tgt.target)
						after := e.counters(t)
						if tgt.redirected {
							if qs := e.dns.ReceivedFor(name); len(qs) == 0 {
								t.Errorf("the resolver saw no query for %s", name)
							}
							for _, s := range direct {
								if qs := s.ReceivedFor(name); len(qs) != 0 {
									t.Errorf("nameserver %v saw %+v, want nothing", s, qs)
								}
							}
							if c := e.podCounters(t, cookie); c.Redirected == 0 {
								t.Errorf("pod counters %+v: nothing redirected", c)
							}
							// Each destination was learned into a slot for
							// the resolver to forward to. (musl may exit
							// on its first answer, before the other send.)
							learned := learnedAddrs(e, cookie)
							if !slices.ContainsFunc(servers, func(a netip.Addr) bool { return slices.Contains(learned, a) }) {
								t.Errorf("slots hold %v, want %v among them", learned, servers)
							}
							if after.SkippedNotListed != before.SkippedNotListed {
								t.Errorf("skipped_not_listed went from %d to %d, want unchanged", before.SkippedNotListed, after.SkippedNotListed)
							}
							return
						}

						// Left alone: the nameserver answered the pod itself.
						for _, a := range servers {
							qs := direct[a].ReceivedFor(name)
							// musl exits with the first answer, maybe before
							// the other server took its query.
							for deadline := time.Now().Add(2 * time.Second); len(qs) == 0 && time.Now().Before(deadline); {
								time.Sleep(10 * time.Millisecond)
								qs = direct[a].ReceivedFor(name)
							}
							if len(qs) == 0 {
								t.Errorf("nameserver %s saw no query for %s", a, name)
							}
							for _, q := range qs {
								if q.Remote.Addr() != p.IPv4 && q.Remote.Addr() != p.IPv6 {
									t.Errorf("nameserver %s saw %+v, want it from the pod (%s, %s)", a, q, p.IPv4, p.IPv6)
								}
							}
						}
						if qs := e.dns.ReceivedFor(name); len(qs) != 0 {
							t.Errorf("the resolver saw %+v, want nothing", qs)
						}
						if c := e.podCounters(t, cookie); c.Redirected != 0 || c.Restored != 0 {
							t.Errorf("pod counters %+v, want nothing redirected or restored", c)
						}
						if learned := learnedAddrs(e, cookie); len(learned) != 0 {
							t.Errorf("slots hold %v, want none taken", learned)
						}
						if after.SkippedNotListed == before.SkippedNotListed {
							t.Errorf("skipped_not_listed stayed %d, want it to count the query", after.SkippedNotListed)
						}
					})
				}
			}
		})
	}
}

// TestUnlistedSlotsForgottenAtLoad: the programs check
// Config.CaptureNameservers only when they learn a slot, and slots outlive
// a Load. A nameserver learned while every destination was captured is
// forgotten when Load sets a list it is not on, so that the resolver, which
// forwards a query that arrives on a slot's address to what the slot holds,
// finds nothing there; a listed one is kept.
func TestUnlistedSlotsForgottenAtLoad(t *testing.T) {
	t.Parallel()
	e := newCaptureEnv(t, envOptions{manualBeat: true})
	p, cookie := e.markedPod(t, 0)
	stop := sync.OnceFunc(beatUntilStopped(t, e.r, 100*time.Millisecond))
	t.Cleanup(stop) // before Close, should the test stop early
	for _, ns := range []struct{ addr, qtype string }{{nowhere4, "A"}, {unlisted4.String(), "A"}, {unlisted6.String(), "AAAA"}} {
		if out, err := dig(t, &p.Netns, e.cg, "@"+ns.addr, ns.qtype, uniqueName("learn")); err != nil || len(testenv.ParseAddrs(out)) == 0 {
			t.Fatalf("dig @%s: %v, printed %q; want the resolver's answer", ns.addr, err, out)
		}
	}
	all := []netip.Addr{netip.MustParseAddr(nowhere4), unlisted4, unlisted6}
	if got := learnedAddrs(e, cookie); !sameAddrs(got, all) {
		t.Fatalf("slots hold %v before the list, want %v", got, all)
	}

	stop()
	if err := e.r.Close(); err != nil {
		t.Fatal(err)
	}
	cfg := e.cfg
	cfg.CaptureNameservers = []netip.Prefix{netip.MustParsePrefix(nowhere4 + "/32"), netip.MustParsePrefix("2001:db8::/120")}
	e.r = mustLoad(t, cfg)
	if got, want := learnedAddrs(e, cookie), []netip.Addr{netip.MustParseAddr(nowhere4)}; !slices.Equal(got, want) {
		t.Errorf("slots hold %v after Load with %v, want %v", got, cfg.CaptureNameservers, want)
	}
}

func sameAddrs(a, b []netip.Addr) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.SortFunc(a, netip.Addr.Compare)
	slices.SortFunc(b, netip.Addr.Compare)
	return slices.Equal(a, b)
}

// run runs client in the pod and the test cgroup.
func run(t *testing.T, e *captureEnv, p *testenv.Pod, client testenv.Client, name string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	out, err := client(ctx, p, e.cg, name).CombinedOutput()
	return string(out), err
}

// runConnected queries through a UDP socket of family connected to peer
// (while the pod is marked) and written to.
func runConnected(t *testing.T, e *captureEnv, p *testenv.Pod, family string, peer netip.AddrPort, name string) (string, error) {
	t.Helper()
	return runConnectedSend(t, e, p, family, peer, "write", name)
}

func runConnectedSend(t *testing.T, e *captureEnv, p *testenv.Pod, family string, peer netip.AddrPort, send, name string) (string, error) {
	t.Helper()
	h := testenv.StartHelper(t, t.Context(), p, e.cg, "connected",
		helperEnv+"="+helperConnected, helperFamily+"="+family, helperAddr+"="+peer.String(),
		helperSend+"="+send, helperName+"="+name)
	return h.Finish("go")
}

// learnedAddrs lists the addresses the pod's slots hold (IPv4 unmapped).
func learnedAddrs(e *captureEnv, cookie uint64) []netip.Addr {
	var out []netip.Addr
	for slot := range Slots {
		if ns, ok := e.r.Nameserver(cookie, slot); ok {
			out = append(out, ns.Addr().Unmap())
		}
	}
	return out
}
