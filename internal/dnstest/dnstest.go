// Package dnstest runs small authoritative DNS servers for tests: the
// upstreams ztdns forwards to, the nameservers pods name, stand-ins for the
// resolver. They listen only where a test tells them (loopback, or sockets
// opened inside a test's network namespace), so no test ever asks the
// machine's own nameserver, and they record every question they get.
package dnstest

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Responder makes the reply to a query that arrived on local; nil sends
// none.
type Responder interface {
	Reply(req *dns.Msg, local netip.AddrPort) *dns.Msg
}

// Query is one question a Server received.
type Query struct {
	Net    string         // "udp" or "tcp"
	Local  netip.AddrPort // the address it arrived on
	Remote netip.AddrPort // who sent it (IPv4 unmapped)
	Name   string         // fully qualified, lower case
	Type   uint16         // dns.TypeA, ...
	EDNS   bool           // it came with an OPT record
}

// Server is a running test server.
type Server struct {
	// Addr is where it listens (UDP and TCP); with several addresses, the
	// first.
	Addr netip.AddrPort
	// Addrs are all the addresses it listens on, in the order given.
	Addrs []netip.AddrPort

	responder Responder
	mu        sync.Mutex
	queries   []Query
}

// sockets are what a server listens on for one address.
type sockets struct {
	udp net.PacketConn
	tcp net.Listener
}

// Option changes how a server starts.
type Option func(*options)

type options struct {
	open func(listen func() error) error
}

// OpenWith opens the server's sockets inside open, e.g. a network
// namespace's Do (testenv.Netns.StartDNSServer uses it), so that they
// belong to that namespace.
func OpenWith(open func(listen func() error) error) Option {
	return func(o *options) { o.open = open }
}

// Start serves r on addr ("127.0.0.1:0" picks a port; UDP and TCP share
// it) until the test ends.
func Start(tb testing.TB, addr string, r Responder, opts ...Option) *Server {
	tb.Helper()
	return StartAt(tb, []netip.AddrPort{netip.MustParseAddrPort(addr)}, r, opts...)
}

// StartAt serves r on every address, UDP and TCP, until the test ends.
// Each address has its own sockets, so the server knows which address a
// query arrived on and replies from it.
func StartAt(tb testing.TB, addrs []netip.AddrPort, r Responder, opts ...Option) *Server {
	tb.Helper()
	o := newOptions(opts)
	var all []sockets
	err := o.open(func() error {
		for _, a := range addrs {
			pc, ln, err := ListenPair(a)
			if err != nil {
				return err
			}
			all = append(all, sockets{udp: pc, tcp: ln})
		}
		return nil
	})
	if err != nil {
		for _, socks := range all {
			socks.udp.Close()
			socks.tcp.Close()
		}
		tb.Fatalf("dnstest: %v", err)
	}
	return serveOn(tb, all, r)
}

// ListenPair opens UDP on addr, then TCP on the port UDP got, both bound
// until the caller closes them. With port 0 the TCP port may be taken even
// when UDP's was free: then it tries another.
func ListenPair(addr netip.AddrPort) (net.PacketConn, net.Listener, error) {
	tries := 1
	if addr.Port() == 0 {
		tries = 50
	}
	var err error
	for range tries {
		var pc net.PacketConn
		if pc, err = net.ListenPacket("udp", addr.String()); err != nil {
			return nil, nil, err
		}
		var ln net.Listener
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			return pc, ln, nil
		}
		pc.Close()
	}
	return nil, nil, fmt.Errorf("TCP port taken: %w", err)
}

func newOptions(opts []Option) options {
	o := options{open: func(listen func() error) error { return listen() }}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// serveOn serves r on socks until the test ends, then closes them.
func serveOn(tb testing.TB, socks []sockets, r Responder) *Server {
	tb.Helper()
	if len(socks) == 0 {
		tb.Fatal("dnstest: no sockets to serve on")
	}
	s := &Server{responder: r}
	var servers []*dns.Server
	for _, sk := range socks {
		local := sk.udp.LocalAddr().(*net.UDPAddr).AddrPort()
		local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
		s.Addrs = append(s.Addrs, local)
		h := s.handler(local)
		servers = append(servers,
			&dns.Server{PacketConn: sk.udp, Handler: h},
			&dns.Server{Listener: sk.tcp, Handler: h})
	}
	s.Addr = s.Addrs[0]
	StartServers(tb, servers...)
	return s
}

func (s *Server) handler(local netip.AddrPort) dns.Handler {
	return dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		remote, _ := netip.ParseAddrPort(w.RemoteAddr().String())
		s.mu.Lock()
		for _, q := range req.Question {
			s.queries = append(s.queries, Query{
				Net:    w.LocalAddr().Network(),
				Local:  local,
				Remote: netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port()),
				Name:   dns.CanonicalName(q.Name),
				Type:   q.Qtype,
				EDNS:   req.IsEdns0() != nil,
			})
		}
		s.mu.Unlock()
		if reply := s.responder.Reply(req, local); reply != nil {
			_ = w.WriteMsg(reply)
		}
	})
}

// Received returns every question received so far, in order.
func (s *Server) Received() []Query {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Query(nil), s.queries...)
}

// ReceivedFor returns the questions received so far for name (any case,
// with or without the trailing dot).
func (s *Server) ReceivedFor(name string) []Query {
	name = dns.CanonicalName(name)
	var out []Query
	for _, q := range s.Received() {
		if q.Name == name {
			out = append(out, q)
		}
	}
	return out
}

// Queries returns how many questions for name (any case, with or without
// the trailing dot) the server has received.
func (s *Server) Queries(name string) int { return len(s.ReceivedFor(name)) }

// StartServers starts miekg/dns servers (a UDP and a TCP one, say, on
// sockets the test opened), returns once each has started, and shuts them
// down when the test ends.
func StartServers(tb testing.TB, servers ...*dns.Server) {
	tb.Helper()
	var wg sync.WaitGroup
	for _, srv := range servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		wg.Go(func() { _ = srv.ActivateAndServe() }) // returns when shut down
		<-started
	}
	tb.Cleanup(func() {
		for _, srv := range servers {
			if err := srv.Shutdown(); err != nil {
				tb.Errorf("dnstest: shut down the server on %s: %v", serverAddr(srv), err)
			}
		}
		wg.Wait()
	})
}

func serverAddr(srv *dns.Server) net.Addr {
	if srv.PacketConn != nil {
		return srv.PacketConn.LocalAddr()
	}
	return srv.Listener.Addr()
}
