//go:build linux

package e2e

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// stallHost is a name under stallZone, which the upstream of
// TestPodNamingTheAgentOrANodePod never answers: a miss for it holds its
// forwarding slots until the resolver gives up.
const stallZone = "stall.example."

// stallSome answers as its Responder, but nothing under stallZone.
type stallSome struct{ dnstest.Responder }

func (s stallSome) Reply(req *dns.Msg, local netip.AddrPort) *dns.Msg {
	if len(req.Question) == 1 && dns.IsSubDomain(stallZone, req.Question[0].Name) {
		return nil
	}
	return s.Responder.Reply(req, local)
}

// TestPodNamingTheAgentOrANodePod: the agent also listens on the node's
// address ($(HOST_IP):53, which the chart's messages suggest), and one pod
// may have one forwarded query in flight (--pod-max-forwarding 1).
//
// A captured pod asks another captured pod of the node: the agent answers
// from its upstream and never asks that pod, whose server would get the
// query from the node, past the pod's ingress policy and, over TCP,
// istio-cni's probe rule around ztunnel. (Before: the other pod's server
// answered.)
//
// The pod then asks the agent's own node address for a name its upstream
// never answers: the miss goes to the upstream under the pod's own bound,
// and a node process asking that address meanwhile is answered. (Before:
// the agent forwarded the miss to its own node address, where it came back
// in as the node's query and held the node address's one slot too, so the
// node process got SERVFAIL.) The log names both nameservers.
func TestPodNamingTheAgentOrANodePod(t *testing.T) {
	c := newCluster(t)
	const upstreamAddr = "198.51.100.56"
	const nodeHost = "node.example"
	stall := c.node.ServeNameserver(t, netip.MustParseAddr(upstreamAddr), stallSome{dnstest.ZoneOf(t,
		whoHost+". 300 IN A "+upstreamMarker.String(),
		nodeHost+". 300 IN A "+upstreamMarker.String())})
	asker, other := c.pod(t), c.pod(t)
	hostIP := asker.Gateway4() // a node address, as $(HOST_IP) is
	podMarker := netip.MustParseAddr("203.0.113.77")
	podServer := other.StartDNSServer(t, []netip.AddrPort{netip.AddrPortFrom(other.IPv4, 53)},
		dnstest.ZoneOf(t, whoHost+". 300 IN A "+podMarker.String()))

	args := c.agentArgs()
	i := slices.Index(args, "--upstream")
	args[i+1] = upstreamAddr
	args = append(args, "--listen", resolverAddr+":53", "--listen", hostIP.String()+":53", "--pod-max-forwarding", "1",
		"--forward-timeout", "4s") // the misses hold their slots a while
	a := testenv.StartAgent(t, c.node, c.bin, args...)
	c.waitReady(t, a)
	c.capture(t, asker, "asker")
	c.capture(t, other, "dns")

	// Another pod of the node, named as the pod's nameserver.
	got, err := c.dig(t, asker, "@"+other.IPv4.String(), whoHost)
	if err != nil || !slices.Equal(got, []netip.Addr{upstreamMarker}) {
		t.Errorf("dig @%s %s in a pod: %v %v, want %s from the agent's upstream", other.IPv4, whoHost, got, err, upstreamMarker)
	}
	if n := podServer.Queries(whoHost); n != 0 {
		t.Errorf("the other pod's server got %d queries from %v, want none: the agent forwarded to a pod of its node", n, askersOf(podServer, whoHost))
	}

	// The agent's own node address, named as the pod's nameserver.
	stalled := make(chan error, 1)
	go func() {
		_, err := c.inPod(t, asker, 20*time.Second, "dig", "+time=10", "+tries=1", "@"+hostIP.String(), "n1."+stallZone)
		stalled <- err
	}()
	testenv.Eventually(t, 10*time.Second, "the pod's miss at the upstream", func() bool { return stall.Queries("n1."+stallZone) > 0 })
	var reply *dns.Msg
	if err := c.node.Do(func() error {
		var err error
		reply, _, err = (&dns.Client{Net: "udp", Timeout: 4 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: hostIP.AsSlice()}}}).
			Exchange(new(dns.Msg).SetQuestion(nodeHost+".", dns.TypeA), netip.AddrPortFrom(hostIP, 53).String())
		return err
	}); err != nil {
		t.Fatalf("a node process asking %s:53 while the pod's miss is held: %v", hostIP, err)
	}
	if reply.Rcode != dns.RcodeSuccess || len(reply.Answer) != 1 || !strings.Contains(reply.Answer[0].String(), upstreamMarker.String()) {
		t.Errorf("a node process asking %s:53 for %s while the pod's miss is held: %s %v, want NOERROR with %s",
			hostIP, nodeHost, dns.RcodeToString[reply.Rcode], reply.Answer, upstreamMarker)
	}
	<-stalled // SERVFAIL, whichever way the miss went
	for _, ns := range []netip.Addr{other.IPv4, hostIP} {
		if !a.LogContains("nameserver=" + ns.String() + ":53") {
			t.Errorf("the agent's log does not name the nameserver %s:53 it did not forward to:\n%s", ns, a.Log())
		}
	}
}
