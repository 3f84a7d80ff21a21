package kube

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/pkg/control"
)

// TestSameAnswersAsCoreDNS asks ztdns and CoreDNS's kubernetes plugin, the
// reference implementation of the Kubernetes DNS specification, the same
// questions about a generated cluster (ClusterIP single- and dual-stack,
// IPv4 or IPv6 first, and IPv6 alone; headless with and without hostnames,
// a hostname in two slices and one shared by two endpoints, not-ready
// endpoints, publishNotReadyAddresses, named ports whose numbers differ
// per slice, TCP, UDP and SCTP ports with and without appProtocol, a port
// without a number, slices labelled as the EndpointSlice controller's, a
// pod behind two headless Services, over 100 endpoints in 3 slices with an
// address in two of them; a Service whose type changes from ClusterIP to
// ExternalName to headless; ExternalName out, in, to an address, to a
// missing Service and in loops) and compares the answers. CoreDNS is also
// ztdns's upstream, as kube-dns is a pod's nameserver, so what ztdns
// forwards gets CoreDNS's answer by construction; what it answers itself
// must match.
//
// Compared: rcode, AA, the answer section (SRV weights aside: the
// specification leaves them open), the additional section, and for
// answers without records the SOA (its serial aside; the authority
// section of an answer with records is not: of a CNAME to a name outside
// the cluster that lacks the type, CoreDNS leaves it empty, ztdns gives
// the target's SOA, RFC 2308 2.2); of a reply truncated over UDP (TC), TC
// and the number of answer records, as which records fit differs. Not
// asked, because CoreDNS deviates from the specification or DNS there and
// ztdns does not follow (the README lists them): SRV at a Service's bare
// name, TXT, MX and SRV of an ExternalName, A at a reverse name. Asked,
// and held to exactly the difference the README lists: ANY at cluster
// names (differsANY), and a CNAME whose in-cluster target lacks the type
// asked (differsCNAME).
func TestSameAnswersAsCoreDNS(t *testing.T) {
	c := newCluster(t)
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.ZoneOf(t,
		"www.example.com. 120 IN A 203.0.113.53",
		"www.example.com. 120 IN AAAA 2001:db8::53",
		"v4.example.com. 120 IN A 203.0.113.54",
	))
	coredns := c.env.StartCoreDNS(up.Addr)
	a := startAgent(t, c, coredns)

	seed := uint64(time.Now().UnixNano())
	t.Logf("cluster generated with seed %d", seed)
	g := &generator{c: c, rng: rand.New(rand.NewPCG(seed, 9)), t: t, agent: a, coredns: coredns}
	g.cluster()

	// Wait until the agent has seen the last object written.
	last := g.questions[len(g.questions)-1]
	agenttest.Eventually(t, 20*time.Second, func() error {
		if diff := check(t, "udp", a.Addr, coredns, last); diff != "" {
			return fmt.Errorf("%s %s not yet in the agent's table: %s", last.Name, dns.TypeToString[last.Qtype], diff)
		}
		return nil
	})
	for _, proto := range []string{"udp", "tcp"} {
		for _, q := range g.questions {
			if diff := check(t, proto, a.Addr, coredns, q); diff != "" {
				edns := ""
				if q.noEDNS {
					edns = " (no EDNS)"
				}
				t.Errorf("%s %s %s%s: %s", proto, q.Name, dns.TypeToString[q.Qtype], edns, diff)
			}
		}
	}
	t.Logf("compared %d questions over UDP and TCP", len(g.questions))
}

// check asks q of ztdns and of CoreDNS over proto and returns how the
// answers differ from what the test expects, "" when they do not.
func check(t *testing.T, proto string, ztdns, coredns netip.AddrPort, q question) string {
	t.Helper()
	got, want := askQ(t, proto, ztdns, q), askQ(t, proto, coredns, q)
	var diff string
	switch q.differs {
	case differsANY:
		diff = checkANY(t, proto, coredns, q, got, want)
	case differsCNAME:
		diff = checkCNAME(got, want, q)
	default:
		diff = compare(got, want)
	}
	if diff != "" {
		diff += fmt.Sprintf("\nztdns:\n%v\ncoredns:\n%v", got, want)
	}
	return diff
}

// checkANY holds ANY at a cluster name to the README's difference: CoreDNS
// answers NOERROR, no records, its SOA; ztdns, authoritatively, the
// records CoreDNS answers for each of q.anyOf at the name (of an
// ExternalName: the CNAME and its target's addresses).
func checkANY(t *testing.T, proto string, coredns netip.AddrPort, q question, got, want *dns.Msg) string {
	t.Helper()
	if want.Rcode != dns.RcodeSuccess || len(want.Answer) != 0 || len(want.Ns) != 1 || want.Ns[0].Header().Rrtype != dns.TypeSOA {
		return "CoreDNS's answer to ANY is no longer NOERROR, empty, with its SOA: the README's difference is out of date"
	}
	wantANY := want.Copy()
	wantANY.Answer, wantANY.Ns, wantANY.Extra, wantANY.Authoritative = nil, nil, nil, true
	for _, qt := range q.anyOf {
		each := q
		each.Qtype, each.differs = qt, ""
		for _, rr := range askQ(t, proto, coredns, each).Answer {
			if !slices.ContainsFunc(wantANY.Answer, func(w dns.RR) bool { return dns.IsDuplicate(w, rr) }) {
				wantANY.Answer = append(wantANY.Answer, rr) // an ExternalName's CNAME is in both
			}
		}
	}
	return compare(got, wantANY)
}

// checkCNAME holds a CNAME whose in-cluster target lacks the type asked to
// the README's difference: CoreDNS answers NODATA without the CNAME,
// ztdns the CNAME, authoritatively, with the cluster zone's SOA.
func checkCNAME(got, want *dns.Msg, q question) string {
	if want.Rcode != dns.RcodeSuccess || len(want.Answer) != 0 {
		return "CoreDNS's answer is no longer NODATA without the CNAME: the README's difference is out of date"
	}
	switch {
	case got.Rcode != dns.RcodeSuccess:
		return fmt.Sprintf("rcode %s, want NOERROR", dns.RcodeToString[got.Rcode])
	case !got.Authoritative:
		return "AA false, want true"
	case len(got.Answer) != 1 || got.Answer[0].Header().Rrtype != dns.TypeCNAME || !strings.EqualFold(got.Answer[0].Header().Name, q.Name):
		return fmt.Sprintf("answer %q, want the CNAME alone", records(got.Answer))
	case len(got.Ns) != 1 || got.Ns[0].Header().Rrtype != dns.TypeSOA || got.Ns[0].Header().Name != "cluster.local.":
		return fmt.Sprintf("authority %q, want the cluster zone's SOA", records(got.Ns))
	}
	return ""
}

// generator writes a random cluster and collects the questions to ask
// about it.
type generator struct {
	c         *cluster
	rng       *rand.Rand
	t         *testing.T
	questions []question
	podIP     int // the last pod address handed out
	// agent and coredns are the servers asked, for the checks made while
	// the cluster is written (morph).
	agent   *agenttest.Agent
	coredns netip.AddrPort
}

// question is one question asked of both servers, and how their answers
// compare.
type question struct {
	dns.Question
	// noEDNS: asked without EDNS, so that a UDP reply holds 512 bytes.
	noEDNS bool
	// differs is a difference the README's table lists (differs*
	// constants), "" for none; anyOf are, for differsANY, the types whose
	// records ztdns's answer to ANY holds.
	differs string
	anyOf   []uint16
}

// The differences from kube-dns the test asks about (the README's table
// of differences lists them).
const (
	// differsANY: QTYPE ANY at a cluster name, which kube-dns answers
	// with NOERROR and no records (RFC 8482 allows it), and ztdns with the
	// records it holds at the name.
	differsANY = "ANY"
	// differsCNAME: an ExternalName whose target is in the cluster and has
	// no records of the type asked (the target is missing, or of the other
	// family): kube-dns answers NODATA without the CNAME, ztdns with the
	// CNAME and the target zone's SOA, as a CNAME answers every type (RFC
	// 1034 3.6.2).
	differsCNAME = "CNAME"
)

func (g *generator) ask(name string, types ...uint16) {
	for _, qt := range types {
		g.questions = append(g.questions, question{Question: dns.Question{Name: dns.CanonicalName(name), Qtype: qt, Qclass: dns.ClassINET}})
	}
}

// askNoEDNS asks as ask does, and again without EDNS.
func (g *generator) askNoEDNS(name string, types ...uint16) {
	g.ask(name, types...)
	for _, qt := range types {
		g.questions = append(g.questions, question{Question: dns.Question{Name: dns.CanonicalName(name), Qtype: qt, Qclass: dns.ClassINET}, noEDNS: true})
	}
}

// askANY asks ANY at name, whose answer from ztdns holds the records of
// types.
func (g *generator) askANY(name string, types ...uint16) {
	g.questions = append(g.questions, question{Question: dns.Question{Name: dns.CanonicalName(name), Qtype: dns.TypeANY, Qclass: dns.ClassINET},
		differs: differsANY, anyOf: types})
}

// askCNAME asks qtype at an ExternalName's name whose in-cluster target
// has no records of that type (differsCNAME).
func (g *generator) askCNAME(name string, qtype uint16) {
	g.questions = append(g.questions, question{Question: dns.Question{Name: dns.CanonicalName(name), Qtype: qtype, Qclass: dns.ClassINET},
		differs: differsCNAME})
}

func (g *generator) askPTR(addr string) { g.ask(dnstest.Reverse(addr), dns.TypePTR) }

// pod hands out a new pod address: IPv4 and IPv6.
func (g *generator) pod() (v4, v6 string) {
	g.podIP++
	return fmt.Sprintf("10.244.%d.%d", g.podIP/200, g.podIP%200+1), fmt.Sprintf("fd00:244::%x", g.podIP)
}

// The families of a ClusterIP Service.
var (
	ipv4Only  = []corev1.IPFamily{corev1.IPv4Protocol}
	ipv6Only  = []corev1.IPFamily{corev1.IPv6Protocol}
	dualStack = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	ipv6First = []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}
)

func (g *generator) cluster() {
	namespaces := []string{"default", "team-a", "team-b"}
	for i := range 12 {
		ns := namespaces[i%len(namespaces)]
		switch i % 4 {
		case 0:
			g.clusterIP(ns, fmt.Sprintf("svc%d", i), [][]corev1.IPFamily{dualStack, ipv4Only}[i/4%2])
		case 1, 2:
			g.headless(ns, fmt.Sprintf("hl%d", i), i%3 == 0)
		case 3:
			g.externalName(ns, fmt.Sprintf("ext%d", i), []string{"www.example.com", "v4.example.com", "nx.example.com"}[i/4%3])
		}
	}
	g.clusterIP("team-b", "v6only", ipv6Only)
	g.clusterIP("team-b", "v6first", ipv6First)
	g.noNumber("default", "db")
	g.big("team-a", "big")
	g.askANY("ext3.default.svc.cluster.local", dns.TypeA, dns.TypeAAAA)
	// An ExternalName to a Service that answers both families.
	g.externalName("default", "extsvc", "svc0.default.svc.cluster.local")
	g.askANY("extsvc.default.svc.cluster.local", dns.TypeA, dns.TypeAAAA)
	// To a Service that does not exist, and to one of IPv4 alone.
	g.newExternalName("default", "extnx", "nope.default.svc.cluster.local")
	g.ask("extnx.default.svc.cluster.local", dns.TypeCNAME)
	g.askCNAME("extnx.default.svc.cluster.local", dns.TypeA)
	g.askCNAME("extnx.default.svc.cluster.local", dns.TypeAAAA)
	g.newExternalName("default", "extin", "big.team-a.svc.cluster.local")
	g.ask("extin.default.svc.cluster.local", dns.TypeA, dns.TypeCNAME)
	g.askCNAME("extin.default.svc.cluster.local", dns.TypeAAAA)
	// An address is no CNAME target: CoreDNS leaves the Service out.
	g.externalName("default", "extip", "1.2.3.4")
	// CNAME loops: a name to itself, two names to each other.
	g.externalName("default", "loop", "loop.default.svc.cluster.local")
	g.externalName("team-a", "ping", "pong.team-a.svc.cluster.local")
	g.externalName("team-a", "pong", "ping.team-a.svc.cluster.local")
	g.morph("team-b", "morph")
	for _, ns := range namespaces {
		g.ask("missing."+ns+".svc.cluster.local", dns.TypeA)
	}
	g.ask("kubernetes.default.svc.cluster.local", dns.TypeA, dns.TypeAAAA, dns.TypeTXT)
	g.ask("_https._tcp.kubernetes.default.svc.cluster.local", dns.TypeSRV)
}

// ports makes one to three ports, of TCP, UDP or SCTP, some with an
// appProtocol.
func (g *generator) ports() []corev1.ServicePort {
	var out []corev1.ServicePort
	n := 1 + g.rng.IntN(3)
	for i := range n {
		p := corev1.ServicePort{Port: int32(80 + i), Protocol: []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}[g.rng.IntN(3)]}
		if n > 1 || g.rng.IntN(3) > 0 { // a lone port may be unnamed
			p.Name = fmt.Sprintf("p%d", i)
		}
		if g.rng.IntN(2) == 0 {
			p.AppProtocol = ptr.To([]string{"http", "kubernetes.io/h2c", "example.com/custom"}[g.rng.IntN(3)])
		}
		out = append(out, p)
	}
	return out
}

func (g *generator) service(svc *corev1.Service) *corev1.Service {
	g.t.Helper()
	out, err := g.c.env.Client().CoreV1().Services(svc.Namespace).Create(g.c.ctx, svc, metav1.CreateOptions{})
	if err != nil {
		g.t.Fatal(err)
	}
	return out
}

// askPorts asks for the SRV records of each named port, and for the
// addresses CoreDNS gives at the same names; ANY at the first, when the
// names exist.
func (g *generator) askPorts(fqdn string, ports []corev1.ServicePort, exist bool) {
	for i, p := range ports {
		if p.Name != "" {
			name := "_" + p.Name + "._" + strings.ToLower(string(p.Protocol)) + "." + fqdn
			g.ask(name, dns.TypeSRV, dns.TypeA, dns.TypeAAAA, dns.TypeTXT)
			if i == 0 && exist {
				g.askANY(name, dns.TypeSRV)
			}
		}
	}
	g.ask("_nope._tcp."+fqdn, dns.TypeSRV, dns.TypeA)
}

// clusterIP makes a ClusterIP Service of the families asked (in that
// order), with an EndpointSlice (whose names and PTRs are CoreDNS
// extensions ztdns forwards).
func (g *generator) clusterIP(ns, name string, families []corev1.IPFamily) {
	spec := corev1.ServiceSpec{Ports: g.ports(), IPFamilies: families, IPFamilyPolicy: ptr.To(corev1.IPFamilyPolicySingleStack)}
	if len(families) > 1 {
		spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicyRequireDualStack)
	}
	svc := g.service(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: spec})
	fqdn := name + "." + ns + ".svc.cluster.local."
	g.ask(fqdn, dns.TypeA, dns.TypeAAAA, dns.TypeTXT, dns.TypeMX)
	g.askANY(fqdn, dns.TypeA, dns.TypeAAAA)
	g.askPorts(fqdn, svc.Spec.Ports, true)
	for _, ip := range svc.Spec.ClusterIPs {
		g.askPTR(ip)
	}
	v4, _ := g.pod()
	g.slice(ns, name, false, name+"-x", discoveryv1.AddressTypeIPv4, svc.Spec.Ports, []discoveryv1.Endpoint{{Addresses: []string{v4}}})
	g.askPTR(v4)
	g.ask(strings.ReplaceAll(v4, ".", "-")+"."+fqdn, dns.TypeA, dns.TypeSRV)
}

// headless makes a headless Service and its slices: some endpoints with
// hostnames, one without, one not ready, one hostname on two endpoints,
// each pod in an IPv6 slice too when dual, and a second headless Service
// over the same pods.
func (g *generator) headless(ns, name string, dual bool) {
	publish := g.rng.IntN(4) == 0
	ports := g.ports()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: corev1.ServiceSpec{
		ClusterIP: corev1.ClusterIPNone, Ports: ports, PublishNotReadyAddresses: publish}}
	if dual {
		svc.Spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicyRequireDualStack)
	}
	g.service(svc)
	fqdn := name + "." + ns + ".svc.cluster.local."
	g.ask(fqdn, dns.TypeA, dns.TypeAAAA, dns.TypeTXT)
	var eps4, eps6 []discoveryv1.Endpoint
	n := g.rng.IntN(5)
	g.askPorts(fqdn, ports, n > 0) // endpoint 0 is ready
	for i := range n {
		v4, v6 := g.pod()
		// As the EndpointSlice controller writes them: ready when the pod
		// is, or when the Service publishes not-ready addresses.
		ready := publish || i != 1
		var hostname *string
		switch {
		case i == 3: // a hostname two endpoints share
			hostname = ptr.To("web-0")
		case i != 2:
			hostname = ptr.To(fmt.Sprintf("web-%d", i))
		}
		eps4 = append(eps4, discoveryv1.Endpoint{Addresses: []string{v4}, Hostname: hostname, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
		eps6 = append(eps6, discoveryv1.Endpoint{Addresses: []string{v6}, Hostname: hostname, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
		label4, label6 := strings.ReplaceAll(v4, ".", "-"), strings.ReplaceAll(v6, ":", "-")
		if hostname != nil {
			label4, label6 = *hostname, *hostname
		}
		g.ask(label4+"."+fqdn, dns.TypeA, dns.TypeAAAA, dns.TypeSRV)
		g.askPTR(v4)
		if dual {
			g.ask(label6+"."+fqdn, dns.TypeA, dns.TypeAAAA, dns.TypeSRV)
			g.askPTR(v6)
		}
		if i == 0 && ready {
			g.askANY(label4+"."+fqdn, dns.TypeA, dns.TypeAAAA, dns.TypeSRV)
		}
	}
	// A slice's ports carry the target ports, which differ per slice when
	// a named targetPort resolves to different numbers.
	slicePorts := func(shift int32) []corev1.ServicePort {
		out := slices.Clone(ports)
		for i := range out {
			out[i].Port += shift
		}
		return out
	}
	if n > 0 {
		g.slice(ns, name, true, name+"-a", discoveryv1.AddressTypeIPv4, slicePorts(8000), eps4[:n/2+1])
		if n/2+1 < n {
			g.slice(ns, name, true, name+"-b", discoveryv1.AddressTypeIPv4, slicePorts(9000), eps4[n/2+1:])
		}
		if dual {
			g.slice(ns, name, true, name+"-c", discoveryv1.AddressTypeIPv6, slicePorts(8000), eps6)
		}
		g.askANY(fqdn, dns.TypeA, dns.TypeAAAA)
		// A second headless Service over the same pods (no hostnames: the
		// EndpointSlice controller sets them only for the pod's subdomain).
		alias := name + "-all"
		g.service(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: alias, Namespace: ns}, Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone}})
		var bare []discoveryv1.Endpoint
		for _, ep := range eps4 {
			bare = append(bare, discoveryv1.Endpoint{Addresses: ep.Addresses, Conditions: ep.Conditions})
		}
		g.slice(ns, alias, true, alias+"-a", discoveryv1.AddressTypeIPv4, nil, bare)
		g.ask(alias+"."+ns+".svc.cluster.local.", dns.TypeA)
	}
}

// noNumber makes a headless Service with a slice whose port "any" has no
// number (the endpoints take every port), beside a numbered one.
func (g *generator) noNumber(ns, name string) {
	g.service(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone}})
	fqdn := name + "." + ns + ".svc.cluster.local."
	var eps []discoveryv1.Endpoint
	for i := range 2 {
		v4, _ := g.pod()
		eps = append(eps, discoveryv1.Endpoint{Addresses: []string{v4}, Hostname: ptr.To(fmt.Sprintf("%s-%d", name, i))})
		g.ask(fmt.Sprintf("%s-%d.%s", name, i, fqdn), dns.TypeA, dns.TypeSRV)
	}
	g.create(&discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name + "-a", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4, Endpoints: eps,
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("any"), Protocol: ptr.To(corev1.ProtocolTCP)},
			{Name: ptr.To("pg"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(int32(5432))}},
	})
	g.ask("_any._tcp."+fqdn, dns.TypeSRV, dns.TypeA)
	g.ask("_pg._tcp."+fqdn, dns.TypeSRV, dns.TypeA)
}

// big makes an IPv4 headless Service of 120 endpoints in 3 slices, one
// address in two of them, asked with and without EDNS: its answers do not
// fit in 512 bytes.
func (g *generator) big(ns, name string) {
	g.service(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: corev1.ServiceSpec{
		ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Name: "p0", Port: 80, Protocol: corev1.ProtocolTCP}}}})
	fqdn := name + "." + ns + ".svc.cluster.local."
	var eps []discoveryv1.Endpoint
	for i := range 120 {
		v4, _ := g.pod()
		// Names of one length: as many SRV records fit, whichever.
		eps = append(eps, discoveryv1.Endpoint{Addresses: []string{v4}, Hostname: ptr.To(fmt.Sprintf("pod-%03d", i))})
	}
	ports := []corev1.ServicePort{{Name: "p0", Port: 8080, Protocol: corev1.ProtocolTCP}}
	g.slice(ns, name, true, name+"-a", discoveryv1.AddressTypeIPv4, ports, eps[:40])
	g.slice(ns, name, true, name+"-b", discoveryv1.AddressTypeIPv4, ports, eps[40:80])
	g.slice(ns, name, true, name+"-c", discoveryv1.AddressTypeIPv4, ports, eps[79:]) // eps[79] in two
	g.askNoEDNS(fqdn, dns.TypeA)
	g.askNoEDNS("_p0._tcp."+fqdn, dns.TypeSRV, dns.TypeA)
	twice := *eps[79].Hostname + "." + fqdn
	g.ask(twice, dns.TypeA, dns.TypeSRV)
	g.askPTR(eps[79].Addresses[0])
}

// morph makes a ClusterIP Service, then turns it into an ExternalName and
// then into a headless Service, checking after each step that ztdns
// answers as CoreDNS.
func (g *generator) morph(ns, name string) {
	g.t.Helper()
	fqdn := name + "." + ns + ".svc.cluster.local."
	svcs := g.c.env.Client().CoreV1().Services(ns)
	g.service(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: corev1.ServiceSpec{
		Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}})
	g.agree(ns, fqdn, "A", dns.TypeA, dns.TypeAAAA)
	update := func(f func(*corev1.ServiceSpec)) {
		svc, err := svcs.Get(g.c.ctx, name, metav1.GetOptions{})
		if err != nil {
			g.t.Fatal(err)
		}
		f(&svc.Spec)
		if _, err := svcs.Update(g.c.ctx, svc, metav1.UpdateOptions{}); err != nil {
			g.t.Fatal(err)
		}
	}
	update(func(s *corev1.ServiceSpec) {
		s.Type, s.ExternalName = corev1.ServiceTypeExternalName, "www.example.com"
		s.ClusterIP, s.ClusterIPs, s.IPFamilies, s.IPFamilyPolicy = "", nil, nil, nil
	})
	g.agree(ns, fqdn, "CNAME", dns.TypeA, dns.TypeCNAME)
	update(func(s *corev1.ServiceSpec) {
		s.Type, s.ExternalName, s.ClusterIP = corev1.ServiceTypeClusterIP, "", corev1.ClusterIPNone
	})
	v4, _ := g.pod()
	g.slice(ns, name, true, name+"-a", discoveryv1.AddressTypeIPv4, []corev1.ServicePort{{Name: "http", Port: 8080, Protocol: corev1.ProtocolTCP}},
		[]discoveryv1.Endpoint{{Addresses: []string{v4}, Hostname: ptr.To("m-0")}})
	g.agree(ns, "m-0."+fqdn, "A", dns.TypeA)
	g.agree(ns, fqdn, "A", dns.TypeA)
	g.ask(fqdn, dns.TypeA, dns.TypeAAAA, dns.TypeCNAME)
	g.ask("_http._tcp."+fqdn, dns.TypeSRV)
	g.ask("m-0."+fqdn, dns.TypeA, dns.TypeSRV)
}

// agree waits until ztdns's table holds a record of rowType at name (the
// Service's current state: until then ztdns forwards the name, and
// answers as CoreDNS by construction), then until it answers as CoreDNS
// for types.
func (g *generator) agree(ns, name, rowType string, types ...uint16) {
	g.t.Helper()
	agenttest.Eventually(g.t, 20*time.Second, func() error {
		rows, err := g.agent.Table(ns)
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(rows, func(r control.TableRow) bool { return r.Name == name && r.Type == rowType }) {
			return fmt.Errorf("ztdns table lists no %s record at %s", rowType, name)
		}
		return nil
	})
	for _, qt := range types {
		q := question{Question: dns.Question{Name: dns.CanonicalName(name), Qtype: qt, Qclass: dns.ClassINET}}
		agenttest.Eventually(g.t, 20*time.Second, func() error {
			if diff := check(g.t, "udp", g.agent.Addr, g.coredns, q); diff != "" {
				return fmt.Errorf("%s %s: %s", name, dns.TypeToString[qt], diff)
			}
			return nil
		})
	}
}

// slice writes an EndpointSlice of ports of Service svc, headless or not.
// Half of the slices are labelled as the EndpointSlice controller labels
// its own (managed-by, and headless for a headless Service), the others
// as another controller's, which labels only the Service's name.
func (g *generator) slice(ns, svc string, headless bool, name string, family discoveryv1.AddressType, ports []corev1.ServicePort, eps []discoveryv1.Endpoint) {
	g.t.Helper()
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: family, Endpoints: eps,
	}
	if g.rng.IntN(2) == 0 {
		es.Labels[discoveryv1.LabelManagedBy] = "endpointslice-controller.k8s.io"
		if headless {
			es.Labels[corev1.IsHeadlessService] = ""
		}
	}
	for _, p := range ports {
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: ptr.To(p.Name), Port: ptr.To(p.Port), Protocol: ptr.To(p.Protocol), AppProtocol: p.AppProtocol})
	}
	g.create(es)
}

func (g *generator) create(es *discoveryv1.EndpointSlice) {
	g.t.Helper()
	if _, err := g.c.env.Client().DiscoveryV1().EndpointSlices(es.Namespace).Create(g.c.ctx, es, metav1.CreateOptions{}); err != nil {
		g.t.Fatal(err)
	}
}

// externalName makes an ExternalName Service, and asks A, AAAA and CNAME
// at its name.
func (g *generator) externalName(ns, name, target string) {
	g.newExternalName(ns, name, target)
	g.ask(name+"."+ns+".svc.cluster.local.", dns.TypeA, dns.TypeAAAA, dns.TypeCNAME)
}

func (g *generator) newExternalName(ns, name, target string) {
	g.service(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: target}})
}

// askQ asks q from the curl pod's address, with EDNS unless q says not.
func askQ(t *testing.T, proto string, server netip.AddrPort, q question) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(q.Name, q.Qtype)
	if !q.noEDNS {
		m.SetEdns0(4096, false)
	}
	return (&agenttest.Agent{Addr: server}).Exchange(t, proto, curlIP, m)
}

// compare returns how got differs from want, "" when it does not. Of a
// truncated reply only the number of records is compared: which fit
// differs (a set of addresses is rotated or shuffled).
func compare(got, want *dns.Msg) string {
	switch {
	case got.Rcode != want.Rcode:
		return fmt.Sprintf("rcode %s, want %s", dns.RcodeToString[got.Rcode], dns.RcodeToString[want.Rcode])
	case got.Authoritative != want.Authoritative:
		return fmt.Sprintf("AA %v, want %v", got.Authoritative, want.Authoritative)
	case got.Truncated != want.Truncated:
		return fmt.Sprintf("TC %v, want %v", got.Truncated, want.Truncated)
	case got.Truncated:
		if g, w := len(got.Answer), len(want.Answer); g != w {
			return fmt.Sprintf("truncated to %d answer records, want %d", g, w)
		}
		return ""
	}
	if g, w := records(got.Answer), records(want.Answer); !slices.Equal(g, w) {
		return fmt.Sprintf("answer %q, want %q", g, w)
	}
	if len(want.Answer) == 0 {
		if g, w := records(got.Ns), records(want.Ns); !slices.Equal(g, w) {
			return fmt.Sprintf("authority %q, want %q", g, w)
		}
	}
	if g, w := records(withoutOPT(got.Extra)), records(withoutOPT(want.Extra)); !slices.Equal(g, w) {
		return fmt.Sprintf("additional %q, want %q", g, w)
	}
	return ""
}

func withoutOPT(rrs []dns.RR) []dns.RR {
	return slices.DeleteFunc(slices.Clone(rrs), func(rr dns.RR) bool { return rr.Header().Rrtype == dns.TypeOPT })
}

// records renders records for comparison, sorted: owner in lower case, TTL
// (of cluster names only: forwarded ones age in caches), no SRV weight, no
// SOA serial.
func records(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		rr = dns.Copy(rr)
		h := rr.Header()
		h.Name = strings.ToLower(h.Name)
		if !strings.HasSuffix(h.Name, ".cluster.local.") && !strings.HasSuffix(h.Name, ".arpa.") {
			h.Ttl = 0
		}
		switch rr := rr.(type) {
		case *dns.SRV:
			rr.Weight = 0
		case *dns.SOA:
			rr.Serial = 0
		}
		out = append(out, rr.String())
	}
	slices.Sort(out)
	return out
}
