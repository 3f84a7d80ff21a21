package resolver

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
)

// TestStopEndsIdleConnections: a client that asked one query keeps its TCP
// connection open and sends nothing more; Close, and Drain, return at
// once, long before the connection's idle timeout (a minute). Before,
// Close woke no connection and waited for the idle timeout to end it;
// and Drain could too, when the connection went idle as Drain woke it
// (its reader set its idle deadline after Drain's).
func TestStopEndsIdleConnections(t *testing.T) {
	const idle = time.Minute
	for name, stop := range map[string]func(*Server){
		"Close": func(s *Server) { s.Close() },
		"Drain": (*Server).Drain,
	} {
		t.Run(name, func(t *testing.T) {
			s := New(Options{TCPIdleTimeout: idle})
			t.Cleanup(func() { s.Close() })
			udp, ln := listenPair(t, "127.0.0.1:0")
			t.Cleanup(func() { udp.Close(); ln.Close() })
			go s.ServeUDP(udp)
			go s.ServeTCP(ln)
			c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			c.SetDeadline(time.Now().Add(5 * time.Second))
			m := new(dns.Msg)
			m.SetQuestion("who.example.", dns.TypeA)
			q, err := m.Pack()
			if err != nil {
				t.Fatal(err)
			}
			if err := dnstest.WriteTCP(c, q); err != nil {
				t.Fatal(err)
			}
			if _, err := dnstest.ReadTCP(c); err != nil {
				t.Fatalf("no reply: %v", err)
			}

			start := time.Now()
			done := make(chan struct{})
			go func() {
				defer close(done)
				stop(s)
			}()
			select {
			case <-done:
				t.Logf("%s returned in %v", name, time.Since(start))
			case <-time.After(30 * time.Second):
				t.Fatalf("%s has not returned in 30s: it waits for the idle connection's timeout (%v)", name, idle)
			}
		})
	}
}
