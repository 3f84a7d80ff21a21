//go:build linux

package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/control"
)

// NameserverAddrs are the addresses of the nameservers row learned, in
// slot order.
func NameserverAddrs(row control.PodRow) []string {
	var out []string
	for _, ns := range row.Nameservers {
		out = append(out, ns.Address)
	}
	return out
}

// What a misbehaving local process does to a control socket, for the tests
// that check the agent survives it.

// OversizedRequest sends route a request announcing size bytes of body and
// keeps sending until the server stops reading. It returns the answer's
// status and how many body bytes went out.
func OversizedRequest(tb testing.TB, socket string, route control.Route, size int64) (status int, sent int64) {
	tb.Helper()
	c, err := net.Dial("unix", socket)
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: ztdns\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", route.Method, route.Path, size)
	done := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(c, io.LimitReader(zeros{}, size))
		done <- n
	}()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		tb.Fatalf("testenv: no answer to a request of %d bytes: %v", size, err)
	}
	resp.Body.Close()
	c.Close() // ends the sender, if the server has not
	return resp.StatusCode, <-done
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// HalfSentRequests opens n connections to the socket, each sending half a
// request's header to route and then nothing. They are closed at cleanup.
func HalfSentRequests(tb testing.TB, socket string, route control.Route, n int) []net.Conn {
	tb.Helper()
	conns := make([]net.Conn, 0, n)
	tb.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range n {
		c, err := net.Dial("unix", socket)
		if err != nil {
			tb.Fatalf("testenv: connection %d: %v", len(conns), err)
		}
		conns = append(conns, c)
		if _, err := io.WriteString(c, route.Method+" "+route.Path+" HTTP/1.1\r\nHost: ztdns\r\nContent-Le"); err != nil {
			tb.Fatalf("testenv: %v", err)
		}
	}
	return conns
}

// RequireClosedByPeer checks that the other end closed each connection
// within the time (a close with unread bytes is a reset).
func RequireClosedByPeer(tb testing.TB, conns []net.Conn, within time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(within)
	for i, c := range conns {
		c.SetReadDeadline(deadline)
		if _, err := io.ReadAll(c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			tb.Fatalf("connection %d of %d still open after %v: %v", i, len(conns), within, err)
		}
	}
}

// StalledReadersAsUser runs a process as cred that opens n connections to
// the socket, asks route (a GET) on each and never reads the answers: an
// answer larger than the socket's buffer leaves the server blocked writing
// it. It returns once every request is sent (those the server closed
// unserved included); the process ends at cleanup, or when the test binary
// does. The package's TestMain must call RunHelper.
func StalledReadersAsUser(tb testing.TB, cred syscall.Credential, socket string, route control.Route, n int) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	cmd := AsUser(tb, ctx, cred, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=stalled-readers", "ZTDNS_TESTENV_SOCKET="+socket,
		"ZTDNS_TESTENV_PATH="+route.Path, "ZTDNS_TESTENV_CONNS="+strconv.Itoa(n))
	startHelper(tb, cmd, cancel, fmt.Sprintf("the stalled readers (uid %d)", cred.Uid), "sent")
}

// stalledReaders is the process StalledReadersAsUser runs.
func stalledReaders() int {
	n, _ := strconv.Atoi(os.Getenv("ZTDNS_TESTENV_CONNS"))
	req := "GET " + os.Getenv("ZTDNS_TESTENV_PATH") + " HTTP/1.1\r\nHost: ztdns\r\n\r\n"
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := net.Dial("unix", os.Getenv("ZTDNS_TESTENV_SOCKET"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		conns = append(conns, c)
		io.WriteString(c, req) // fails on a connection the server closed: no matter
	}
	fmt.Println("sent")
	io.Copy(io.Discard, os.Stdin) // holds the connections, unread, until the test lets go
	runtime.KeepAlive(conns)      // (a collected connection is closed)
	return 0
}

// ConnectFloodAsUser runs a process as cred that connects to the socket n
// times, closing each connection at once without sending anything, as a
// socket-group member flooding the agent's backlog would. It returns how
// many connects failed and the first failure ("" when none did).
func ConnectFloodAsUser(tb testing.TB, cred syscall.Credential, socket string, n int) (failed int, first string) {
	tb.Helper()
	cmd := AsUser(tb, context.Background(), cred, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=connect-flood", "ZTDNS_TESTENV_SOCKET="+socket, "ZTDNS_TESTENV_CONNS="+strconv.Itoa(n))
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("testenv: the connect flood as uid %d: %v %s", cred.Uid, err, out)
	}
	line, first, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
	failed, err = strconv.Atoi(line)
	if err != nil {
		tb.Fatalf("testenv: the connect flood said %q", out)
	}
	return failed, first
}

// connectFlood is the process ConnectFloodAsUser runs: it prints the
// number of failed connects and the first failure.
func connectFlood() int {
	n, _ := strconv.Atoi(os.Getenv("ZTDNS_TESTENV_CONNS"))
	failed, first := 0, ""
	for range n {
		c, err := net.Dial("unix", os.Getenv("ZTDNS_TESTENV_SOCKET"))
		if err != nil {
			if failed++; first == "" {
				first = err.Error()
			}
			continue
		}
		c.Close()
	}
	fmt.Println(failed, first)
	return 0
}
