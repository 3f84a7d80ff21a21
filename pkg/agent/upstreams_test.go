package agent

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// TestUpstreamsForFallback: without a nameserver capture learned for the
// pod (no capture, a resolver address that is no slot, a client that is
// no pod, a pod whose sandbox is not known), the resolver gets the
// configured upstreams, said to be not the pod's own: a TCP connection
// then asks again for its next forward instead of keeping the node's
// nameservers for its life.
func TestUpstreamsForFallback(t *testing.T) {
	configured := []netip.AddrPort{netip.MustParseAddrPort("198.51.100.53:53"), netip.MustParseAddrPort("[2001:db8::53]:53")}
	client := netip.MustParseAddrPort("10.244.1.7:40000")
	slot := netip.MustParseAddrPort("169.254.20.53:53")
	pods := podcache.New()
	pods.SetSourcePods([]model.Pod{{Namespace: "ns1", Name: "other", IPs: []netip.Addr{netip.MustParseAddr("10.244.1.8")}}})
	unattached := podcache.New() // the client's pod, no sandbox known: no netns cookie
	unattached.SetSourcePods([]model.Pod{{Namespace: "ns1", Name: "client", IPs: []netip.Addr{client.Addr()}}})
	// The client's pod with its sandbox known: on a slot it would be looked
	// up in the redirector (nil here), so only the slot check answers.
	attached := podcache.New()
	attached.Attach(podcache.Attachment{ContainerID: "ctr-client", Namespace: "ns1", Name: "client", NetnsCookie: 7, IPs: []netip.Addr{client.Addr()}})
	for _, tc := range []struct {
		what    string
		capture *dataplane
		local   netip.AddrPort
	}{
		{"without capture", nil, slot},
		{"on an address that is no slot", &dataplane{slots: map[netip.AddrPort]int{slot: 0}, pods: attached}, netip.MustParseAddrPort("10.0.0.1:53")},
		{"for a client that is no pod", &dataplane{slots: map[netip.AddrPort]int{slot: 0}, pods: pods}, slot},
		{"for a pod whose sandbox is not known", &dataplane{slots: map[netip.AddrPort]int{slot: 0}, pods: unattached}, slot},
	} {
		a := &Agent{cfg: Config{Upstreams: configured}, dataplane: tc.capture}
		addrs, own := a.upstreamsFor(client, tc.local)
		if !slices.Equal(addrs, configured) || own {
			t.Errorf("%s: %v, own %v; want the configured %v, not own", tc.what, addrs, own, configured)
		}
	}
}

// TestConfiguredUpstreamsKeepTheirLabel: with the --metrics-max-upstreams
// labels all taken by addresses pods chose, queries to --upstream are still
// counted under their own `to`, not as "other"; so would those to a single
// address of --capture-nameservers (the cluster DNS, as pods ask it on port
// 53), which is among the known upstreams.
func TestConfiguredUpstreamsKeepTheirLabel(t *testing.T) {
	upstream := dnstest.Start(t, "127.0.0.1:0", dnstest.Zone{}).Addr
	chosen := dnstest.Start(t, "127.0.0.1:0", dnstest.Zone{}).Addr
	unlabelled := dnstest.Start(t, "127.0.0.1:0", dnstest.Zone{}).Addr
	// The cluster DNS of the capture list is never asked here: no packet
	// may leave the machine, and the programs never capture a loopback
	// nameserver, so none can stand in for it. That it is known is checked
	// on knownUpstreams; that known upstreams keep their label, on the
	// configured upstream (and in forward's tests).
	clusterDNS := netip.MustParseAddrPort("198.51.100.53:53")
	reg := prometheus.NewRegistry()
	cfg := Config{
		Source:            configdir.New(t.TempDir()),
		Listen:            []netip.AddrPort{netip.MustParseAddrPort("169.254.20.53:53")},
		Upstreams:         []netip.AddrPort{upstream},
		Capture:           &CaptureConfig{Nameservers: []netip.Prefix{netip.PrefixFrom(clusterDNS.Addr(), 32), netip.MustParsePrefix("10.96.0.0/12")}},
		ForwardTimeout:    time.Second,
		MaxUpstreamSeries: 1,
		Registry:          reg,
	}
	if got, want := knownUpstreams(cfg), []netip.AddrPort{upstream, clusterDNS}; !slices.Equal(got, want) {
		t.Errorf("known upstreams %v, want %v: the configured upstream and the capture list's single address, on port 53", got, want)
	}
	a, err := newAgent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.server.Close()
		a.fwd.Close()
	})
	q := new(dns.Msg)
	q.SetQuestion("www.example.com.", dns.TypeA)
	query, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []netip.AddrPort{chosen, unlabelled, upstream} {
		if _, err := a.fwd.Forward(context.Background(), query, false, []netip.AddrPort{u}); err != nil {
			t.Fatalf("forward to %s: %v", u, err)
		}
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, mf := range families {
		if mf.GetName() != "ztdns_forward_upstream_queries_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "to" {
					got[l.GetValue()] = true
				}
			}
		}
	}
	want := map[string]bool{chosen.String(): true, "other": true, upstream.String(): true}
	if !maps.Equal(got, want) {
		t.Errorf("upstream queries counted to %v, want %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
}

// TestWithoutSelf: an upstream that is one of the agent's own addresses
// (a listen or slot address, same port; any address of the node or
// loopback behind an unspecified listen address of its family) is left
// out, so that the agent never forwards its misses to itself.
func TestWithoutSelf(t *testing.T) {
	ap := netip.MustParseAddrPort
	node := func() []netip.Addr {
		return []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("2001:db8::5")}
	}
	for _, tc := range []struct {
		name      string
		addrs     []netip.AddrPort
		upstreams []netip.AddrPort
		self      []netip.AddrPort
	}{
		{"listen address", []netip.AddrPort{ap("169.254.20.53:53"), ap("[fd00:7a74:646e::53]:53")},
			[]netip.AddrPort{ap("169.254.20.53:53"), ap("10.96.0.10:53"), ap("[fd00:7a74:646e::53]:53")},
			[]netip.AddrPort{ap("169.254.20.53:53"), ap("[fd00:7a74:646e::53]:53")}},
		{"IPv4-mapped", []netip.AddrPort{ap("169.254.20.53:53")},
			[]netip.AddrPort{ap("[::ffff:169.254.20.53]:53"), ap("10.96.0.10:53")}, []netip.AddrPort{ap("[::ffff:169.254.20.53]:53")}},
		{"slot address", []netip.AddrPort{ap("169.254.20.53:53"), ap("169.254.20.54:10053")},
			[]netip.AddrPort{ap("169.254.20.54:10053"), ap("10.96.0.10:53")}, []netip.AddrPort{ap("169.254.20.54:10053")}},
		{"another port", []netip.AddrPort{ap("169.254.20.53:53"), ap("169.254.20.54:10053")},
			[]netip.AddrPort{ap("169.254.20.54:53"), ap("169.254.20.53:5353")}, nil},
		{"node address behind 0.0.0.0", []netip.AddrPort{ap("0.0.0.0:53")},
			[]netip.AddrPort{ap("10.0.0.5:53"), ap("127.0.0.53:53"), ap("10.0.0.6:53"), ap("[2001:db8::5]:53")},
			[]netip.AddrPort{ap("10.0.0.5:53"), ap("127.0.0.53:53")}},
		// [::] binds IPv6 alone: IPv4 upstreams, the node's and loopback
		// too, are others (before: left out, and with only 127.0.0.53
		// named the agent refused to start, "no upstream").
		{"node address behind ::", []netip.AddrPort{ap("[::]:53")},
			[]netip.AddrPort{ap("10.0.0.5:53"), ap("127.0.0.53:53"), ap("[::ffff:10.0.0.5]:53"), ap("[2001:db8::5]:53"), ap("[::1]:53"), ap("[2001:db8::6]:53")},
			[]netip.AddrPort{ap("[2001:db8::5]:53"), ap("[::1]:53")}},
		{"none", []netip.AddrPort{ap("169.254.20.53:53")}, []netip.AddrPort{ap("10.96.0.10:53")}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var want []netip.AddrPort
			for _, u := range tc.upstreams {
				if !slices.Contains(tc.self, u) {
					want = append(want, u)
				}
			}
			kept, self := withoutSelf(tc.upstreams, tc.addrs, node)
			if !slices.Equal(kept, want) || !slices.Equal(self, tc.self) {
				t.Errorf("withoutSelf(%v, %v) = %v, %v; want %v kept, %v left out", tc.upstreams, tc.addrs, kept, self, want, tc.self)
			}
		})
	}
}

// TestClusterDNSIsAKnownUpstream: the cluster DNS Service
// (kube-system/kube-dns) of the source's snapshot is a known upstream, on
// port 53 as pods ask it, beside --upstream: the chart's agent runs with
// dnsPolicy: Default, so its --upstream is the node's resolver, and the
// nameserver nearly every pod asks competed with those pods choose for the
// per-nameserver labels, and its failures counted as a pod's choice. The
// agent exports the known ones (ztdns_forward_upstream_known), which
// ZtdnsServfailRatioHigh keeps to. A Service of that name elsewhere is
// not the cluster DNS; the addresses made known are bounded.
func TestClusterDNSIsAKnownUpstream(t *testing.T) {
	upstream := netip.MustParseAddrPort("127.0.0.1:5353")
	reg := prometheus.NewRegistry()
	a, err := newAgent(Config{
		Source:            configdir.New(t.TempDir()),
		Listen:            []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")},
		Upstreams:         []netip.AddrPort{upstream},
		MaxUpstreamSeries: 1,
		Registry:          reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.server.Close()
		a.fwd.Close()
	})
	known := func() []string {
		t.Helper()
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, mf := range families {
			if mf.GetName() != "ztdns_forward_upstream_known" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "to" && m.GetGauge().GetValue() == 1 {
						out = append(out, l.GetValue())
					}
				}
			}
		}
		slices.Sort(out)
		return out
	}
	if got, want := known(), []string{upstream.String()}; !slices.Equal(got, want) {
		t.Errorf("before any snapshot, known upstreams %v, want %v", got, want)
	}
	dns := func(namespace string, ips ...string) model.Service {
		s := model.Service{Namespace: namespace, Name: "kube-dns"}
		for _, ip := range ips {
			s.ClusterIPs = append(s.ClusterIPs, netip.MustParseAddr(ip))
		}
		return s
	}
	a.apply(&model.Snapshot{Services: []model.Service{dns("default", "10.96.0.99"), dns("kube-system", "10.96.0.10", "fd00:10:96::a")}})
	if got, want := known(), []string{"10.96.0.10:53", upstream.String(), "[fd00:10:96::a]:53"}; !slices.Equal(got, want) {
		t.Errorf("with the cluster DNS Service, known upstreams %v, want %v", got, want)
	}
	// Made again, many times over, with new addresses: at most
	// maxClusterDNSKnown ever.
	for i := range 2 * maxClusterDNSKnown {
		a.apply(&model.Snapshot{Services: []model.Service{dns("kube-system", netip.AddrFrom4([4]byte{10, 96, 1, byte(i)}).String())}})
	}
	if got := len(known()); got != 1+maxClusterDNSKnown {
		t.Errorf("after the cluster DNS Service changed address %d times, %d known upstreams, want %d", 2*maxClusterDNSKnown, got, 1+maxClusterDNSKnown)
	}
}
