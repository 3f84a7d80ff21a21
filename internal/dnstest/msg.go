package dnstest

import (
	"testing"

	"github.com/miekg/dns"
)

// Unpack parses a message, failing the test if it is not a valid one.
func Unpack(tb testing.TB, b []byte) *dns.Msg {
	tb.Helper()
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		tb.Fatalf("unpack: %v\n% x", err, b)
	}
	return m
}
