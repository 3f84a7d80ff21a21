//go:build linux

package redirect

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// TestFailOpenWhenHeartbeatStale: without a fresh heartbeat the pod's
// queries go to its own nameserver (here: nowhere, so dig fails), and
// replies to queries redirected while it was fresh are still restored.
func TestFailOpenWhenHeartbeatStale(t *testing.T) {
	t.Parallel()
	const staleAfter = 500 * time.Millisecond
	slow := testenv.UniqueName("slow-")
	marker := dnstest.Marker(marker4, marker6)
	e := newCaptureEnv(t, envOptions{
		staleAfter: staleAfter,
		manualBeat: true,
		// Answers slow names only after the heartbeat has gone stale.
		answer: func(q dns.Question, local netip.AddrPort) []dns.RR {
			if strings.HasPrefix(q.Name, slow) {
				time.Sleep(3 * staleAfter)
			}
			return marker(q, local)
		},
	})
	pod, cookie := e.markedPod(t, 0, nowhere4)

	expect := func(t *testing.T, wantAnswer bool) {
		t.Helper()
		name := uniqueName("beat")
		out, err := dig(t, &pod.Netns, e.cg, name)
		answered := err == nil && slices.Contains(testenv.ParseAddrs(out), marker4)
		if answered != wantAnswer {
			t.Fatalf("dig: %v, printed %q; want answered=%v", err, out, wantAnswer)
		}
		if got := len(e.dns.ReceivedFor(name)) > 0; got != wantAnswer {
			t.Fatalf("resolver saw the query: %v, want %v", got, wantAnswer)
		}
	}
	skipped := func() uint64 { return e.counters(t).SkippedStale }

	t.Run("never written", func(t *testing.T) {
		before := skipped()
		expect(t, false)
		if skipped() == before {
			t.Error("skipped_stale did not count the query")
		}
	})
	t.Run("fresh", func(t *testing.T) {
		defer beatUntilStopped(t, e.r, staleAfter/5)()
		expect(t, true)
	})
	t.Run("stale", func(t *testing.T) {
		beat(t, e.r)
		time.Sleep(2 * staleAfter)
		before, podBefore := skipped(), e.podCounters(t, cookie).SkippedStale
		expect(t, false)
		if skipped() == before || e.podCounters(t, cookie).SkippedStale == podBefore {
			t.Error("skipped_stale did not count the query")
		}
	})
	t.Run("fresh again", func(t *testing.T) {
		defer beatUntilStopped(t, e.r, staleAfter/5)()
		expect(t, true)
	})
	t.Run("reply in flight when it goes stale", func(t *testing.T) {
		// Beat until the resolver has the query (however long dig takes to
		// start on a busy machine), then stop: its answer comes after the
		// heartbeat went stale.
		stop := beatUntilStopped(t, e.r, staleAfter/5)
		name := slow + ".ztdns.test"
		type result struct {
			out string
			err error
		}
		done := make(chan result, 1)
		go func() {
			out, err := dig(t, &pod.Netns, e.cg, "+time=5", name)
			done <- result{out, err}
		}()
		for deadline := time.Now().Add(10 * time.Second); len(e.dns.ReceivedFor(name)) == 0 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		stop()
		r := <-done
		if r.err != nil || !slices.Contains(testenv.ParseAddrs(r.out), marker4) {
			t.Fatalf("dig: %v, printed %q; want %s restored after the heartbeat went stale", r.err, r.out, marker4)
		}
	})
}

// TestRestartKeepsMarksAndLinks: closing the Redirector leaves capture
// running from the pins; the next Load keeps the marks, the learned
// nameservers and the counters, and swaps its programs into the same links.
func TestRestartKeepsMarksAndLinks(t *testing.T) {
	t.Parallel()
	e := newCaptureEnv(t, envOptions{manualBeat: true})
	pod, cookie := e.markedPod(t, 0, nowhere4)
	resolves := func(t *testing.T) {
		t.Helper()
		if out, err := dig(t, &pod.Netns, e.cg, uniqueName("restart")); err != nil || !slices.Contains(testenv.ParseAddrs(out), marker4) {
			t.Fatalf("dig: %v, printed %q; want %s", err, out, marker4)
		}
	}

	beat(t, e.r)
	resolves(t)
	before, err := e.r.Pods()
	if err != nil {
		t.Fatal(err)
	}
	linksBefore, err := e.r.Links()
	if err != nil {
		t.Fatal(err)
	}
	beat(t, e.r)
	if err := e.r.Close(); err != nil {
		t.Fatal(err)
	}

	// No agent now, but the heartbeat is still fresh: the pinned links and
	// maps keep capturing.
	resolves(t)

	r2 := mustLoad(t, e.cfg)
	linksAfter, err := r2.Links()
	if err != nil {
		t.Fatal(err)
	}
	if len(linksAfter) != len(hooks) {
		t.Fatalf("got %d links, want %d", len(linksAfter), len(hooks))
	}
	for i, after := range linksAfter {
		prev := linksBefore[i]
		if after.Program != prev.Program || after.LinkID != prev.LinkID {
			t.Errorf("%s: link %d after restart, want the same link %d updated", after.Program, after.LinkID, prev.LinkID)
		}
		if after.ProgramID == prev.ProgramID {
			t.Errorf("%s: program %d still attached, want the newly loaded one", after.Program, after.ProgramID)
		}
	}

	after, err := r2.Pods()
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != 1 || after[0].NetnsCookie != cookie || after[0].PodInfo != before[0].PodInfo ||
		after[0].Nameservers[0].Addr != before[0].Nameservers[0].Addr {
		t.Fatalf("pods after restart %+v, want %+v", after, before)
	}
	if after[0].Counters.Redirected <= before[0].Counters.Redirected {
		t.Errorf("redirected counter %d after restart, want it kept and grown past %d", after[0].Counters.Redirected, before[0].Counters.Redirected)
	}

	beat(t, r2)
	resolves(t)
}

// TestReattachToNewCgroup: a pinned link whose cgroup is gone (defunct) or
// that is attached to a cgroup no longer configured is replaced by a new
// link on the configured cgroup.
func TestReattachToNewCgroup(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	tests := []struct {
		name          string
		removeFirstCg bool
	}{
		{name: "defunct link", removeFirstCg: true},
		{name: "link on another cgroup", removeFirstCg: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newCaptureEnv(t, envOptions{manualBeat: true})
			old, err := e.r.Links()
			if err != nil {
				t.Fatal(err)
			}
			if err := e.r.Close(); err != nil {
				t.Fatal(err)
			}
			if tt.removeFirstCg {
				if err := e.cg.Remove(); err != nil {
					t.Fatal(err)
				}
			}

			cg2 := testenv.NewCgroup(t)
			cfg := e.cfg
			cfg.CgroupPath = cg2.Path
			r2 := mustLoad(t, cfg)
			keepBeating(t, r2)
			e.r = r2

			id2, err := cgroupID(cg2.Path)
			if err != nil {
				t.Fatal(err)
			}
			links, err := r2.Links()
			if err != nil {
				t.Fatal(err)
			}
			for i, l := range links {
				if l.CgroupID != id2 {
					t.Errorf("%s attached to cgroup %d, want %d", l.Program, l.CgroupID, id2)
				}
				if l.LinkID == old[i].LinkID {
					t.Errorf("%s still uses link %d, want a new link", l.Program, l.LinkID)
				}
			}
			if !tt.removeFirstCg {
				for _, h := range hooks {
					if ids := attachedPrograms(t, e.cg.Path, h.attach); len(ids) != 0 {
						t.Errorf("%s: programs %v still attached to the previous cgroup", h.name, ids)
					}
				}
			}

			pod, _ := e.markedPod(t, 0, nowhere4)
			if out, err := dig(t, &pod.Netns, cg2, uniqueName("moved")); err != nil || !slices.Contains(testenv.ParseAddrs(out), marker4) {
				t.Fatalf("dig in the new cgroup: %v, printed %q; want %s", err, out, marker4)
			}
		})
	}
}

// TestForeignLinksAreNeverTouched: a link pinned where ztdns pins its own,
// but running someone else's program, makes Load and Uninstall fail
// without detaching it.
func TestForeignLinksAreNeverTouched(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	cg := testenv.NewCgroup(t)
	bpffs := filepath.Join(testenv.NewBPFFS(t), "ztdns")
	pin := linkPinPath(bpffs, ztdnsProgZtdnsConnect4)
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		t.Fatal(err)
	}

	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "other_connect4",
		Type:         ebpf.CGroupSockAddr,
		AttachType:   ebpf.AttachCGroupInet4Connect,
		License:      "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	foreign, err := link.AttachCgroup(link.CgroupOptions{Path: cg.Path, Attach: ebpf.AttachCGroupInet4Connect, Program: prog})
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	if err := foreign.Pin(pin); err != nil {
		t.Fatal(err)
	}
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	foreignID, _ := info.ID()

	_, err = Load(Config{BPFFS: bpffs, CgroupPath: cg.Path, Resolver4: DefaultResolver4(), Logger: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "not a ztdns program") {
		t.Errorf("Load: %v, want a refusal naming the foreign program", err)
	}
	if err := Uninstall(bpffs, cg.Path); err == nil || !strings.Contains(err.Error(), "not a ztdns program") {
		t.Errorf("Uninstall: %v, want a refusal naming the foreign program", err)
	}

	if _, err := os.Stat(pin); err != nil {
		t.Errorf("foreign pin: %v, want it left in place", err)
	}
	for _, h := range hooks {
		ids := attachedPrograms(t, cg.Path, h.attach)
		want := []ebpf.ProgramID(nil)
		if h.attach == ebpf.AttachCGroupInet4Connect {
			want = []ebpf.ProgramID{foreignID}
		}
		if !slices.Equal(ids, want) {
			t.Errorf("%s: attached programs %v, want %v", h.name, ids, want)
		}
	}
}

// TestUninstallLeavesNothing: Uninstall detaches the programs even while an
// agent still holds its links, and removes every pin and directory it
// made.
func TestUninstallLeavesNothing(t *testing.T) {
	t.Parallel()
	e := newCaptureEnv(t, envOptions{})
	pod, _ := e.markedPod(t, 0, nowhere4)
	if out, err := dig(t, &pod.Netns, e.cg, uniqueName("before")); err != nil {
		t.Fatalf("dig before Uninstall: %v\n%s", err, out)
	}

	if err := Uninstall(e.cfg.BPFFS, e.cfg.CgroupPath); err != nil {
		t.Fatalf("Uninstall: %v", err)
	}
	if _, err := os.Stat(e.cfg.BPFFS); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(e.cfg.BPFFS)
		t.Errorf("pin directory: %v, entries %v; want it removed", err, entries)
	}
	for _, h := range hooks {
		if ids := attachedPrograms(t, e.cfg.CgroupPath, h.attach); len(ids) != 0 {
			t.Errorf("%s: programs %v still attached", h.name, ids)
		}
	}
	name := uniqueName("after")
	if out, err := dig(t, &pod.Netns, e.cg, name); err == nil {
		t.Errorf("dig after Uninstall answered %q, want no redirect", out)
	}
	if q := e.dns.ReceivedFor(name); len(q) != 0 {
		t.Errorf("resolver saw %+v after Uninstall", q)
	}
	if err := Uninstall(e.cfg.BPFFS, e.cfg.CgroupPath); err != nil {
		t.Errorf("second Uninstall: %v, want nothing left to do", err)
	}
}

// TestBPFToolShowsFieldNames: the maps carry BTF, so an operator's bpftool
// dump names every field.
func TestBPFToolShowsFieldNames(t *testing.T) {
	t.Parallel()
	bpftool := testenv.LookPath(t, "bpftool")
	e := newCaptureEnv(t, envOptions{})
	pod, cookie := e.markedPod(t, 0, nowhere4)
	if out, err := dig(t, &pod.Netns, e.cg, uniqueName("bpftool")); err != nil {
		t.Fatalf("dig: %v\n%s", err, out)
	}

	tests := []struct {
		pin  string
		want []string
	}{
		{ztdnsMapPods, []string{`"netns_cookie": ` + strconv.FormatUint(cookie, 10), `"flags"`, `"ipv4"`, `"ipv6"`, `"redirected"`, `"restored"`, `"skipped_stale"`}},
		{ztdnsMapNameservers, []string{`"netns_cookie"`, `"slot"`, `"server"`, `"addr"`, `"port": 53`, `"family": 2`, `"last_used_ns"`}},
		{ztdnsMapConfig, []string{`"resolver4"`, `"resolver6"`, `"stale_after_ns"`, `"capture_only"`}},
		{ztdnsMapConfigIndex, []string{`"index"`}},
		{ztdnsMapHeartbeat, []string{`"mono_ns"`}},
		{ztdnsMapCounters, []string{`"redirected"`, `"restored"`, `"skipped_stale"`, `"skipped_not_listed"`}},
	}
	for _, tt := range tests {
		t.Run(tt.pin, func(t *testing.T) {
			out, err := exec.Command(bpftool, "map", "dump", "pinned", pinPath(e.cfg.BPFFS, tt.pin)).CombinedOutput()
			if err != nil {
				t.Fatalf("bpftool: %v\n%s", err, out)
			}
			for _, want := range tt.want {
				if !strings.Contains(string(out), want) {
					t.Errorf("bpftool output lacks %s:\n%s", want, out)
				}
			}
		})
	}
}

// TestMarkUnmark: Mark records what Pods reports and keeps counters and
// learned nameservers when re-marking; Unmark forgets the pod and its
// counters, and leaves its learned nameservers to SweepNameservers
// (TestReleasedPodKeepsItsSlots).
func TestMarkUnmark(t *testing.T) {
	t.Parallel()
	e := newCaptureEnv(t, envOptions{})
	pod, cookie := e.markedPod(t, 0, nowhere4)
	if out, err := dig(t, &pod.Netns, e.cg, uniqueName("mark")); err != nil {
		t.Fatalf("dig: %v\n%s", err, out)
	}

	info := PodInfo{IPv4: netip.MustParseAddr("10.9.8.7"), IPv6: netip.MustParseAddr("fd00::7"), Flags: PodPaused}
	if err := e.r.Mark(cookie, info); err != nil {
		t.Fatal(err)
	}
	pods, err := e.r.Pods()
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) != 1 {
		t.Fatalf("Pods() = %+v, want one pod", pods)
	}
	got := pods[0]
	if got.NetnsCookie != cookie || got.PodInfo != info {
		t.Errorf("Pods()[0] = %+v, want cookie %d and %+v", got, cookie, info)
	}
	if got.Counters.Redirected == 0 {
		t.Errorf("counters %+v after re-marking, want the earlier query kept", got.Counters)
	}
	if ns := got.Nameservers[0].Addr; ns.String() != nowhere4+":53" {
		t.Errorf("slot 0 = %s, want %s:53 kept", ns, nowhere4)
	}

	if err := e.r.Unmark(cookie); err != nil {
		t.Fatal(err)
	}
	if pods, err := e.r.Pods(); err != nil || len(pods) != 0 {
		t.Errorf("Pods() after Unmark = %+v, %v; want none", pods, err)
	}
	if ns, ok := e.r.Nameserver(cookie, 0); !ok || ns.String() != nowhere4+":53" {
		t.Errorf("slot 0 after Unmark = %s, %v; want %s:53 kept until it is idle", ns, ok, nowhere4)
	}
	if err := e.r.Unmark(cookie); err != nil {
		t.Errorf("second Unmark: %v, want no error", err)
	}

	for _, bad := range []PodInfo{
		{IPv4: netip.MustParseAddr("fd00::1")},
		{IPv6: netip.MustParseAddr("10.0.0.1")},
		{IPv6: netip.MustParseAddr("::ffff:10.0.0.1")},
	} {
		if err := e.r.Mark(cookie, bad); err == nil {
			t.Errorf("Mark(%+v) succeeded, want an error", bad)
		}
	}
}

// attachedPrograms lists the programs attached to a cgroup for one hook.
func attachedPrograms(tb testing.TB, cgroupPath string, at ebpf.AttachType) []ebpf.ProgramID {
	tb.Helper()
	cg, err := os.Open(cgroupPath)
	if err != nil {
		tb.Fatal(err)
	}
	defer cg.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(cg.Fd()), Attach: at})
	if err != nil {
		tb.Fatalf("query %s: %v", cgroupPath, err)
	}
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return ids
}

// TestSweepNameservers: idle slots whose network namespace is not marked
// (left by Unmark, by a program racing it, or by marks lost with a replaced
// pods map) are forgotten; a marked pod's learned nameservers stay, and so
// does an unmarked one's slot used within SlotIdle.
func TestSweepNameservers(t *testing.T) {
	t.Parallel()
	e := newCaptureEnv(t, envOptions{})
	pod, cookie := e.markedPod(t, 0, nowhere4)
	if out, err := dig(t, &pod.Netns, e.cg, uniqueName("sweep")); err != nil {
		t.Fatalf("dig: %v\n%s", err, out)
	}
	// A marked pod with no slots, and slots of two cookies never marked.
	const markedNoSlots, orphan1, orphan2 = 1 << 62, 1<<62 + 1, 1<<62 + 2
	if err := e.r.Mark(markedNoSlots, PodInfo{}); err != nil {
		t.Fatal(err)
	}
	learned := ztdnsNameserver{Server: endpointFrom(netip.MustParseAddrPort(nowhere4b + ":53"))}
	orphans := []ztdnsNameserverKey{{NetnsCookie: orphan1, Slot: 0}, {NetnsCookie: orphan1, Slot: 2}, {NetnsCookie: orphan2, Slot: 1}}
	for _, k := range orphans {
		if err := e.r.objs.Nameservers.Put(&k, &learned); err != nil {
			t.Fatal(err)
		}
	}

	// Slots of an unmarked cookie used a moment ago: kept.
	const recent = 1<<62 + 3
	now, err := monotonicNow()
	if err != nil {
		t.Fatal(err)
	}
	used := ztdnsNameserver{Server: learned.Server, LastUsedNs: now}
	usedKey := ztdnsNameserverKey{NetnsCookie: recent, Slot: 1}
	if err := e.r.objs.Nameservers.Put(&usedKey, &used); err != nil {
		t.Fatal(err)
	}

	removed, err := e.r.SweepNameservers()
	if err != nil || removed != len(orphans) {
		t.Errorf("SweepNameservers() = %d, %v; want %d removed", removed, err, len(orphans))
	}
	for _, k := range orphans {
		if ns, ok := e.r.Nameserver(k.NetnsCookie, int(k.Slot)); ok {
			t.Errorf("netns cookie %d slot %d still holds %s", k.NetnsCookie, k.Slot, ns)
		}
	}
	if _, ok := e.r.Nameserver(recent, 1); !ok {
		t.Errorf("an unmarked cookie's slot used within %v was forgotten", SlotIdle)
	}
	e.setLastUsed(t, recent, 1, SlotIdle+time.Second)
	if removed, err := e.r.SweepNameservers(); err != nil || removed != 1 {
		t.Errorf("SweepNameservers() once that slot is idle = %d, %v; want it removed", removed, err)
	}
	if ns, ok := e.r.Nameserver(cookie, 0); !ok || ns.String() != nowhere4+":53" {
		t.Errorf("the marked pod's slot 0 = %s, %v; want %s:53 kept", ns, ok, nowhere4)
	}
	if pods, err := e.r.Pods(); err != nil || len(pods) != 2 {
		t.Errorf("Pods() = %+v, %v; want both marks kept", pods, err)
	}
	if removed, err := e.r.SweepNameservers(); err != nil || removed != 0 {
		t.Errorf("second SweepNameservers() = %d, %v; want nothing left to remove", removed, err)
	}
}

// TestConfigChangeSwitchesEntries: a Load with a changed config writes it
// into the config entry the programs do not read and then switches them to
// it, never over the entry they read; an unchanged config writes nothing.
// Capture works on the new config.
func TestConfigChangeSwitchesEntries(t *testing.T) {
	t.Parallel()
	e := newCaptureEnv(t, envOptions{manualBeat: true})
	read := func() (uint32, [2]ztdnsRedirectConfig) {
		t.Helper()
		var (
			active  ztdnsActiveConfig
			entries [2]ztdnsRedirectConfig
		)
		if err := e.r.objs.ConfigIndex.Lookup(uint32(0), &active); err != nil {
			t.Fatal(err)
		}
		for i := range entries {
			if err := e.r.objs.Config.Lookup(uint32(i), &entries[i]); err != nil {
				t.Fatal(err)
			}
		}
		return active.Index, entries
	}
	reload := func(staleAfter time.Duration) {
		t.Helper()
		if err := e.r.Close(); err != nil {
			t.Fatal(err)
		}
		cfg := e.cfg
		cfg.StaleAfter = staleAfter
		e.r = mustLoad(t, cfg)
	}

	first, before := read()
	if got := before[first].StaleAfterNs; got != uint64(DefaultStaleAfter) {
		t.Fatalf("active config %d has stale_after_ns %d, want %d", first, got, DefaultStaleAfter)
	}

	reload(2 * DefaultStaleAfter)
	second, after := read()
	if second == first {
		t.Fatalf("config index stayed %d after a changed config", first)
	}
	if after[first] != before[first] {
		t.Errorf("the entry the programs read was written: %+v, was %+v", after[first], before[first])
	}
	if got := after[second].StaleAfterNs; got != uint64(2*DefaultStaleAfter) || after[second].Resolver4 != before[first].Resolver4 {
		t.Errorf("new config entry %d = %+v, want the resolvers of %+v with stale_after_ns %d", second, after[second], before[first], 2*DefaultStaleAfter)
	}

	reload(2 * DefaultStaleAfter)
	if idx, again := read(); idx != second || again != after {
		t.Errorf("an unchanged config moved the index to %d (entries %+v), want %d and nothing written", idx, again, second)
	}

	defer beatUntilStopped(t, e.r, 100*time.Millisecond)()
	pod, _ := e.markedPod(t, 0, nowhere4)
	if out, err := dig(t, &pod.Netns, e.cg, uniqueName("switched")); err != nil || !slices.Contains(testenv.ParseAddrs(out), marker4) {
		t.Fatalf("dig after the switch: %v, printed %q; want %s", err, out, marker4)
	}
}
