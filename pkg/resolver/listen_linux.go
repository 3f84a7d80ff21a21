//go:build linux

package resolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// listenConfig binds with SO_REUSEPORT, so several sockets (--udp-sockets,
// or an old and a new agent's during a restart) share an address, and with
// IP_FREEBIND, so the agent can bind its resolver address before the
// interface that carries it is up. A TCP listener gets its connections'
// buffers before listen(2): the kernel accepts connections from then on,
// each with the listener's buffers of that moment.
//
// SO_REUSEPORT also lets any other process of the same user bind the
// address beside this one, and the kernel then spreads the queries over
// both: CheckNotServed, before the first socket is bound, is what keeps a
// second resolver off an address (ListenUDP and ListenTCP do not check,
// for they open each socket of a group).
var listenConfig = net.ListenConfig{
	Control: func(network, address string, c syscall.RawConn) error {
		return control(rawConn{c}, func(fd int) error {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
				return err
			}
			if err := freebind(network, fd); err != nil {
				return err
			}
			if network == "tcp4" || network == "tcp6" {
				return limitTCPBuffers(fd)
			}
			return nil
		})
	},
}

// probeConfig binds as listenConfig does, without SO_REUSEPORT: where any
// other socket serves, its bind fails with EADDRINUSE. Go sets
// SO_REUSEADDR on a TCP listener (not on a unicast UDP socket), with which
// Linux refuses the bind while another socket listens on the address, but
// not for connections of a listener gone (TIME_WAIT) that a restart leaves
// behind. None of the resolver's UDP sockets has SO_REUSEADDR, which would
// let the probe share their address.
var probeConfig = net.ListenConfig{
	Control: func(network, address string, c syscall.RawConn) error {
		return control(rawConn{c}, func(fd int) error { return freebind(network, fd) })
	},
}

// freebind sets IP_FREEBIND (and IPV6_FREEBIND on an IPv6 socket) on fd.
func freebind(network string, fd int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_FREEBIND, 1); err != nil {
		return err
	}
	if network == "udp6" || network == "tcp6" {
		return unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
	}
	return nil
}

// rawConn makes a RawConn a syscall.Conn, for control.
type rawConn struct{ syscall.RawConn }

func (c rawConn) SyscallConn() (syscall.RawConn, error) { return c.RawConn, nil }

// ServedError is CheckNotServed's error: a socket this resolver did not
// open is bound to Addr.
type ServedError struct {
	Network string // "udp" or "tcp"
	Addr    netip.AddrPort
}

func (e *ServedError) Error() string {
	return fmt.Sprintf("%s %s: another process already serves on this address (another resolver, or a second ztdns agent), "+
		"and would get part of the queries: find it with ss -l%snp 'sport = :%d'",
		e.Network, e.Addr, e.Network[:1], e.Addr.Port())
}

func (e *ServedError) Unwrap() error { return syscall.EADDRINUSE }

// CheckNotServed returns a *ServedError when a UDP or TCP socket is bound
// to addr (or to the wildcard address of its port), or nil. A resolver
// calls it before it binds its first socket there: with SO_REUSEPORT the
// kernel would let it bind, and split the queries between the two. A
// TCP connection left in TIME_WAIT by a resolver gone does not count.
// Another failure is not reported here: the bind that follows reports it.
// Port 0 (a port of the kernel's choosing) is never served.
func CheckNotServed(addr netip.AddrPort) error {
	if addr.Port() == 0 {
		return nil
	}
	pc, err := probeConfig.ListenPacket(context.Background(), network("udp", addr), addr.String())
	if err == nil {
		pc.Close()
	} else if errors.Is(err, syscall.EADDRINUSE) {
		return &ServedError{Network: "udp", Addr: addr}
	}
	ln, err := probeConfig.Listen(context.Background(), network("tcp", addr), addr.String())
	if err == nil {
		ln.Close()
	} else if errors.Is(err, syscall.EADDRINUSE) {
		return &ServedError{Network: "tcp", Addr: addr}
	}
	return nil
}

// udpReceiveBuffer is each UDP socket's receive buffer (SO_RCVBUF; the
// kernel doubles it for its bookkeeping, so a socket holds up to 2 MiB of
// queued datagrams, about 2,500 queries). The default (208 KiB, about 250)
// lasts a few milliseconds against a node's pods at their rates when the
// reader waits for a CPU; what a pod sends over its rate never gets here
// (kernelrate_linux.go). The kernel charges the buffer to the agent's
// memory cgroup only while queries wait in it.
const udpReceiveBuffer = 1 << 20

// ListenUDP opens a UDP socket on addr for ServeUDP.
func ListenUDP(addr netip.AddrPort) (*net.UDPConn, error) {
	pc, err := listenConfig.ListenPacket(context.Background(), network("udp", addr), addr.String())
	if err != nil {
		return nil, err
	}
	conn := pc.(*net.UDPConn)
	rc, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, err
	}
	rc.Control(func(fd uintptr) {
		// SO_RCVBUFFORCE passes net.core.rmem_max, with CAP_NET_ADMIN
		// (the agent has it for capture); SO_RCVBUF is capped by it.
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, udpReceiveBuffer) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, udpReceiveBuffer)
		}
	})
	return conn, nil
}

// tcpSendBuffer is each TCP client connection's send buffer (SO_SNDBUF; the
// kernel doubles it for its bookkeeping). Left to autotuning, the kernel
// takes up to net.ipv4.tcp_wmem's maximum (4 MiB by default) of replies for
// a client that does not read, charged to the agent's memory cgroup: one
// pod's connections could hold a hundred megabytes. At 32 KiB a connection
// holds at most 64 KiB; a larger reply is written as the client reads it,
// within the connection's write deadline.
const tcpSendBuffer = 32 << 10

// tcpReceiveBuffer is each TCP client connection's receive buffer
// (SO_RCVBUF; the kernel doubles it too). Left to the kernel, it starts at
// net.ipv4.tcp_rmem's default (128 KiB), and the kernel queues that much
// of what a client sends while the connection's reader waits (for the
// pod's rate, or for a slot of the slow path), charged to the agent's
// memory cgroup: 4 MiB for a pod's 32 connections, 128 MiB for --max-tcp's
// 1,024. At 4 KiB a connection holds at most 8 KiB, a hundred queries of
// the usual size; the largest (4 KiB) comes in pieces as it is read.
const tcpReceiveBuffer = 4 << 10

// limitTCPBuffers sets tcpSendBuffer and tcpReceiveBuffer on fd, a TCP
// listener's socket: the connections the kernel accepts on it inherit
// them (instead of autotuned ones, which the kernel also turns off).
func limitTCPBuffers(fd int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, tcpSendBuffer); err != nil {
		return err
	}
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, tcpReceiveBuffer)
}

// limitBuffers sets the connections' buffers on ln (limitTCPBuffers).
// ListenTCP's listeners have them from before they listen; ServeTCP sets
// them again on every listener, for one inherited from a predecessor,
// which may predate them.
func limitBuffers(ln *net.TCPListener) error {
	return control(ln, limitTCPBuffers)
}

// setsockoptInt sets the socket option level/opt of c to value.
func setsockoptInt(c syscall.Conn, level, opt, value int) error {
	return control(c, func(fd int) error { return unix.SetsockoptInt(fd, level, opt, value) })
}

// control runs f on c's descriptor: the error is that of reaching it, or
// else f's.
func control(c syscall.Conn, f func(fd int) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
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
