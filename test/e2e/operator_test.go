//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
)

// TestBpftoolShowsFieldNames checks that the pinned pods map carries BTF:
// `bpftool map dump pinned …/pods` prints the marked pod with named fields.
func TestBpftoolShowsFieldNames(t *testing.T) {
	t.Parallel()
	bpftool := testenv.LookPath(t, "bpftool")
	c := newCluster(t)
	c.startReadyAgent(t)
	p := c.markedPod(t, "dumped", nowhere4)
	if _, err := c.dig(t, p, addressHost); err != nil {
		t.Fatal(err)
	}

	out, err := output(bpftool, "map", "dump", "pinned", c.bpffs+"/pods")
	if err != nil {
		t.Fatalf("bpftool map dump: %v\n%s", err, out)
	}
	for _, field := range []string{"netns_cookie", "flags", "ipv4", "ipv6", "redirected", "restored", "skipped_stale"} {
		if !strings.Contains(out, `"`+field+`"`) {
			t.Errorf("bpftool output lacks the field %q:\n%s", field, out)
		}
	}
	if cookie := netnsCookie(t, p); !strings.Contains(out, fmt.Sprintf(`"netns_cookie": %d`, cookie)) {
		t.Errorf("bpftool output lacks the pod's netns cookie %d:\n%s", cookie, out)
	}
}

// TestPodsAndCaptureDel checks `ztdns pods` after queries from a marked
// pod (its cookie, IPs, namespace, the nameserver it addressed and non-zero
// counters), then that `ztdns capture del` stops the redirect.
func TestPodsAndCaptureDel(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.startReadyAgent(t)
	const name = "listed"
	p := c.markedPod(t, name, nowhere4)
	for _, proto := range []string{"+notcp", "+tcp"} {
		if got, err := c.dig(t, p, proto, addressHost); err != nil || !slices.Equal(got, []netip.Addr{addressVIP}) {
			t.Fatalf("dig %s %s = %v, %v; want %s", proto, addressHost, got, err, addressVIP)
		}
	}

	row := c.podRow(t, name)
	cookie := netnsCookie(t, p)
	want := podRow{Namespace: "default", Name: name, NetnsCookie: cookie, NetnsPath: p.Path(),
		IPs: []string{p.IPv4.String(), p.IPv6.String()}, Captured: true, Reason: "by-hand", Marked: true}
	got := row
	got.Redirected, got.Restored, got.Nameservers = 0, 0, nil // checked below
	slices.Sort(got.IPs)
	slices.Sort(want.IPs)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("ztdns pods -o json: %+v, want %+v", got, want)
	}
	if row.Redirected < 2 || row.Restored == 0 {
		t.Errorf("counters after two queries: redirected %d, restored %d; want at least 2 and more than 0", row.Redirected, row.Restored)
	}
	if !slices.Contains(testenv.NameserverAddrs(row), nowhere4+":53") {
		t.Errorf("nameservers %v, want the pod's %s:53 among them", row.Nameservers, nowhere4)
	}
	table := c.ztdns(t, "pods", "--socket", c.socket)
	for _, s := range []string{"NAMESPACE", "NETNS COOKIE", "REDIRECTED", "default", name, fmt.Sprint(cookie), p.IPv4.String()} {
		if !strings.Contains(table, s) {
			t.Errorf("ztdns pods lacks %q:\n%s", s, table)
		}
	}

	c.release(t, p)
	if got, err := c.dig(t, p, addressHost); err == nil {
		t.Errorf("after capture del, dig %s = %v: still redirected (the nameserver exists nowhere)", addressHost, got)
	}
	for _, r := range c.pods(t) {
		if r.NetnsCookie == cookie && (r.Marked || r.Captured) {
			t.Errorf("after capture del, ztdns pods still shows %+v", r)
		}
	}
}

// TestUninstall checks that `ztdns uninstall` leaves nothing behind: no
// pin, no program attached to the cgroup, no resolver interface, and pods
// reach their own nameservers again. It runs after the agent stopped (the
// documented order) and while it still runs.
func TestUninstall(t *testing.T) {
	bpftool := testenv.LookPath(t, "bpftool")
	for _, tc := range []struct {
		name      string
		stopFirst bool
	}{
		{name: "after the agent stopped", stopFirst: true},
		{name: "while the agent runs", stopFirst: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newCluster(t)
			c.serve(t, podNameserver1, ownMarker)
			a := c.startReadyAgent(t)
			p := c.markedPod(t, "uninstalled", podNameserver1)
			if got, err := c.dig(t, p, addressHost); err != nil || !slices.Equal(got, []netip.Addr{addressVIP}) {
				t.Fatalf("before: dig %s = %v, %v; want ztdns's %s", addressHost, got, err, addressVIP)
			}
			if out, err := output("ip", "-n", c.node.Name, "link", "show", "dev", resolverInterface); err != nil {
				t.Fatalf("before: no resolver interface %s in the node namespace: %v\n%s", resolverInterface, err, out)
			}
			if out, _ := output(bpftool, "cgroup", "show", c.cg.Path); !strings.Contains(out, "ztdns_") {
				t.Fatalf("before: bpftool cgroup show %s lists no ztdns program (the check below would prove nothing):\n%s", c.cg.Path, out)
			}

			if tc.stopFirst {
				signal(t, a, syscall.SIGTERM)
				if err := a.Wait(t, 10*time.Second); err != nil {
					t.Errorf("agent exited with %v after SIGTERM", err)
				}
			}
			if out, err := c.nodeZtdns("uninstall", "--bpffs", c.bpffs, "--cgroup", c.cg.Path); err != nil {
				t.Fatalf("ztdns uninstall: %v\n%s", err, out)
			}
			if !tc.stopFirst {
				signal(t, a, syscall.SIGTERM)
				if err := a.Wait(t, 10*time.Second); err != nil {
					t.Errorf("agent exited with %v after SIGTERM", err)
				}
			}

			if entries, err := os.ReadDir(c.bpffs); !os.IsNotExist(err) {
				t.Errorf("pin directory %s remains: %v %v", c.bpffs, names(entries), err)
			}
			if out, err := output(bpftool, "cgroup", "show", c.cg.Path); err != nil || strings.TrimSpace(out) != "" {
				t.Errorf("programs still attached to %s (%v):\n%s", c.cg.Path, err, out)
			}
			if out, err := output("ip", "-n", c.node.Name, "link", "show", "dev", resolverInterface); err == nil {
				t.Errorf("the resolver interface %s remains in the node namespace:\n%s", resolverInterface, out)
			}
			if got, err := c.dig(t, p, addressHost); err != nil || !slices.Equal(got, []netip.Addr{ownMarker}) {
				t.Errorf("after uninstall: dig %s = %v, %v; want %s from the pod's own nameserver", addressHost, got, err, ownMarker)
			}
		})
	}
}

// resolverInterface is the agent's default --interface.
const resolverInterface = "ztdns0"

func names(entries []os.DirEntry) []string {
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}
