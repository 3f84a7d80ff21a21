package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
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

// askBadVers sends one EDNS version 1 query and wants a reply to it.
func askBadVers(ctx context.Context, network string, addr netip.AddrPort) error {
	m := new(dns.Msg)
	m.SetQuestion("healthz.ztdns.invalid.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().SetVersion(1)
	c := &dns.Client{Net: network, Timeout: healthQueryTimeout}
	ctx, cancel := context.WithTimeout(ctx, healthQueryTimeout)
	defer cancel()
	resp, _, err := c.ExchangeContext(ctx, m, addr.String())
	if err != nil {
		return err
	}
	if !resp.Response {
		return errors.New("the reply is not a response")
	}
	return nil
}
