//go:build linux

package testenv

import (
	"net/netip"
	"testing"

	"github.com/ztdns/ztdns/internal/dnstest"
)

// StartDNSServer runs a dnstest server inside the namespace, on every
// address (UDP and TCP, each address with its own sockets), until cleanup.
// The addresses must already be on one of its interfaces.
func (n *Netns) StartDNSServer(tb testing.TB, addrs []netip.AddrPort, r dnstest.Responder) *dnstest.Server {
	tb.Helper()
	return dnstest.StartAt(tb, addrs, r, dnstest.OpenWith(n.Do))
}

// ServeNameserver puts addr on the namespace's loopback and runs a dnstest
// server on addr:53 there: a nameserver that pods behind the namespace can
// reach over their default route.
func (n *Netns) ServeNameserver(tb testing.TB, addr netip.Addr, r dnstest.Responder) *dnstest.Server {
	tb.Helper()
	n.AddAddr(tb, netip.PrefixFrom(addr, addr.BitLen()).String(), "lo")
	return n.StartDNSServer(tb, []netip.AddrPort{netip.AddrPortFrom(addr, 53)}, r)
}
