package agent

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
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
	pods := podcache.New("cluster.local")
	pods.SetSourcePods([]model.Pod{{Namespace: "ns1", Name: "other", IPs: []netip.Addr{netip.MustParseAddr("10.244.1.8")}}})
	unattached := podcache.New("cluster.local") // the client's pod, no sandbox known: no netns cookie
	unattached.SetSourcePods([]model.Pod{{Namespace: "ns1", Name: "client", IPs: []netip.Addr{client.Addr()}}})
	// The client's pod with its sandbox known: on a slot it would be looked
	// up in the redirector (nil here), so only the slot check answers.
	attached := podcache.New("cluster.local")
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
		a := &Agent{cfg: Config{Upstreams: configured}, capture: tc.capture}
		addrs, own := a.upstreamsFor(client, tc.local)
		if !slices.Equal(addrs, configured) || own {
			t.Errorf("%s: %v, own %v; want the configured %v, not own", tc.what, addrs, own, configured)
		}
	}
}
