//go:build linux

package redirect

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/ztdns/ztdns/internal/testenv"
)

func TestNetnsCookieAndAddrs(t *testing.T) {
	t.Parallel()
	node := testenv.NewNode(t)
	pods := []*testenv.Pod{node.AddPod(t, testenv.PodConfig{}), node.AddPod(t, testenv.PodConfig{})}

	own, err := NetnsCookie("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]string{own: "the test's own namespace"}
	for _, p := range pods {
		c, err := NetnsCookie(p.Path())
		if err != nil {
			t.Fatal(err)
		}
		if other, dup := seen[c]; dup {
			t.Errorf("%s has cookie %d, the same as %s", p.Name, c, other)
		}
		seen[c] = p.Name
		if again, err := NetnsCookie(p.Path()); err != nil || again != c {
			t.Errorf("second read: %d, %v; want %d", again, err, c)
		}

		addrs, err := NetnsAddrs(p.Path())
		if err != nil {
			t.Fatal(err)
		}
		if want := []netip.Addr{p.IPv4, p.IPv6}; !slices.Equal(addrs, want) {
			t.Errorf("NetnsAddrs(%s) = %v, want %v", p.Name, addrs, want)
		}
		info, err := PodInfoFromNetns(p.Path())
		if err != nil {
			t.Fatal(err)
		}
		if want := (PodInfo{IPv4: p.IPv4, IPv6: p.IPv6}); info != want {
			t.Errorf("PodInfoFromNetns(%s) = %+v, want %+v", p.Name, info, want)
		}
	}

	if _, err := NetnsCookie("/nonexistent/netns"); err == nil {
		t.Error("NetnsCookie of a missing path succeeded")
	}
}
