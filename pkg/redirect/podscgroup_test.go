//go:build linux

package redirect

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// A test cgroup stands for the cgroup2 root (Config.CgroupRoot), never the
// machine's: kubepods under it for the kubelet's, and a pod's cgroup under
// that, where the pods' clients run.

const (
	clusterDNS4 = "10.96.0.10"  // the cluster DNS Service, as the pod's nameserver
	backend4    = "10.244.9.99" // what a socket LB rewrites it to: nobody
)

// podsCgroupEnv is captureEnv (e.cg: the pod's cgroup, kubepods/pod-x)
// with the test root above it; nothing is loaded yet (e.load).
type podsCgroupEnv struct {
	captureEnv
	root, kubepods *testenv.Cgroup
}

func newPodsCgroupEnv(tb testing.TB, withKubepods bool) *podsCgroupEnv {
	tb.Helper()
	testenv.RequireRoot(tb)
	for _, bin := range []string{"ip", "dig"} {
		testenv.LookPath(tb, bin)
	}
	node := testenv.NewNode(tb)
	if err := node.Do(func() error {
		_, err := EnsureInterface(testLogger(tb), DefaultInterface, DefaultInterfaceAddrs())
		return err
	}); err != nil {
		tb.Fatalf("resolver interface: %v", err)
	}
	e := &podsCgroupEnv{captureEnv: captureEnv{node: node}}
	e.dns = node.StartDNSServer(tb, resolverAddrs(), dnstest.Marker(marker4, marker6))
	e.root = testenv.NewCgroup(tb)
	e.cg = e.root
	if withKubepods {
		e.kubepods = testenv.NewChildCgroup(tb, e.root, "kubepods")
		e.cg = testenv.NewChildCgroup(tb, e.kubepods, "pod-x")
	}
	e.cfg = Config{
		BPFFS:      filepath.Join(testenv.NewBPFFS(tb), "ztdns"),
		CgroupRoot: e.root.Path,
		Resolver4:  DefaultResolver4(),
		Resolver6:  DefaultResolver6(),
		Logger:     testLogger(tb),
		// As the docs recommend beside Cilium: the Service's address.
		CaptureNameservers: []netip.Prefix{netip.MustParsePrefix(clusterDNS4 + "/32")},
	}
	return e
}

// load loads with cfg, beating, and keeps the Redirector as e.r.
func (e *podsCgroupEnv) load(tb testing.TB, cfg Config) *Redirector {
	tb.Helper()
	e.r = mustLoad(tb, cfg)
	keepBeating(tb, e.r)
	return e.r
}

// captured says whether a marked pod's query to the cluster DNS Service
// reached the resolver and was answered by it.
func (e *podsCgroupEnv) captured(tb testing.TB) (bool, string) {
	tb.Helper()
	pod, _ := e.markedPod(tb, 0, clusterDNS4)
	name := uniqueName("cilium")
	out, err := dig(tb, &pod.Netns, e.cg, name)
	ok := err == nil && slices.Contains(testenv.ParseAddrs(out), marker4) && len(e.dns.ReceivedFor(name)) > 0
	return ok, fmt.Sprintf("dig: %v, printed %q", err, out)
}

// programsOn lists the names of the programs attached directly to the
// cgroup cg for at, as BPF_PROG_QUERY reports them (effective: those that
// run for its sockets, its ancestors' included, in the order they run).
func programsOn(tb testing.TB, cg string, at ebpf.AttachType, effective bool) []string {
	tb.Helper()
	f, err := os.Open(cg)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	opts := link.QueryOptions{Target: int(f.Fd()), Attach: at}
	if effective {
		opts.QueryFlags = unix.BPF_F_QUERY_EFFECTIVE
	}
	res, err := link.QueryPrograms(opts)
	if err != nil {
		tb.Fatalf("query %s %s: %v", cg, at, err)
	}
	var names []string
	for _, p := range res.Programs {
		name, err := programName(p.ID)
		if err != nil {
			tb.Fatal(err)
		}
		names = append(names, name)
	}
	return names
}

// ciliumDetachAll does what Cilium's socketlb does at start for each hook
// it has off (pkg/socketlb/cgroup.go, detachAll): list every program on
// the cgroup2 root and detach each with BPF_PROG_DETACH.
func ciliumDetachAll(root string, at ebpf.AttachType) error {
	f, err := os.Open(root)
	if err != nil {
		return err
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
	if err != nil {
		return fmt.Errorf("query: %w", err)
	}
	var errs []error
	for _, p := range res.Programs {
		prog, err := ebpf.NewProgramFromID(p.ID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := link.RawDetachProgram(link.RawDetachProgramOptions{Target: int(f.Fd()), Program: prog, Attach: at}); err != nil {
			name, _ := programName(p.ID)
			errs = append(errs, fmt.Errorf("PROG_DETACH id %d (%s): %w", p.ID, name, err))
		}
		prog.Close()
	}
	return errors.Join(errs...)
}

// socketLB attaches to cg, for connect4 and sendmsg4, a stand-in for
// Cilium's socket LB: it rewrites 10.96.0.10:53 to backend4:53.
func socketLB(tb testing.TB, cg string) {
	tb.Helper()
	ip := func(s string) int32 { // as the program loads it: network order, read little-endian
		b := netip.MustParseAddr(s).As4()
		return int32(uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24)
	}
	const userIP4, userPort = 4, 24 // offsets in struct bpf_sock_addr
	insns := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, userIP4, asm.Word),
		asm.JNE.Imm(asm.R2, ip(clusterDNS4), "out"),
		asm.LoadMem(asm.R2, asm.R1, userPort, asm.Word),
		asm.JNE.Imm(asm.R2, 53<<8, "out"), // htons(53)
		asm.StoreImm(asm.R1, userIP4, int64(ip(backend4)), asm.Word),
		asm.Mov.Imm(asm.R0, 1).WithSymbol("out"),
		asm.Return(),
	}
	for _, at := range []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupUDP4Sendmsg} {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "lb_sock4", Type: ebpf.CGroupSockAddr, AttachType: at, Instructions: insns, License: "GPL"})
		if err != nil {
			tb.Fatalf("socket LB program: %v", err)
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cg, Attach: at, Program: prog})
		prog.Close()
		if err != nil {
			tb.Fatalf("attach socket LB: %v", err)
		}
		tb.Cleanup(func() { l.Close() })
	}
}

// TestDefaultCgroupIsThePods: with kubepods under the cgroup2 root the
// programs attach there, and the pods under it are captured; without, at
// the root, as before.
func TestDefaultCgroupIsThePods(t *testing.T) {
	t.Parallel()
	t.Run("kubepods", func(t *testing.T) {
		e := newPodsCgroupEnv(t, true)
		r := e.load(t, e.cfg)
		if path, why := r.Cgroup(); path != e.kubepods.Path || !strings.Contains(why, "pods' cgroup") {
			t.Errorf("Cgroup() = %q, %q; want %s, the pods' cgroup", path, why, e.kubepods.Path)
		}
		assertLinksOn(t, r, e.kubepods.Path)
		for _, h := range hooks {
			if on := programsOn(t, e.root.Path, h.attach, false); len(on) > 0 {
				t.Errorf("%s: programs on the cgroup2 root: %q, want none", h.attach, on)
			}
		}
		if ok, got := e.captured(t); !ok {
			t.Errorf("a pod's query to %s was not captured: %s", clusterDNS4, got)
		}
	})
	t.Run("no kubelet", func(t *testing.T) {
		e := newPodsCgroupEnv(t, false)
		r := e.load(t, e.cfg)
		if path, why := r.Cgroup(); path != e.root.Path || !strings.Contains(why, "cgroup2 root") {
			t.Errorf("Cgroup() = %q, %q; want %s, the cgroup2 root", path, why, e.root.Path)
		}
		assertLinksOn(t, r, e.root.Path)
	})
}

func assertLinksOn(tb testing.TB, r *Redirector, cg string) {
	tb.Helper()
	want, err := cgroupID(cg)
	if err != nil {
		tb.Fatal(err)
	}
	links, err := r.Links()
	if err != nil {
		tb.Fatal(err)
	}
	if len(links) != len(hooks) {
		tb.Errorf("%d links, want %d", len(links), len(hooks))
	}
	for _, l := range links {
		if l.CgroupID != want {
			tb.Errorf("%s: link %d on cgroup %d, want %s (%d)", l.Program, l.LinkID, l.CgroupID, cg, want)
		}
	}
}

// TestCiliumDetachAllOnTheRoot: Cilium, starting with a hook off, detaches
// every program on the cgroup2 root with BPF_PROG_DETACH. ztdns's links are
// not there, so that succeeds and capture goes on (before: ENOENT for each
// of ztdns's programs, and Cilium's datapath failed to initialize:
// cilium/cilium#43877).
func TestCiliumDetachAllOnTheRoot(t *testing.T) {
	t.Parallel()
	e := newPodsCgroupEnv(t, true)
	e.load(t, e.cfg)
	for _, at := range []ebpf.AttachType{
		ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect, ebpf.AttachCGroupUDP4Sendmsg, ebpf.AttachCGroupUDP6Sendmsg,
		ebpf.AttachCGroupUDP4Recvmsg, ebpf.AttachCGroupUDP6Recvmsg, ebpf.AttachCgroupInet4GetPeername, ebpf.AttachCgroupInet6GetPeername,
	} {
		if err := ciliumDetachAll(e.root.Path, at); err != nil {
			t.Errorf("Cilium's detach-all on the cgroup2 root, %s: %v", at, err)
		}
	}
	if ok, got := e.captured(t); !ok {
		t.Errorf("a pod's query to %s was not captured after Cilium's detach-all: %s", clusterDNS4, got)
	}
}

// TestCapturedBeforeASocketLBOnTheRoot: a socket LB on the cgroup2 root,
// attached before ztdns, rewrites the cluster DNS Service's address to a
// backend's. ztdns's programs, on the pods' cgroup, run first and capture
// the query to the Service's address (before, on the root after the LB's,
// they saw the backend's, outside the capture list, and let it go).
func TestCapturedBeforeASocketLBOnTheRoot(t *testing.T) {
	t.Parallel()
	e := newPodsCgroupEnv(t, true)
	socketLB(t, e.root.Path)
	e.load(t, e.cfg)
	on := programsOn(t, e.cg.Path, ebpf.AttachCGroupInet4Connect, true)
	if len(on) != 2 || on[0] != "ztdns_connect4" {
		t.Errorf("connect4 programs run for a pod's sockets in the order %q, want ztdns_connect4 first, then the LB's", on)
	}
	if ok, got := e.captured(t); !ok {
		t.Errorf("a pod's query to %s was not captured with a socket LB on the cgroup2 root attached first: %s", clusterDNS4, got)
	}
}

// gapWatch is a slog handler that, at every record the Redirector logs
// while it moves its links, checks that every hook still runs a ztdns
// program for the pod's sockets; gaps are what it found missing.
type gapWatch struct {
	slog.Handler
	tb     testing.TB
	podCg  string
	mu     sync.Mutex
	checks int
	gaps   []string
}

func (g *gapWatch) Handle(ctx context.Context, rec slog.Record) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.checks++
	for _, h := range hooks {
		if !slices.ContainsFunc(programsOn(g.tb, g.podCg, h.attach, true), func(n string) bool { return strings.HasPrefix(n, programPrefix) }) {
			g.gaps = append(g.gaps, fmt.Sprintf("%s: no ztdns program at %q", h.name, rec.Message))
		}
	}
	return g.Handler.Handle(ctx, rec)
}

func (g *gapWatch) WithAttrs(as []slog.Attr) slog.Handler {
	return &gapWatch{Handler: g.Handler.WithAttrs(as), tb: g.tb, podCg: g.podCg}
}

// TestUpgradeFromRootLinks: over links an agent before this default pinned
// on the cgroup2 root, the next agent ends with its links on the pods'
// cgroup, pinned, none on the root, and at no step of the move did a hook
// run no ztdns program for the pods (before: every link was detached from
// the root, then attached anew). A rollback (--cgroup the root) moves them
// back the same way; a hand-over (KeepConfig) captures throughout.
func TestUpgradeFromRootLinks(t *testing.T) {
	t.Parallel()
	for _, handover := range []bool{false, true} {
		t.Run(map[bool]string{false: "restart", true: "hand-over"}[handover], func(t *testing.T) {
			parent := t
			e := newPodsCgroupEnv(t, true)
			old := e.cfg
			old.CgroupPath = e.root.Path // the default before
			prev := mustLoad(t, old)
			e.r = prev
			stopPrev := beatUntilStopped(t, prev, 100*time.Millisecond)
			if ok, got := e.captured(t); !ok {
				t.Fatalf("not captured by the previous agent's links on the root: %s", got)
			}
			if !handover {
				stopPrev()
				if err := prev.Close(); err != nil {
					t.Fatal(err)
				}
			}

			moveTo := func(t *testing.T, cfg Config, to, from string) {
				t.Helper()
				g := &gapWatch{Handler: testLogger(t).Handler(), tb: t, podCg: e.cg.Path}
				cfg.Logger = slog.New(g)
				cfg.KeepConfig = handover
				r := mustLoad(parent, cfg) // open on after the subtest, as an agent
				e.r = r
				if handover {
					beat(t, r)
					if ok, got := e.captured(t); !ok {
						t.Errorf("not captured between the hand-over's Load and ApplyConfig: %s", got)
					}
					if err := r.ApplyConfig(); err != nil {
						t.Fatalf("ApplyConfig: %v", err)
					}
				}
				keepBeating(parent, r)
				g.mu.Lock()
				if g.checks == 0 || len(g.gaps) > 0 {
					t.Errorf("checked at %d log records; hooks without a ztdns program meanwhile: %q", g.checks, g.gaps)
				}
				g.mu.Unlock()
				assertLinksOn(t, r, to)
				for _, h := range hooks {
					if on := programsOn(t, from, h.attach, false); len(on) > 0 {
						t.Errorf("%s: programs left on %s: %q", h.attach, from, on)
					}
					id, err := pinnedLinkID(linkPinPath(cfg.BPFFS, h.name))
					if err != nil || id == 0 {
						t.Errorf("%s: pin: %d, %v", h.name, id, err)
					}
				}
				if ok, got := e.captured(t); !ok {
					t.Errorf("not captured after the move to %s: %s", to, got)
				}
			}
			t.Run("upgrade", func(t *testing.T) { moveTo(t, e.cfg, e.kubepods.Path, e.root.Path) })
			if handover {
				// The previous agent stops: its links, detached, are nothing now.
				stopPrev()
				if err := prev.Close(); err != nil {
					t.Fatal(err)
				}
				if ok, got := e.captured(t); !ok {
					t.Errorf("not captured after the previous agent closed: %s", got)
				}
			}
			t.Run("rollback", func(t *testing.T) { moveTo(t, old, e.root.Path, e.kubepods.Path) })
		})
	}
}
