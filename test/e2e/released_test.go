//go:build linux

package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/testenv"
)

// TestReleasedPodKeptSocket: a client that keeps one UDP socket connected
// to its nameserver (c-ares, in gRPC C++ and Node's dns.resolve*) opened it
// while its pod was captured, so the socket is connected to a resolver
// slot, and no hook sees its later sends. Once the pod is released
// (`ztdns capture del`), its queries on that socket still reach the
// resolver: they must get what the pod's own nameserver answers, as a new
// socket does, not ztdns's table, whose VIPs a pod out of the mesh cannot
// reach. Its replies still appear to come from the nameserver it
// addressed.
func TestReleasedPodKeptSocket(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	own := c.serve(t, podNameserver1, ownMarker)
	c.startReadyAgent(t)
	const name = "released"
	p := c.markedPod(t, name, podNameserver1)
	k := c.startKept(t, p)
	want := podNameserver1 + ":53"

	if from, got := k.ask(t, addressHost); from != want || got != addressVIP.String() {
		t.Fatalf("captured, kept socket: %s answered %s, want %s answering ztdns's %s", from, got, want, addressVIP)
	}

	c.release(t, p)
	if got, err := c.dig(t, p, addressHost); err != nil || len(got) != 1 || got[0] != ownMarker {
		t.Fatalf("released, dig %s = %v, %v; want %s from the pod's own nameserver", addressHost, got, err, ownMarker)
	}
	asked := len(askersOf(own, addressHost))

	for _, host := range []string{addressHost, autoHost} {
		from, got := k.ask(t, host)
		if from != want || got != ownMarker.String() {
			t.Errorf("released, kept socket: %s answered %s for %s, want %s answering %s, the pod's own nameserver's answer",
				from, got, host, want, ownMarker)
		}
	}
	// Asked by the agent, which forwarded the kept socket's queries.
	if askers := askersOf(own, addressHost); len(askers) != asked+1 {
		t.Errorf("the pod's nameserver was asked for %s by %v; want one more query, the kept socket's, forwarded", addressHost, askers)
	}

	row := c.podRow(t, name)
	if row.Marked || row.Captured || row.Reason != "released" {
		t.Errorf("ztdns pods after capture del: %+v; want the pod listed, not marked nor captured, reason released", row)
	}
}

// keptSocket is a client that keeps one UDP socket connected to the pod's
// first nameserver, as c-ares does (run by the test binary in a pod: see
// startKept). For each name it reads on stdin it writes an A query on that
// socket, reads the reply with recvfrom, as c-ares does, and prints the
// reply's source and its first address, or the outcome ("timeout", ...).
// For the line keptWait it sends nothing and waits on the socket, as
// c-ares waits on its open sockets, for up to keptWaitFor. A socket that
// reports an error (not a timeout) is closed and a new one connected, as
// c-ares does.
func keptSocket() int {
	conf, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil || len(conf.Servers) == 0 {
		fmt.Fprintf(os.Stderr, "kept: no nameserver in /etc/resolv.conf: %v\n", err)
		return 2
	}
	server, err := net.ResolveUDPAddr("udp", net.JoinHostPort(conf.Servers[0], "53"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	conn, err := net.DialUDP("udp", nil, server)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer func() { conn.Close() }()
	// failed prints err and connects a new socket.
	failed := func(err error) error {
		fmt.Println("- error:" + strings.ReplaceAll(err.Error(), " ", "_"))
		conn.Close()
		conn, err = net.DialUDP("udp", nil, server)
		return err
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	buf := make([]byte, 4096)
	for in.Scan() {
		wait := 3 * time.Second
		if in.Text() == keptWait {
			wait = keptWaitFor
		} else {
			q := new(dns.Msg).SetQuestion(dns.Fqdn(in.Text()), dns.TypeA)
			wire, err := q.Pack()
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
			if _, err := conn.Write(wire); err != nil {
				if err := failed(err); err != nil {
					fmt.Fprintln(os.Stderr, err)
					return 2
				}
				continue
			}
		}
		conn.SetReadDeadline(time.Now().Add(wait))
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		var nerr net.Error
		switch {
		case errors.As(err, &nerr) && nerr.Timeout():
			fmt.Println("- timeout")
			continue
		case err != nil:
			if err := failed(err); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
			continue
		}
		answer := "unparsable"
		if r := new(dns.Msg); r.Unpack(buf[:n]) == nil {
			answer = outcome(r)
		}
		fmt.Println(netip.AddrPortFrom(from.Addr().Unmap(), from.Port()).String() + " " + answer)
	}
	return 0
}

// keptWait has a keptSocket client wait on its socket, without sending,
// for up to keptWaitFor: a bound for a loaded machine, not a measure.
const (
	keptWait    = "-wait"
	keptWaitFor = 30 * time.Second
)

// startKept starts a keptSocket client in the pod and the test cgroup,
// waits until its socket is connected, and checks at cleanup that it
// exits cleanly at the end of its input.
func (c *cluster) startKept(t *testing.T, p *testenv.Pod) *kept {
	t.Helper()
	// Not t.Context(): it ends before the cleanup that lets the client exit.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	h := testenv.StartHelper(t, ctx, p, c.cg, "ready", helperEnv+"=kept")
	t.Cleanup(func() {
		if _, err := h.Finish(""); err != nil {
			t.Errorf("kept client: %v", err)
		}
	})
	return &kept{h}
}

// kept is a keptSocket client running in a pod.
type kept struct{ *testenv.Helper }

// ask has the client query name on its kept socket and returns the
// reply's source and its first address (or outcome).
func (k *kept) ask(t *testing.T, name string) (from, answer string) {
	t.Helper()
	from, answer, _ = strings.Cut(k.Do(t, name), " ")
	return from, answer
}
