//go:build linux

package testenv

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Forwarder is a TCP proxy run by a test: every connection to Addr is
// forwarded to Target, and the bytes are counted each way (TLS and HTTP/2
// framing included, as they would cross a network).
type Forwarder struct {
	// Addr is where it listens, Target where it connects.
	Addr, Target string

	received atomic.Int64 // Target → client
	sent     atomic.Int64 // client → Target
}

// Received is the number of bytes Target sent to the clients so far.
func (f *Forwarder) Received() int64 { return f.received.Load() }

// Sent is the number of bytes the clients sent to Target so far.
func (f *Forwarder) Sent() int64 { return f.sent.Load() }

// ForwardTCP listens on listen ("127.0.0.1:0" picks a port) inside netns,
// or in the test's own namespace when netns is nil, and forwards each
// connection to target in the test's own namespace (e.g. an API server on
// the machine's loopback, for an agent in a node namespace), until cleanup.
func ForwardTCP(tb testing.TB, netns *Netns, listen, target string) *Forwarder {
	tb.Helper()
	var ln net.Listener
	open := func() (err error) {
		ln, err = net.Listen("tcp", listen)
		return err
	}
	var err error
	if netns != nil {
		err = netns.Do(open)
	} else {
		err = open()
	}
	if err != nil {
		tb.Fatalf("testenv: listen on %s: %v", listen, err)
	}
	f := &Forwarder{Addr: ln.Addr().String(), Target: target}
	ctx, cancel := context.WithCancel(context.Background())
	var conns sync.WaitGroup
	tb.Cleanup(func() {
		cancel()
		ln.Close()
		conns.Wait()
	})
	conns.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Go(func() { f.forward(ctx, c) })
		}
	})
	return f
}

func (f *Forwarder) forward(ctx context.Context, client net.Conn) {
	defer client.Close()
	var d net.Dialer
	server, err := d.DialContext(ctx, "tcp", f.Target)
	if err != nil {
		return
	}
	defer server.Close()
	stop := context.AfterFunc(ctx, func() {
		client.Close()
		server.Close()
	})
	defer stop()
	var wg sync.WaitGroup
	wg.Go(func() {
		copyCounting(server, client, &f.sent)
		server.Close() // the client is done: so is the other way
	})
	copyCounting(client, server, &f.received)
	client.Close()
	wg.Wait()
}

// copyCounting copies src to dst, adding every byte to n as it passes.
func copyCounting(dst io.Writer, src io.Reader, n *atomic.Int64) {
	buf := make([]byte, 64<<10)
	for {
		k, err := src.Read(buf)
		if k > 0 {
			n.Add(int64(k))
			if _, werr := dst.Write(buf[:k]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
