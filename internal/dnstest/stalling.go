package dnstest

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
)

// StallingServer is a nameserver on TCP whose replies never finish
// arriving: on each connection it answers the first query with a frame
// announcing 64 KiB (the largest length), sends the first octets of that
// reply (the query's ID, a header byte with QR set, then zeros) and
// stalls, reading and discarding whatever else the connection brings
// until the client closes it or the test ends.
type StallingServer struct {
	// Addr is where it listens, on TCP only.
	Addr netip.AddrPort

	stalled atomic.Int64
}

// StartStalling starts a StallingServer on 127.0.0.1 that sends sent
// octets (at least 3) of every reply; it runs until the test ends.
func StartStalling(tb testing.TB, sent int) *StallingServer {
	tb.Helper()
	if sent < 3 {
		tb.Fatalf("dnstest.StartStalling: %d octets of a reply, want at least 3 (its ID and a header byte)", sent)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &StallingServer{Addr: netip.MustParseAddrPort(ln.Addr().String())}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				q, err := ReadTCP(c)
				if err != nil || len(q) < 2 {
					return
				}
				frame := append([]byte{0xFF, 0xFF, q[0], q[1], 0x80}, make([]byte, sent-3)...)
				if _, err := c.Write(frame); err == nil {
					s.stalled.Add(1)
				}
				io.Copy(io.Discard, c) // until the client gives up
			})
		}
	})
	return s
}

// Stalled returns how many replies it has started and stalled.
func (s *StallingServer) Stalled() int64 { return s.stalled.Load() }
