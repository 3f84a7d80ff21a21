//go:build linux

package agent

import (
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/control"
)

// TestFailingOpenShows: while capture fails open (the agent up, its
// heartbeat stale), the status says so and the pod's row counts the
// queries that went around the resolver to its own nameserver. (Before:
// the status said nothing, and the pod showed captured and marked, its
// counters frozen, as if ztdns still answered it.)
func TestFailingOpenShows(t *testing.T) {
	n := newCaptureNode(t)
	c := n.startCapturing(t)

	ctl := control.NewClient(c.socket, 5*time.Second)
	if st := c.status(t); st.FailingOpen {
		t.Errorf("status says failing open while the agent beats: %+v", st)
	}
	if r := podRow(t, ctl, "default", "pod"); r.SkippedStale != 0 || r.Redirected == 0 {
		t.Errorf("while beating: %+v; want redirected queries and none skipped", r)
	}

	// Up, serving, but beating no more: what a stuck agent leaves.
	c.a.dataplane.stopBeating(true)
	// The pod's own nameserver does not exist here: the query, let out,
	// dies on the node.
	if err := n.askFromPod(t, c.pod); err == nil {
		t.Fatal("the pod was answered while capture failed open")
	}
	if st := c.status(t); !st.FailingOpen {
		t.Errorf("status does not say failing open with the heartbeat stale: %+v", st)
	}
	r := podRow(t, ctl, "default", "pod")
	if r.SkippedStale == 0 {
		t.Errorf("the pod's row counts no query let out while failing open: %+v", r)
	}
	if !r.Captured || !r.Marked {
		t.Errorf("the pod's row %+v: want it still captured and marked", r)
	}
}
