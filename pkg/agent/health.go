package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// healthQueryTimeout bounds each of /healthz's queries; below the chart's
// liveness probe timeout, so a resolver that does not answer fails the probe
// with its reason rather than by the kubelet's timeout.
const healthQueryTimeout = 2 * time.Second

// resolverAnswers proves that the resolver answers on every address it
// serves: /healthz, the liveness probe, asks each one a question over UDP,
// and the first over TCP too, as NodeLocal DNSCache's probe asks its own
// address. The question is one the resolver answers itself whatever its
// table and upstreams hold: EDNS version 1, answered BADVERS (RFC 6891
// 6.1.3). A slow upstream must not get the agent restarted; a resolver that
// stopped reading, lost its addresses or deadlocked must. The restart takes
// the probe's failures, tens of seconds: meanwhile a resolver that stopped
// reading has the heartbeat held back (dataplane.holdBeat), so captured
// pods fail open within seconds instead of waiting on it.
//
// The queries leave from the address they ask, as every process on the
// node sending there does, but from a privileged port (probeConn): the
// resolver holds them to no per-source bound (resolver's isNodeProbe), so
// a process holding that address's TCP connections or flooding its rate
// does not fail the probe and get the agent restarted.
func (a *Agent) resolverAnswers(ctx context.Context) error {
	probes := a.healthProbes()
	errs := make([]error, len(probes))
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Go(func() { errs[i] = p.ask(ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// healthProbe is one of /healthz's questions: over network, to addr.
type healthProbe struct {
	network string
	addr    netip.AddrPort
}

// healthProbes are the questions /healthz asks: one over UDP to every
// address the resolver serves, one over TCP to the first.
func (a *Agent) healthProbes() []healthProbe {
	var probes []healthProbe
	for i, addr := range a.addrs {
		addr = netip.AddrPortFrom(askable(addr.Addr()), addr.Port())
		probes = append(probes, healthProbe{"udp", addr})
		if i == 0 {
			probes = append(probes, healthProbe{"tcp", addr})
		}
	}
	return probes
}

// ask asks the probe's question, and names it in the error.
func (p healthProbe) ask(ctx context.Context) error {
	if err := askBadVers(ctx, p.network, p.addr); err != nil {
		return fmt.Errorf("%s %s: %w", p.network, p.addr, err)
	}
	return nil
}

// askable is where a query to a listen address goes: the loopback address of
// its family for an unspecified one.
func askable(a netip.Addr) netip.Addr {
	switch {
	case !a.IsUnspecified():
		return a
	case a.Is4():
		return netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	return netip.IPv6Loopback()
}

// askBadVers sends one EDNS version 1 query from addr's own address
// (probeConn) and wants a reply to it.
func askBadVers(ctx context.Context, network string, addr netip.AddrPort) error {
	m := new(dns.Msg)
	m.SetQuestion("healthz.ztdns.invalid.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().SetVersion(1)
	ctx, cancel := context.WithTimeout(ctx, healthQueryTimeout)
	defer cancel()
	conn, err := probeConn(ctx, network, addr)
	if err != nil {
		return err
	}
	defer closeProbeConn(conn)
	c := &dns.Client{Net: network, Timeout: healthQueryTimeout}
	resp, _, err := c.ExchangeWithConnContext(ctx, m, &dns.Conn{Conn: conn})
	if err != nil {
		return err
	}
	if !resp.Response {
		return errors.New("the reply is not a response")
	}
	return nil
}

// The probe's source ports: privileged, so that only root on the node can
// send from them, and the resolver can tell the probe from any other
// process sending from the same address (the resolver's isNodeProbe: source
// port below 1024 and source address the destination). The kernel never
// picks a privileged port for a socket bound to port 0, so the probe picks
// one at random among glibc's bindresvport range, 600-1023, above the
// well-known services a node may run, and tries another when it is taken
// (by a service bound to it, or by another of the round's queries).
const (
	probePortMin   = 600
	probePortMax   = 1023
	probePortTries = 16
)

// probeConn dials addr over network from addr's own address and a
// privileged port (probePortMin-probePortMax). An agent that may not bind
// a privileged port (not root, without CAP_NET_BIND_SERVICE: a standalone
// agent on a high port, say) asks from a port the kernel picks instead:
// the address's per-source limits then apply to its probe as to anyone's.
func probeConn(ctx context.Context, network string, addr netip.AddrPort) (net.Conn, error) {
	var err error
	for range probePortTries {
		port := uint16(probePortMin + rand.N(probePortMax-probePortMin+1))
		var c net.Conn
		if c, err = dialFrom(ctx, network, netip.AddrPortFrom(addr.Addr(), port), addr); err == nil {
			return c, nil
		}
		switch {
		case errors.Is(err, syscall.EACCES):
			return dialFrom(ctx, network, netip.AddrPortFrom(addr.Addr(), 0), addr)
		case !errors.Is(err, syscall.EADDRINUSE):
			return nil, err
		}
	}
	return nil, fmt.Errorf("no free source port in %d-%d: %w", probePortMin, probePortMax, err)
}

func dialFrom(ctx context.Context, network string, local, remote netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(local)}
	if network == "tcp" {
		d.LocalAddr = net.TCPAddrFromAddrPort(local)
	}
	return d.DialContext(ctx, network, remote.String())
}

// closeProbeConn closes a probe's connection. A TCP one is reset rather
// than closed with a FIN, which would keep its privileged port in
// TIME_WAIT for a minute: /healthz asked back to back would soon have none
// left. The resolver counts a reset as the client's close.
func closeProbeConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// healthRounds runs /healthz's probe one round at a time: a request that
// comes while a round is in flight shares its outcome. /healthz is
// reachable from any pod (the node's address), and every round's queries
// are charged alike: many requests at once would otherwise send as many
// rounds, each its own sockets and queries. The zero value is ready.
type healthRounds struct {
	mu      sync.Mutex
	current *healthRound
}

type healthRound struct {
	done    chan struct{}
	err     error
	sharing int // requests waiting on it, under healthRounds.mu
}

// beforeHealthRound runs as a round starts, before its queries, with how
// many requests share it now (tests hold the round there while requests
// pile up).
var beforeHealthRound = func(sharing func() int) {}

// do waits for the round in flight, or starts one: round, run without the
// requester's cancellation (one that goes away does not end the round for
// the others; round's queries are bounded by healthQueryTimeout).
func (h *healthRounds) do(ctx context.Context, round func(context.Context) error) error {
	h.mu.Lock()
	r := h.current
	if r == nil {
		r = &healthRound{done: make(chan struct{})}
		h.current = r
		go func() {
			beforeHealthRound(func() int {
				h.mu.Lock()
				defer h.mu.Unlock()
				return r.sharing
			})
			r.err = round(context.WithoutCancel(ctx))
			h.mu.Lock()
			h.current = nil
			h.mu.Unlock()
			close(r.done)
		}()
	}
	r.sharing++
	h.mu.Unlock()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}
