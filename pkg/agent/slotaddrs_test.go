//go:build linux

package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// TestCaptureRefusesSlotAddressesTheNodeUses: with capture, the first IPv4
// and IPv6 --listen addresses and the two after each go on ztdns0, which
// makes them local to the node. An address of the node's own networks there
// (its $(HOST_IP), which the chart's README suggests without capture and
// `helm upgrade --reuse-values` keeps when capture is turned on) took the
// routes to the two addresses after it, other nodes' or pods', and so did
// one another interface carries already. The agent now refuses both at
// start, before it touches any interface: no ztdns0, the node's routes as
// they were.
func TestCaptureRefusesSlotAddressesTheNodeUses(t *testing.T) {
	testenv.RequireRoot(t)
	tests := []struct {
		name string
		// listen is the --listen address, given the pod's veth on the node:
		// GW4 and GW6 stand for its addresses there (the pod's gateways,
		// 10.253.N.1 and 2001:db8:N::1), POD4 and POD6 for the pod's.
		listen string
		// nodeAddr is put on the pod's veth on the node first, when set.
		nodeAddr string
		want     string // in the start's error
		// routed must still be routed out of the veth, not delivered
		// locally, after the failed start.
		routed string
	}{
		{
			name:   "the node's own IPv4 address, as $(HOST_IP)",
			listen: "GW4:53",
			want:   "resolver address GW4 (slot 0, from the --listen address GW4) is neither IPv4 link-local (169.254.0.0/16) nor IPv6 ULA (fd00::/8)",
			routed: "POD4",
		},
		{
			name:   "the node's own IPv6 address",
			listen: "[GW6]:53",
			want:   "resolver address GW6 (slot 0, from the --listen address GW6) is neither IPv4 link-local",
			routed: "POD6",
		},
		{
			name:   "an IPv4 link-local base whose slots run past 169.254.255.255",
			listen: "169.254.255.254:53",
			want:   "resolver address 169.255.0.0 (slot 2, from the --listen address 169.254.255.254)",
		},
		{
			name:     "a link-local slot address another interface carries",
			listen:   "169.254.20.53:53",
			nodeAddr: "169.254.20.54/32",
			want:     "resolver addresses the node uses already (169.254.20.54 is on interface veth1)",
		},
		{
			name:     "a ULA slot address another interface carries",
			listen:   "[fd00:7a74:646e::53]:53",
			nodeAddr: "fd00:7a74:646e::55/128",
			want:     "resolver addresses the node uses already (fd00:7a74:646e::55 is on interface veth1)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node := testenv.NewNode(t)
			pod := node.AddPod(t, testenv.PodConfig{})
			addrs := strings.NewReplacer("GW4", pod.Gateway4().String(), "GW6", pod.Gateway6().String(),
				"POD4", pod.IPv4.String(), "POD6", pod.IPv6.String())
			tt.listen, tt.want, tt.routed = addrs.Replace(tt.listen), addrs.Replace(tt.want), addrs.Replace(tt.routed)
			if tt.nodeAddr != "" {
				node.AddAddr(t, tt.nodeAddr, pod.HostVeth)
			}
			dir, socket, _, up := handoffSetup(t)
			cfg := Config{
				Source:    configdir.New(dir),
				Listen:    []netip.AddrPort{netip.MustParseAddrPort(tt.listen)},
				Upstreams: []netip.AddrPort{up},
				Socket:    socket,
				Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
				Capture:   &CaptureConfig{BPFFS: filepath.Join(testenv.NewBPFFS(t), "ztdns"), Cgroup: testenv.NewCgroup(t).Path},
			}
			// A real cgroup and bpffs: were the address let through, the
			// agent would start, and the wait below would see its ztdns0.
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- node.Do(func() error { return Run(ctx, cfg) }) }()
			t.Cleanup(func() {
				cancel()
				<-done
			})

			var err error
			ended, made := false, false
			testenv.Eventually(t, 30*time.Second, "the agent's start failed or made its interface", func() bool {
				select {
				case err = <-done:
					done <- err // for the cleanup
					ended = true
				default:
					made = hasLink(t, node, redirect.DefaultInterface)
				}
				return ended || made
			})
			if made {
				t.Fatalf("the agent started and made %s with %s's slot addresses on it", redirect.DefaultInterface, tt.listen)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("the start returned %v, want an error with %q", err, tt.want)
			}
			if hasLink(t, node, redirect.DefaultInterface) {
				t.Errorf("%s exists after the refused start", redirect.DefaultInterface)
			}
			if tt.routed != "" {
				_ = node.Do(func() error {
					routes, rerr := netlink.RouteGet(netip.MustParseAddr(tt.routed).AsSlice())
					if rerr != nil || len(routes) == 0 || routes[0].LinkIndex == 0 {
						t.Errorf("route to %s: %+v, %v", tt.routed, routes, rerr)
						return nil
					}
					if l, lerr := netlink.LinkByIndex(routes[0].LinkIndex); lerr != nil || l.Attrs().Name != pod.HostVeth {
						t.Errorf("the node routes %s through %+v (%v), want %s", tt.routed, l, lerr, pod.HostVeth)
					}
					return nil
				})
			}
		})
	}
}

// hasLink reports whether the node has an interface called name.
func hasLink(t *testing.T, node *testenv.Node, name string) bool {
	t.Helper()
	found := false
	if err := node.Do(func() error {
		_, err := netlink.LinkByName(name)
		found = err == nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return found
}
