//go:build linux

package agent

import (
	"net/http"
	"net/netip"
	"slices"
	"testing"

	"github.com/ztdns/ztdns/pkg/control"
)

// TestCaptureAddLeavesTheRuntimesPod: capture add that names a pod the
// container runtime recorded, for another network namespace, is refused
// and leaves the pod's record, mark and IP as they were.
func TestCaptureAddLeavesTheRuntimesPod(t *testing.T) {
	a, m := cniAgent(t)
	feedSource(a)
	web := podNetns(t, "203.0.113.90/32")
	cookie := runPause(t, web)
	ip := netip.MustParseAddr("203.0.113.90")
	if _, err := a.cniAdd(control.CNIAddRequest{ContainerID: "6b1e0c9d2f", Netns: web.Path(), IfName: "eth0", PodNamespace: "shop", PodName: "web",
		IPs: []netip.Addr{ip}, NetnsCookie: cookie}); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	other := podNetns(t, "203.0.113.91/32")
	_, err := a.captureNetns(control.CaptureRequest{Netns: other.Path(), Namespace: "shop", Name: "web"})
	if err == nil || control.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("capture add naming shop/web = %v (status %d), want refused (403)", err, control.StatusOf(err))
	}
	t.Logf("refused: %v", err)
	if p := a.pods.Get("shop", "web"); p.Attachment == nil || p.Attachment.ContainerID != "6b1e0c9d2f" || !slices.Equal(p.IPs, []netip.Addr{ip}) {
		t.Errorf("shop/web is %+v, want the runtime's record", p)
	}
	if p := a.pods.Lookup(ip); p == nil || p.Key() != "shop/web" {
		t.Errorf("%s is %v's, want shop/web's", ip, p)
	}
	if got := m.cookies(); !slices.Equal(got, []uint64{cookie}) {
		t.Errorf("marks %v, want the runtime's pod's alone (%d)", got, cookie)
	}
}
