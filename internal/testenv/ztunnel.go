//go:build linux

package testenv

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ztunnelMark is the mark ztunnel puts on its own sockets, which istio-cni's
// rules let through.
const ztunnelMark = 0x539

// Passthrough stands in for ztunnel's outbound listener in a pod: it takes
// the connections istio-cni's rules redirect to it and, as ztunnel does for
// a destination outside the mesh, connects from the pod's namespace to the
// original destination (with ztunnel's mark) and relays the bytes.
type Passthrough struct {
	mu     sync.Mutex
	dsts   []netip.AddrPort
	conns  map[io.Closer]bool // listeners and connections, closed at cleanup
	closed bool
}

// StartPassthrough runs a Passthrough on 127.0.0.1:port and [::1]:port in
// the namespace until the test ends.
func (n *Netns) StartPassthrough(tb testing.TB, port uint16) *Passthrough {
	tb.Helper()
	p := &Passthrough{conns: map[io.Closer]bool{}}
	var wg sync.WaitGroup
	tb.Cleanup(func() {
		p.mu.Lock()
		p.closed = true
		for c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		wg.Wait()
	})
	for _, addr := range []string{"127.0.0.1", "::1"} {
		var ln net.Listener
		if err := n.Do(func() (err error) {
			ln, err = net.Listen("tcp", net.JoinHostPort(addr, strconv.Itoa(int(port))))
			return err
		}); err != nil {
			tb.Fatalf("testenv: passthrough listener in %s: %v", n.Name, err)
		}
		p.track(ln)
		wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				if p.track(c) {
					wg.Go(func() { p.relay(tb, n, c.(*net.TCPConn)) })
				}
			}
		})
	}
	return p
}

// track records something the cleanup closes; false when it already ran
// (and closed c).
func (p *Passthrough) track(c io.Closer) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = true
	return true
}

// Destinations returns the original destinations of the connections taken
// so far.
func (p *Passthrough) Destinations() []netip.AddrPort {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]netip.AddrPort(nil), p.dsts...)
}

func (p *Passthrough) relay(tb testing.TB, n *Netns, in *net.TCPConn) {
	defer in.Close()
	dst, err := originalDst(in)
	if err != nil {
		tb.Errorf("testenv: passthrough: %v", err)
		return
	}
	p.mu.Lock()
	p.dsts = append(p.dsts, dst)
	p.mu.Unlock()
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, ztunnelMark) })
		return errors.Join(err, serr)
	}}
	var out net.Conn
	if err := n.Do(func() (err error) {
		out, err = d.Dial("tcp", dst.String())
		return err
	}); err != nil {
		tb.Logf("testenv: passthrough to %s: %v", dst, err)
		return
	}
	defer out.Close()
	if !p.track(out) {
		return
	}
	done := make(chan struct{})
	go func() {
		io.Copy(out, in)
		out.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(in, out)
	in.CloseWrite()
	<-done
}

// originalDst is the destination a redirected connection was addressed to
// (SO_ORIGINAL_DST, or IP6T_SO_ORIGINAL_DST: both 80).
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	var buf [unix.SizeofSockaddrInet6]byte
	var serr error
	err = rc.Control(func(fd uintptr) {
		level := unix.SOL_IP
		if local.Addr().Is6() && !local.Addr().Is4In6() {
			level = unix.SOL_IPV6
		}
		size := uint32(len(buf))
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), unix.SO_ORIGINAL_DST,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		if e != 0 {
			serr = e
		}
	})
	if err = errors.Join(err, serr); err != nil {
		return netip.AddrPort{}, err
	}
	port := binary.BigEndian.Uint16(buf[2:4])
	switch binary.NativeEndian.Uint16(buf[0:2]) {
	case unix.AF_INET:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(buf[4:8])), port), nil
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(buf[8:24])), port), nil
	}
	return netip.AddrPort{}, errors.New("SO_ORIGINAL_DST: unknown address family")
}
