package forward

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// errNotUnicast reports an upstream address that names many hosts: a
// multicast group.
var errNotUnicast = errors.New("not a unicast address")

// unicastDialer makes the sockets of UDP exchanges. Go turns SO_BROADCAST
// on for every UDP socket it makes; the Control function turns it off
// before the socket is connected, so that a broadcast upstream (the limited
// 255.255.255.255, or a subnet's broadcast address on the node's network)
// fails to connect with EACCES at once instead of being sent. An upstream
// may be a pod's choice (the nameserver it addressed), and the forwarder
// sends from the node: a broadcast would reach every host on the node's
// network, with the node as its source.
var unicastDialer = net.Dialer{Control: noBroadcast}

// dialUDP connects a UDP socket of its own to upstream over network ("udp4"
// or "udp6"), which must be a unicast address: a multicast group is
// refused before any socket is made (SO_BROADCAST does not cover it), a
// broadcast address by the kernel (unicastDialer).
func dialUDP(network string, upstream netip.AddrPort) (*net.UDPConn, error) {
	if upstream.Addr().IsMulticast() {
		return nil, errNotUnicast
	}
	c, err := unicastDialer.Dial(network, upstream.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.UDPConn), nil
}

// noBroadcast is a net.Dialer Control function that turns SO_BROADCAST off.
func noBroadcast(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 0)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("clear SO_BROADCAST: %w", serr)
	}
	return nil
}
