package agent

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// A learned nameserver on loopback or the unspecified address is the pod's
// own host, not the node's, and one on an IPv6 link-local address is on the
// pod's link: the resolver must never forward there, nor to itself, nor to
// a multicast group or the limited broadcast, which would carry the pod's
// query from the node onto the node's network. IPv4 link-local is the
// node's own (NodeLocal DNSCache).
func TestForwardable(t *testing.T) {
	resolvers := map[netip.Addr]bool{
		netip.MustParseAddr("169.254.20.53"):      true,
		netip.MustParseAddr("fd00:7a74:646e::53"): true,
	}
	for _, tt := range []struct {
		ns   string
		want bool
	}{
		{"10.96.0.10:53", true},
		{"[2001:db8::53]:53", true},
		{"[::ffff:10.96.0.10]:53", true},
		{"127.0.0.1:53", false},
		{"127.0.0.53:53", false},
		{"127.255.255.254:53", false},
		{"127.0.0.0:53", false},
		{"127.255.255.255:53", false},
		{"126.255.255.255:53", true},
		{"128.0.0.0:53", true},
		{"[::1]:53", false},
		{"[::2]:53", true},
		{"0.0.0.0:53", false},
		{"0.0.0.1:53", true},
		{"[::]:53", false},
		{"[::ffff:127.0.0.1]:53", false},
		{"[::ffff:0.0.0.0]:53", false},
		{"169.254.20.53:53", false},
		{"[::ffff:169.254.20.53]:53", false},
		{"[fd00:7a74:646e::53]:53", false},
		{"[fe80::1]:53", false},
		{"[fe80::1%eth0]:53", false},
		{"[febf:ffff::1]:53", false},
		{"[febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:53", false},
		{"[fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:53", true},
		{"[fec0::1]:53", true},
		{"[fec0::]:53", true},
		{"169.254.20.10:53", true},
		{"[::ffff:169.254.20.10]:53", true},
		// Many hosts: forwarded from the node, onto its network.
		{"224.0.0.1:53", false},
		{"224.0.0.0:53", false},
		{"239.255.255.255:53", false},
		{"[::ffff:224.0.0.251]:53", false},
		{"223.255.255.255:53", true},
		{"240.0.0.0:53", true},
		{"255.255.255.255:53", false},
		{"[::ffff:255.255.255.255]:53", false},
		{"255.255.255.254:53", true},
		{"[ff02::1]:53", false},
		{"[ff02::fb%eth0]:53", false},
		{"[ff05::1:3]:53", false},
		{"[feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:53", true},
	} {
		if got := forwardable(netip.MustParseAddrPort(tt.ns), nil, forwardRules{resolvers: resolvers}) == forwardOK; got != tt.want {
			t.Errorf("forwardable(%s) = %v, want %v", tt.ns, got, tt.want)
		}
	}
	if why := forwardable(netip.AddrPort{}, nil, forwardRules{resolvers: resolvers}); why == forwardOK {
		t.Error("forwardable(zero AddrPort) = ok, want refused")
	}
}

// With --capture-nameservers, a learned nameserver outside the list is not
// forwarded to either: a slot learned before the list was set must not take
// a pod past its NetworkPolicy. IPv4-mapped addresses and prefixes count as
// IPv4, as in the programs.
func TestForwardableOnlyListed(t *testing.T) {
	resolvers := map[netip.Addr]bool{netip.MustParseAddr("169.254.20.53"): true}
	listed := redirect.UnmapCaptureNameservers([]netip.Prefix{ // as Redirector.CaptureNameservers gives it
		netip.MustParsePrefix("10.96.0.10/32"),
		netip.MustParsePrefix("::ffff:198.51.100.48/124"),
		netip.MustParsePrefix("2001:db8::/120"),
		netip.MustParsePrefix("127.0.0.0/8"),
	})
	for _, tt := range []struct {
		ns   string
		want bool
	}{
		{"10.96.0.10:53", true},
		{"[::ffff:10.96.0.10]:53", true},
		{"10.96.0.11:53", false},
		{"198.51.100.60:53", true},
		{"[::ffff:198.51.100.60]:53", true},
		{"198.51.100.64:53", false},
		{"[2001:db8::ab]:53", true},
		{"[2001:db8::1:0]:53", false},
		{"203.0.113.9:53", false},
		{"127.0.0.1:53", false}, // listed, but the pod's own loopback
	} {
		if got := forwardable(netip.MustParseAddrPort(tt.ns), nil, forwardRules{resolvers: resolvers, listed: listed}) == forwardOK; got != tt.want {
			t.Errorf("forwardable(%s) with %v listed = %v, want %v", tt.ns, listed, got, tt.want)
		}
	}
}

// TestForwardableNeitherTheAgentNorANodePod: a pod's nameserver that is
// the agent itself (an extra --listen address, such as the node's
// $(HOST_IP):53 the chart suggests, or any node address or loopback
// behind 0.0.0.0:53 or [::]:53 of its family, with the listen port) is not
// forwarded to: the miss would come back in as the node's own query and
// take the node's bounds. Nor is another pod of this node, one with a
// sandbox recorded here or one the source places here, also when the
// capture list names it: forwarded from the node, the query would pass
// that pod's ingress policy and Istio's. The asking pod's own address, a
// pod of another node, and other ports of the node's addresses are
// forwarded to.
func TestForwardableNeitherTheAgentNorANodePod(t *testing.T) {
	resolvers := map[netip.Addr]bool{netip.MustParseAddr("169.254.20.53"): true}
	node := []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("10.244.1.1"), netip.MustParseAddr("2001:db8::5")}
	listen := func(addrs ...string) *ownAddrs {
		var aps []netip.AddrPort
		for _, a := range addrs {
			aps = append(aps, netip.MustParseAddrPort(a))
		}
		return newOwnAddrs(aps, func() []netip.Addr { return node })
	}
	pods := podcache.New()
	pods.SetSourcePods([]model.Pod{
		{Namespace: "a", Name: "client", NodeName: "n1", IPs: []netip.Addr{netip.MustParseAddr("10.244.1.7")}},
		{Namespace: "a", Name: "source-only", NodeName: "n1", IPs: []netip.Addr{netip.MustParseAddr("10.244.1.10")}},
		{Namespace: "a", Name: "elsewhere", NodeName: "n2", IPs: []netip.Addr{netip.MustParseAddr("10.244.2.5")}},
		{Namespace: "a", Name: "host", NodeName: "n1", HostNetwork: true, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.5")}},
	})
	pods.Attach(podcache.Attachment{ContainerID: "ctr-client", Namespace: "a", Name: "client", NetnsCookie: 7, IPs: []netip.Addr{netip.MustParseAddr("10.244.1.7")}})
	pods.Attach(podcache.Attachment{ContainerID: "ctr-dns", Namespace: "b", Name: "dns", NetnsCookie: 8, IPs: []netip.Addr{netip.MustParseAddr("10.244.1.9"), netip.MustParseAddr("fd00:10:244:1::9")}})
	client := pods.Lookup(netip.MustParseAddr("10.244.1.7"))
	hostIP := listen("169.254.20.53:53", "10.0.0.5:53")
	wildcard4 := listen("169.254.20.53:53", "0.0.0.0:53")
	wildcard6 := listen("169.254.20.53:53", "[::]:53")
	for _, tt := range []struct {
		ns     string
		own    *ownAddrs
		listed []netip.Prefix
		want   refusal
	}{
		{"10.0.0.5:53", hostIP, nil, refusedAgent},
		{"[::ffff:10.0.0.5]:53", hostIP, nil, refusedAgent},
		{"10.0.0.5:5353", hostIP, nil, forwardOK},
		{"10.244.1.1:53", hostIP, nil, forwardOK},
		{"10.0.0.5:53", wildcard4, nil, refusedAgent},
		{"10.244.1.1:53", wildcard4, nil, refusedAgent},
		{"10.0.0.6:53", wildcard4, nil, forwardOK},
		{"[2001:db8::5]:53", wildcard4, nil, forwardOK}, // 0.0.0.0 serves IPv4 alone
		{"[2001:db8::5]:53", wildcard6, nil, refusedAgent},
		{"10.0.0.5:53", wildcard6, nil, forwardOK}, // [::] serves IPv6 alone
		{"10.0.0.5:53", hostIP, []netip.Prefix{netip.MustParsePrefix("10.0.0.5/32")}, refusedAgent},
		{"10.244.1.9:53", nil, nil, refusedNodePod},
		{"[fd00:10:244:1::9]:53", nil, nil, refusedNodePod},
		{"[::ffff:10.244.1.9]:53", nil, nil, refusedNodePod},
		{"10.244.1.9:53", nil, []netip.Prefix{netip.MustParsePrefix("10.244.1.9/32")}, refusedNodePod},
		{"10.244.1.10:53", nil, nil, refusedNodePod},
		{"10.244.1.7:53", nil, nil, forwardOK}, // the pod's own server
		{"10.244.2.5:53", nil, nil, forwardOK}, // another node's pod: its ztunnel takes the query
		{"10.244.1.11:53", nil, nil, forwardOK},
	} {
		r := forwardRules{resolvers: resolvers, listed: redirect.UnmapCaptureNameservers(tt.listed), own: tt.own, pods: pods, nodeName: "n1"}
		if got := forwardable(netip.MustParseAddrPort(tt.ns), client, r); got != tt.want {
			var listening []netip.AddrPort
			if tt.own != nil {
				listening = tt.own.addrs
			}
			t.Errorf("forwardable(%s) with %v listening, %v listed: %q, want %q", tt.ns, listening, tt.listed, got, tt.want)
		}
	}
	// A new node address behind 0.0.0.0:53 is the agent's once read again.
	node = append(node, netip.MustParseAddr("10.0.0.7"))
	wildcard4.refresh()
	if got := forwardable(netip.MustParseAddrPort("10.0.0.7:53"), client, forwardRules{resolvers: resolvers, own: wildcard4}); got != refusedAgent {
		t.Errorf("forwardable(10.0.0.7:53) after the node took it, with 0.0.0.0:53 listening: %q, want %q", got, refusedAgent)
	}
}

// TestCaptureNameserversRefusedByNewAgent: a CaptureConfig.Nameservers list
// redirect.Load refuses (more than redirect.MaxCaptureNameservers prefixes,
// or one with bits set past its length) is refused when the agent is made,
// before anything is: Load saw it only after the resolver's interface had
// been made or changed.
func TestCaptureNameserversRefusedByNewAgent(t *testing.T) {
	var nine []netip.Prefix
	for i := range redirect.MaxCaptureNameservers + 1 {
		nine = append(nine, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), 32))
	}
	for _, tc := range []struct {
		what string
		ns   []netip.Prefix
		want string
	}{
		{"nine prefixes", nine, "capture nameservers: 9 prefixes, want at most 8"},
		{"a prefix not masked", []netip.Prefix{netip.MustParsePrefix("198.51.100.10/24")}, "capture nameservers: 198.51.100.10/24 has bits set past /24"},
	} {
		a, err := newAgent(Config{
			Source:  configdir.New(t.TempDir()),
			Listen:  []netip.AddrPort{netip.MustParseAddrPort("169.254.20.53:53")},
			Capture: &CaptureConfig{Nameservers: tc.ns},
		})
		if err == nil {
			a.server.Close()
			a.fwd.Close()
			t.Errorf("%s: newAgent accepted %v", tc.what, tc.ns)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: newAgent: %v, want %q", tc.what, err, tc.want)
		}
	}
}

// TestRefusedNameserverLoggedOnce: a pod's nameserver that is not
// forwarded to (the agent's own address, a pod of the node) is logged the
// first time only, not for each query, and at most maxRefusedLogged of
// them; every query is counted.
func TestRefusedNameserverLoggedOnce(t *testing.T) {
	var log bytes.Buffer
	c := &dataplane{log: slog.New(slog.NewTextHandler(&log, nil))}
	p := &podcache.Pod{Namespace: "a", Name: "asker"}
	before := testutil.ToFloat64(metricNameserverFallbacks.WithLabelValues("agent"))
	self := netip.MustParseAddrPort("10.0.0.5:53")
	for range 3 {
		c.refused(self, p, refusedAgent)
	}
	c.refused(netip.MustParseAddrPort("127.0.0.1:53"), p, refusedLocal) // never redirected: not logged
	if n := strings.Count(log.String(), "nameserver=10.0.0.5:53"); n != 1 {
		t.Errorf("3 refusals of 10.0.0.5:53 logged %d times, want once:\n%s", n, log.String())
	}
	if strings.Contains(log.String(), "127.0.0.1") {
		t.Errorf("a pod-local nameserver logged:\n%s", log.String())
	}
	if got := testutil.ToFloat64(metricNameserverFallbacks.WithLabelValues("agent")) - before; got != 3 {
		t.Errorf("ztdns_capture_nameserver_fallbacks_total{reason=\"agent\"} rose by %v, want 3", got)
	}
	for i := range 2 * maxRefusedLogged {
		c.refused(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}), 53), p, refusedNodePod)
	}
	if n := strings.Count(log.String(), "is not forwarded to"); n != maxRefusedLogged {
		t.Errorf("%d nameservers refused logged %d times, want %d", 2*maxRefusedLogged+1, n, maxRefusedLogged)
	}
}

// TestForwardableAllocatesNothing: the check every miss of a captured pod
// goes through (forwardable, on the rules upstream builds for it: the
// agent's addresses behind 0.0.0.0:53, the pods of the node) allocates
// nothing. Before: the pod lookup was a method value the rules held, which
// escaped, one allocation per miss.
func TestForwardableAllocatesNothing(t *testing.T) {
	pods := podcache.New()
	pods.Attach(podcache.Attachment{ContainerID: "ctr-client", Namespace: "a", Name: "client", NetnsCookie: 7, IPs: []netip.Addr{netip.MustParseAddr("10.244.1.7")}})
	pods.Attach(podcache.Attachment{ContainerID: "ctr-dns", Namespace: "b", Name: "dns", NetnsCookie: 8, IPs: []netip.Addr{netip.MustParseAddr("10.244.1.9")}})
	c := &dataplane{r: &redirect.Redirector{}, pods: pods, nodeName: "n1",
		resolvers: map[netip.Addr]bool{netip.MustParseAddr("169.254.20.53"): true},
		own: newOwnAddrs([]netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:53")}, func() []netip.Addr {
			return []netip.Addr{netip.MustParseAddr("10.0.0.5")}
		})}
	client := pods.Lookup(netip.MustParseAddr("10.244.1.7"))
	for _, ns := range []string{"10.96.0.10:53", "10.0.0.5:53", "10.244.1.9:53"} {
		ap := netip.MustParseAddrPort(ns)
		if n := testing.AllocsPerRun(100, func() { forwardable(ap, client, c.rules()) }); n != 0 {
			t.Errorf("forwardable(%s): %v allocations, want none", ns, n)
		}
	}
}
