//go:build linux

// Package netlinkdump walks the kernel's answer to a netlink dump request:
// the messages of the request's sequence, until NLMSG_DONE or an error.
// How each datagram is received (and so how much memory a dump may take) is
// the caller's.
package netlinkdump

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// Socket opens a netlink socket of protocol proto (unix.NETLINK_ROUTE,
// unix.NETLINK_NETFILTER) in the network namespace at netnsPath; it stays
// there whatever thread later uses it.
func Socket(netnsPath string, proto int) (int, error) {
	fd := -1
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		return err
	})
	return fd, err
}

// Request sends on the netlink socket fd a request of type typ (flags
// besides NLM_F_REQUEST: unix.NLM_F_DUMP for a dump) and sequence seq,
// body its payload past the message header.
func Request(fd int, typ, flags uint16, seq uint32, body []byte) error {
	req := make([]byte, unix.NLMSG_HDRLEN+len(body))
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], typ)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|flags)
	binary.NativeEndian.PutUint32(req[8:], seq)
	copy(req[unix.NLMSG_HDRLEN:], body)
	return unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
}

// Receiver is a recv for Read: one datagram from the netlink socket fd
// into buf, whose size bounds the dump's memory. A datagram larger than
// buf is an error, not a message cut short.
func Receiver(fd int, buf []byte) func() ([]byte, error) {
	return func() ([]byte, error) {
		n, _, err := unix.Recvfrom(fd, buf, unix.MSG_TRUNC)
		if err != nil {
			return nil, fmt.Errorf("receive netlink answer: %w", err)
		}
		if n > len(buf) {
			return nil, fmt.Errorf("netlink answer of %d bytes, more than %d", n, len(buf))
		}
		return buf[:n], nil
	}
}

// ErrInterrupted is RetryOnce's error when the dumped objects changed
// during both dumps.
var ErrInterrupted = errors.New("changed during the listing, twice")

// Read reads the answer to the dump request (or the request with
// NLM_F_ACK, whose acknowledgement ends it) of sequence seq, one datagram
// from each call of recv, and calls visit with each of its messages but
// the final NLMSG_DONE; a message of another sequence (the answer to an
// earlier request) is passed over. data is the message's payload, valid
// until the next recv. It returns at NLMSG_DONE, at the first error of
// recv or visit, or with the kernel's error (an errno) when the dump
// failed. interrupted reports a message flagged NLM_F_DUMP_INTR: the
// objects changed during the dump, which may miss some or list some twice.
func Read(recv func() ([]byte, error), seq uint32, visit func(typ, flags uint16, data []byte) error) (interrupted bool, err error) {
	for {
		b, err := recv()
		if err != nil {
			return false, err
		}
		for len(b) >= unix.NLMSG_HDRLEN {
			l := int(binary.NativeEndian.Uint32(b[0:]))
			typ := binary.NativeEndian.Uint16(b[4:])
			flags := binary.NativeEndian.Uint16(b[6:])
			mseq := binary.NativeEndian.Uint32(b[8:])
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return false, errors.New("malformed netlink message")
			}
			data := b[unix.NLMSG_HDRLEN:l]
			b = b[min(Align(l), len(b)):]
			if mseq != seq {
				continue
			}
			if flags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch typ {
			case unix.NLMSG_DONE, unix.NLMSG_ERROR:
				// NLMSG_DONE's payload, when there is one, is an error as
				// NLMSG_ERROR's: the dump failed part way.
				if len(data) >= 4 {
					if errno := -int32(binary.NativeEndian.Uint32(data)); errno != 0 {
						return false, syscall.Errno(errno)
					}
				} else if typ == unix.NLMSG_ERROR {
					return false, errors.New("short netlink error message")
				}
				return interrupted, nil
			}
			if err := visit(typ, flags, data); err != nil {
				return false, err
			}
		}
	}
}

// RetryOnce runs dump (attempt 0), and once more (attempt 1) when it
// reports its answer interrupted; a second interruption is ErrInterrupted.
// dump sends its request and reads the answer, dropping what an earlier
// attempt kept.
func RetryOnce(dump func(attempt int) (interrupted bool, err error)) error {
	for attempt := 0; ; attempt++ {
		interrupted, err := dump(attempt)
		if err != nil || !interrupted {
			return err
		}
		if attempt > 0 {
			return ErrInterrupted
		}
	}
}

// Attrs calls f with the type and value of each attribute (struct rtattr,
// struct nlattr) of a message's payload data, past its fixed header of hdr
// octets, until the first malformed one.
func Attrs(data []byte, hdr int, f func(typ uint16, v []byte)) {
	for b := data[min(Align(hdr), len(data)):]; len(b) >= unix.SizeofRtAttr; {
		n := int(binary.NativeEndian.Uint16(b[0:]))
		if n < unix.SizeofRtAttr || n > len(b) {
			return
		}
		f(binary.NativeEndian.Uint16(b[2:])&^unix.NLA_F_NESTED, b[unix.SizeofRtAttr:n])
		b = b[min(Align(n), len(b)):]
	}
}

// Align rounds a netlink message or attribute length up to NLMSG_ALIGNTO.
func Align(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }
