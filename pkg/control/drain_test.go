//go:build linux

package control_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
)

// The tests here stop a server (as an agent does when it hands its socket
// over, or stops) with callers at every stage of a call: each one that
// reached the server is answered, or sees its connection reset (which the
// CNI plugin sends again); none sees it end with no answer (EOF), which
// the plugin cannot tell from an agent that took its request.

// statusRequest is a GET of the status, as the control client writes it.
const statusRequest = "GET /v1/status HTTP/1.1\r\nHost: ztdns\r\nConnection: close\r\n\r\n"

// TestRequestAfterStopAnswered: a caller connected, and its connection was
// taken; the server stops before the caller (short of CPU) writes its
// request. The request is answered, and the server returns after that.
// (Before: net/http's Shutdown read the request and closed the connection
// unanswered, or the listener closed the connection unread, as the server
// had not taken it yet: the caller read EOF, or a reset.)
func TestRequestAfterStopAnswered(t *testing.T) {
	s := serve(t, control.Access{})
	c := dial(t, s.socket)
	testenv.Eventually(t, 10*time.Second, "the connection taken", func() bool { return control.StatsOf(s.ln).Open == 1 })
	stopped := make(chan error, 1)
	go func() { stopped <- s.stop() }()
	<-control.AcceptStopped(s.ln) // the server has begun to stop

	if _, err := io.WriteString(c, statusRequest); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("a request sent as the server stopped, on a connection it had taken: %v, want it answered", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("answered %s, want 200", resp.Status)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// TestQueuedCallAnsweredAtStop: root's call waits in the listener's queue
// behind 32 connections that have sent nothing when the server stops;
// then their callers hang up. The queued call is answered.
// (Before: the listener closed it unread as it stopped: a reset.)
func TestQueuedCallAnsweredAtStop(t *testing.T) {
	s := serve(t, control.Access{})
	silent, answered := queueBehindSilentConns(t, s)
	stopped := make(chan error, 1)
	go func() { stopped <- s.stop() }()
	<-control.AcceptStopped(s.ln)

	for _, c := range silent {
		c.Close()
	}
	if err := <-answered; err != nil {
		t.Errorf("the call queued as the server stopped: %v, want it answered", err)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// TestCallsPastTheStopBoundReset: the server stops with 32 connections
// that have sent nothing and root's call queued behind them, and gives
// them up 2 s later: the queued call is reset, and a request sent
// afterwards on one of the silent connections too; Serve has returned.
// The CNI plugin sends a call reset again, to whoever serves the socket
// next. (Before: the queued call was reset, but a late request on a
// connection the server had taken was read and dropped: EOF.)
func TestCallsPastTheStopBoundReset(t *testing.T) {
	s := serve(t, control.Access{})
	silent, answered := queueBehindSilentConns(t, s)
	if err := s.stop(); err != nil {
		t.Errorf("Serve: %v", err)
	}

	if err := <-answered; !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the call queued when the server gave up: %v, want a reset", err)
	}
	for i, c := range silent[:3] {
		if _, err := io.WriteString(c, statusRequest); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		c.SetReadDeadline(time.Now().Add(time.Minute))
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); !errors.Is(err, syscall.ECONNRESET) {
			if err == nil {
				err = fmt.Errorf("answered %s", resp.Status)
			}
			t.Errorf("a request sent on connection %d after the server gave it up: %v, want a reset", i, err)
		}
	}
	if calls := s.api.seen(); len(calls) != 0 {
		t.Errorf("the agent was called %q, want nothing", calls)
	}
}

// fillWithSilentConns opens control.MaxConns connections that send
// nothing, and waits until the server has taken them all.
func fillWithSilentConns(t *testing.T, s *server) []net.Conn {
	t.Helper()
	var silent []net.Conn
	for range control.MaxConns {
		silent = append(silent, dial(t, s.socket))
	}
	testenv.Eventually(t, 10*time.Second, "every silent connection taken", func() bool {
		return control.StatsOf(s.ln).Open == control.MaxConns
	})
	return silent
}

// queueBehindSilentConns fills the server with silent connections
// (fillWithSilentConns), then has root ask for the status, and waits until
// that call is queued; answered receives the call's error.
func queueBehindSilentConns(t *testing.T, s *server) (silent []net.Conn, answered <-chan error) {
	t.Helper()
	silent = fillWithSilentConns(t, s)
	errc := make(chan error, 1)
	go func() {
		_, err := control.NewClient(s.socket, time.Minute).Status(context.Background())
		errc <- err
	}()
	testenv.Eventually(t, 10*time.Second, "the call queued", func() bool { return control.StatsOf(s.ln).Queued == 1 })
	return silent, errc
}
