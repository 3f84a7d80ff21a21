package testenv

import (
	"net"
	"net/netip"
	"testing"
)

// FreePort returns a loopback address whose UDP and TCP ports were both
// free. Another process may still take it before the caller binds it, so a
// caller that can bind port 0 itself should.
func FreePort(tb testing.TB) netip.AddrPort {
	tb.Helper()
	for range 50 {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		addr := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		ln, err := net.Listen("tcp4", addr.String())
		pc.Close()
		if err != nil {
			continue
		}
		ln.Close()
		return addr
	}
	tb.Fatal("no free loopback port")
	return netip.AddrPort{}
}
