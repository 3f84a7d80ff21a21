//go:build linux

package testenv

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"
)

// TestGonePodLeavesTheNodeNoRoute: once a pod's test is over, the node has
// no route into it, even while its namespace lives on (`ip netns delete`
// only unmounts it; something holding it, or the kernel's deferred
// teardown, keeps its veth). Its subnet goes to the node's next pod, whose
// replies took the old route into the dead pod: the client timed out.
func TestGonePodLeavesTheNodeNoRoute(t *testing.T) {
	node := NewNode(t)
	var gone *Pod
	var held *os.File
	t.Cleanup(func() {
		if held != nil {
			held.Close()
		}
	})
	t.Run("first pod", func(t *testing.T) {
		gone = node.AddPod(t, PodConfig{})
		// Held open past the pod's cleanup, so the kernel keeps the
		// namespace as it does for a while after every test.
		var err error
		if held, err = os.Open(gone.Path()); err != nil {
			t.Fatal(err)
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	for _, a := range []netip.Addr{gone.IPv4, gone.IPv6} {
		if out, err := exec.Command("ip", "-n", node.Name, "route", "get", a.String()).CombinedOutput(); err == nil {
			t.Errorf("the node still routes to the gone pod's %s: %s", a, out)
		}
	}

	// The next pod, on the gone one's subnet when no other test took it
	// in between, gets what the node sends it.
	next := node.AddPod(t, PodConfig{})
	for _, a := range []netip.Addr{next.IPv4, next.IPv6} {
		var pc *net.UDPConn
		if err := next.Do(func() error {
			var err error
			pc, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 0)))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		to := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		if err := node.Do(func() error {
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte("hello"))
			return err
		}); err != nil {
			t.Fatalf("node to %s: %v", to, err)
		}
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 16)
		if n, err := pc.Read(buf); err != nil || string(buf[:n]) != "hello" {
			t.Errorf("the pod on %s (the gone one was on %s, %s) got %q, %v from the node; want hello", to, gone.IPv4, gone.IPv6, buf[:n], err)
		}
	}
}
