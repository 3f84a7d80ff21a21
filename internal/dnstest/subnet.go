package dnstest

import (
	"net"
	"net/netip"

	"github.com/miekg/dns"
)

// The addresses ClientSubnet answers with: for a query without a client
// subnet, and for one with.
const (
	NoSubnetAddr = "198.51.100.1"
	SubnetAddr   = "203.0.113.99"
)

// ClientSubnet answers every A question as an upstream with client-subnet
// support (CoreDNS's, miekg-based) does: with NoSubnetAddr, or for a query
// with an ECS option with SubnetAddr, the option echoed with its scope;
// it echoes a client's COOKIE with a server cookie.
type ClientSubnet struct{}

func (ClientSubnet) Reply(req *dns.Msg, _ netip.AddrPort) *dns.Msg {
	return TailorToSubnet(req, NoSubnetAddr)
}

// TailorToSubnet is ClientSubnet's reply to req, with plain (not
// NoSubnetAddr) for a query without a client subnet.
func TailorToSubnet(req *dns.Msg, plain string) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	addr := plain
	if o := req.IsEdns0(); o != nil {
		var opts []dns.EDNS0
		for _, e := range o.Option {
			switch e := e.(type) {
			case *dns.EDNS0_SUBNET:
				addr = SubnetAddr
				e.SourceScope = e.SourceNetmask
				opts = append(opts, e)
			case *dns.EDNS0_COOKIE:
				opts = append(opts, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: e.Cookie[:16] + "5e5e5e5e5e5e5e5e"})
			}
		}
		m.SetEdns0(1232, o.Do())
		m.IsEdns0().Option = opts
	}
	m.Answer = []dns.RR{&dns.A{
		Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300},
		A:   net.ParseIP(addr),
	}}
	return m
}
