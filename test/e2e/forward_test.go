//go:build linux

package e2e

import (
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/redirect"
)

// TestMissGoesToPodNameserver checks that a name ztdns does not know is
// forwarded to the nameserver the pod addressed, not to the agent's own
// upstream (Istio's ztunnel forwards to the node's: ztunnel#555). Two
// marked pods name different nameservers, which answer the same name
// differently; each pod must get its own nameserver's answer, asked by the
// agent (the pod's query went to ztdns), also after the other pod's answer
// was cached.
func TestMissGoesToPodNameserver(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	markers, servers := c.servePodNameservers(t)
	c.startReadyAgent(t)
	pods := map[string]*testenv.Pod{
		podNameserver1: c.markedPod(t, "pod-a", podNameserver1),
		podNameserver2: c.markedPod(t, "pod-b", podNameserver2),
	}

	// Each pod twice, interleaved: the second round is answered from the
	// agent's cache, which must not hand one pod the other's answer.
	for round := range 2 {
		for _, ns := range []string{podNameserver1, podNameserver2} {
			for _, proto := range []string{"+notcp", "+tcp"} {
				p, want := pods[ns], markers[ns]
				got, err := c.dig(t, p, proto, whoHost)
				if err != nil {
					t.Fatalf("round %d, pod with nameserver %s: %v", round, ns, err)
				}
				if !slices.Equal(got, []netip.Addr{want}) {
					t.Errorf("round %d, pod with nameserver %s, dig %s %s = %v, want %s from its own nameserver (the agent's upstream answers %s)",
						round, ns, proto, whoHost, got, want, upstreamMarker)
				}
			}
		}
	}

	for ns, srv := range servers {
		askers := askersOf(srv, whoHost)
		if len(askers) == 0 {
			t.Errorf("nameserver %s was never asked for %s", ns, whoHost)
		}
		for _, p := range pods {
			if slices.Contains(askers, p.IPv4) || slices.Contains(askers, p.IPv6) {
				t.Errorf("nameserver %s was asked by the pod itself (%v): the query was not redirected to ztdns", ns, askers)
			}
		}
	}
	if askers := askersOf(c.upstream, whoHost); len(askers) > 0 {
		t.Errorf("the agent's --upstream %s was asked for %s by %v; misses must go to the pod's nameserver", agentUpstream, whoHost, askers)
	}
}

// TestStatusNamesTheUpstreamsAsked: `ztdns status` calls the agent's
// --upstream what it is, the fallback, and lists the nameservers the agent
// asked recently with how their exchanges ended: after a captured pod's
// miss, the pod's own nameserver, not the fallback, which nothing asked.
// -o json says the same. (Before: one "Upstreams" line named the fallback
// alone, and nothing showed where pods' misses went.)
func TestStatusNamesTheUpstreamsAsked(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	markers, _ := c.servePodNameservers(t)
	c.startReadyAgent(t)
	p := c.markedPod(t, "asker", podNameserver1)
	if got, err := c.dig(t, p, whoHost); err != nil || !slices.Equal(got, []netip.Addr{markers[podNameserver1]}) {
		t.Fatalf("dig %s = %v, %v; want %s from the pod's own nameserver", whoHost, got, err, markers[podNameserver1])
	}

	own, fallback := podNameserver1+":53", agentUpstream+":53"
	st := c.status(t)
	if !slices.Equal(st.FallbackUpstreams, []string{fallback}) {
		t.Errorf("ztdns status -o json: fallbackUpstreams %v, want [%s]", st.FallbackUpstreams, fallback)
	}
	if len(st.AskedUpstreams) != 1 || st.AskedUpstreams[0].Address != own || st.AskedUpstreams[0].Results["ok"] != 1 ||
		len(st.AskedUpstreams[0].Results) != 1 || st.AskedUpstreams[0].Idle == "" {
		t.Errorf("ztdns status -o json: askedUpstreams %+v, want %s alone, with 1 ok and how long since", st.AskedUpstreams, own)
	}

	out := c.ztdns(t, "status", "--socket", c.socket)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^Fallback upstreams: +` + regexp.QuoteMeta(fallback) + ` \(for clients whose own nameserver is not known; a captured pod's misses go to the nameserver it asked\)$`),
		regexp.MustCompile(`(?m)^Upstreams asked: +` + regexp.QuoteMeta(own) + `: 1 ok \(last [0-9.]+m?s ago\)$`),
	} {
		if !want.MatchString(out) {
			t.Errorf("ztdns status lacks a line matching %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, "Upstreams:") {
		t.Errorf("ztdns status still has an Upstreams line:\n%s", out)
	}
}

// TestCaptureNameserversLeavesOthersAlone: with --capture-nameservers, a
// marked pod's query to a listed nameserver still goes through ztdns (the
// agent asks it), while a query to any other nameserver is left to the pod:
// that nameserver answers it, asked by the pod's own address, so the pod's
// NetworkPolicy, not the node's reach, decides whether it gets through.
func TestCaptureNameserversLeavesOthersAlone(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	listed, unlisted := podNameserver1, podNameserver2
	markers, servers := c.servePodNameservers(t)
	a := testenv.StartAgent(t, c.node, c.bin, append(c.agentArgs(), "--capture-nameservers", listed, "--metrics", metricsAddr)...)
	c.waitReady(t, a)
	if got, want := c.status(t).CaptureNameservers, []string{listed + "/32"}; !slices.Equal(got, want) {
		t.Errorf("ztdns status: capture nameservers %v, want %v", got, want)
	}
	p := c.markedPod(t, "pod-a", listed)

	for _, ns := range []string{listed, unlisted} {
		for _, proto := range []string{"+notcp", "+tcp"} {
			got, err := c.dig(t, p, proto, "@"+ns, whoHost)
			if err != nil {
				t.Fatalf("dig @%s: %v", ns, err)
			}
			if want := markers[ns]; !slices.Equal(got, []netip.Addr{want}) {
				t.Errorf("dig %s @%s %s = %v, want %s from that nameserver", proto, ns, whoHost, got, want)
			}
		}
	}

	byPod := func(askers []netip.Addr) bool {
		return slices.Contains(askers, p.IPv4) || slices.Contains(askers, p.IPv6)
	}
	if askers := askersOf(servers[listed], whoHost); len(askers) == 0 || byPod(askers) {
		t.Errorf("listed nameserver %s was asked by %v, want the agent (the pod's query redirected to ztdns)", listed, askers)
	}
	notPod := func(a netip.Addr) bool { return a != p.IPv4 && a != p.IPv6 }
	if askers := askersOf(servers[unlisted], whoHost); len(askers) != 2 || slices.ContainsFunc(askers, notPod) {
		t.Errorf("unlisted nameserver %s was asked by %v, want the pod itself (%s), once over each transport", unlisted, askers, p.IPv4)
	}
	series := `ztdns_capture_events_total{event="skipped_not_listed"}`
	if n := scrapeMetrics(t, c, metricsAddr).values[series]; n < 2 {
		t.Errorf("/metrics: %s = %v, want at least 2 (one query over each transport)", series, n)
	}
}

// TestCaptureNameserversForgetsEarlierSlots: a nameserver a pod reached
// through ztdns before --capture-nameservers was set stays out of reach
// through the node once the agent restarts with a list it is not on. Slots
// outlive the agent, and a query the pod sends to a slot's address itself
// (as a socket connected through the slot does) is forwarded to what the
// slot holds: the slot is forgotten, and such a query goes to the agent's
// --upstream instead.
func TestCaptureNameserversForgetsEarlierSlots(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	listed, unlisted := podNameserver1, podNameserver2
	markers, _ := c.servePodNameservers(t)
	// Where the agent's slots are, from its default --listen and
	// --capture-port: queries sent straight there are not captured.
	slots := redirect.DefaultResolver4()
	viaSlots := func(p *testenv.Pod) (answers []netip.Addr) {
		t.Helper()
		for _, s := range slots {
			got, err := c.dig(t, p, "-p", strconv.Itoa(int(s.Port())), "@"+s.Addr().String(), whoHost)
			if err != nil {
				t.Fatalf("dig @%s: %v", s, err)
			}
			answers = append(answers, got...)
		}
		return answers
	}

	a := c.startReadyAgent(t)
	p := c.markedPod(t, "pod-a", listed)
	for ns, want := range markers {
		if got, err := c.dig(t, p, "@"+ns, whoHost); err != nil || !slices.Equal(got, []netip.Addr{want}) {
			t.Fatalf("before the list: dig @%s %s = %v, %v; want %s", ns, whoHost, got, err, want)
		}
	}
	if got := viaSlots(p); !slices.Contains(got, markers[unlisted]) {
		t.Fatalf("before the list: the slots answered %v, want one to reach %s (%s)", got, unlisted, markers[unlisted])
	}

	a.Stop(t, 20*time.Second)
	a = testenv.StartAgent(t, c.node, c.bin, append(c.agentArgs(), "--capture-nameservers", listed)...)
	c.waitReady(t, a)

	if ns := testenv.NameserverAddrs(c.podRow(t, "pod-a")); slices.Contains(ns, unlisted+":53") || !slices.Contains(ns, listed+":53") {
		t.Errorf("ztdns pods: slots hold %v, want %s:53 kept and %s:53 forgotten", ns, listed, unlisted)
	}
	got := viaSlots(p)
	if slices.Contains(got, markers[unlisted]) {
		t.Errorf("with --capture-nameservers %s: the slots answered %v; %s (%s) is still reached through the node", listed, got, unlisted, markers[unlisted])
	}
	if !slices.Contains(got, upstreamMarker) || !slices.Contains(got, markers[listed]) {
		t.Errorf("the slots answered %v, want the listed nameserver's %s and, from the others, the agent's --upstream %s", got, markers[listed], upstreamMarker)
	}
}
