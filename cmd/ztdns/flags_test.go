package main

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/ztdns/ztdns/pkg/redirect"
)

// TestCaptureNameserversFlag: --capture-nameservers takes addresses and
// CIDRs, comma-separated and repeated; a bare address is a full-length
// prefix, and an IPv4-mapped CIDR is kept as written and accepted (the
// programs match it as IPv4).
func TestCaptureNameserversFlag(t *testing.T) {
	l := prefixList()
	for _, v := range []string{"10.96.0.10, fd00:10:96::a", "::ffff:198.51.100.48/124,169.254.20.0/24"} {
		if err := l.Set(v); err != nil {
			t.Fatalf("Set(%q): %v", v, err)
		}
	}
	want := []netip.Prefix{
		netip.MustParsePrefix("10.96.0.10/32"),
		netip.MustParsePrefix("fd00:10:96::a/128"),
		netip.MustParsePrefix("::ffff:198.51.100.48/124"),
		netip.MustParsePrefix("169.254.20.0/24"),
	}
	if !slices.Equal(l.vals, want) {
		t.Errorf("prefixes %v, want %v", l.vals, want)
	}
	if err := redirect.ValidateCaptureNameservers(l.vals); err != nil {
		t.Errorf("ValidateCaptureNameservers(%v): %v", l.vals, err)
	}
}

// TestCheckMetricsAddr: --metrics takes what the agent listens on (an IPv6
// address with or without brackets, as the chart's "$(HOST_IP):PORT"
// gives) and refuses what it cannot.
func TestCheckMetricsAddr(t *testing.T) {
	for _, s := range []string{"", "127.0.0.1:15053", "[fd00::1]:15053", "fd00::1:15053", "127.0.0.1:0", "localhost:9090"} {
		if err := checkMetricsAddr(s); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, s := range []string{"foo", "127.0.0.1", "fd00::1", "127.0.0.1:70000", "127.0.0.1:", "127.0.0.1:http", "10.0.0.1:15053:1"} {
		if err := checkMetricsAddr(s); err == nil {
			t.Errorf("%q: accepted", s)
		}
	}
}
