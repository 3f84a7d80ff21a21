//go:build linux

package redirect

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/ztdns/ztdns/internal/testenv"
)

// loadBare loads a Redirector on a cgroup and bpffs of its own, with no
// resolver, pod or heartbeat: enough to look at links and pins.
func loadBare(t *testing.T) (*Redirector, Config) {
	t.Helper()
	testenv.RequireRoot(t)
	cfg := Config{BPFFS: filepath.Join(testenv.NewBPFFS(t), "ztdns"), CgroupPath: testenv.NewCgroup(t).Path,
		Resolver4: DefaultResolver4(), Logger: testLogger(t)}
	return mustLoad(t, cfg), cfg
}

// checkAttachment is r.CheckAttachment, failing the test on an error.
func checkAttachment(t *testing.T, r *Redirector) Attachment {
	t.Helper()
	a, err := r.CheckAttachment()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// wantProblems fails unless problems holds one line per entry of want, in
// order, each containing every part of its entry.
func wantProblems(t *testing.T, what string, problems []string, want ...[]string) {
	t.Helper()
	ok := len(problems) == len(want)
	for i := 0; ok && i < len(want); i++ {
		for _, part := range want[i] {
			ok = ok && strings.Contains(problems[i], part)
		}
	}
	if !ok {
		t.Errorf("%s: problems\n  %s\nwant lines containing %q", what, strings.Join(problems, "\n  "), want)
	}
}

// TestRepairAttachmentPins: a link's or a map's pin removed behind the
// Redirector's back is reported, and made again for the link or map it
// holds (a restarted agent would otherwise attach a second link, or start
// with an empty map); a pin that holds another map is reported and left.
func TestRepairAttachmentPins(t *testing.T) {
	t.Parallel()
	r, cfg := loadBare(t)
	if a := checkAttachment(t, r); a.Attached != len(hooks) || a.Hooks != len(hooks) || len(a.Problems) > 0 {
		t.Fatalf("freshly loaded: %+v, want all %d hooks attached and no problem", a, len(hooks))
	}
	links, err := r.Links()
	if err != nil {
		t.Fatal(err)
	}

	linkPin := linkPinPath(cfg.BPFFS, ztdnsProgZtdnsSendmsg4)
	countersPin, socketsPin := pinPath(cfg.BPFFS, ztdnsMapCounters), pinPath(cfg.BPFFS, ztdnsMapSockets)
	for _, pin := range []string{linkPin, countersPin, socketsPin} {
		if err := os.Remove(pin); err != nil {
			t.Fatal(err)
		}
	}
	other, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.Pin(socketsPin); err != nil {
		t.Fatal(err)
	}

	a := checkAttachment(t, r)
	if a.Attached != len(hooks) {
		t.Errorf("with pins gone: %d hooks attached, want %d: the links are attached still", a.Attached, len(hooks))
	}
	wantProblems(t, "with pins gone", a.Problems,
		[]string{"ztdns_sendmsg4: pin " + linkPin + " is gone"},
		[]string{"map sockets: pin " + socketsPin + " holds map"},
		[]string{"map counters: pin " + countersPin + " is gone"})

	left, repaired, err := r.RepairAttachment()
	if err != nil {
		t.Fatal(err)
	}
	wantProblems(t, "repaired", repaired,
		[]string{"ztdns_sendmsg4: pinned link", "again at " + linkPin},
		[]string{"map counters: pinned map", "again at " + countersPin})
	wantProblems(t, "left after the repair", left.Problems, []string{"map sockets: pin " + socketsPin + " holds map"})

	i := slices.IndexFunc(links, func(l Link) bool { return l.Program == ztdnsProgZtdnsSendmsg4 })
	if id, err := pinnedLinkID(linkPin); err != nil || id != links[i].LinkID {
		t.Errorf("pin %s holds link %d (%v), want the attached link %d", linkPin, id, err, links[i].LinkID)
	}
	if id, err := pinnedMapID(countersPin); err != nil || id != r.mapIDs[ztdnsMapCounters] {
		t.Errorf("pin %s holds map %d (%v), want the counters map %d", countersPin, id, err, r.mapIDs[ztdnsMapCounters])
	}
}

// TestRepairAttachmentLeavesAnotherAgentsLinks: once another agent (a
// successor) has swapped its programs into the links, the first one
// reports each link as another's and puts nothing back; nor does it
// re-attach a detached link whose pin now holds another link.
func TestRepairAttachmentLeavesAnotherAgentsLinks(t *testing.T) {
	t.Parallel()
	r, cfg := loadBare(t)
	r2 := mustLoad(t, cfg)
	mine, err := r2.Links()
	if err != nil {
		t.Fatal(err)
	}

	left, repaired, err := r.RepairAttachment()
	if err != nil {
		t.Fatal(err)
	}
	if len(repaired) > 0 || left.Attached != 0 || len(left.Problems) != len(hooks) {
		t.Errorf("the first agent after the second took the links: repaired %q, %d attached, problems %q; want nothing repaired, "+
			"none attached, one problem a hook", repaired, left.Attached, left.Problems)
	}
	for _, p := range left.Problems {
		if !strings.Contains(p, "another agent replaced it") {
			t.Errorf("problem %q does not say another agent replaced the program", p)
		}
	}
	if after, err := r2.Links(); err != nil || !slices.Equal(after, mine) {
		t.Errorf("the second agent's links after the first one's repair: %+v (%v), want %+v", after, err, mine)
	}

	// A link of theirs detached (a cgroup change, say): still theirs, even
	// though it is the link the first agent attached.
	detachPinnedLink(t, cfg.BPFFS, ztdnsProgZtdnsConnect4)
	if _, repaired, err = r.RepairAttachment(); err != nil || len(repaired) > 0 {
		t.Errorf("the first agent repaired %q (%v) a link running the second one's program", repaired, err)
	}
	if _, repaired, err = r2.RepairAttachment(); err != nil || len(repaired) != 1 || !strings.Contains(repaired[0], "ztdns_connect4: re-attached") {
		t.Errorf("the second agent repaired %q (%v), want its connect4 link re-attached", repaired, err)
	}
}

// TestRepairAttachmentRecreatedCgroup: the cgroup removed and made again
// at the same path (what `systemctl restart` does to a service's cgroup
// given as --cgroup) leaves every link defunct; one repair attaches them
// to the new cgroup, and the attachment is healthy afterwards, with
// nothing more to repair.
func TestRepairAttachmentRecreatedCgroup(t *testing.T) {
	t.Parallel()
	r, cfg := loadBare(t)
	if err := os.Remove(cfg.CgroupPath); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(cfg.CgroupPath, 0o755); err != nil { // removed again at cleanup
		t.Fatal(err)
	}
	newID, err := cgroupID(cfg.CgroupPath)
	if err != nil {
		t.Fatal(err)
	}
	// The kernel detaches the links from the removed cgroup from a
	// workqueue, once no socket in it is left.
	testenv.Eventually(t, 10*time.Second, "every link detached from the removed cgroup", func() bool {
		return checkAttachment(t, r).Attached == 0
	})

	left, repaired, err := r.RepairAttachment()
	if err != nil {
		t.Fatal(err)
	}
	if len(repaired) != len(hooks) || left.Attached != len(hooks) || len(left.Problems) > 0 {
		t.Errorf("first repair after the cgroup was made again: repaired %q, %d attached, problems %q; want all %d hooks "+
			"re-attached and no problem", repaired, left.Attached, left.Problems, len(hooks))
	}
	for _, p := range repaired {
		if !strings.Contains(p, "re-attached to cgroup "+cfg.CgroupPath) {
			t.Errorf("repaired %q, want it to say the link was re-attached to %s", p, cfg.CgroupPath)
		}
	}
	if a := checkAttachment(t, r); a.Attached != len(hooks) || len(a.Problems) > 0 {
		t.Errorf("checked after the repair: %d attached, problems %q; want all %d attached and no problem",
			a.Attached, a.Problems, len(hooks))
	}
	if left, repaired, err = r.RepairAttachment(); err != nil || len(repaired) > 0 || len(left.Problems) > 0 {
		t.Errorf("second repair: repaired %q, problems %q (%v); want nothing to repair", repaired, left.Problems, err)
	}
	links, err := r.Links()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.CgroupID != newID {
			t.Errorf("%s: link %d attaches to cgroup %d, want the new cgroup %d", l.Program, l.LinkID, l.CgroupID, newID)
		}
	}
}
