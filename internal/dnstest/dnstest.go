// Package dnstest runs small authoritative DNS servers for tests: the
// upstreams ztdns forwards to. They listen only where a test tells them
// (loopback, or sockets opened inside a test's network namespace), so no test
// ever asks the machine's own nameserver.
package dnstest

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Zone is what a server knows: records by lower-case owner name. Names not
// in it get NXDOMAIN with the zone's SOA, as a real authoritative server
// answers, so negative answers can be cached.
type Zone map[string][]dns.RR

// RRs parses records in zone-file syntax, failing the test on a typo.
func RRs(tb testing.TB, lines ...string) []dns.RR {
	tb.Helper()
	var out []dns.RR
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			tb.Fatalf("bad test record %q: %v", l, err)
		}
		out = append(out, rr)
	}
	return out
}

// ZoneOf builds a Zone from records in zone-file syntax.
func ZoneOf(tb testing.TB, lines ...string) Zone {
	tb.Helper()
	z := Zone{}
	for _, rr := range RRs(tb, lines...) {
		name := strings.ToLower(rr.Header().Name)
		z[name] = append(z[name], rr)
	}
	return z
}

// SOA is the authority record negative answers carry (minimum 60 s).
var SOA = func() dns.RR {
	rr, _ := dns.NewRR("test. 300 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60")
	return rr
}()

// Server is a running test server.
type Server struct {
	// Addr is where it listens (UDP and TCP).
	Addr netip.AddrPort

	zone    Zone
	handler dns.HandlerFunc
	mu      sync.Mutex
	queries map[string]int
	servers []*dns.Server
}

// Option changes a server.
type Option func(*Server)

// WithHandler replaces the zone lookup with h (after counting the query).
func WithHandler(h dns.HandlerFunc) Option { return func(s *Server) { s.handler = h } }

// Start serves zone on addr ("127.0.0.1:0" picks a port; UDP and TCP share
// it) until the test ends.
func Start(tb testing.TB, addr string, zone Zone, opts ...Option) *Server {
	tb.Helper()
	for range 20 { // the TCP port may be taken even when UDP's was free
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			tb.Fatalf("dnstest: %v", err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			continue
		}
		return StartOn(tb, pc, ln, zone, opts...)
	}
	tb.Fatalf("dnstest: no free port on %s", addr)
	return nil
}

// StartOn serves zone on sockets the test opened itself, for instance inside
// a network namespace. ln may be nil for a UDP-only server.
func StartOn(tb testing.TB, pc net.PacketConn, ln net.Listener, zone Zone, opts ...Option) *Server {
	tb.Helper()
	s := &Server{zone: zone, queries: map[string]int{}}
	s.Addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	for _, o := range opts {
		o(s)
	}
	var wg sync.WaitGroup
	start := func(srv *dns.Server) {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		srv.Handler = dns.HandlerFunc(s.serve)
		s.servers = append(s.servers, srv)
		wg.Add(1)
		go func() {
			defer wg.Done()
			srv.ActivateAndServe()
		}()
		<-started
	}
	start(&dns.Server{PacketConn: pc})
	if ln != nil {
		start(&dns.Server{Listener: ln})
	}
	tb.Cleanup(func() {
		for _, srv := range s.servers {
			srv.Shutdown()
		}
		wg.Wait()
	})
	return s
}

// Queries returns how many queries for name (any case, with or without the
// trailing dot) the server has seen.
func (s *Server) Queries(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[dns.CanonicalName(name)]
}

func (s *Server) serve(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) > 0 {
		s.mu.Lock()
		s.queries[dns.CanonicalName(req.Question[0].Name)]++
		s.mu.Unlock()
	}
	if s.handler != nil {
		s.handler(w, req)
		return
	}
	w.WriteMsg(s.Answer(req))
}

// Answer is the zone's reply to req: the records of the asked type, NODATA
// for a known name without them, NXDOMAIN otherwise.
func (s *Server) Answer(req *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), opt.Do())
	}
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		return m
	}
	q := req.Question[0]
	rrs, ok := s.zone[strings.ToLower(q.Name)]
	if !ok {
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{SOA}
		return m
	}
	for _, rr := range rrs {
		if rr.Header().Rrtype == q.Qtype || q.Qtype == dns.TypeANY {
			c := dns.Copy(rr)
			c.Header().Name = q.Name
			m.Answer = append(m.Answer, c)
		}
	}
	if len(m.Answer) == 0 {
		m.Ns = []dns.RR{SOA}
	}
	return m
}
