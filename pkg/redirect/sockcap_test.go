//go:build linux

package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

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
	closeAll := func() {
		t.Helper()
		mustDo(t, h, "close", "closed")
		opened = 0
		e.wantSockets(t, cookie, 0)
	}

	open("udp", nowhere4, capped+over, capped)
	e.wantSockets(t, cookie, capped)

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
	e.wantSockets(t, cookie, capped)
	closeAll()

	// Closed, they no longer count: the pod's next sockets are redirected
	// again, TCP and IPv6 ones too, and taken off when they close, after
	// the agent restarted and its programs replaced those that counted
	// them.
	open("tcp", nowhere4, capped/2, capped/2)
	open("udp", nowhere6, capped/2+over, capped/2)
	e.wantSockets(t, cookie, capped)
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
	e.wantSockets(t, cookie, capped)
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
	mustDo(t, h, "udp "+nowhere4+" 6", "held 6")
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
	mustDo(t, h, "close", "closed")
	if held, ok := counted(); ok {
		t.Errorf("released pod with its sockets closed: count %d kept, want it removed", held)
	}
}

// TestUpgradeKeepsSocketRecords: an agent of this version started over one
// from before the cap (main's socket_destinations: three endpoints, 60
// bytes) reuses its pinned sockets map, so a socket kept open across the
// upgrade (c-ares keeps one connected UDP socket per nameserver) still gets
// its replies from the nameserver it addressed, not from the resolver's
// address, which c-ares ignores. Its record, made by programs that counted
// nothing, is taken off no count below zero when it closes, and the pod's
// cap then holds as before. (Before, the layout gained a field, the upgrade
// replaced the map, and the kept socket's replies came from the resolver.)
func TestUpgradeKeepsSocketRecords(t *testing.T) {
	t.Parallel()
	const capped, over = 4, 3
	e := newCaptureEnv(t, envOptions{socketsPerPod: capped, manualBeat: true})
	stopBeating := beatUntilStopped(t, e.r, 100*time.Millisecond)
	t.Cleanup(func() { stopBeating() })
	pod, cookie := e.markedPod(t, 0, nowhere4)
	ns := netip.AddrPortFrom(netip.MustParseAddr(nowhere4), 53)
	keeper := testenv.StartHelper(t, t.Context(), pod, e.cg, "connected",
		helperEnv+"="+helperKeeper, helperFamily+"=inet", helperAddr+"="+ns.String())
	restored := ns.String() + " " + marker4.String()
	if got := keeper.Do(t, "query before.ztdns.test"); got != restored {
		t.Fatalf("before the upgrade the kept socket got %q, want %q", got, restored)
	}

	// The previous agent: its sockets map, of its layout, holding the
	// kept socket's record as its programs made it, and no counts.
	fd, closeFD := keptSocket(t, keeper)
	var rec ztdnsSocketDestinations
	if err := e.r.objs.Sockets.Lookup(uint32(fd), &rec); err != nil {
		t.Fatalf("the kept socket has no record: %v", err)
	}
	stopBeating()
	stopBeating = func() {}
	if err := e.r.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{ztdnsMapSockets, ztdnsMapPodSockets} {
		if err := os.Remove(pinPath(e.cfg.BPFFS, name)); err != nil {
			t.Fatal(err)
		}
	}
	before := pinSocketsOfMain(t, e.cfg.BPFFS)
	if err := before.Update(uint32(fd), socketDestinationsOfMain{SentTo: rec.SentTo}, ebpf.UpdateNoExist); err != nil {
		t.Fatal(err)
	}
	beforeID := idOf(t, before)

	e.r = mustLoad(t, e.cfg)
	keepBeating(t, e.r)
	if got := idOf(t, e.r.objs.Sockets); got != beforeID {
		t.Errorf("the upgrade replaced the pinned sockets map of main's layout (map %d, was %d)", got, beforeID)
	}
	if got := keeper.Do(t, "query after.ztdns.test"); got != restored {
		t.Errorf("after the upgrade the kept socket got %q, want %q: its record is lost", got, restored)
	}

	// The pod's count comes to 0 with one socket of its own, then the
	// kept socket, counted by nobody, closes: taken off nothing, the
	// count stays 0 and the cap holds.
	h := testenv.StartHelper(t, t.Context(), pod, e.cg, "ready", helperEnv+"="+helperHold)
	mustDo(t, h, "udp "+nowhere4+" 1", "held 1")
	e.wantSockets(t, cookie, 1)
	mustDo(t, h, "close", "closed")
	e.wantSockets(t, cookie, 0)
	closeFD() // the keeper's, closing, is then its last
	if rest, err := keeper.Finish(""); err != nil {
		t.Fatalf("keeper: %v (%s)", err, rest)
	}
	e.wantSockets(t, cookie, 0)
	c0 := e.counters(t)
	mustDo(t, h, fmt.Sprintf("udp %s %d", nowhere4, capped+over), fmt.Sprintf("held %d", capped+over))
	c1 := e.counters(t)
	if got := c1.Redirected - c0.Redirected; got != capped {
		t.Errorf("after the kept socket closed, %d of the pod's %d new sockets redirected, want %d (the cap)", got, capped+over, capped)
	}
	e.wantSockets(t, cookie, capped)
}

// TestSockReleaseDetachedForgetsCounts: while the sock_release link is
// detached and pod_sockets stays pinned (an older release's uninstall
// after a rollback detaches every ztdns link but leaves the pins it does
// not know; `bpftool link detach`), sockets that close are not taken off
// their pod's count. A Load, or the agent's repair, that attaches
// sock_release anew forgets the counts and says so once, at warn level:
// kept, they would hold the pod at sockets it no longer has for as long as
// it lives, and the cap would leave its queries alone.
func TestSockReleaseDetachedForgetsCounts(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		// putBack attaches sock_release again, as an agent does.
		putBack func(t *testing.T, e *captureEnv, stopBeating func())
	}{{
		name: "Load",
		putBack: func(t *testing.T, e *captureEnv, stopBeating func()) {
			stopBeating()
			if err := e.r.Close(); err != nil {
				t.Fatal(err)
			}
			e.r = mustLoad(t, e.cfg)
			keepBeating(t, e.r)
		},
	}, {
		name: "RepairAttachment",
		putBack: func(t *testing.T, e *captureEnv, _ func()) {
			_, repaired, err := e.r.RepairAttachment()
			if err != nil {
				t.Fatal(err)
			}
			if len(repaired) != 1 || !strings.Contains(repaired[0], ztdnsProgZtdnsSockRelease+": re-attached") {
				t.Fatalf("repaired %q, want %s re-attached", repaired, ztdnsProgZtdnsSockRelease)
			}
		},
	}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			const capped = 4
			var log testenv.Log
			e := newCaptureEnv(t, envOptions{socketsPerPod: capped, manualBeat: true, log: &log})
			stopBeating := sync.OnceFunc(beatUntilStopped(t, e.r, 100*time.Millisecond))
			t.Cleanup(stopBeating)
			pod, cookie := e.markedPod(t, 0, nowhere4)
			h := testenv.StartHelper(t, t.Context(), pod, e.cg, "ready", helperEnv+"="+helperHold)

			mustDo(t, h, "udp "+nowhere4+" 3", "held 3")
			e.wantSockets(t, cookie, 3)
			detachPinnedLink(t, e.cfg.BPFFS, ztdnsProgZtdnsSockRelease)
			mustDo(t, h, "close", "closed")
			e.wantSockets(t, cookie, 3) // nothing took them off

			tt.putBack(t, e, stopBeating)
			c0 := e.counters(t)
			mustDo(t, h, fmt.Sprintf("udp %s %d", nowhere4, capped), fmt.Sprintf("held %d", capped))
			c1 := e.counters(t)
			if got := c1.Redirected - c0.Redirected; got != capped {
				t.Errorf("after sock_release was put back, %d of the pod's %d new sockets redirected, want %d (the cap)", got, capped, capped)
			}
			e.wantSockets(t, cookie, capped)
			const forgotten = `level=WARN msg="forgot the socket counts`
			if got := strings.Count(log.String(), forgotten); got != 1 {
				t.Errorf("%d warnings %s...\" logged, want 1", got, forgotten)
			}
		})
	}
}

// TestUncountedRecordsTakeNothingOff: after a rollback to a release before
// the cap, this release's sock_release stays attached (the older release
// does not know its link) and the older programs make records without
// counting them. Closing such a socket takes nothing off its pod's count:
// the count of the sockets that were counted stays right, and the cap
// holds. (Before, each took one off, down to zero, and the pod could hold
// that many sockets over the cap after the next upgrade.)
func TestUncountedRecordsTakeNothingOff(t *testing.T) {
	t.Parallel()
	const capped = 4
	e := newCaptureEnv(t, envOptions{socketsPerPod: capped})
	pod, cookie := e.markedPod(t, 0, nowhere4)
	counted := testenv.StartHelper(t, t.Context(), pod, e.cg, "ready", helperEnv+"="+helperHold)
	old := testenv.StartHelper(t, t.Context(), pod, e.cg, "ready", helperEnv+"="+helperHold)

	mustDo(t, counted, "udp "+nowhere4+" 3", "held 3")
	e.wantSockets(t, cookie, 3)

	// Three other sockets of the pod get records as the older programs
	// write them: whole endpoints, nothing counted.
	mustDo(t, old, "plain 3", "held 3")
	fds, closeFDs := heldSockets(t, old)
	var rec ztdnsSocketDestinations
	rec.SentTo[0] = endpointFrom(netip.AddrPortFrom(netip.MustParseAddr(nowhere4), 53))
	for _, fd := range fds {
		if err := e.r.objs.Sockets.Update(uint32(fd), &rec, ebpf.UpdateNoExist); err != nil {
			t.Fatal(err)
		}
	}
	closeFDs()
	mustDo(t, old, "close", "closed")
	e.wantSockets(t, cookie, 3)

	c0 := e.counters(t)
	mustDo(t, counted, "udp "+nowhere4+" 2", "held 5")
	c1 := e.counters(t)
	if got := c1.Redirected - c0.Redirected; got != 1 {
		t.Errorf("%d of the pod's 2 new sockets redirected, want 1 (up to the cap of %d)", got, capped)
	}
	e.wantSockets(t, cookie, capped)
}

// socketDestinationsOfMain is struct socket_destinations as agents before
// the cap had it.
type socketDestinationsOfMain struct {
	SentTo [3]ztdnsEndpoint
}

// pinSocketsOfMain pins, under bpffs, a sockets map as an agent before the
// cap made it: the layout an upgrade must find compatible.
func pinSocketsOfMain(tb testing.TB, bpffs string) *ebpf.Map {
	tb.Helper()
	u8 := &btf.Int{Name: "__u8", Size: 1}
	u16 := &btf.Int{Name: "__u16", Size: 2}
	u32 := &btf.Int{Name: "__u32", Size: 4}
	endpoint := &btf.Struct{Name: "endpoint", Size: 20, Members: []btf.Member{
		{Name: "addr", Type: &btf.Array{Index: u32, Type: u8, Nelems: 16}},
		{Name: "port", Type: u16, Offset: 16 * 8},
		{Name: "family", Type: u8, Offset: 18 * 8},
		{Name: "pad", Type: u8, Offset: 19 * 8},
	}}
	m, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{
		Name: ztdnsMapSockets, Type: ebpf.SkStorage, KeySize: 4, ValueSize: 60, Flags: unix.BPF_F_NO_PREALLOC,
		Key: &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed},
		Value: &btf.Struct{Name: "socket_destinations", Size: 60, Members: []btf.Member{
			{Name: "sent_to", Type: &btf.Array{Index: u32, Type: endpoint, Nelems: 3}},
		}},
		Pinning: ebpf.PinByName,
	}, ebpf.MapOptions{PinPath: bpffs})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

func idOf(tb testing.TB, m *ebpf.Map) ebpf.MapID {
	tb.Helper()
	id, err := mapID(m)
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

// mustDo has the helper h run cmd, and stops the test unless it prints
// want.
func mustDo(tb testing.TB, h *testenv.Helper, cmd, want string) {
	tb.Helper()
	if got := h.Do(tb, cmd); got != want {
		tb.Fatalf("%s: %s, want %s", cmd, got, want)
	}
}

// wantSockets checks how many sockets with records the pod of the netns
// cookie holds (MarkedPod.Sockets).
func (e *captureEnv) wantSockets(tb testing.TB, cookie uint64, want int64) {
	tb.Helper()
	if got := e.reported(tb, cookie).Sockets; got != want {
		tb.Errorf("the pod holds %d sockets with records, want %d", got, want)
	}
}

// keptSocket returns a descriptor of this process for the keeper's socket
// (takeSocket).
func keptSocket(tb testing.TB, keeper *testenv.Helper) (int, func()) {
	tb.Helper()
	var pid, target int
	if _, err := fmt.Sscanf(keeper.Do(tb, "whoami"), "%d %d", &pid, &target); err != nil {
		tb.Fatal(err)
	}
	return takeSocket(tb, pid, target)
}

// heldSockets returns descriptors of this process for the sockets a
// helperHold helper holds (takeSocket), and a func that closes them all.
func heldSockets(tb testing.TB, h *testenv.Helper) ([]int, func()) {
	tb.Helper()
	fields := strings.Fields(h.Do(tb, "fds"))
	pid, err := strconv.Atoi(fields[0])
	if err != nil {
		tb.Fatalf("fds: %v", fields)
	}
	var (
		fds    []int
		closes []func()
	)
	for _, f := range fields[1:] {
		target, err := strconv.Atoi(f)
		if err != nil {
			tb.Fatalf("fds: %v", fields)
		}
		fd, closeFD := takeSocket(tb, pid, target)
		fds, closes = append(fds, fd), append(closes, closeFD)
	}
	return fds, func() {
		for _, c := range closes {
			c()
		}
	}
}

// takeSocket returns a descriptor of this process for descriptor target
// of process pid (pidfd_getfd), and closes it: once, when called or at
// cleanup.
func takeSocket(tb testing.TB, pid, target int) (int, func()) {
	tb.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer unix.Close(pidfd)
	fd, err := unix.PidfdGetfd(pidfd, target, 0)
	if err != nil {
		tb.Fatal(err)
	}
	closeFD := sync.OnceFunc(func() { unix.Close(fd) })
	tb.Cleanup(closeFD)
	return fd, closeFD
}
