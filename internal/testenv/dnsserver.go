//go:build linux

package testenv

import (
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Query is one question a DNSServer received.
type Query struct {
	Net    string         // "udp" or "tcp"
	Local  netip.AddrPort // the address it arrived on
	Remote netip.AddrPort // who sent it
	Name   string         // fully qualified, lower case
	Type   uint16         // dns.TypeA, ...
}

// Answerer returns the answer records for a question that arrived on local.
type Answerer func(q dns.Question, local netip.AddrPort) []dns.RR

// Marker answers every A question with a4 and every AAAA question with a6
// (TTL 0, so nothing caches it), and nothing else.
func Marker(a4, a6 netip.Addr) Answerer {
	return func(q dns.Question, _ netip.AddrPort) []dns.RR {
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Rrtype: q.Qtype}
		switch q.Qtype {
		case dns.TypeA:
			return []dns.RR{&dns.A{Hdr: hdr, A: a4.AsSlice()}}
		case dns.TypeAAAA:
			return []dns.RR{&dns.AAAA{Hdr: hdr, AAAA: a6.AsSlice()}}
		}
		return nil
	}
}

// DNSServer is an authoritative test server listening on UDP and TCP on a
// set of addresses, recording every query.
type DNSServer struct {
	answer Answerer

	mu      sync.Mutex
	queries []Query
}

// StartDNSServer listens on every address, UDP and TCP, inside netns (nil:
// the test's own namespace), until cleanup. Each address has its own
// sockets, so the server knows which address a query arrived on and replies
// from it.
func StartDNSServer(tb testing.TB, netns *Netns, addrs []netip.AddrPort, answer Answerer) *DNSServer {
	tb.Helper()
	s := &DNSServer{answer: answer}
	var (
		pcs []net.PacketConn
		lns []net.Listener
	)
	listen := func() error {
		for _, a := range addrs {
			pc, err := net.ListenPacket("udp", a.String())
			if err != nil {
				return err
			}
			pcs = append(pcs, pc)
			ln, err := net.Listen("tcp", a.String())
			if err != nil {
				return err
			}
			lns = append(lns, ln)
		}
		return nil
	}
	var err error
	if netns != nil {
		err = netns.Do(listen)
	} else {
		err = listen()
	}
	closeAll := func() {
		for _, pc := range pcs {
			pc.Close()
		}
		for _, ln := range lns {
			ln.Close()
		}
	}
	if err != nil {
		closeAll()
		tb.Fatalf("testenv: DNS server: %v", err)
	}

	var servers []*dns.Server
	for i := range pcs {
		local := netip.MustParseAddrPort(pcs[i].LocalAddr().String())
		h := s.handler(local)
		servers = append(servers,
			&dns.Server{PacketConn: pcs[i], Handler: h},
			&dns.Server{Listener: lns[i], Handler: h})
	}
	var wg sync.WaitGroup
	for _, srv := range servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = srv.ActivateAndServe() // returns when shut down
		}()
		<-started
	}
	tb.Cleanup(func() {
		for _, srv := range servers {
			_ = srv.Shutdown()
		}
		wg.Wait()
	})
	return s
}

func (s *DNSServer) handler(local netip.AddrPort) dns.Handler {
	return dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		remote, _ := netip.ParseAddrPort(w.RemoteAddr().String())
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		for _, q := range req.Question {
			s.record(Query{
				Net:    w.LocalAddr().Network(),
				Local:  local,
				Remote: netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port()),
				Name:   dns.CanonicalName(q.Name),
				Type:   q.Qtype,
			})
			m.Answer = append(m.Answer, s.answer(q, local)...)
		}
		_ = w.WriteMsg(m)
	})
}

func (s *DNSServer) record(q Query) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queries = append(s.queries, q)
}

// Queries returns the queries received so far.
func (s *DNSServer) Queries() []Query {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Query(nil), s.queries...)
}

// QueriesFrom returns the queries whose source address is addr.
func (s *DNSServer) QueriesFrom(addr netip.Addr) []Query {
	var out []Query
	for _, q := range s.Queries() {
		if q.Remote.Addr() == addr {
			out = append(out, q)
		}
	}
	return out
}
