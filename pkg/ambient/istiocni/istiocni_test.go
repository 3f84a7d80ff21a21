//go:build linux

package istiocni

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/netns"
)

// TestInspect installs istio-cni's in-pod DNS rules with each of its
// backends in a fresh network namespace and checks that Inspect names the
// backend, and nothing in a namespace without them.
func TestInspect(t *testing.T) {
	testenv.RequireRoot(t)
	tests := []struct {
		backend string
		want    Finding
		// flushV4 empties the IPv4 nat chain afterwards, so only the IPv6
		// rules (another layout of the REDIRECT target) are left.
		flushV4 string
	}{
		{testenv.IstioIptables, Finding{BackendIptablesNft}, "iptables-nft"},
		{testenv.IstioIptablesLegacy, Finding{BackendIptablesLegacy}, "iptables-legacy"},
		{testenv.IstioNftables, Finding{BackendNftables}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.backend, func(t *testing.T) {
			n := testenv.NewNetns(t, testenv.UniqueName("ztdns-istiocni-"))
			testenv.InstallIstioDNSRules(t, n, tt.backend)
			inspect := func(what string, want Finding) {
				got, err := Inspect(n.Path(), 0)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(got, want) {
					t.Errorf("%s: Inspect = %v, want %v", what, got, want)
				}
			}
			inspect("IPv4 and IPv6 rules", tt.want)
			if tt.flushV4 == "" {
				return
			}
			flush := func(bin string) {
				if out, err := exec.Command("nsenter", "--net="+n.Path(), bin, "-t", "nat", "-F", "ISTIO_OUTPUT").CombinedOutput(); err != nil {
					t.Fatalf("%s -F: %v\n%s", bin, err, out)
				}
			}
			flush(tt.flushV4)
			inspect("IPv6 rules only", tt.want)
			flush(strings.Replace(tt.flushV4, "iptables", "ip6tables", 1))
			inspect("no rules left", nil)
		})
	}
}

// TestInspectLeavesCleanNamespaceAlone: a namespace without rules reports
// none, other redirects (ztunnel's 15001) are not DNS capture, and reading
// creates no legacy table (which would turn on conntrack in the pod).
func TestInspectLeavesCleanNamespaceAlone(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNetns(t, testenv.UniqueName("ztdns-istiocni-"))
	if got, err := Inspect(n.Path(), 0); err != nil || got.Present() {
		t.Fatalf("Inspect of an empty namespace = %v, %v; want nothing", got, err)
	}
	if names := tablesNames(t, n); names != "" {
		t.Errorf("legacy tables exist after Inspect: %q", names)
	}
	testenv.LookPath(t, "iptables-legacy")
	out, err := exec.Command("nsenter", "--net="+n.Path(), "iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-p", "tcp",
		"-j", "REDIRECT", "--to-ports", "15001").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables-legacy: %v\n%s", err, out)
	}
	out, err = exec.Command("nsenter", "--net="+n.Path(), "nft", "add table inet t; add chain inet t o { type nat hook output priority -100 ; }; add rule inet t o tcp dport 80 redirect to :15001").CombinedOutput()
	if err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	if got, err := Inspect(n.Path(), 0); err != nil || got.Present() {
		t.Errorf("Inspect with only port-15001 redirects = %v, %v; want nothing", got, err)
	}
}

func tablesNames(t *testing.T, n *testenv.Netns) string {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+n.Path(), "cat", "/proc/net/ip_tables_names", "/proc/net/ip6_tables_names").CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestInspectChecksTheCookie: given the cookie of the namespace it should
// look at (an adopted pod's path is /proc/<pid>/ns/net, and the PID may be
// another process's by now), Inspect reports nothing of a namespace with
// another cookie, though it holds the rules.
func TestInspectChecksTheCookie(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNetns(t, testenv.UniqueName("ztdns-istiocni-"))
	testenv.InstallIstioDNSRules(t, n, testenv.IstioNftables)
	cookie, err := netns.Cookie(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Inspect(n.Path(), cookie); err != nil || !slices.Equal(got, Finding{BackendNftables}) {
		t.Errorf("Inspect with the namespace's cookie = %v, %v; want %v", got, err, Finding{BackendNftables})
	}
	if got, err := Inspect(n.Path(), cookie+1); !errors.Is(err, ErrOtherNetns) || got.Present() {
		t.Errorf("Inspect with another cookie = %v, %v; want ErrOtherNetns", got, err)
	}
}

// TestInspectBoundsTheNftablesListing: the nftables listing is read up to a
// bound (maxTableSize in Inspect), as the legacy tables are: a pod's root
// may fill its namespace with rules, and the agent must not read them all
// into memory. Here a bound smaller than istio-cni's rules.
func TestInspectBoundsTheNftablesListing(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNetns(t, testenv.UniqueName("ztdns-istiocni-"))
	testenv.InstallIstioDNSRules(t, n, testenv.IstioNftables)
	if got, err := inspectNftables(n.Path(), maxTableSize); err != nil || !slices.Contains(got, BackendNftables) {
		t.Fatalf("inspectNftables = %v, %v; want %s", got, err, BackendNftables)
	}
	if got, err := inspectNftables(n.Path(), 256); err == nil || !strings.Contains(err.Error(), "more than 256 bytes") {
		t.Errorf("inspectNftables bounded to 256 bytes = %v, %v; want an error", got, err)
	}
}

// fakeKernel answers each request written to a boundedNetlink with the
// next of answers: the datagrams the kernel would send.
func fakeKernel(t *testing.T, answers ...[][]byte) *boundedNetlink {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		unix.Close(fds[0])
		unix.Shutdown(fds[1], unix.SHUT_RDWR)
		<-done
		unix.Close(fds[1])
	})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for _, datagrams := range answers {
			if n, err := unix.Read(fds[1], buf); err != nil || n == 0 {
				return
			}
			for _, d := range datagrams {
				if _, err := unix.Write(fds[1], d); err != nil {
					return
				}
			}
		}
	}()
	return &boundedNetlink{fd: fds[0], limit: 1 << 20, left: 1 << 20}
}

// nlmsg is one netlink message of the given type, flags and payload with
// sequence 7.
func nlmsg(typ, flags uint16, payload []byte) []byte {
	m := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(payload)+3)
	binary.NativeEndian.PutUint32(m[0:], uint32(unix.NLMSG_HDRLEN+len(payload)))
	binary.NativeEndian.PutUint16(m[4:], typ)
	binary.NativeEndian.PutUint16(m[6:], flags)
	binary.NativeEndian.PutUint32(m[8:], 7)
	m = append(m, payload...)
	for len(m)%4 != 0 {
		m = append(m, 0)
	}
	return m
}

func errnoPayload(e syscall.Errno) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, uint32(-int32(e)))
	return b
}

var dumpReq = []netlink.Message{{Header: netlink.Header{Length: unix.NLMSG_HDRLEN, Type: 0x0a01, Flags: netlink.Request | netlink.Dump, Sequence: 7}}}

// A dump the kernel ends with an error in its NLMSG_DONE failed part way:
// the listing is an error, not a shorter list.
func TestBoundedNetlinkDoneWithError(t *testing.T) {
	b := fakeKernel(t, [][]byte{
		nlmsg(0x0a00, unix.NLM_F_MULTI, []byte("rule")),
		nlmsg(unix.NLMSG_DONE, unix.NLM_F_MULTI, errnoPayload(unix.ENOBUFS)),
	})
	if got, err := b.exchange(dumpReq); !errors.Is(err, unix.ENOBUFS) {
		t.Errorf("exchange = %d messages, %v; want ENOBUFS", len(got), err)
	}
}

// A dump the rules changed under is asked again once; a second change is
// an error.
func TestBoundedNetlinkDumpInterrupted(t *testing.T) {
	intr := [][]byte{
		nlmsg(0x0a00, unix.NLM_F_MULTI|unix.NLM_F_DUMP_INTR, []byte("old!")),
		nlmsg(unix.NLMSG_DONE, unix.NLM_F_MULTI|unix.NLM_F_DUMP_INTR, errnoPayload(0)),
	}
	clean := [][]byte{
		nlmsg(0x0a00, unix.NLM_F_MULTI, []byte("new!")),
		nlmsg(unix.NLMSG_DONE, unix.NLM_F_MULTI, errnoPayload(0)),
	}
	b := fakeKernel(t, intr, clean)
	got, err := b.exchange(dumpReq)
	if err != nil || len(got) != 1 || string(got[0].Data) != "new!" {
		t.Errorf("exchange after one interrupted dump = %v, %v; want the second dump's one message", got, err)
	}
	b = fakeKernel(t, intr, intr)
	if got, err := b.exchange(dumpReq); err == nil || !strings.Contains(err.Error(), "changed during the listing") {
		t.Errorf("exchange after two interrupted dumps = %v, %v; want an error", got, err)
	}
}

// Chains are listed once per family, not once per table: 300 tables of
// one chain each are 300 chain messages, not 300 times 300.
func TestInspectListsChainsOncePerFamily(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNetns(t, testenv.UniqueName("ztdns-istiocni-"))
	var rules strings.Builder
	for i := range 300 {
		fmt.Fprintf(&rules, "add table ip t%d\nadd chain ip t%d c\n", i, i)
	}
	cmd := exec.Command("nsenter", "--net="+n.Path(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	// One listing of the 300 chains is tens of KiB; one per table, MiBs.
	if got, err := inspectNftables(n.Path(), 1<<20); err != nil || got.Present() {
		t.Errorf("inspectNftables of 300 tables bounded to 1 MiB = %v, %v; want nothing, no error", got, err)
	}
}

// When nftables cannot be read (here: past its bound), what the legacy
// tables hold is still reported, with the error.
func TestInspectKeepsLegacyWhenNftablesFails(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNetns(t, testenv.UniqueName("ztdns-istiocni-"))
	testenv.InstallIstioDNSRules(t, n, testenv.IstioNftables)
	testenv.InstallIstioDNSRules(t, n, testenv.IstioIptablesLegacy)
	old := nftablesLimit
	nftablesLimit = 256
	t.Cleanup(func() { nftablesLimit = old })
	got, err := Inspect(n.Path(), 0)
	if err == nil || !strings.Contains(err.Error(), "more than 256 bytes") || !slices.Equal(got, Finding{BackendIptablesLegacy}) {
		t.Errorf("Inspect with nftables past its bound = %v, %v; want %s and the error", got, err, BackendIptablesLegacy)
	}
}
