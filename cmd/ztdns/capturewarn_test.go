package main

import (
	"net/netip"
	"testing"

	"github.com/ztdns/ztdns/pkg/control"
)

// TestNetnsResolvConf: the file a namespace's processes read, and the one
// to write for them alone, never the node's /etc/resolv.conf.
func TestNetnsResolvConf(t *testing.T) {
	for _, tc := range []struct {
		path, read, write string
		ok                bool
	}{
		{"/run/netns/ztdns-no-such-ns", "/etc/resolv.conf", "/etc/netns/ztdns-no-such-ns/resolv.conf", true},
		{"/var/run/netns/ztdns-no-such-ns", "/etc/resolv.conf", "/etc/netns/ztdns-no-such-ns/resolv.conf", true},
		{"/proc/4242/ns/net", "/proc/4242/root/etc/resolv.conf", "/proc/4242/root/etc/resolv.conf", true},
		{"/proc/4242/task/4243/ns/net", "", "", false},
		{"/var/run/docker/netns/abc", "", "", false},
	} {
		read, write, ok := netnsResolvConf(tc.path)
		if read != tc.read || write != tc.write || ok != tc.ok {
			t.Errorf("netnsResolvConf(%s) = %q, %q, %v; want %q, %q, %v", tc.path, read, write, ok, tc.read, tc.write, tc.ok)
		}
	}
}

// TestUncapturedReason: which nameservers capture leaves alone.
func TestUncapturedReason(t *testing.T) {
	st := &control.Status{Listen: []string{"169.254.20.53:53", "[fd00:7a74:646e::53]:53"}}
	limited := &control.Status{CaptureNameservers: []string{"10.96.0.10/32", "10.0.2.0/24"}}
	for _, tc := range []struct {
		ns       string
		st       *control.Status
		captured bool
	}{
		{"127.0.0.53", nil, false},
		{"::1", st, false},
		{"0.0.0.0", st, false},
		{"10.0.2.3", nil, true},
		{"10.0.2.3", st, true},
		{"169.254.20.53", st, false},
		{"fd00:7a74:646e::53", st, false},
		{"10.0.2.3", limited, true},
		{"10.96.0.10", limited, true},
		{"192.0.2.1", limited, false},
		// IPv4-mapped counts as IPv4, as in the programs; link-local and
		// multicast are never captured (before: "outside
		// --capture-nameservers" for the first, no warning for the last
		// two).
		{"::ffff:10.96.0.10", limited, true},
		{"::ffff:192.0.2.1", limited, false},
		{"::ffff:169.254.20.53", st, false},
		{"fe80::1%eth0", nil, false},
		{"ff02::fb", nil, false},
		{"fe80::1%eth0", st, false},
	} {
		var name string
		if tc.st == st {
			name = "listen"
		} else if tc.st == limited {
			name = "limited"
		}
		why := uncapturedReason(netip.MustParseAddr(tc.ns), tc.st)
		if (why == "") != tc.captured {
			t.Errorf("uncapturedReason(%s, %s) = %q; want captured %v", tc.ns, name, why, tc.captured)
		}
	}
}
