//go:build linux

package resolver

import (
	"context"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// listenConfig binds with SO_REUSEPORT, so several sockets (one per CPU, or
// an old and a new agent during a restart) share an address, and with
// IP_FREEBIND, so the agent can bind its resolver address before the
// interface that carries it is up.
var listenConfig = net.ListenConfig{
	Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); serr != nil {
				return
			}
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1); serr != nil {
				return
			}
			if network == "udp6" || network == "tcp6" {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	},
}

// ListenUDP opens a UDP socket on addr for ServeUDP.
func ListenUDP(addr netip.AddrPort) (*net.UDPConn, error) {
	pc, err := listenConfig.ListenPacket(context.Background(), network("udp", addr), addr.String())
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// ListenTCP opens a TCP listener on addr for ServeTCP.
func ListenTCP(addr netip.AddrPort) (*net.TCPListener, error) {
	ln, err := listenConfig.Listen(context.Background(), network("tcp", addr), addr.String())
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

func network(proto string, addr netip.AddrPort) string {
	if addr.Addr().Is4() {
		return proto + "4"
	}
	return proto + "6"
}
