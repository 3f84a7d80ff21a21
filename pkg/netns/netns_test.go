//go:build linux

package netns

import (
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/ztdns/ztdns/internal/testenv"
)

func TestCookieAndAddrs(t *testing.T) {
	t.Parallel()
	node := testenv.NewNode(t)
	pods := []*testenv.Pod{node.AddPod(t, testenv.PodConfig{}), node.AddPod(t, testenv.PodConfig{})}

	own, err := Cookie("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]string{own: "the test's own namespace"}
	for _, p := range pods {
		c, err := Cookie(p.Path())
		if err != nil {
			t.Fatal(err)
		}
		if other, dup := seen[c]; dup {
			t.Errorf("%s has cookie %d, the same as %s", p.Name, c, other)
		}
		seen[c] = p.Name
		if again, err := Cookie(p.Path()); err != nil || again != c {
			t.Errorf("second read: %d, %v; want %d", again, err, c)
		}

		addrs, err := Addrs(p.Path(), MaxAddrs)
		if err != nil {
			t.Fatal(err)
		}
		if want := []netip.Addr{p.IPv4, p.IPv6}; !slices.Equal(addrs, want) {
			t.Errorf("Addrs(%s) = %v, want %v", p.Name, addrs, want)
		}
	}

	if _, err := Cookie("/nonexistent/netns"); err == nil {
		t.Error("Cookie of a missing path succeeded")
	}
}

// TestAddrsStopsPastTheCap: a namespace's owner decides how many
// addresses it has. Up to MaxAddrs they are all listed; past it
// Addrs says ErrTooManyAddrs, and reading a namespace of hundreds
// allocates about what reading a pod's does (the netlink library's
// listing allocated 1.35 KB an address: 27 MB for 20,000).
func TestAddrsStopsPastTheCap(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NewNetns(t, testenv.UniqueName("ztaddr-"))
	addAddrs := func(from, count int) []netip.Addr {
		t.Helper()
		var batch strings.Builder
		var added []netip.Addr
		for i := from; i < from+count; i++ {
			// 198.51.100.0/24, then 203.0.113.0/24.
			ip := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
			if i > 255 {
				ip = netip.AddrFrom4([4]byte{203, 0, 113, byte(i - 256)})
			}
			fmt.Fprintf(&batch, "addr add %s/32 dev lo\n", ip)
			added = append(added, ip)
		}
		cmd := exec.Command("ip", "-n", n.Name, "-batch", "-")
		cmd.Stdin = strings.NewReader(batch.String())
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("ip -batch: %v\n%s", err, out)
		}
		return added
	}

	// lo's own 127.0.0.1 and ::1 count too, but are no pod's.
	want := addAddrs(1, MaxAddrs-2)
	if got, err := Addrs(n.Path(), MaxAddrs); err != nil || !slices.Equal(got, want) {
		t.Fatalf("Addrs with %d addresses = %v, %v; want them all", MaxAddrs, got, err)
	}

	addAddrs(MaxAddrs-1, 300)
	if got, err := Addrs(n.Path(), MaxAddrs); !errors.Is(err, ErrTooManyAddrs) {
		t.Fatalf("Addrs with %d addresses = %d of them, %v; want ErrTooManyAddrs", MaxAddrs+300, len(got), err)
	}
	const runs = 10
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		if _, err := Addrs(n.Path(), MaxAddrs); !errors.Is(err, ErrTooManyAddrs) {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	// A few KB (and its 32 KiB receive buffer at most); the library's
	// listing of all of them allocated 450 KB, even when it dropped them
	// past the cap.
	perCall := (after.TotalAlloc - before.TotalAlloc) / runs
	t.Logf("%d bytes allocated a call", perCall)
	if perCall > 128<<10 {
		t.Errorf("Addrs of a namespace with %d addresses allocated %d bytes a call, want under 128 KiB", MaxAddrs+300, perCall)
	}
}
