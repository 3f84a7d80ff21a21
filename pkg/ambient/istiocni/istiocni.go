//go:build linux

// Package istiocni finds istio-cni's in-pod DNS capture in a pod's network
// namespace: the nat rules that REDIRECT the pod's DNS (UDP and TCP
// destination port 53) to ztunnel's DNS proxy on port 15053
// (cni/pkg/iptables and cni/pkg/nftables in istio/istio), which istio-cni
// installs when Istio's own DNS capture is on for the pod
// (values.cni.ambient.dnsCapture, or ambient.istio.io/dns-capture: "true").
//
// ztdns does not need them gone: its redirected queries go to a port other
// than 53 and never match them. It reports them because then two components
// claim the pod's DNS, and the operator should turn one off (see README).
//
// istio-cni writes the rules with one of three backends, and each is read
// the way the kernel holds it:
//   - nftables (istio-cni's nftables backend: table inet istio-ambient-nat)
//     and iptables-nft (table ip/ip6 nat, chain ISTIO_OUTPUT): through
//     nfnetlink, a "redirect to :15053" expression or an xtables REDIRECT
//     target to port 15053;
//   - iptables-legacy: the nat table through the IPT_SO_GET_ENTRIES socket
//     option, read only when the table already exists in the namespace
//     (/proc/net/ip_tables_names), since asking for it would create it.
package istiocni

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"unsafe"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/netlinkdump"
	"github.com/ztdns/ztdns/pkg/netns"
)

// ZtunnelDNSPort is where istio-cni's rules send a pod's DNS.
const ZtunnelDNSPort = 15053

// Backends a Finding names.
const (
	BackendNftables       = "nftables"
	BackendIptablesNft    = "iptables-nft"
	BackendIptablesLegacy = "iptables-legacy"
)

// Finding lists the backends holding a rule that sends the pod's DNS to
// ztunnel; empty when there is none.
type Finding []string

// Present reports whether any backend holds such a rule.
func (f Finding) Present() bool { return len(f) > 0 }

func (f Finding) String() string { return strings.Join(f, ",") }

// ErrOtherNetns means the path led to another network namespace than the
// one whose cookie Inspect was given: a /proc/<pid>/ns/net whose PID was
// reused.
var ErrOtherNetns = errors.New("another network namespace than the one expected")

// Inspect reads the network namespace at netnsPath and reports where
// istio-cni's DNS capture rules are. It only reads; nothing in the
// namespace changes. With a cookie other than 0 it first checks that the
// namespace it opened is that one, or returns ErrOtherNetns. Each of the
// namespace's listings (nftables, and each legacy table) is read up to
// maxTableSize bytes: a pod's root may fill its namespace with rules. When
// one source cannot be read, the error comes with what the others hold.
func Inspect(netnsPath string, cookie uint64) (Finding, error) {
	h, err := os.Open(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", netnsPath, err)
	}
	defer h.Close()
	// Everything below goes through the opened namespace, never the path
	// again: the path may lead elsewhere by then.
	opened := fmt.Sprintf("/proc/self/fd/%d", h.Fd())
	if cookie != 0 {
		got, err := netns.Cookie(opened)
		if err != nil {
			return nil, fmt.Errorf("netns %s: %w", netnsPath, err)
		}
		if got != cookie {
			return nil, fmt.Errorf("netns %s has cookie %d, want %d: %w", netnsPath, got, cookie, ErrOtherNetns)
		}
	}
	// One source failing does not hide what the other holds.
	var f Finding
	var errs []error
	nft, err := inspectNftables(opened, nftablesLimit)
	if err != nil {
		errs = append(errs, fmt.Errorf("nftables in %s: %w", netnsPath, err))
	}
	f = append(f, nft...)
	legacy, err := inspectLegacy(opened)
	if err != nil {
		errs = append(errs, fmt.Errorf("iptables-legacy in %s: %w", netnsPath, err))
	}
	f = append(f, legacy...)
	slices.Sort(f)
	return slices.Compact(f), errors.Join(errs...)
}

// nftablesLimit bounds the nftables listing; a variable for tests.
var nftablesLimit = maxTableSize

// inspectNftables looks at every nat-hooked table of the namespace:
// istio-cni's own nftables table and the nat tables iptables-nft keeps.
func inspectNftables(netnsPath string, limit int) (Finding, error) {
	nl, err := dialBounded(netnsPath, limit)
	if err != nil {
		return nil, err
	}
	defer nl.close()
	c, err := nftables.New(nftables.WithTestDial(nl.exchange))
	if err != nil {
		return nil, err
	}
	tables, err := c.ListTables()
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	var f Finding
	// Each family's chains are listed once: a listing per table would read
	// every chain of the family again for each of its tables.
	chainsOf := map[nftables.TableFamily][]*nftables.Chain{}
	for _, t := range tables {
		if t.Family != nftables.TableFamilyINet && t.Family != nftables.TableFamilyIPv4 && t.Family != nftables.TableFamilyIPv6 {
			continue
		}
		chains, listed := chainsOf[t.Family]
		if !listed {
			chains, err = c.ListChainsOfTableFamily(t.Family)
			if err != nil {
				return nil, fmt.Errorf("list chains: %w", err)
			}
			chainsOf[t.Family] = chains
		}
		for _, ch := range chains {
			if ch.Table.Name != t.Name {
				continue
			}
			rules, err := c.GetRules(t, ch)
			if err != nil {
				return nil, fmt.Errorf("list rules of %s %s: %w", t.Name, ch.Name, err)
			}
			for _, r := range rules {
				if native, xtables := redirectsToZtunnel(r.Exprs); native {
					f = append(f, BackendNftables)
				} else if xtables {
					f = append(f, BackendIptablesNft)
				}
			}
		}
	}
	return f, nil
}

// redirectsToZtunnel reports whether a rule's expressions redirect to
// ZtunnelDNSPort: natively (immediate port into a register, redir from it)
// or through an xtables REDIRECT target (iptables-nft).
func redirectsToZtunnel(exprs []expr.Any) (native, xtables bool) {
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], ZtunnelDNSPort)
	regs := map[uint32][]byte{}
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Immediate:
			regs[e.Register] = e.Data
		case *expr.Redir:
			if bytes.Equal(regs[e.RegisterProtoMin], port[:]) {
				native = true
			}
		case *expr.Target:
			if e.Name == "REDIRECT" && xtRedirectPort(e.Info) == ZtunnelDNSPort {
				xtables = true
			}
		}
	}
	return native, xtables
}

// xtRedirectPort is the first port of an xtables REDIRECT target as the
// nftables library decodes it (IPv4 revision 0: the compat range list;
// otherwise a struct nf_nat_range), or 0.
func xtRedirectPort(info xt.InfoAny) uint16 {
	switch info := info.(type) {
	case *xt.NatIPv4MultiRangeCompat:
		if len(*info) > 0 {
			return (*info)[0].MinPort
		}
	case *xt.NatRange:
		return info.MinPort
	}
	return 0
}

// redirectInfoPort reads the first port of a legacy REDIRECT target's data:
// struct nf_nat_ipv4_multi_range_compat for IPv4 (rangesize, flags, min_ip,
// max_ip, then the port), struct nf_nat_range for IPv6 (flags, min_addr,
// max_addr, then the port). 0 when it is too short.
func redirectInfoPort(info []byte, ipv6 bool) uint16 {
	off := 16
	if ipv6 {
		off = 36
	}
	if len(info) < off+2 {
		return 0
	}
	return binary.BigEndian.Uint16(info[off:])
}

// Legacy x_tables socket options and layouts (linux/netfilter_ipv4/ip_tables.h,
// linux/netfilter_ipv6/ip6_tables.h).
const (
	soGetInfo    = 64 // IPT_SO_GET_INFO, IP6T_SO_GET_INFO
	soGetEntries = 65 // IPT_SO_GET_ENTRIES, IP6T_SO_GET_ENTRIES
	// struct ipt_getinfo / ip6t_getinfo: name[32], valid_hooks,
	// hook_entry[5], underflow[5], num_entries, size.
	getInfoLen  = 84
	getInfoSize = 80
	// struct ipt_get_entries: name[32], size, then 8-aligned entries.
	getEntriesHeader = 40
	// Where target_offset and next_offset sit in struct ipt_entry (after
	// struct ipt_ip and nfcache) and struct ip6t_entry.
	entryOffsets4 = 88
	entryOffsets6 = 140
	// struct xt_entry_target: target_size, name[29], revision, then data.
	targetHeader = 32
	maxTableSize = 16 << 20
)

// inspectLegacy reads the legacy nat tables (IPv4 and IPv6) of the
// namespace, if they exist there.
func inspectLegacy(netnsPath string) (Finding, error) {
	var f Finding
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		for _, fam := range []struct {
			names         string
			domain, level int
			offsets       int
		}{
			{"/proc/thread-self/net/ip_tables_names", unix.AF_INET, unix.SOL_IP, entryOffsets4},
			{"/proc/thread-self/net/ip6_tables_names", unix.AF_INET6, unix.SOL_IPV6, entryOffsets6},
		} {
			names, err := os.ReadFile(fam.names)
			if errors.Is(err, os.ErrNotExist) {
				continue // no legacy x_tables in this kernel
			}
			if err != nil {
				return err
			}
			if !slices.Contains(strings.Fields(string(names)), "nat") {
				continue
			}
			found, err := legacyNatRedirects(fam.domain, fam.level, fam.offsets, fam.domain == unix.AF_INET6)
			if err != nil {
				return err
			}
			if found {
				f = append(f, BackendIptablesLegacy)
			}
		}
		return nil
	})
	return f, err
}

// legacyNatRedirects reads the nat table through a raw socket and looks for
// a REDIRECT target to ZtunnelDNSPort.
func legacyNatRedirects(domain, level, offsets int, ipv6 bool) (bool, error) {
	fd, err := unix.Socket(domain, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return false, fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)

	info := make([]byte, getInfoLen)
	copy(info, "nat")
	if err := getsockopt(fd, level, soGetInfo, info); err != nil {
		return false, fmt.Errorf("get nat table info: %w", err)
	}
	size := binary.NativeEndian.Uint32(info[getInfoSize:])
	if size > maxTableSize {
		return false, fmt.Errorf("nat table of %d bytes", size)
	}
	buf := make([]byte, getEntriesHeader+int(size))
	copy(buf, "nat")
	binary.NativeEndian.PutUint32(buf[32:], size)
	if err := getsockopt(fd, level, soGetEntries, buf); err != nil {
		return false, fmt.Errorf("get nat table entries: %w", err)
	}
	entries := buf[getEntriesHeader:]
	for off := 0; off+offsets+4 <= len(entries); {
		targetOff := int(binary.NativeEndian.Uint16(entries[off+offsets:]))
		next := int(binary.NativeEndian.Uint16(entries[off+offsets+2:]))
		if next == 0 || off+next > len(entries) || targetOff+targetHeader > next {
			return false, errors.New("malformed nat table entry")
		}
		target := entries[off+targetOff : off+next]
		name, _, _ := bytes.Cut(target[2:31], []byte{0})
		if string(name) == "REDIRECT" && redirectInfoPort(target[targetHeader:], ipv6) == ZtunnelDNSPort {
			return true, nil
		}
		off += next
	}
	return false, nil
}

// getsockopt is getsockopt(2) with a caller-sized buffer in and out.
func getsockopt(fd, level, opt int, buf []byte) error {
	n := uint32(len(buf))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// boundedNetlink relays the nftables library's requests to a netfilter
// netlink socket in a namespace and reads the kernel's answers itself, so
// that at most limit bytes are read in all: the library reads a dump of any
// size into memory. (The library's test hook, WithTestDial, is the one way
// to give it the messages.) Only dumps are relayed, which is all the
// listing asks.
type boundedNetlink struct {
	fd          int
	limit, left int
}

func dialBounded(netnsPath string, limit int) (*boundedNetlink, error) {
	fd, err := netlinkdump.Socket(netnsPath, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("netfilter netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind netlink socket: %w", err)
	}
	return &boundedNetlink{fd: fd, limit: limit, left: limit}, nil
}

func (b *boundedNetlink) close() { unix.Close(b.fd) }

// exchange sends each request and returns the messages of its dump, as the
// netlink library's Conn expects them from a socket: with the request's
// sequence and port, and without the multi-part flag and the final
// NLMSG_DONE.
func (b *boundedNetlink) exchange(reqs []netlink.Message) ([]netlink.Message, error) {
	var out []netlink.Message
	for _, req := range reqs {
		if req.Header.Flags&netlink.Dump == 0 {
			return nil, fmt.Errorf("netlink request %v is not a dump", req.Header.Type)
		}
		data, err := req.MarshalBinary()
		if err != nil {
			return nil, err
		}
		// A dump the rules changed under (NLM_F_DUMP_INTR) may miss some or
		// list some twice: it is asked again once.
		var msgs []netlink.Message
		err = netlinkdump.RetryOnce(func(int) (interrupted bool, err error) {
			// Unaddressed, a netlink socket sends to the kernel.
			if _, err := unix.Write(b.fd, data); err != nil {
				return false, fmt.Errorf("send netlink request: %w", err)
			}
			msgs, interrupted, err = b.readDump(req.Header)
			return interrupted, err
		})
		if errors.Is(err, netlinkdump.ErrInterrupted) {
			return nil, fmt.Errorf("netfilter rules %w", err)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, msgs...)
	}
	return out, nil
}

// readDump reads the kernel's answer to the dump request h, one datagram
// at a time, until NLMSG_DONE, an error, or the bound. interrupted reports
// a message flagged NLM_F_DUMP_INTR: the rules changed during the dump.
func (b *boundedNetlink) readDump(h netlink.Header) (out []netlink.Message, interrupted bool, err error) {
	var peek [1]byte
	recv := func() ([]byte, error) {
		// The datagram's size first, so a buffer too small truncates
		// nothing; a buffer of its own, since the messages kept point
		// into it.
		n, _, err := unix.Recvfrom(b.fd, peek[:], unix.MSG_PEEK|unix.MSG_TRUNC)
		if err != nil {
			return nil, fmt.Errorf("receive netlink answer: %w", err)
		}
		if n > b.left {
			return nil, fmt.Errorf("netfilter listing of more than %d bytes", b.limit)
		}
		buf := make([]byte, n)
		n, _, err = unix.Recvfrom(b.fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("receive netlink answer: %w", err)
		}
		b.left -= n
		return buf[:n], nil
	}
	interrupted, err = netlinkdump.Read(recv, h.Sequence, func(typ, flags uint16, data []byte) error {
		out = append(out, netlink.Message{
			Header: netlink.Header{
				Length: uint32(unix.NLMSG_HDRLEN + len(data)), Type: netlink.HeaderType(typ),
				Flags: netlink.HeaderFlags(flags) &^ netlink.Multi, Sequence: h.Sequence, PID: h.PID,
			},
			Data: data,
		})
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	return out, interrupted, nil
}
