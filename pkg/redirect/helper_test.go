//go:build linux

package redirect

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/testenv"
)

// Clients and servers that must run inside the test cgroup (only sockets a
// process of the cgroup opens are subject to the programs) run as this test
// binary, started by startHelper with helperEnv set; TestMain hands them to
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
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return err
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
		return fmt.Errorf("unknown family %q", family)
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, sa); err != nil {
		return fmt.Errorf("connect %s: %w", addr, err)
	}
	fmt.Println("connected")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return fmt.Errorf("waiting for the go-ahead: %w", err)
	}

	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeA)
	b, err := q.Pack()
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

// helperProc is a running helper.
type helperProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

// helperReadyWithin bounds the wait for a helper's first line.
const helperReadyWithin = 30 * time.Second

// startHelper starts helper mode with env in the pod's network namespace
// and the test cgroup, waits until it printed ready (its first line, within
// helperReadyWithin), and ends it at cleanup.
func startHelper(tb testing.TB, ctx context.Context, p *testenv.Pod, cg *testenv.Cgroup, ready string, env ...string) *helperProc {
	tb.Helper()
	ctx, cancel := context.WithCancel(ctx)
	tb.Cleanup(cancel) // whichever Fatal comes first
	cmd := p.Command(ctx, cg, os.Args[0])
	cmd.Env = append(append(os.Environ(), env...), "GOTRACEBACK=none")
	cmd.Stderr = &strings.Builder{}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	h := &helperProc{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	tb.Cleanup(func() {
		cancel()
		stdin.Close()
		_ = cmd.Wait()
	})
	type firstLine struct {
		line string
		err  error
	}
	read := make(chan firstLine, 1)
	go func() {
		line, err := h.out.ReadString('\n')
		read <- firstLine{line, err}
	}()
	select {
	case r := <-read:
		if strings.TrimSpace(r.line) != ready {
			cancel()
			_ = cmd.Wait()
			tb.Fatalf("helper %v printed %q, %v, want %q; stderr: %s", env, r.line, r.err, ready, cmd.Stderr)
		}
	case <-time.After(helperReadyWithin):
		cancel() // the read ends with the helper's stdout
		_ = cmd.Wait()
		<-read
		tb.Fatalf("helper %v printed no line within %v, want %q; stderr: %s", env, helperReadyWithin, ready, cmd.Stderr)
	}
	return h
}

// finish lets the helper go on, then returns what else it printed and how
// it ended.
func (h *helperProc) finish() (string, error) {
	if _, err := io.WriteString(h.stdin, "go\n"); err != nil {
		return "", err
	}
	rest, _ := io.ReadAll(h.out)
	err := h.cmd.Wait()
	if err != nil {
		err = fmt.Errorf("%w: %s", err, h.cmd.Stderr)
	}
	return string(rest), err
}
