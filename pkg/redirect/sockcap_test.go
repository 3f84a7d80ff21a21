//go:build linux

package redirect

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/ztdns/ztdns/internal/testenv"
)

// TestSocketsPerPodCapped: the kernel charges each redirected socket's
// record to the agent's memory, so a pod that opens sockets without end
// (each sending a query to port 53, none closed) must not make the agent
// pay for them all. The first Config.SocketsPerPod of a pod's sockets are
// redirected; queries on the ones after them are left alone, reaching the
// pod's own nameserver as without ztdns, and counted (skipped_sockets_full).
// A socket holding its record that sends again is redirected again and
// counted once. Closed, UDP and TCP, IPv4 and IPv6, they are taken off the
// pod's count, also by the programs of an agent started after they were
// counted, and the pod's next sockets are redirected again.
func TestSocketsPerPodCapped(t *testing.T) {
	t.Parallel()
	const capped, over = 20, 200
	e := newCaptureEnv(t, envOptions{socketsPerPod: capped, manualBeat: true})
	stopBeating := beatUntilStopped(t, e.r, 100*time.Millisecond)
	t.Cleanup(func() { stopBeating() })
	pod, cookie := e.markedPod(t, 0, nowhere4)
	h := testenv.StartHelper(t, t.Context(), pod, e.cg, "ready", helperEnv+"="+helperHold)

	// open has the helper open n more sockets of proto, each sending to
	// or connecting to port 53 of addr, and checks how many of them were
	// redirected and how many left alone.
	opened := 0
	open := func(proto, addr string, n, redirected int) {
		t.Helper()
		cmd := fmt.Sprintf("%s %s %d", proto, addr, n)
		before := e.counters(t)
		opened += n
		if got := h.Do(t, cmd); got != fmt.Sprintf("held %d", opened) {
			t.Fatalf("%s: %s", cmd, got)
		}
		after := e.counters(t)
		if got := after.Redirected - before.Redirected; got != uint64(redirected) {
			t.Errorf("%s: %d queries redirected, want %d", cmd, got, redirected)
		}
		if got := after.SkippedSocketsFull - before.SkippedSocketsFull; got != uint64(n-redirected) {
			t.Errorf("%s: %d queries left alone for the cap (skipped_sockets_full), want %d", cmd, got, n-redirected)
		}
		if got := after.SocketStorageFailed - before.SocketStorageFailed; got != 0 {
			t.Errorf("%s: socket_storage_failed went up by %d", cmd, got)
		}
	}
	held := func(want int64) {
		t.Helper()
		if got := e.reported(t, cookie).Sockets; got != want {
			t.Errorf("the pod holds %d sockets with records, want %d", got, want)
		}
	}
	closeAll := func() {
		t.Helper()
		if got := h.Do(t, "close"); got != "closed" {
			t.Fatalf("close: %s", got)
		}
		opened = 0
		held(0)
	}

	open("udp", nowhere4, capped+over, capped)
	held(capped)

	// Each socket sends again: the first ones, which hold their records,
	// are redirected without being counted again; the others are still
	// over the cap.
	before := e.counters(t)
	if got := h.Do(t, "again"); got != "sent" {
		t.Fatalf("again: %s", got)
	}
	after := e.counters(t)
	if got := after.Redirected - before.Redirected; got != capped {
		t.Errorf("sent again: %d queries redirected, want %d (the sockets holding records)", got, capped)
	}
	if got := after.SkippedSocketsFull - before.SkippedSocketsFull; got != over {
		t.Errorf("sent again: %d queries left alone for the cap, want %d", got, over)
	}
	held(capped)
	closeAll()

	// Closed, they no longer count: the pod's next sockets are redirected
	// again, TCP and IPv6 ones too, and taken off when they close, after
	// the agent restarted and its programs replaced those that counted
	// them.
	open("tcp", nowhere4, capped/2, capped/2)
	open("udp", nowhere6, capped/2+over, capped/2)
	held(capped)
	stopBeating()
	stopBeating = func() {}
	if err := e.r.Close(); err != nil {
		t.Fatal(err)
	}
	e.r = mustLoad(t, e.cfg)
	keepBeating(t, e.r)
	closeAll()
	open("tcp", nowhere6, capped, capped)
	closeAll()
	open("udp", nowhere4, capped+over, capped)
	held(capped)
}

// TestSweepForgetsSocketCounts: a released pod's count of sockets holding
// records stays while they are open, so that closing them is still taken
// off it should the pod be captured again; SweepNameservers removes it once
// they are closed.
func TestSweepForgetsSocketCounts(t *testing.T) {
	t.Parallel()
	e := newCaptureEnv(t, envOptions{socketsPerPod: 4})
	pod, cookie := e.markedPod(t, 0, nowhere4)
	h := testenv.StartHelper(t, t.Context(), pod, e.cg, "ready", helperEnv+"="+helperHold)
	if got := h.Do(t, "udp "+nowhere4+" 6"); got != "held 6" {
		t.Fatal(got)
	}
	if err := e.r.Unmark(cookie); err != nil {
		t.Fatal(err)
	}
	counted := func() (int64, bool) {
		t.Helper()
		if _, err := e.r.SweepNameservers(); err != nil {
			t.Fatal(err)
		}
		var c ztdnsPodSocketCount
		err := e.r.objs.PodSockets.Lookup(&ztdnsPodKey{NetnsCookie: cookie}, &c)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, false
		}
		if err != nil {
			t.Fatal(err)
		}
		return c.Held, true
	}
	if held, ok := counted(); !ok || held != 4 {
		t.Errorf("released pod with its sockets open: count %d (kept: %v), want 4 kept", held, ok)
	}
	if got := h.Do(t, "close"); got != "closed" {
		t.Fatal(got)
	}
	if held, ok := counted(); ok {
		t.Errorf("released pod with its sockets closed: count %d kept, want it removed", held)
	}
}
