//go:build linux

package testenv

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/control"
)

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
