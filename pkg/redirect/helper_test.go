//go:build linux

package redirect

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// Clients and servers that must run inside the test cgroup (only sockets a
// process of the cgroup opens are subject to the programs) run as this test
// binary, started by testenv.StartHelper with helperEnv set; TestMain hands them to
// runHelper.
const (
	helperEnv = "ZTDNS_REDIRECT_HELPER"
	// helperConnected: a UDP socket of helperFamily ("inet" or "inet6")
	// connected to helperAddr; prints "connected", waits for a line on
	// stdin, then sends an A query for helperName with helperSend ("write"
	// or "sendto", naming the peer) and prints the addresses of the reply.
	helperConnected = "connected"
	// helperEcho: a UDP server on 0.0.0.0:53 that sends every datagram back
	// to its sender (sendto, unconnected); prints "ready".
	helperEcho = "echo53"
	// helperKeeper: a UDP socket of helperFamily connected to helperAddr
	// and kept, as c-ares keeps one per nameserver; prints "connected",
	// then answers each line on stdin with one line (see keeperClient).
	helperKeeper = "keeper"
	// helperSendTo: prints "ready", then for each line "ADDR NAME" on
	// stdin sends an A query for NAME to ADDR port 53 from a new
	// unconnected UDP socket (see sendQuery) and prints "sent" or
	// "error: ...".
	helperSendTo = "sendto"
	// helperHold: prints "ready", then keeps the sockets it is told to
	// open, answering each line on stdin with one line (see holdDo).
	helperHold = "hold"

	helperFamily = "ZTDNS_REDIRECT_FAMILY"
	helperAddr   = "ZTDNS_REDIRECT_ADDR"
	helperSend   = "ZTDNS_REDIRECT_SEND"
	helperName   = "ZTDNS_REDIRECT_NAME"
)

// runHelper runs the helper helperEnv names, if any, and exits.
func runHelper() {
	var err error
	switch mode := os.Getenv(helperEnv); mode {
	case "":
		return
	case helperConnected:
		err = connectedClient(os.Getenv(helperFamily), os.Getenv(helperAddr), os.Getenv(helperSend), os.Getenv(helperName))
	case helperEcho:
		err = echoServer53()
	case helperKeeper:
		err = keeperClient(os.Getenv(helperFamily), os.Getenv(helperAddr))
	case helperSendTo:
		err = sendToClient()
	case helperHold:
		err = holdClient()
	default:
		err = fmt.Errorf("unknown %s=%q", helperEnv, mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// connectedClient is what a stub resolver with a connected UDP socket does,
// in raw system calls so that the socket's family and the send are exactly
// what the test asks for (Go's net package would pick them itself).
func connectedClient(family, addr, send, name string) error {
	fd, sa, err := connectUDP(family, addr)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	fmt.Println("connected")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return fmt.Errorf("waiting for the go-ahead: %w", err)
	}

	b, err := packQuery(name)
	if err != nil {
		return err
	}
	switch send {
	case "write":
		_, err = unix.Write(fd, b)
	case "sendto":
		err = unix.Sendto(fd, b, 0, sa)
	default:
		err = fmt.Errorf("unknown send %q", send)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", send, err)
	}
	tv := unix.NsecToTimeval((3 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return fmt.Errorf("no reply: %w", err)
	}
	var reply dns.Msg
	if err := reply.Unpack(buf[:n]); err != nil {
		return fmt.Errorf("reply: %w", err)
	}
	for _, rr := range reply.Answer {
		if a, ok := rr.(*dns.A); ok {
			fmt.Println(a.A)
		}
	}
	return nil
}

// connectUDP opens a UDP socket of family ("inet", or "inet6" dual-stack)
// and connects it to addr.
func connectUDP(family, addr string) (int, unix.Sockaddr, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return -1, nil, err
	}
	var sa unix.Sockaddr
	fd := -1
	switch family {
	case "inet":
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()}
	case "inet6":
		// Dual-stack, as glibc and musl open theirs (IPV6_V6ONLY off).
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM, 0)
		if err == nil {
			err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
		}
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	default:
		return -1, nil, fmt.Errorf("unknown family %q", family)
	}
	if err == nil {
		err = unix.Connect(fd, sa)
		if err != nil {
			err = fmt.Errorf("connect %s: %w", addr, err)
		}
	}
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, nil, err
	}
	return fd, sa, nil
}

// sendToClient is helperSendTo.
func sendToClient() error {
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		err := fmt.Errorf("want ADDR NAME, got %q", in.Text())
		if f := strings.Fields(in.Text()); len(f) == 2 {
			err = sendQuery(f[0], f[1])
		}
		if err != nil {
			fmt.Println("error: " + err.Error())
		} else {
			fmt.Println("sent")
		}
	}
	return in.Err()
}

// sendQuery sends an A query for name to addr port 53 with sendto() from a
// new UDP socket, as musl sends its queries: AF_INET for an IPv4 addr,
// else dual-stack AF_INET6 (an IPv4-mapped addr goes out as IPv4), with
// addr's zone as the scope id.
func sendQuery(addr, name string) error {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return err
	}
	b, err := packQuery(name)
	if err != nil {
		return err
	}
	var fd int
	var sa unix.Sockaddr
	if a.Is4() {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		sa = &unix.SockaddrInet4{Port: 53, Addr: a.As4()}
	} else {
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		sa6 := &unix.SockaddrInet6{Port: 53, Addr: a.As16()}
		if z := a.Zone(); z != "" && err == nil {
			var ifi *net.Interface
			if ifi, err = net.InterfaceByName(z); err == nil {
				sa6.ZoneId = uint32(ifi.Index)
			}
		}
		if err == nil {
			err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
		}
		sa = sa6
	}
	if fd >= 0 {
		defer unix.Close(fd)
	}
	if err != nil {
		return err
	}
	if err := unix.Sendto(fd, b, 0, sa); err != nil {
		return fmt.Errorf("sendto: %w", err)
	}
	return nil
}

// holdClient is helperHold: it opens sockets that send a query each and
// keeps them open, as a pod that leaks its resolver's sockets does.
func holdClient() error {
	h := &holder{dest: map[int]unix.Sockaddr{}}
	defer h.close()
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		out, err := h.do(strings.Fields(in.Text()))
		if err != nil {
			out = "error: " + err.Error()
		}
		fmt.Println(out)
	}
	return in.Err()
}

// holder holds helperHold's sockets, and where each UDP one sent its query.
type holder struct {
	fds  []int
	dest map[int]unix.Sockaddr
}

func (h *holder) close() error {
	var errs []error
	for _, fd := range h.fds {
		errs = append(errs, unix.Close(fd))
	}
	h.fds, h.dest = nil, map[int]unix.Sockaddr{}
	return errors.Join(errs...)
}

// do runs one helperHold command and returns what to print:
//   - "udp ADDR N": opens N UDP sockets, AF_INET for an IPv4 ADDR, else
//     dual-stack AF_INET6, each sending an A query to ADDR port 53 with
//     sendto(), and keeps them; prints "held" and how many it holds;
//   - "tcp ADDR N": the same with TCP sockets, each connecting to ADDR
//     port 53 without waiting for the connection;
//   - "again": every socket held sends once more, UDP ones the same query
//     to where they sent it, TCP ones a query on their connection (lost
//     when it has not come up: what counts is that no hook runs for it);
//     prints "sent";
//   - "plain N": opens N UDP sockets (AF_INET) that send nothing, so no
//     hook runs for them, and keeps them; prints "held" and how many it
//     holds;
//   - "fds": prints its process ID and the descriptors of the sockets it
//     holds, for a test to take copies of them (pidfd_getfd);
//   - "close": closes every socket held; once printed "closed", the kernel
//     has released them all (close() of a socket's last descriptor
//     releases it before it returns), unless the test holds copies.
func (h *holder) do(cmd []string) (string, error) {
	switch {
	case len(cmd) == 3 && (cmd[0] == "udp" || cmd[0] == "tcp"):
		a, err := netip.ParseAddr(cmd[1])
		if err != nil {
			return "", err
		}
		n, err := strconv.Atoi(cmd[2])
		if err != nil {
			return "", err
		}
		for range n {
			if err := h.open(cmd[0] == "tcp", a); err != nil {
				return "", err
			}
		}
		return fmt.Sprintf("held %d", len(h.fds)), nil
	case len(cmd) == 2 && cmd[0] == "plain":
		n, err := strconv.Atoi(cmd[1])
		if err != nil {
			return "", err
		}
		for range n {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return "", err
			}
			h.fds = append(h.fds, fd)
		}
		return fmt.Sprintf("held %d", len(h.fds)), nil
	case len(cmd) == 1 && cmd[0] == "fds":
		out := []string{strconv.Itoa(os.Getpid())}
		for _, fd := range h.fds {
			out = append(out, strconv.Itoa(fd))
		}
		return strings.Join(out, " "), nil
	case len(cmd) == 1 && cmd[0] == "again":
		b, err := packQuery("again.ztdns.test")
		if err != nil {
			return "", err
		}
		for _, fd := range h.fds {
			sa, udp := h.dest[fd]
			if !udp {
				unix.Write(fd, b) // ENOTCONN or EAGAIN are fine
				continue
			}
			if err := unix.Sendto(fd, b, 0, sa); err != nil {
				return "", fmt.Errorf("sendto again: %w", err)
			}
		}
		return "sent", nil
	case len(cmd) == 1 && cmd[0] == "close":
		if err := h.close(); err != nil {
			return "", err
		}
		return "closed", nil
	}
	return "", fmt.Errorf("unknown command %q", cmd)
}

// open opens one more socket and sends (UDP) or connects (TCP) to port 53
// of a.
func (h *holder) open(tcp bool, a netip.Addr) error {
	typ := unix.SOCK_DGRAM
	if tcp {
		typ = unix.SOCK_STREAM | unix.SOCK_NONBLOCK
	}
	var (
		fd  int
		sa  unix.Sockaddr
		err error
	)
	if a.Is4() {
		fd, err = unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
		sa = &unix.SockaddrInet4{Port: 53, Addr: a.As4()}
	} else {
		fd, err = unix.Socket(unix.AF_INET6, typ|unix.SOCK_CLOEXEC, 0)
		sa = &unix.SockaddrInet6{Port: 53, Addr: a.As16()}
		if err == nil {
			err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
		}
	}
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return err
	}
	if tcp {
		if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
			unix.Close(fd)
			return fmt.Errorf("connect: %w", err)
		}
		h.fds = append(h.fds, fd)
		return nil
	}
	b, err := packQuery("hold.ztdns.test")
	if err == nil {
		err = unix.Sendto(fd, b, 0, sa)
	}
	if err != nil {
		unix.Close(fd)
		return fmt.Errorf("sendto: %w", err)
	}
	h.fds = append(h.fds, fd)
	h.dest[fd] = sa
	return nil
}

func packQuery(name string) ([]byte, error) {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeA)
	return q.Pack()
}

// keeperClient keeps one connected UDP socket and, for each line on stdin,
// prints one line ("error: ..." when it failed):
//   - "query NAME": sends an A query with send() (no destination, so no
//     connect or sendmsg hook runs), reads the reply with recvfrom() asking
//     its source, as glibc, musl and c-ares do, and prints the source and
//     then the reply's addresses;
//   - "send NAME": sends as "query" does but reads no reply, as a
//     resolver whose upstream has not answered yet; prints "sent";
//   - "peer": prints what getpeername() says;
//   - "connect ADDR": connects another socket of the family to ADDR, then
//     closes it, as Go's resolver does to sort its answers; prints "ok";
//   - "whoami": prints its process ID and the socket's descriptor, for a
//     test to take a copy of the socket (pidfd_getfd).
func keeperClient(family, addr string) error {
	fd, _, err := connectUDP(family, addr)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval((3 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	fmt.Println("connected")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		out, err := keeperDo(fd, family, strings.Fields(in.Text()))
		if err != nil {
			out = "error: " + err.Error()
		}
		fmt.Println(out)
	}
	return in.Err()
}

func keeperDo(fd int, family string, cmd []string) (string, error) {
	switch {
	case len(cmd) == 2 && cmd[0] == "query":
		b, err := packQuery(cmd[1])
		if err != nil {
			return "", err
		}
		if err := unix.Sendto(fd, b, 0, nil); err != nil {
			return "", fmt.Errorf("send: %w", err)
		}
		buf := make([]byte, 4096)
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return "", fmt.Errorf("no reply: %w", err)
		}
		var reply dns.Msg
		if err := reply.Unpack(buf[:n]); err != nil {
			return "", fmt.Errorf("reply: %w", err)
		}
		fields := []string{sockaddrString(from)}
		for _, rr := range reply.Answer {
			if a, ok := rr.(*dns.A); ok {
				fields = append(fields, a.A.String())
			}
		}
		return strings.Join(fields, " "), nil
	case len(cmd) == 2 && cmd[0] == "send":
		b, err := packQuery(cmd[1])
		if err != nil {
			return "", err
		}
		if err := unix.Sendto(fd, b, 0, nil); err != nil {
			return "", fmt.Errorf("send: %w", err)
		}
		return "sent", nil
	case len(cmd) == 1 && cmd[0] == "whoami":
		return fmt.Sprintf("%d %d", os.Getpid(), fd), nil
	case len(cmd) == 1 && cmd[0] == "peer":
		sa, err := unix.Getpeername(fd)
		if err != nil {
			return "", fmt.Errorf("getpeername: %w", err)
		}
		return sockaddrString(sa), nil
	case len(cmd) == 2 && cmd[0] == "connect":
		other, _, err := connectUDP(family, cmd[1])
		if err != nil {
			return "", err
		}
		unix.Close(other)
		return "ok", nil
	}
	return "", fmt.Errorf("unknown command %q", cmd)
}

func sockaddrString(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)).String()
	}
	return fmt.Sprintf("%T", sa)
}

// echoServer53 answers every datagram on port 53 with itself, as a DNS
// server answers from its port 53 to wherever the query came from.
func echoServer53() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: 53}); err != nil {
		return fmt.Errorf("bind :53: %w", err)
	}
	fmt.Println("ready")
	buf := make([]byte, 4096)
	for {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return err
		}
		if err := unix.Sendto(fd, buf[:n], 0, from); err != nil {
			return fmt.Errorf("sendto %v: %w", from, err)
		}
	}
}
