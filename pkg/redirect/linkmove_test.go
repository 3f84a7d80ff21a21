//go:build linux

package redirect

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf/link"

	"github.com/ztdns/ztdns/internal/testenv"
)

// moveEnv is a test cgroup standing for the cgroup2 root, kubepods under
// it and a pod's cgroup under that, and a bpffs; cfg attaches to kubepods.
// No network: what runs for the pod's sockets is read with BPF_PROG_QUERY.
type moveEnv struct {
	root, kubepods, pod *testenv.Cgroup
	cfg                 Config
}

func newMoveEnv(tb testing.TB) *moveEnv {
	tb.Helper()
	testenv.RequireRoot(tb)
	e := &moveEnv{root: testenv.NewCgroup(tb)}
	e.kubepods = testenv.NewChildCgroup(tb, e.root, "kubepods")
	e.pod = testenv.NewChildCgroup(tb, e.kubepods, "pod-x")
	e.cfg = Config{
		BPFFS:      filepath.Join(testenv.NewBPFFS(tb), "ztdns"),
		CgroupRoot: e.root.Path,
		CgroupPath: e.kubepods.Path,
		Resolver4:  DefaultResolver4(),
		Resolver6:  DefaultResolver6(),
		Logger:     testLogger(tb),
	}
	return e
}

// previousAgentOnRoot loads and closes an agent attached at the root, as
// agents before the pods' cgroup was the default left their links.
func (e *moveEnv) previousAgentOnRoot(tb testing.TB) {
	tb.Helper()
	cfg := e.cfg
	cfg.CgroupPath = e.root.Path
	r, err := Load(cfg)
	if err != nil {
		tb.Fatalf("Load the previous agent: %v", err)
	}
	if err := r.Close(); err != nil {
		tb.Fatal(err)
	}
}

// assertEveryHookCaptures checks that each hook runs a ztdns program for
// the pod's sockets and that its pin holds a link attached to a cgroup:
// what a next agent finds to update or move.
func (e *moveEnv) assertEveryHookCaptures(tb testing.TB, when string) {
	tb.Helper()
	for _, h := range hooks {
		on := programsOn(tb, e.pod.Path, h.attach, true)
		if !slices.ContainsFunc(on, func(n string) bool { return strings.HasPrefix(n, programPrefix) }) {
			tb.Errorf("%s: %s: no ztdns program runs for the pod's sockets (%q)", when, h.name, on)
		}
		pin := linkPinPath(e.cfg.BPFFS, h.name)
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			tb.Errorf("%s: %s: pin: %v", when, h.name, err)
			continue
		}
		info, err := l.Info()
		l.Close()
		if err != nil || info.Cgroup() == nil || info.Cgroup().CgroupId == 0 {
			tb.Errorf("%s: %s: the pinned link is not attached: %+v, %v", when, h.name, info, err)
		}
	}
}

// assertOnlyOn checks that r's links are on kubepods and pinned, that each
// hook runs exactly one ztdns program for the pod's sockets, none is left
// on the root, and no other pin is left under links/.
func (e *moveEnv) assertOnlyOn(tb testing.TB, r *Redirector) {
	tb.Helper()
	assertLinksOn(tb, r, e.kubepods.Path)
	links, err := r.Links()
	if err != nil {
		tb.Fatal(err)
	}
	var want []string
	for _, l := range links {
		want = append(want, l.Program)
		if id, err := pinnedLinkID(linkPinPath(e.cfg.BPFFS, l.Program)); err != nil || id != l.LinkID {
			tb.Errorf("%s: pin holds link %d (%v), want the agent's %d", l.Program, id, err, l.LinkID)
		}
	}
	for _, h := range hooks {
		if on := programsOn(tb, e.root.Path, h.attach, false); len(on) > 0 {
			tb.Errorf("%s: programs left on the root: %q", h.name, on)
		}
		on := programsOn(tb, e.pod.Path, h.attach, true)
		if n := len(slices.DeleteFunc(on, func(n string) bool { return !strings.HasPrefix(n, programPrefix) })); n != 1 {
			tb.Errorf("%s: %d ztdns programs run for the pod's sockets, want 1", h.name, n)
		}
	}
	ents, err := os.ReadDir(filepath.Join(e.cfg.BPFFS, linksDir))
	if err != nil {
		tb.Fatal(err)
	}
	var got []string
	for _, ent := range ents {
		got = append(got, ent.Name())
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		tb.Errorf("pins under %s: %q, want %q", linksDir, got, want)
	}
}

// TestMoveDyingAtEachStep: an agent moving the links a previous agent
// pinned on the cgroup2 root to the pods' cgroup, and dying after any step
// of any hook's move (its descriptors closed, its pins left), leaves every
// hook a ztdns program running for the pod's sockets and a pin holding an
// attached link; the next agent ends with its links on the pods' cgroup
// only, one per hook, and no other pin. (Before: dying between detaching
// the old link and pinning the new one left that hook with no program
// until the next agent started.) The hooks are moved in detach order: the
// first one moved (the others not yet), recvmsg4 (restoring replies: half
// moved), the last one (the others moved). A Load takes about a second.
func TestMoveDyingAtEachStep(t *testing.T) {
	t.Parallel()
	errDied := errors.New("the agent died here")
	order := detachOrder()
	recvmsg4 := order[slices.IndexFunc(order, func(h hook) bool { return h.name == ztdnsProgZtdnsRecvmsg4 })]
	for _, h := range []hook{order[0], recvmsg4, order[len(order)-1]} {
		for step := 1; step <= 3; step++ {
			t.Run(fmt.Sprintf("%s/after step %d", h.name, step), func(t *testing.T) {
				t.Parallel()
				e := newMoveEnv(t)
				e.previousAgentOnRoot(t)
				cfg := e.cfg
				cfg.afterMoveStep = func(name string, s int) error {
					if name == h.name && s == step {
						return errDied
					}
					return nil
				}
				// Load closes what it holds when it fails: as a dying
				// agent's descriptors close.
				r, err := Load(cfg)
				if err == nil {
					r.Close()
					t.Fatalf("Load went past step %d of %s", step, h.name)
				}
				if !errors.Is(err, errDied) {
					t.Fatalf("Load: %v", err)
				}
				e.assertEveryHookCaptures(t, fmt.Sprintf("dead after step %d of %s", step, h.name))
				e.assertOnlyOn(t, mustLoad(t, e.cfg))
			})
		}
	}
}

// TestRepairLeavesAnotherAgentsLink: when RepairAttachment finds its link
// detached and, before it attaches a new one, another agent (one taking
// over, attaching at the root) pins its own link there, the repair leaves
// that link attached and pinned and attaches nothing: the hook runs the
// other agent's program alone. (Before: it took that link for one to move,
// detached it and pinned its own in its place.)
func TestRepairLeavesAnotherAgentsLink(t *testing.T) {
	t.Parallel()
	e := newMoveEnv(t)
	h := hooks[slices.IndexFunc(hooks, func(h hook) bool { return h.name == ztdnsProgZtdnsConnect4 })]
	pin := linkPinPath(e.cfg.BPFFS, h.name)
	var (
		r     *Redirector
		other link.Link
	)
	cfg := e.cfg
	cfg.beforeReattach = func(name string) {
		if name != h.name {
			return
		}
		if err := os.Remove(pin); err != nil {
			t.Errorf("remove pin: %v", err)
			return
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: e.root.Path, Attach: h.attach, Program: h.program(&r.objs.ztdnsPrograms)})
		if err != nil {
			t.Errorf("the other agent's link: %v", err)
			return
		}
		t.Cleanup(func() { l.Close() })
		if err := l.Pin(pin); err != nil {
			t.Errorf("pin the other agent's link: %v", err)
		}
		other = l
	}
	r = mustLoad(t, cfg)
	links, err := r.Links()
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(links, func(l Link) bool { return l.Program == h.name })
	// Detached behind the agent's back (bpftool link detach).
	l, err := link.NewFromID(links[i].LinkID)
	if err != nil {
		t.Fatal(err)
	}
	err = l.Detach()
	l.Close()
	if err != nil {
		t.Fatal(err)
	}

	left, repaired, err := r.RepairAttachment()
	if err != nil {
		t.Fatal(err)
	}
	if other == nil {
		t.Fatal("the repair did not try to re-attach")
	}
	info, err := other.Info()
	if err != nil {
		t.Fatal(err)
	}
	rootID, err := cgroupID(e.root.Path)
	if err != nil {
		t.Fatal(err)
	}
	if cg := info.Cgroup(); cg == nil || cg.CgroupId != rootID {
		t.Errorf("the other agent's link %d: cgroup %+v, want still attached to the root (%d)", info.ID, cg, rootID)
	}
	if id, err := pinnedLinkID(pin); err != nil || id != info.ID {
		t.Errorf("pin holds link %d (%v), want the other agent's %d", id, err, info.ID)
	}
	if on := programsOn(t, e.kubepods.Path, h.attach, false); len(on) > 0 {
		t.Errorf("programs attached by the repair on kubepods: %q, want none", on)
	}
	if on := programsOn(t, e.pod.Path, h.attach, true); len(on) != 1 {
		t.Errorf("programs running for the pod's sockets: %q, want the other agent's alone", on)
	}
	for _, what := range repaired {
		if strings.HasPrefix(what, h.name+":") {
			t.Errorf("repaired %q", what)
		}
	}
	if !slices.ContainsFunc(left.Problems, func(p string) bool { return strings.HasPrefix(p, h.name+":") }) {
		t.Errorf("problems left %q, want one for %s", left.Problems, h.name)
	}
}
