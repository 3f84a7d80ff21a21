package dnstest

import (
	"encoding/binary"
	"io"
)

// WriteTCP writes msg as one DNS message over TCP: its length in two bytes,
// then the message (RFC 1035 4.2.2).
func WriteTCP(w io.Writer, msg []byte) error {
	_, err := w.Write(append(binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(msg)), uint16(len(msg))), msg...))
	return err
}

// ReadTCP reads one length-prefixed DNS message.
func ReadTCP(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	b := make([]byte, binary.BigEndian.Uint16(l[:]))
	_, err := io.ReadFull(r, b)
	return b, err
}
