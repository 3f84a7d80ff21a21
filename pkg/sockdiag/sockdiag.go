//go:build linux

// Package sockdiag aborts a network namespace's sockets whose peer is one
// of given addresses, as `ss -K` does: it lists the namespace's UDP and TCP
// sockets with a NETLINK_SOCK_DIAG dump and destroys each that matches with
// SOCK_DESTROY (Linux 4.5, a kernel built with CONFIG_INET_DIAG_DESTROY).
//
// ztdns uses it when capture ends for good (the agent stops with no
// successor, `ztdns uninstall`): a UDP socket a pod connected while it was
// captured keeps the resolver's address as its peer in the kernel, and its
// sends go through no hook that could send them anywhere else. The kernel
// aborts a destroyed socket as if its peer had gone: a UDP socket is
// disconnected and reports ECONNABORTED to its next receive (or to the one
// waiting, and to poll as POLLERR), a TCP connection is reset (ECONNABORTED
// too). Stub resolvers that keep sockets (c-ares) then open new ones.
package sockdiag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/netlinkdump"
	"github.com/ztdns/ztdns/pkg/netns"
)

// ErrUnsupported is in Abort's error when the kernel cannot destroy
// sockets: it was built without CONFIG_INET_DIAG_DESTROY, or without
// UDP or TCP socket diagnostics.
var ErrUnsupported = errors.New("the kernel cannot destroy sockets (CONFIG_INET_DIAG_DESTROY, CONFIG_INET_UDP_DIAG)")

// ErrOtherNamespace is in Abort's error when the path names a network
// namespace other than the one asked for: the process whose ns/net it is
// exited and its PID was reused, or the namespace was made again there.
var ErrOtherNamespace = errors.New("another network namespace is there now")

// MaxPerNamespace bounds the sockets Abort destroys in one namespace. A pod
// keeps a few per nameserver; whoever owns a namespace may open as many as
// its file limit allows, and the one stopping ztdns must not wait on them.
const MaxPerNamespace = 4096

// Socket states (linux/tcp_states.h), which UDP sockets share.
const (
	tcpEstablished = 1
	tcpSynSent     = 2
	tcpCloseWait   = 8
)

// What is dumped, and destroyed, of each protocol: a connected UDP socket
// is TCP_ESTABLISHED in the kernel (an unconnected one TCP_CLOSE); a TCP
// connection that is opening, open, or whose peer has closed it.
var kinds = []struct {
	family, protocol uint8
	states           uint32
}{
	{unix.AF_INET, unix.IPPROTO_UDP, 1 << tcpEstablished},
	{unix.AF_INET6, unix.IPPROTO_UDP, 1 << tcpEstablished},
	{unix.AF_INET, unix.IPPROTO_TCP, 1<<tcpEstablished | 1<<tcpSynSent | 1<<tcpCloseWait},
	{unix.AF_INET6, unix.IPPROTO_TCP, 1<<tcpEstablished | 1<<tcpSynSent | 1<<tcpCloseWait},
}

// Sizes of struct inet_diag_sockid, inet_diag_req_v2 and the start of
// inet_diag_msg (linux/inet_diag.h).
const (
	sizeofSockID = 48
	sizeofReq    = 8 + sizeofSockID
	sizeofMsgMin = 4 + sizeofSockID
)

// recvSize holds any datagram of a dump: the kernel sizes them by the
// reader's buffer, up to 32 KiB.
const recvSize = 32 << 10

// Abort destroys, in the network namespace at netnsPath, every UDP socket
// connected to one of peers and every TCP connection with one of them, and
// returns how many it destroyed. The namespace must be the one of cookie:
// it is opened once, and its cookie read through that open file, so a
// path that now names another namespace (a /proc/PID/ns/net whose PID was
// reused) is left alone (ErrOtherNamespace). IPv4 peers also match sockets
// of IPv6 that reach them by an IPv4-mapped address.
func Abort(netnsPath string, cookie uint64, peers []netip.Addr) (int, error) {
	if len(peers) == 0 {
		return 0, nil
	}
	want := make(map[netip.Addr]bool, len(peers))
	for _, p := range peers {
		want[p.Unmap()] = true
	}
	nsfd, err := unix.Open(netnsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
		return 0, fmt.Errorf("%s: %w: %w", netnsPath, netns.ErrNotFound, err)
	}
	if err != nil {
		return 0, &fs.PathError{Op: "open", Path: netnsPath, Err: err}
	}
	defer unix.Close(nsfd)
	self := "/proc/self/fd/" + strconv.Itoa(nsfd)
	if got, err := netns.Cookie(self); err != nil {
		return 0, fmt.Errorf("%s: %w", netnsPath, err)
	} else if got != cookie {
		return 0, fmt.Errorf("%s: %w (cookie %d, not %d)", netnsPath, ErrOtherNamespace, got, cookie)
	}
	fd, err := netlinkdump.Socket(self, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return 0, fmt.Errorf("netlink in %s: %w", netnsPath, err)
	}
	// Closing the socket ends a dump left unread.
	defer unix.Close(fd)
	d := &diag{fd: fd, buf: make([]byte, recvSize)}
	destroyed := 0
	for _, k := range kinds {
		ids, err := d.matching(k.family, k.protocol, k.states, want, MaxPerNamespace-destroyed)
		if err != nil {
			return destroyed, fmt.Errorf("list sockets in %s: %w", netnsPath, err)
		}
		for _, id := range ids {
			err := d.destroy(k.family, k.protocol, id)
			switch {
			case err == nil:
				destroyed++
			case errors.Is(err, unix.ENOENT):
				// Closed, or disconnected, since the dump.
			case errors.Is(err, unix.EOPNOTSUPP):
				return destroyed, fmt.Errorf("destroy a socket in %s: %w: %w", netnsPath, ErrUnsupported, err)
			default:
				return destroyed, fmt.Errorf("destroy a socket in %s: %w", netnsPath, err)
			}
		}
		if destroyed >= MaxPerNamespace {
			return destroyed, fmt.Errorf("%s: stopped after %d sockets", netnsPath, destroyed)
		}
	}
	return destroyed, nil
}

// diag is a NETLINK_SOCK_DIAG socket in one namespace and its buffer.
type diag struct {
	fd  int
	seq uint32
	buf []byte
}

// request sends one inet_diag_req_v2 message of type typ with flags.
func (d *diag) request(typ, flags uint16, family, protocol uint8, states uint32, id []byte) (uint32, error) {
	d.seq++
	var r [sizeofReq]byte
	r[0], r[1] = family, protocol
	binary.NativeEndian.PutUint32(r[4:], states)
	copy(r[8:], id)
	if err := netlinkdump.Request(d.fd, typ, flags, d.seq, r[:]); err != nil {
		return 0, fmt.Errorf("send netlink request: %w", err)
	}
	return d.seq, nil
}

// matching dumps the sockets of family and protocol in states and returns
// the inet_diag_sockid (cookie included) of at most max of them whose peer
// is in want. A dump interrupted by a change is not asked again: what it
// missed was opened meanwhile, after capture ended.
func (d *diag) matching(family, protocol uint8, states uint32, want map[netip.Addr]bool, max int) ([][]byte, error) {
	seq, err := d.request(unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP, family, protocol, states, nil)
	if err != nil {
		return nil, err
	}
	var ids [][]byte
	_, err = netlinkdump.Read(netlinkdump.Receiver(d.fd, d.buf), seq, func(typ, _ uint16, data []byte) error {
		if typ != unix.SOCK_DIAG_BY_FAMILY || len(data) < sizeofMsgMin || data[0] != family || len(ids) >= max {
			return nil
		}
		id := data[4 : 4+sizeofSockID]
		if want[peer(family, id)] {
			ids = append(ids, append([]byte(nil), id...))
		}
		return nil
	})
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EOPNOTSUPP):
		// No diagnostics module for the protocol (inet_diag loads
		// udp_diag on demand; built without it, the dump fails).
		return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
	case err != nil:
		return nil, err
	}
	return ids, nil
}

// peer is the destination address of an inet_diag_sockid, unmapped.
func peer(family uint8, id []byte) netip.Addr {
	dst := id[20:36]
	if family == unix.AF_INET {
		return netip.AddrFrom4([4]byte(dst[:4]))
	}
	return netip.AddrFrom16([16]byte(dst)).Unmap()
}

// destroy asks the kernel to destroy the socket of id, as its dump gave it:
// addresses, ports, interface and cookie, which the kernel checks.
func (d *diag) destroy(family, protocol uint8, id []byte) error {
	seq, err := d.request(unix.SOCK_DESTROY, unix.NLM_F_ACK, family, protocol, 0, id)
	if err != nil {
		return err
	}
	_, err = netlinkdump.Read(netlinkdump.Receiver(d.fd, d.buf), seq, func(uint16, uint16, []byte) error { return nil })
	return err
}
