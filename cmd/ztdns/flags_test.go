//go:build linux

package main

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
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
// address with or without brackets, an IPv4 one in brackets too, as the
// chart's "[$(HOST_IP)]:PORT" gives) and refuses what it cannot.
func TestCheckMetricsAddr(t *testing.T) {
	for _, s := range []string{"", "127.0.0.1:15053", "[fd00::1]:15053", "fd00::1:15053", "127.0.0.1:0", "localhost:9090", "[10.0.0.1]:15053"} {
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

// TestAddrPortFlag: --listen and --upstream take IPv4 with or without a
// port, IPv6 in brackets with or without one, and brackets around IPv4 too,
// so that the chart's "[$(HOST_IP)]:53" serves nodes of either family. An
// IPv6 address without brackets is all address, with the default port;
// where its last group could be a port ("$(HOST_IP):53" on an IPv6 node) it
// is refused, naming the bracketed forms to write.
func TestAddrPortFlag(t *testing.T) {
	tests := []struct {
		name, in string
		want     string // the address read; empty when refused
		err      string // in the error when refused
	}{
		{"IPv4 with a port", "10.0.0.5:5353", "10.0.0.5:5353", ""},
		{"IPv4 alone", "10.0.0.5", "10.0.0.5:53", ""},
		{"IPv4 in brackets with a port", "[10.0.0.5]:5353", "10.0.0.5:5353", ""},
		{"IPv4 in brackets alone", "[10.0.0.5]", "10.0.0.5:53", ""},
		{"IPv6 in brackets with a port", "[2001:db8::5]:5353", "[2001:db8::5]:5353", ""},
		{"IPv6 in brackets alone", "[2001:db8::5]", "[2001:db8::5]:53", ""},
		{"IPv6 in brackets whose last group could be a port", "[2001:db8::5:53]", "[2001:db8::5:53]:53", ""},
		{"IPv6 with a zone", "[fe80::1%eth0]:53", "[fe80::1%eth0]:53", ""},
		{"IPv4-mapped IPv6 is IPv4", "[::ffff:10.0.0.5]:53", "10.0.0.5:53", ""},
		{"IPv6 alone", "fd00:10:96::a", "[fd00:10:96::a]:53", ""},
		// Without the group before it, no address: only an address.
		{"IPv6 alone, its last group after ::", "2001:4860:4860::8888", "[2001:4860:4860::8888]:53", ""},
		{"ztdns0's IPv6 address alone", "fd00:7a74:646e::53", "[fd00:7a74:646e::53]:53", ""},
		// "$(HOST_IP):53" on a node with 2001:db8::5.
		{"IPv6 whose last group could be a port", "2001:db8::5:53", "",
			`"2001:db8::5:53": address 2001:db8::5:53 or port 53 of 2001:db8::5? An IPv6 address goes in brackets: write [2001:db8::5:53] or [2001:db8::5]:53`},
		{"IPv6 whose last group could be a port, 5353", "fd00:10:96::a:5353", "", "write [fd00:10:96::a:5353] or [fd00:10:96::a]:5353"},
		{"loopback and a port", "::1:53", "", "write [::1:53] or [::1]:53"},
		// "$(HOST_IP):53" on a node with 2001:db8:1:2:3:4:5:6.
		{"IPv6 of eight groups and a port", "2001:db8:1:2:3:4:5:6:53", "", `"2001:db8:1:2:3:4:5:6:53": an IPv6 address with a port goes in brackets: [2001:db8:1:2:3:4:5:6]:53`},
		{"IPv6 ending in :: and a port", "2001:db8:1:::53", "", "goes in brackets: [2001:db8:1::]:53"},
		// "$(HOST_IP):53" written with a node's v4-mapped address.
		{"IPv4-mapped IPv6 and a port", "::ffff:10.0.0.5:53", "", `"::ffff:10.0.0.5:53": an IPv6 address with a port goes in brackets: [::ffff:10.0.0.5]:53`},
		{"IPv6 of eight groups and no port number", "2001:db8:1:2:3:4:5:6:x", "", "is not an address"},
		{"no closing bracket", "[2001:db8::5:53", "", "is not an address"},
		{"bracket, no colon before the port", "[10.0.0.5]53", "", "want [ADDR]:PORT"},
		{"empty port", "[10.0.0.5]:", "", "want [ADDR]:PORT"},
		{"port out of range", "[2001:db8::5]:65536", "", "want [ADDR]:PORT with a port up to 65535"},
		{"a name", "dns.example:53", "", "is not an address"},
		{"a name in brackets", "[$(HOST_IP)]:53", "", "is not an address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := addrPortList(nil, 53)
			err := l.Set(tt.in)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("Set(%q) read %v; want it refused", tt.in, l.vals)
				}
				if !strings.Contains(err.Error(), tt.err) {
					t.Errorf("Set(%q): %v; want it to say %q", tt.in, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Set(%q): %v", tt.in, err)
			}
			if got := l.String(); got != tt.want {
				t.Errorf("Set(%q) read %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}

// TestClusterDomainFlag: --cluster-domain takes what kube-dns takes as its
// --domain, lower-case RFC 1123 labels, a single one too, with or without
// a trailing dot, which the agent drops; anything else is refused at
// start, exit status 2, naming the flag and why. (Before: cluster..local
// was taken, and the agent reported ready with every Service left out, a
// warning each.)
func TestClusterDomainFlag(t *testing.T) {
	for _, tc := range []struct{ value, want string }{
		{"cluster.local", "cluster.local"},
		{"cluster.local.", "cluster.local"},
		{"local", "local"},
		{"corp-1.example", "corp-1.example"},
		{"123.example", "123.example"},
		{strings.Repeat("a", 63) + ".local", strings.Repeat("a", 63) + ".local"},
	} {
		if got, err := checkClusterDomain(tc.value); err != nil || got != tc.want {
			t.Errorf("--cluster-domain %q: %q, %v; want %q", tc.value, got, err, tc.want)
		}
	}

	dir := t.TempDir()
	const emptyLabel = "an empty label: two dots in a row, or a dot first"
	badLabel := func(label string) string {
		return fmt.Sprintf("label %q: want lower-case letters, digits and '-', a letter or digit first and last, at most 63 characters (RFC 1123, as kube-dns takes its --domain)", label)
	}
	for _, tc := range []struct{ value, why string }{
		{"cluster..local", emptyLabel},
		{".cluster.local", emptyLabel},
		{"cluster.local..", emptyLabel},
		{"", "want the cluster's DNS domain, e.g. cluster.local"},
		{".", "want the cluster's DNS domain, e.g. cluster.local"},
		{"Cluster.Local", badLabel("Cluster")},
		{"cluster.local-", badLabel("local-")},
		{"my_cluster.local", badLabel("my_cluster")},
		{strings.Repeat("a", 64) + ".local", badLabel(strings.Repeat("a", 64))},
	} {
		t.Run(tc.value, func(t *testing.T) {
			r := ztdns(t, "agent", "--config-dir", dir, "--cluster-domain", tc.value)
			want := fmt.Sprintf("ztdns agent: --cluster-domain %q: %s", tc.value, tc.why)
			lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
			if r.code != exitUsage || r.stdout != "" || len(lines) != 2 || lines[0] != want || !strings.HasPrefix(lines[1], "Run 'ztdns agent --help'") {
				t.Errorf("want exit status 2, nothing on stdout, and on stderr %q and where the usage is; got %v", want, r)
			}
		})
	}
}
