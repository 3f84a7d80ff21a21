// Package agenttest runs a real ztdns agent in the test process, serving on a
// free loopback port, and asks it real DNS questions over UDP and TCP from a
// chosen source address (which pod is asking).
package agenttest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/control"
)

// Agent is a running agent.
type Agent struct {
	// Addr is where it serves DNS (UDP and TCP).
	Addr netip.AddrPort
	// Socket is its control socket.
	Socket string
	// done receives what agent.Run returned; whoever takes it puts it back.
	done chan error
}

// Start runs an agent with cfg until the test ends. Listen, Socket and
// Logger are filled in when empty; the test fails if the agent is not ready
// within 30 seconds or returns an error.
func Start(tb testing.TB, cfg agent.Config) *Agent {
	tb.Helper()
	a := Run(tb, cfg)
	Eventually(tb, 30*time.Second, func() error {
		a.failIfStopped(tb)
		st, err := a.Status()
		if err != nil {
			return err
		}
		if !st.Ready {
			return fmt.Errorf("not ready: %s", st.NotReady)
		}
		return nil
	})
	return a
}

// Run is Start without waiting for the agent to be ready: it returns once
// the control socket answers, which it does before the first table (a
// source that has not synced yet). The test fails if the agent returns.
func Run(tb testing.TB, cfg agent.Config) *Agent {
	tb.Helper()
	if len(cfg.Listen) == 0 {
		cfg.Listen = []netip.AddrPort{testenv.FreePort(tb)}
	}
	if cfg.Socket == "" {
		cfg.Socket = filepath.Join(tb.TempDir(), "ztdns.sock")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(testWriter{tb}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	a := &Agent{Addr: cfg.Listen[0], Socket: cfg.Socket, done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { a.done <- agent.Run(ctx, cfg) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-a.done; err != nil {
			tb.Errorf("agent: %v", err)
		}
	})
	Eventually(tb, 30*time.Second, func() error {
		a.failIfStopped(tb)
		_, err := a.Status()
		return err
	})
	return a
}

// failIfStopped fails the test at once if the agent has returned.
func (a *Agent) failIfStopped(tb testing.TB) {
	tb.Helper()
	select {
	case err := <-a.done:
		a.done <- err
		tb.Fatalf("agent stopped: %v", err)
	default:
	}
}

// Status asks the agent for its status.
func (a *Agent) Status() (control.Status, error) {
	return control.NewClient(a.Socket, 2*time.Second).Status(context.Background())
}

// Table asks the agent for its table as a pod in namespace ns sees it
// (`ztdns table`; "" is a client outside every namespace).
func (a *Agent) Table(ns string) ([]control.TableRow, error) {
	return control.NewClient(a.Socket, 2*time.Second).Table(context.Background(), ns)
}

// Query asks one question from the source address from, over proto ("udp"
// or "tcp").
func (a *Agent) Query(tb testing.TB, proto string, from netip.Addr, qname string, qtype uint16, edns bool) *dns.Msg {
	tb.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(qname), qtype)
	if edns {
		m.SetEdns0(1232, false)
	}
	return a.Exchange(tb, proto, from, m)
}

// Exchange sends m from the source address from, over proto.
func (a *Agent) Exchange(tb testing.TB, proto string, from netip.Addr, m *dns.Msg) *dns.Msg {
	tb.Helper()
	var local net.Addr = &net.UDPAddr{IP: from.AsSlice()}
	if proto == "tcp" {
		local = &net.TCPAddr{IP: from.AsSlice()}
	}
	c := &dns.Client{Net: proto, Timeout: 5 * time.Second, Dialer: &net.Dialer{LocalAddr: local, Timeout: 5 * time.Second}}
	resp, _, err := c.Exchange(m, a.Addr.String())
	if err != nil {
		tb.Fatalf("%s query %s %s from %s: %v", proto, m.Question[0].Name, dns.TypeToString[m.Question[0].Qtype], from, err)
	}
	return resp
}

// Addrs asks for the A and AAAA... records of qname of type qtype and returns
// their addresses, or the rcode's name when the answer is not NOERROR.
func (a *Agent) Addrs(tb testing.TB, from netip.Addr, qname string, qtype uint16) []string {
	tb.Helper()
	resp := a.Query(tb, "udp", from, qname, qtype, false)
	if resp.Rcode != dns.RcodeSuccess {
		return []string{dns.RcodeToString[resp.Rcode]}
	}
	var out []string
	for _, rr := range resp.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, rr.A.String())
		case *dns.AAAA:
			out = append(out, rr.AAAA.String())
		}
	}
	slices.Sort(out)
	return out
}

// RRText renders records without TTL and class, sorted: "name TYPE rdata".
func RRText(rrs []dns.RR) []string {
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		h := rr.Header()
		rdata := strings.TrimPrefix(rr.String(), h.String())
		out = append(out, h.Name+" "+dns.TypeToString[h.Rrtype]+" "+rdata)
	}
	slices.Sort(out)
	return out
}

// Eventually retries f until it returns nil, failing the test with f's
// last error if it still does not after within: testenv.EventuallyNil.
func Eventually(tb testing.TB, within time.Duration, f func() error) {
	tb.Helper()
	testenv.EventuallyNil(tb, within, f)
}

type testWriter struct{ tb testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
