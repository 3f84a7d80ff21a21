package agent

import "testing"

func TestBracketIPv6HostPort(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:15053":     "127.0.0.1:15053",
		"198.51.100.7:15053":  "198.51.100.7:15053",
		"[2001:db8::7]:15053": "[2001:db8::7]:15053",
		"2001:db8::7:15053":   "[2001:db8::7]:15053", // "$(HOST_IP):15053" on an IPv6 node
		":15053":              ":15053",
	} {
		if got := BracketIPv6HostPort(in); got != want {
			t.Errorf("BracketIPv6HostPort(%q) = %q, want %q", in, got, want)
		}
	}
}
