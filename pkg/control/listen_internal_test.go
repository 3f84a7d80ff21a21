//go:build linux

package control

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestEvictedReadFailsAsAClosedRead: a connection closed for room while
// its server waits to read, or found closed by its next read, fails that
// read as the net package's reads of a closed connection do: a
// *net.OpError of Op "read" holding net.ErrClosed. net/http takes such an
// error for the connection gone and lets go of it; any other (Op
// "raw-read", say) it takes for a malformed request, and writes a 400 to
// the closed socket.
func TestEvictedReadFailsAsAClosedRead(t *testing.T) {
	server, _ := socketPair(t) // the caller's end open, sending nothing
	l := &guardedListener{ready: make(chan *peerConn, MaxConns)}
	pc := &peerConn{UnixConn: server, peer: Peer{UID: 0}, l: l, served: true}
	l.conns = []*peerConn{pc}

	read := make(chan error, 1)
	go func() {
		_, err := pc.Read(make([]byte, 16))
		read <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !l.evictOldest(func(*peerConn) bool { return true }) {
		if time.Now().After(deadline) {
			t.Fatal("the idle connection was never closable")
		}
		time.Sleep(time.Millisecond)
	}
	check := func(what string, err error) {
		t.Helper()
		oe, ok := err.(*net.OpError)
		if !ok || oe.Op != "read" || oe.Err != net.ErrClosed {
			t.Errorf("%s: %#v (%v), want a *net.OpError of Op \"read\" holding net.ErrClosed", what, err, err)
		}
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("%s: %v is not net.ErrClosed", what, err)
		}
	}
	select {
	case err := <-read:
		check("the read waiting when the connection was closed", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the read waiting on the closed connection did not return")
	}

	// A read that finds the connection marked, before it is closed.
	server, _ = socketPair(t)
	pc2 := &peerConn{UnixConn: server, l: l, evicted: true}
	_, err := pc2.Read(make([]byte, 16))
	check("a read of a connection chosen for room", err)
}

// socketPair returns the two ends of a new unix stream connection,
// closed when the test ends.
func socketPair(t *testing.T) (a, b *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}
