package resolver

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
)

// maxTCPPipeline bounds the slow-path queries one connection may have in
// flight; the connection stops reading until one completes.
const maxTCPPipeline = 16

// tcpReadTimeout bounds how long the rest of a started message may take:
// a truncated frame closes the connection instead of holding it open.
const tcpReadTimeout = 2 * time.Second

// serveTCPConn answers the length-prefixed queries on one connection (RFC
// 7766). Local answers are written in order as they are read; slow-path
// answers are written when ready, which the RFC allows, so a slow upstream
// does not hold up the rest of the pipeline.
func (s *Server) serveTCPConn(c *net.TCPConn, local netip.AddrPort) {
	defer c.Close()
	src := addrPortOf(c.RemoteAddr())
	var (
		writeMu sync.Mutex
		pending sync.WaitGroup
		slots   = make(chan struct{}, maxTCPPipeline)
	)
	defer pending.Wait()
	write := func(reply []byte) {
		if len(reply) > 0xffff {
			return // cannot be framed; the client times out and retries
		}
		writeMu.Lock()
		defer writeMu.Unlock()
		frame := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(reply)), uint16(len(reply)))
		c.SetWriteDeadline(time.Now().Add(tcpReadTimeout))
		if _, err := c.Write(append(frame, reply...)); err != nil {
			c.Close()
		}
	}
	var lenBuf [2]byte
	buf := make([]byte, 0, 512)
	out := make([]byte, 0, 4096)
	name := new(nameBuf)
	for {
		if s.stopping() {
			return
		}
		c.SetReadDeadline(time.Now().Add(s.opts.TCPIdleTimeout))
		if _, err := io.ReadFull(c, lenBuf[:1]); err != nil {
			return // idle, closed, or the server is stopping
		}
		c.SetReadDeadline(time.Now().Add(tcpReadTimeout))
		if _, err := io.ReadFull(c, lenBuf[1:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(lenBuf[:]))
		if cap(buf) < n {
			buf = make([]byte, n)
		}
		msg := buf[:n]
		if _, err := io.ReadFull(c, msg); err != nil {
			metricQueries.drop.Inc()
			return // a truncated frame: nothing sensible to answer
		}
		reply, slow := s.answerFast(msg, src, true, out[:0], name)
		if !slow {
			if reply == nil {
				continue
			}
			write(reply)
			out = reply[:0]
			continue
		}
		slots <- struct{}{}
		pending.Add(1)
		s.slow(append([]byte(nil), msg...), src, local, true, func(reply []byte) {
			defer pending.Done()
			defer func() { <-slots }()
			if reply != nil {
				write(reply)
			}
		})
	}
}
