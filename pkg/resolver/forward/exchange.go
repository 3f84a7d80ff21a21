package forward

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// maxUDPReply is the largest UDP payload we read from an upstream.
const maxUDPReply = 65535

// errMismatch reports a TCP reply that is not the answer to our query.
var errMismatch = errors.New("reply does not match the query")

// udpBufs holds read buffers for upstream UDP replies; the reply is copied
// out at its real size, so a 64 KiB buffer is not allocated per query.
var udpBufs = sync.Pool{New: func() any { b := make([]byte, maxUDPReply); return &b }}

// exchange sends query (already carrying its own random ID) to one upstream
// over the client's protocol and returns the first reply that matches it. A
// truncated UDP reply is returned as it is: the client sees TC and retries
// over TCP, which reaches the upstream over TCP in turn.
func exchange(ctx context.Context, upstream netip.AddrPort, query []byte, q question, tcp bool) ([]byte, error) {
	if tcp {
		return exchangeTCP(ctx, upstream, query, q)
	}
	return exchangeUDP(ctx, upstream, query, q)
}

// exchangeUDP reads from a connected socket of its own, so packets from other
// addresses never reach it, and skips replies whose ID or question differ.
func exchangeUDP(ctx context.Context, upstream netip.AddrPort, query []byte, q question) ([]byte, error) {
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(upstream))
	if err != nil {
		return nil, fmt.Errorf("dial udp %s: %w", upstream, err)
	}
	defer conn.Close()
	defer interruptOnDone(ctx, conn)()
	if _, err := conn.Write(query); err != nil {
		return nil, ctxErrOr(ctx, fmt.Errorf("send udp %s: %w", upstream, err))
	}
	bufp := udpBufs.Get().(*[]byte)
	defer udpBufs.Put(bufp)
	buf := *bufp
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return nil, ctxErrOr(ctx, fmt.Errorf("read udp %s: %w", upstream, err))
		}
		if matches(buf[:n], query, q) {
			return slices.Clone(buf[:n]), nil
		}
		// A stray or spoofed packet: keep waiting for ours.
	}
}

func exchangeTCP(ctx context.Context, upstream netip.AddrPort, query []byte, q question) ([]byte, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", upstream.String())
	if err != nil {
		return nil, ctxErrOr(ctx, fmt.Errorf("dial tcp %s: %w", upstream, err))
	}
	defer conn.Close()
	defer interruptOnDone(ctx, conn)()

	frame := make([]byte, 2+len(query))
	binary.BigEndian.PutUint16(frame, uint16(len(query)))
	copy(frame[2:], query)
	if _, err := conn.Write(frame); err != nil {
		return nil, ctxErrOr(ctx, fmt.Errorf("send tcp %s: %w", upstream, err))
	}
	// The 16-bit length bounds a reply to 64 KiB; io.ReadFull copes with
	// short reads and turns a frame cut short into an error.
	var length [2]byte
	if _, err := io.ReadFull(conn, length[:]); err != nil {
		return nil, ctxErrOr(ctx, fmt.Errorf("read tcp %s length: %w", upstream, err))
	}
	n := int(binary.BigEndian.Uint16(length[:]))
	if n < headerLen {
		return nil, fmt.Errorf("read tcp %s: %d-octet reply is shorter than a header", upstream, n)
	}
	reply := make([]byte, n)
	if _, err := io.ReadFull(conn, reply); err != nil {
		return nil, ctxErrOr(ctx, fmt.Errorf("read tcp %s reply: %w", upstream, err))
	}
	if !matches(reply, query, q) {
		return nil, fmt.Errorf("tcp %s: %w", upstream, errMismatch)
	}
	return reply, nil
}

// interruptOnDone makes blocked I/O on conn return as soon as ctx ends (the
// deadline or a cancel when another upstream won). Call the result to stop.
func interruptOnDone(ctx context.Context, conn net.Conn) (stop func()) {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	s := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	return func() { s() }
}

// ctxErrOr prefers the context's error, so an I/O error caused by the
// deadline or a cancel is reported as such.
func ctxErrOr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	return err
}

// matches reports whether reply answers query: a response with the same ID,
// opcode and question. Error replies without a question (FORMERR, NOTIMP)
// are accepted on ID and opcode alone, as servers that cannot parse a query
// cannot echo it.
func matches(reply, query []byte, q question) bool {
	rh, err := readHeader(reply)
	if err != nil {
		return false
	}
	qh, _ := readHeader(query)
	if rh.id != qh.id || rh.flags&flagQR == 0 || rh.opcode() != qh.opcode() {
		return false
	}
	switch rh.qdcount {
	case 1:
		return sameQuestion(reply, query, q)
	case 0:
		return rh.rcode() != rcodeSuccess && rh.rcode() != rcodeNXDomain
	default:
		return false
	}
}
