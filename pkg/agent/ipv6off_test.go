//go:build linux

package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// TestDropIPv6LeavesOutEveryIPv6Address: on a node that refuses IPv6, every
// IPv6 --listen address is left out, not only the slots' (the first IPv6
// one and the two after it): another could not be bound either, and the
// agent would not start. The warning names each.
func TestDropIPv6LeavesOutEveryIPv6Address(t *testing.T) {
	listen := []netip.AddrPort{
		netip.MustParseAddrPort("169.254.20.53:53"),
		netip.MustParseAddrPort("[fd00:7a74:646e::53]:53"),
		netip.MustParseAddrPort("[fd00:7a74:646e::99]:53"),
		netip.MustParseAddrPort("198.51.100.7:53"),
		netip.MustParseAddrPort("[::ffff:198.51.100.8]:53"), // an IPv6 socket
	}
	slot4, slot6, err := redirect.ResolverSlots(listen, redirect.DefaultPort)
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{log: slog.New(slog.DiscardHandler), slot4: slot4, slot6: slot6, addrs: slices.Clone(listen)}
	for _, s := range append(slot4[:], slot6[:]...) { // as newAgent adds them
		a.addrs = append(a.addrs, s)
	}
	if err := a.dropIPv6("net.ipv6.conf.default.disable_ipv6=1"); err != nil {
		t.Fatal(err)
	}
	want := append([]netip.AddrPort{listen[0], listen[3]}, slot4[:]...)
	if !slices.Equal(a.addrs, want) {
		t.Errorf("serving on %v, want %v: IPv4 only", a.addrs, want)
	}
	if a.slot6 != [redirect.Slots]netip.AddrPort{} {
		t.Errorf("IPv6 slots %v, want none", a.slot6)
	}
	warning := a.ipv6Warning()
	for _, ap := range append([]netip.AddrPort{listen[1], listen[2], listen[4]}, slot6[:]...) {
		if !strings.Contains(warning, ap.String()) {
			t.Errorf("warning %q does not name %s", warning, ap)
		}
	}
}

// healthzFromNode asks /healthz's questions (healthProbes: every address
// the resolver serves) from the node's namespace, as /healthz does from
// the node. (The in-process agent's /healthz handler would ask from the
// test's own namespace, where those addresses are not.)
func healthzFromNode(n *captureNode, a *Agent) error {
	var errs []error
	for _, p := range a.healthProbes() {
		errs = append(errs, n.node.Do(func() error { return p.ask(context.Background()) }))
	}
	return errors.Join(errs...)
}

// TestCaptureOnANodeWithoutIPv6: on a node with IPv6 disabled by sysctl
// (hardened images: all and default), or on its loopback only
// (net.ipv6.conf.lo.disable_ipv6=1 alone, or all=1 then default=0, which
// leaves lo off and ztdns0 on), an agent given the chart's default listen
// addresses, one of each family, starts, serves on IPv4 (the listen
// address and the slot addresses the programs redirect to), /healthz,
// which asks every resolver address from the node, where each goes
// through lo, answers, and `ztdns status` says first that it left IPv6
// out and why. (Before: adding the IPv6 address to ztdns0 failed, capture
// did not start, and the agent crash-looped on every node without IPv6;
// and with lo alone off, the agent kept its IPv6 addresses without a word:
// pods were answered on them, but the node's own queries to them were
// dropped by lo, /healthz timed out on each, and the liveness probe
// restarted the agent for ever.)
func TestCaptureOnANodeWithoutIPv6(t *testing.T) {
	for _, tc := range []struct {
		name    string
		set     [][2]string // conf, value, in order
		warning string      // what the first status warning starts with
	}{
		{"all and default", [][2]string{{"all", "1"}, {"default", "1"}}, "IPv6 is off on this node (net.ipv6.conf.default.disable_ipv6=1)"},
		{"lo alone", [][2]string{{"lo", "1"}}, "IPv6 is off on this node (net.ipv6.conf.lo.disable_ipv6=1"},
		{"all then default", [][2]string{{"all", "1"}, {"default", "0"}}, "IPv6 is off on this node (net.ipv6.conf.lo.disable_ipv6=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newCaptureNode(t)
			for _, s := range tc.set {
				n.node.WriteSysctl(t, "net.ipv6.conf."+s[0]+".disable_ipv6", s[1])
			}
			dir, socket, _, up := handoffSetup(t)
			listen4, listen6 := netip.MustParseAddrPort("169.254.20.53:53"), netip.MustParseAddrPort("[fd00:7a74:646e::53]:53")
			// The interface, the programs' resolver addresses and the
			// resolver's sockets are made in the node's namespace, where
			// IPv6 is off.
			a, ta := n.start(t, configdir.New(dir), socket, []netip.AddrPort{listen4, listen6}, up)
			waitServedBy(t, socket, ta, up)

			ask := []netip.AddrPort{listen4}
			for _, s := range a.slot4 { // where the programs send captured queries
				ask = append(ask, s)
			}
			for _, addr := range ask {
				for _, network := range []string{"udp", "tcp"} {
					if err := n.node.Do(func() error { return askAddress(network, addr) }); err != nil {
						t.Errorf("%s %s: %v", network, addr, err)
					}
				}
			}
			if err := healthzFromNode(n, a); err != nil {
				t.Errorf("/healthz from the node fails: %v", err)
			}

			st, err := control.NewClient(socket, time.Second).Status(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if !st.Capture {
				t.Error("capture is off")
			}
			for _, l := range st.Listen {
				if netip.MustParseAddrPort(l).Addr().Is6() {
					t.Errorf("listening on %s: want IPv4 only, %v", l, st.Listen)
				}
			}
			if !slices.Contains(st.Listen, listen4.String()) {
				t.Errorf("listen %v lacks %s", st.Listen, listen4)
			}
			if len(st.Warnings) == 0 || !strings.Contains(st.Warnings[0], tc.warning) || !strings.Contains(st.Warnings[0], listen6.String()) {
				t.Errorf("status warnings %q: want the first to say %q and that %s was left out", st.Warnings, tc.warning, listen6)
			}
			if a.slot6 != [redirect.Slots]netip.AddrPort{} {
				t.Errorf("IPv6 slots %v: the programs would redirect IPv6 nameservers to addresses nobody serves", a.slot6)
			}
		})
	}
}
