package dnstest

import (
	"net/netip"

	"github.com/miekg/dns"
)

// KubeDNS answers as a pod's nameserver does, kube-dns, for a cluster that
// has none of the names asked: every name under cluster.local. NXDOMAIN,
// authoritative, with the cluster zone's SOA (TTL and minimum negTTL) and
// without AD; every other name as others answers it (what kube-dns
// forwards).
func KubeDNS(negTTL uint32, others Responder) Responder { return kubeDNS{negTTL, others} }

type kubeDNS struct {
	negTTL uint32
	others Responder
}

func (k kubeDNS) Reply(req *dns.Msg, local netip.AddrPort) *dns.Msg {
	if len(req.Question) != 1 || !dns.IsSubDomain("cluster.local.", dns.CanonicalName(req.Question[0].Name)) {
		return k.others.Reply(req, local)
	}
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	m.Rcode = dns.RcodeNameError
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), opt.Do())
	}
	m.Ns = []dns.RR{&dns.SOA{
		Hdr: dns.RR_Header{Name: "cluster.local.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: k.negTTL},
		Ns:  "ns.dns.cluster.local.", Mbox: "hostmaster.cluster.local.",
		Serial: 1, Refresh: 7200, Retry: 1800, Expire: 86400, Minttl: k.negTTL,
	}}
	return m
}

// Validating answers as r does, with AD set, as a validating resolver
// answers from signed zones.
func Validating(r Responder) Responder { return validating{r} }

type validating struct{ Responder }

func (v validating) Reply(req *dns.Msg, local netip.AddrPort) *dns.Msg {
	m := v.Responder.Reply(req, local)
	m.AuthenticatedData = true
	return m
}
