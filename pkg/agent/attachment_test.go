//go:build linux

package agent

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/ztdns/ztdns/internal/testenv"
)

// TestDetachedCaptureShowsAndIsRepaired: with every capture link detached
// behind the agent's back (`bpftool link detach`, as a tool cleaning up
// cgroup programs does), a marked pod's queries go straight to its own
// nameserver; `ztdns status` says so, naming each program, as
// ztdns_capture_problems does; the agent's check re-attaches them, logs
// it and counts it in ztdns_capture_repairs_total, and the pod is answered
// again. (Before: status said "Capture: on", not failing open, the pod
// showed marked, and nothing was logged, counted or put back until the
// agent restarted.)
func TestDetachedCaptureShowsAndIsRepaired(t *testing.T) {
	old := attachmentCheckEvery
	attachmentCheckEvery = time.Hour // the test repairs, when it has looked
	t.Cleanup(func() { attachmentCheckEvery = old })
	n := newCaptureNode(t)
	var log testenv.Log
	c := n.startCapturing(t, func(cfg *Config) { cfg.Logger = slog.New(slog.NewTextHandler(&log, nil)) })
	if st := c.status(t); len(st.CaptureProblems) > 0 {
		t.Fatalf("status of a whole capture lists problems: %q", st.CaptureProblems)
	}

	pins := detachLinks(t, n)
	// The pod's own nameserver does not exist here: the query, no longer
	// captured, dies on the node.
	if err := n.askFromPod(t, c.pod); err == nil {
		t.Fatal("the pod was answered with every capture link detached")
	}
	st := c.status(t)
	if len(st.CaptureProblems) != len(pins) {
		t.Errorf("status lists %d problems with %d links detached, want one per link: %q", len(st.CaptureProblems), len(pins), st.CaptureProblems)
	}
	for _, pin := range pins {
		want := filepath.Base(pin) + ": link "
		if !containsAll(st.CaptureProblems, want, "is detached from cgroup") {
			t.Errorf("status does not say %s is detached: %q", filepath.Base(pin), st.CaptureProblems)
		}
	}
	if got := metricValue(t, c.a.reg, "ztdns_capture_problems", nil); got != float64(len(pins)) {
		t.Errorf("ztdns_capture_problems = %v, want %d", got, len(pins))
	}
	repairs := metricValue(t, c.a.reg, "ztdns_capture_repairs_total", nil)

	// What the agent does every attachmentCheckEvery while it beats.
	c.a.dataplane.keepAttached()
	if st := c.status(t); len(st.CaptureProblems) > 0 {
		t.Errorf("status after the repair lists problems: %q", st.CaptureProblems)
	}
	if got := metricValue(t, c.a.reg, "ztdns_capture_problems", nil); got != 0 {
		t.Errorf("ztdns_capture_problems after the repair = %v, want 0", got)
	}
	if got := metricValue(t, c.a.reg, "ztdns_capture_repairs_total", nil) - repairs; got != float64(len(pins)) {
		t.Errorf("ztdns_capture_repairs_total grew by %v, want %d", got, len(pins))
	}
	if !log.Contains("capture was undone behind the agent's back; put it back") || !log.Contains("re-attached to cgroup") {
		t.Errorf("the repair is not logged:\n%s", log.String())
	}
	if err := n.askFromPod(t, c.pod); err != nil {
		t.Errorf("the pod is not answered after the repair: %v", err)
	}
	// The pins hold the new links: a restarted agent updates them.
	for _, pin := range pins {
		if _, err := os.Stat(pin); err != nil {
			t.Errorf("after the repair: %v", err)
		}
	}
}

// containsAll reports whether one of lines contains every one of parts.
func containsAll(lines []string, parts ...string) bool {
	for _, l := range lines {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(l, p)
		}
		if ok {
			return true
		}
	}
	return false
}

// TestDetachedCaptureRepairsItself: the agent puts detached links back by
// itself, every attachmentCheckEvery while it beats, with nobody asking:
// the status soon lists no problem, ztdns_capture_repairs_total counts
// the repairs, and the pod is answered again.
func TestDetachedCaptureRepairsItself(t *testing.T) {
	old := attachmentCheckEvery
	attachmentCheckEvery = 20 * time.Millisecond
	t.Cleanup(func() { attachmentCheckEvery = old })
	n := newCaptureNode(t)
	c := n.startCapturing(t)
	repairs := metricValue(t, c.a.reg, "ztdns_capture_repairs_total", nil)

	pins := detachLinks(t, n)
	testenv.Eventually(t, 30*time.Second, "the agent re-attaches every detached link", func() bool {
		return len(c.status(t).CaptureProblems) == 0 &&
			metricValue(t, c.a.reg, "ztdns_capture_repairs_total", nil)-repairs >= float64(len(pins))
	})
	if err := n.askFromPod(t, c.pod); err != nil {
		t.Errorf("the pod is not answered after the repair: %v", err)
	}
}

// detachLinks detaches every capture link pinned on n behind the agent's
// back, as `bpftool link detach` does, and returns their pins.
func detachLinks(t *testing.T, n *captureNode) []string {
	t.Helper()
	pins, err := filepath.Glob(filepath.Join(n.bpffs, "links", "ztdns_*"))
	if err != nil || len(pins) == 0 {
		t.Fatalf("no link pins under %s: %v", n.bpffs, err)
	}
	for _, pin := range pins {
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = l.Detach()
		l.Close()
		if err != nil {
			t.Fatalf("detach %s: %v", pin, err)
		}
	}
	return pins
}
