// The agent's listening sockets: the resolver's UDP and TCP on every
// address, the metrics listener and the control socket, each bound afresh or
// adopted from a predecessor that handed it over; and the refusal to serve
// beside another process on the same address (checkNotServed).

package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"

	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/handoff"
	"github.com/ztdns/ztdns/pkg/resolver"
)

// listen opens the resolver's sockets, SocketsPerAddr UDP sockets and one
// TCP listener on every address, reusing those a predecessor handed over.
func (a *Agent) listen(spawn func(string, func() error), in *handoff.Inherited) error {
	if in == nil {
		in = &handoff.Inherited{}
	}
	for _, addr := range a.addrs {
		udp := in.UDP[addr]
		delete(in.UDP, addr)
		for len(udp) < a.cfg.SocketsPerAddr {
			c, err := resolver.ListenUDP(addr)
			if err != nil {
				return fmt.Errorf("listening on udp %s: %w", addr, err)
			}
			udp = append(udp, c)
		}
		for _, c := range udp {
			a.udp = append(a.udp, c)
			spawn("udp "+addr.String(), func() error { return a.server.ServeUDP(c) })
		}
		ln := in.TCP[addr]
		delete(in.TCP, addr)
		if ln == nil {
			var err error
			if ln, err = resolver.ListenTCP(addr); err != nil {
				return fmt.Errorf("listening on tcp %s: %w", addr, err)
			}
		}
		a.tcp = append(a.tcp, ln)
		spawn("tcp "+addr.String(), func() error { return a.server.ServeTCP(ln) })
	}
	if a.dataplane != nil {
		// Addresses this agent no longer listens on: the programs send pods
		// there until finishTakeover, and the predecessor stops reading
		// when it drains.
		for addr, cs := range in.UDP {
			for _, c := range cs {
				a.retired = append(a.retired, c)
				spawn("udp "+addr.String()+" (previous)", unlessSet(&a.retiredDone, func() error { return a.server.ServeUDP(c) }))
			}
		}
		for addr, ln := range in.TCP {
			a.retired = append(a.retired, ln)
			spawn("tcp "+addr.String()+" (previous)", unlessSet(&a.retiredDone, func() error { return a.server.ServeTCP(ln) }))
		}
		in.UDP, in.TCP = nil, nil
	}
	in.CloseSockets() // addresses this agent no longer listens on
	return nil
}

// checkNotServed refuses to start where another process already serves
// a resolver address, whose SO_REUSEPORT sockets the kernel would let this
// agent bind beside the other's, taking about half of its queries (see
// resolver.CheckNotServed); listenMetrics refuses the --metrics address.
// The sockets of a predecessor that hands them over are not another's: it
// serves there until this agent takes over, and a new UDP socket (a larger
// --udp-sockets) joins theirs. The error wraps EADDRINUSE.
func (a *Agent) checkNotServed(in *handoff.Inherited) error {
	for _, addr := range a.addrs {
		if in.Covers(addr) {
			continue
		}
		if err := resolver.CheckNotServed(addr); err != nil {
			return fmt.Errorf("%w; not serving beside it: stop that one, or give this agent another --listen address", err)
		}
	}
	return nil
}

// listenControl serves the control socket on the listener the predecessor
// handed over, if it did: connections made since it stopped accepting wait
// in that socket's backlog, at the path that never went missing. Else, or
// if that listener cannot be served (it is no longer at the path), it binds
// the path.
func (a *Agent) listenControl(in *handoff.Inherited, access control.Access) (net.Listener, error) {
	if in != nil && in.Control != nil {
		ln := in.Control
		in.Control = nil
		adopted, err := control.Adopt(a.cfg.Socket, ln, access)
		if err == nil {
			return adopted, nil
		}
		a.log.Warn("not serving the control socket the previous agent handed over; binding its path afresh", "err", err)
		ln.Close() // this agent's copy, the last: the path is free to bind
	}
	return control.Listen(a.cfg.Socket, access)
}

// listenMetrics opens the HTTP listener, or adopts the predecessor's when
// it is bound where this agent's --metrics says: one on another address
// (the port changed in an upgrade) would answer this pod's probes on the
// old port only, and its liveness probe would restart it, taking the old
// listener again each time.
func (a *Agent) listenMetrics(in *handoff.Inherited) error {
	addr := BracketIPv6HostPort(a.cfg.MetricsAddr)
	if in != nil && in.Metrics != nil {
		if sameTCPAddr(in.Metrics.Addr(), addr) {
			a.metrics, in.Metrics = in.Metrics, nil
			return nil
		}
		a.log.Info("not adopting the previous agent's metrics listener: its address differs", "previous", in.Metrics.Addr(), "metrics", addr)
		in.Metrics.Close() // this agent's copy; the predecessor keeps its own
		in.Metrics = nil
	}
	ln, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		_, port, _ := net.SplitHostPort(addr)
		return fmt.Errorf("--metrics %s: another process already serves on this address (a second ztdns agent?): find it with ss -ltnp 'sport = :%s'; "+
			"not serving beside it: stop that one, or give this agent another --metrics address: %w", addr, port, err)
	}
	if err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}
	if host, _, _ := net.SplitHostPort(addr); host == "" || net.ParseIP(host).IsUnspecified() {
		a.log.Warn("metrics, health and readiness are served on every interface of the node; give --metrics the node's IP or 127.0.0.1", "metrics", addr)
	}
	a.metrics = ln.(*net.TCPListener)
	return nil
}

// sameTCPAddr reports whether the listener address got is the one addr
// (host:port, as given to net.Listen) binds: unspecified hosts of either
// family are the same wildcard.
func sameTCPAddr(got net.Addr, addr string) bool {
	g, ok := got.(*net.TCPAddr)
	if !ok {
		return false
	}
	want, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil || want.Port != g.Port {
		return false
	}
	if want.IP == nil || want.IP.IsUnspecified() {
		return g.IP == nil || g.IP.IsUnspecified()
	}
	return want.IP.Equal(g.IP)
}

// BracketIPv6HostPort puts brackets around an IPv6 address written without
// them before its port, reading the last colon as the port's: the metrics
// address "$(HOST_IP):15053" on an IPv6 node (earlier charts passed it so;
// now "[$(HOST_IP)]:15053", which net.SplitHostPort takes for both
// families), and the DNS flags' way of telling an address with a port from
// one without. Anything else comes back as it was.
func BracketIPv6HostPort(s string) string {
	if _, _, err := net.SplitHostPort(s); err == nil {
		return s
	}
	if i := strings.LastIndexByte(s, ':'); i > 0 {
		if ip, err := netip.ParseAddr(s[:i]); err == nil && ip.Is6() {
			return net.JoinHostPort(ip.String(), s[i+1:])
		}
	}
	return s
}
