package capture

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/ambient"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/netns"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/redirect"
)

// fakeMarker is the pods map: cookie → what was marked.
type fakeMarker struct {
	mu     sync.Mutex
	marks  map[uint64]redirect.PodInfo
	failOn map[uint64]error // Mark fails for these cookies
	// unmarked lists the cookies Unmark removed a mark of, in order.
	unmarked []uint64
}

func newFakeMarker() *fakeMarker {
	return &fakeMarker{marks: map[uint64]redirect.PodInfo{}, failOn: map[uint64]error{}}
}

func (m *fakeMarker) Mark(cookie uint64, pod redirect.PodInfo) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.failOn[cookie]; err != nil {
		return err
	}
	m.marks[cookie] = pod
	return nil
}

func (m *fakeMarker) Unmark(cookie uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.marks[cookie]; ok {
		m.unmarked = append(m.unmarked, cookie)
	}
	delete(m.marks, cookie)
	return nil
}

// unmarks returns the cookies Unmark removed a mark of, in order.
func (m *fakeMarker) unmarks() []uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.unmarked)
}

func (m *fakeMarker) Pods() ([]redirect.MarkedPod, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []redirect.MarkedPod
	for _, c := range slices.Sorted(maps.Keys(m.marks)) {
		out = append(out, redirect.MarkedPod{NetnsCookie: c, PodInfo: m.marks[c]})
	}
	return out, nil
}

// marked returns the marked cookies, sorted.
func (m *fakeMarker) marked() []uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Sorted(maps.Keys(m.marks))
}

// fakeNamespaces is the node's network namespaces by path.
type fakeNamespaces struct {
	mu     sync.Mutex
	byPath map[string]Netns
	// cookieErr fails Cookie for these paths.
	cookieErr map[string]error
	denied    int
	scans     int
	// addrReads are the paths Addrs read, in order.
	addrReads []string
	onScan    func() // runs in each Scan, without the lock
	// mountOnly are paths of namespaces no process is in (a runtime's
	// mount): Cookie finds them, Scan does not.
	mountOnly map[string]bool
	// inspected counts the namespaces scans looked into, by path.
	inspected map[string]int
}

// fakeID is the NsID a fake namespace has: one per cookie.
func fakeID(cookie uint64) NsID { return NsID{Dev: 4, Ino: cookie} }

func (n *fakeNamespaces) Cookie(path string) (uint64, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.cookieErr[path]; err != nil {
		return 0, err
	}
	ns, ok := n.byPath[path]
	if !ok {
		return 0, os.ErrNotExist
	}
	return ns.Cookie, nil
}

func (n *fakeNamespaces) Scan(known map[NsID]bool) (ScanResult, error) {
	if n.onScan != nil {
		n.onScan()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.scans++
	res := ScanResult{Denied: n.denied}
	if n.denied > 0 {
		res.DeniedErr = os.ErrPermission
	}
	if n.inspected == nil {
		n.inspected = map[string]int{}
	}
	for _, p := range slices.Sorted(maps.Keys(n.byPath)) {
		ns := n.byPath[p]
		ns.ID = fakeID(ns.Cookie)
		switch {
		case n.mountOnly[p]:
			continue
		case known[ns.ID]:
			res.Known = append(res.Known, Netns{Path: ns.Path, ID: ns.ID})
			continue
		}
		n.inspected[p]++
		if ns.ForeignUserns || ns.TooManyAddrs { // as ProcNamespaces: not read
			ns.Addrs = nil
		}
		res.Found = append(res.Found, ns)
	}
	return res, nil
}

func (n *fakeNamespaces) Addrs(ns Netns) ([]netip.Addr, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.addrReads = append(n.addrReads, ns.Path)
	cur, ok := n.byPath[ns.Path]
	switch {
	case !ok || cur.Cookie != ns.Cookie:
		return nil, netns.ErrNotFound
	case cur.TooManyAddrs:
		return nil, netns.ErrTooManyAddrs
	}
	return cur.Addrs, nil
}

func (n *fakeNamespaces) add(path string, cookie uint64, addrs ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ns := Netns{Path: path, Cookie: cookie}
	for _, a := range addrs {
		ns.Addrs = append(ns.Addrs, netip.MustParseAddr(a))
	}
	n.byPath[path] = ns
}

const (
	node       = "node-a"
	hostCookie = 1
)

// fixture is a controller over fakes, with a clock the test moves.
type fixture struct {
	ctl    *Controller
	pods   *podcache.Cache
	marker *fakeMarker
	netns  *fakeNamespaces
	dir    string
	now    time.Time
}

func newFixture(t *testing.T, dnsCaptureDefault bool) *fixture {
	t.Helper()
	netns := &fakeNamespaces{byPath: map[string]Netns{}}
	f := newFixtureOver(t, dnsCaptureDefault, []uint64{hostCookie}, netns)
	f.netns = netns
	return f
}

// newFixtureOver is newFixture over the namespaces ns, hostCookies being
// the node's.
func newFixtureOver(t *testing.T, dnsCaptureDefault bool, hostCookies []uint64, ns Namespaces) *fixture {
	t.Helper()
	f := &fixture{
		pods:   podcache.New(),
		marker: newFakeMarker(),
		dir:    t.TempDir(),
		now:    time.Unix(1_700_000_000, 0),
	}
	f.ctl = New(Config{
		StateDir: f.dir, NodeName: node, DNSCaptureDefault: dnsCaptureDefault, HostCookies: hostCookies,
		ExcludeNamespaces: []string{"kube-system"}, // the agent's default
		Logger:            slog.New(slog.DiscardHandler), Now: func() time.Time { return f.now },
	}, f.pods, f.marker, ns)
	t.Cleanup(f.ctl.Close)
	// As the agent starts: the record (none yet) is read before anything
	// is decided.
	if err := f.ctl.Restore(); err != nil {
		t.Fatal(err)
	}
	return f
}

// source feeds a snapshot's namespaces and pods, as the agent's apply does.
func (f *fixture) source(namespaces []model.Namespace, pods ...model.Pod) {
	f.pods.SetSourcePods(pods)
	f.ctl.SetNamespaces(namespaces)
	f.ctl.Redecide()
}

var ambientNS = model.Namespace{Name: "shop", Labels: map[string]string{model.LabelDataplaneMode: ambient.DataplaneModeAmbient}}

func pod(name, ip string, annotations map[string]string) model.Pod {
	return model.Pod{Namespace: "shop", Name: name, UID: "uid-" + name, NodeName: node,
		IPs: []netip.Addr{netip.MustParseAddr(ip)}, Annotations: annotations}
}

func cniAttachment(name string, cookie uint64, ip string) podcache.Attachment {
	return podcache.Attachment{ContainerID: "ctr-" + name, Namespace: "shop", Name: name, UID: "uid-" + name,
		NetnsPath: "/var/run/netns/" + name, NetnsCookie: cookie, IPs: []netip.Addr{netip.MustParseAddr(ip)}}
}

// attach decides and applies a CNI attachment, as the agent's CNI ADD
// does; its network namespace exists.
func (f *fixture) attach(t *testing.T, a podcache.Attachment) podcache.Attachment {
	t.Helper()
	if a.NetnsPath != "" {
		var ips []string
		for _, ip := range a.IPs {
			ips = append(ips, ip.String())
		}
		f.netns.add(a.NetnsPath, a.NetnsCookie, ips...)
	}
	a.Captured, a.Reason = f.ctl.Decide(a)
	if err := f.ctl.Apply(a); err != nil {
		t.Fatalf("Apply(%s): %v", a.Key(), err)
	}
	return a
}

// restart is a new agent's controller over f's marks, record and
// namespaces, with f's configuration; it has not read the record yet
// (restarted has).
func (f *fixture) restart(t *testing.T) *fixture {
	t.Helper()
	g := &fixture{pods: podcache.New(), marker: f.marker, netns: f.netns, dir: f.dir, now: f.now}
	cfg := f.ctl.cfg
	cfg.Now = func() time.Time { return g.now }
	g.ctl = New(cfg, g.pods, g.marker, f.ctl.netns)
	t.Cleanup(g.ctl.Close)
	return g
}

// restarted is restart, the record read (Restore) as the agent starts.
func (f *fixture) restarted(t *testing.T) *fixture {
	t.Helper()
	g := f.restart(t)
	if err := g.ctl.Restore(); err != nil {
		t.Fatal(err)
	}
	return g
}

func (f *fixture) savedRecord(t *testing.T) []podcache.Attachment {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.dir, StateFile))
	if err != nil {
		t.Fatal(err)
	}
	var out []podcache.Attachment
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDecide(t *testing.T) {
	f := newFixture(t, true)
	f.source([]model.Namespace{ambientNS, {Name: "plain"}},
		pod("web", "10.0.0.2", nil),
		pod("opted-out", "10.0.0.3", map[string]string{model.AnnotationDNSCapture: "false"}),
	)
	tests := []struct {
		name     string
		att      podcache.Attachment
		captured bool
		reason   string
	}{
		{"an ambient pod", cniAttachment("web", 10, "10.0.0.2"), true, ambient.ReasonAmbient},
		{"annotated off", cniAttachment("opted-out", 11, "10.0.0.3"), false, ambient.ReasonAnnotationOff},
		{"a pod a source of manifests does not name, in an ambient namespace", cniAttachment("new", 12, "10.0.0.4"), true, ambient.ReasonAmbient},
		{"a namespace not in ambient", podcache.Attachment{ContainerID: "c", Namespace: "plain", Name: "x", NetnsCookie: 13}, false, ambient.ReasonNotAmbient},
		{"the node's own namespace, whatever the pod says", cniAttachment("web", hostCookie, "10.0.0.2"), false, ReasonHostNetns},
		{"marked by hand", podcache.Attachment{Namespace: "plain", Name: "vm", NetnsCookie: 14}, true, ReasonByHand},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			captured, reason := f.ctl.Decide(tt.att)
			if captured != tt.captured || reason != tt.reason {
				t.Errorf("Decide = %v, %q; want %v, %q", captured, reason, tt.captured, tt.reason)
			}
		})
	}
}

// TestExcludedNamespaceIsNeverCaptured: a pod in a namespace istio-cni
// excludes (kube-system) is neither captured at its ADD, nor adopted, nor
// kept captured after an agent that did not exclude it, even with its
// namespace and itself labelled ambient: Istio never enrolls it.
func TestExcludedNamespaceIsNeverCaptured(t *testing.T) {
	f := newFixture(t, true)
	kubeSystem := model.Namespace{Name: "kube-system", Labels: ambientNS.Labels}
	inKubeSystem := func(name, ip string) (model.Pod, podcache.Attachment) {
		p := pod(name, ip, nil)
		p.Namespace = "kube-system"
		p.Labels = map[string]string{model.LabelDataplaneMode: ambient.DataplaneModeAmbient}
		a := cniAttachment(name, 0, ip)
		a.Namespace = "kube-system"
		return p, a
	}
	coredns, corednsAtt := inKubeSystem("coredns", "10.0.0.7")
	old, oldAtt := inKubeSystem("metrics-server", "10.0.0.8")
	proxy, _ := inKubeSystem("running", "10.0.0.9")

	// Captured by an agent that excluded nothing, before this one's source.
	oldAtt.NetnsCookie, oldAtt.Captured, oldAtt.Reason = 80, true, ambient.ReasonAmbient
	f.netns.add(oldAtt.NetnsPath, 80, "10.0.0.8")
	if err := f.ctl.Apply(oldAtt); err != nil {
		t.Fatal(err)
	}
	// Running before any ADD: not adopted.
	f.netns.add("/host/proc/900/ns/net", 90, "10.0.0.9")
	f.source([]model.Namespace{kubeSystem, ambientNS}, coredns, old, proxy, pod("web", "10.0.0.2", nil))
	if got := f.marker.marked(); len(got) != 0 {
		t.Errorf("marks %v, want none in kube-system", got)
	}
	if got := f.pods.Attachments()[oldAtt.Key()]; got.Captured || got.Reason != ambient.ReasonExcludedNamespace {
		t.Errorf("the pod captured before: %+v, want released (excluded-namespace)", got)
	}
	if p := f.pods.Get("kube-system", "running"); p.Attachment != nil {
		t.Errorf("adopted %+v in kube-system", p.Attachment)
	}

	corednsAtt.NetnsCookie = 70
	a := f.attach(t, corednsAtt)
	if a.Captured || a.Reason != ambient.ReasonExcludedNamespace || len(f.marker.marked()) != 0 {
		t.Errorf("ADD in kube-system: %+v, marks %v; want not captured (excluded-namespace)", a, f.marker.marked())
	}
}

func TestApplyMarksAndRecords(t *testing.T) {
	f := newFixture(t, true)
	f.source([]model.Namespace{ambientNS}, pod("web", "10.0.0.2", nil))
	a := cniAttachment("web", 10, "10.0.0.2")
	a.IPs = append(a.IPs, netip.MustParseAddr("fd00::2"), netip.MustParseAddr("10.0.0.9"))
	a = f.attach(t, a)
	want := redirect.PodInfo{IPv4: netip.MustParseAddr("10.0.0.2"), IPv6: netip.MustParseAddr("fd00::2")}
	if got := f.marker.marks[10]; got != want {
		t.Errorf("marked %+v, want the first address of each family %+v", got, want)
	}
	if got := f.savedRecord(t); len(got) != 1 || got[0].Key() != a.Key() || !got[0].Captured {
		t.Errorf("record %+v, want the captured attachment", got)
	}

	// Unmarking by decision keeps the attachment, and the record says so.
	a.Captured, a.Reason = false, "test"
	if err := f.ctl.Apply(a); err != nil {
		t.Fatal(err)
	}
	if m := f.marker.marked(); len(m) != 0 {
		t.Errorf("marks %v after an uncaptured Apply, want none", m)
	}
	if got := f.savedRecord(t); len(got) != 1 || got[0].Captured {
		t.Errorf("record %+v, want the attachment, not captured", got)
	}

	// Forget unmarks and drops it; forgetting again is no error.
	a.Captured = true
	if err := f.ctl.Apply(a); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := f.ctl.Forget(a.Key()); !ok || err != nil {
		t.Fatalf("Forget = %v, %v", ok, err)
	}
	if m := f.marker.marked(); len(m) != 0 {
		t.Errorf("marks %v after Forget", m)
	}
	if _, ok, err := f.ctl.Forget(a.Key()); ok || err != nil {
		t.Errorf("second Forget = %v, %v; want nothing found, no error", ok, err)
	}
	if got := f.savedRecord(t); len(got) != 0 {
		t.Errorf("record %+v after Forget, want empty", got)
	}
}

func TestApplyFailureRecordsNothing(t *testing.T) {
	f := newFixture(t, true)
	f.source([]model.Namespace{ambientNS})
	f.marker.failOn[10] = errors.New("map full")
	a := cniAttachment("web", 10, "10.0.0.2")
	a.Captured, a.Reason = f.ctl.Decide(a)
	if err := f.ctl.Apply(a); err == nil {
		t.Fatal("Apply succeeded although marking failed")
	}
	if len(f.pods.Attachments()) != 0 {
		t.Errorf("attachments %v after a failed mark, want none", f.pods.Attachments())
	}
	if err := f.ctl.Apply(podcache.Attachment{ContainerID: "c", Namespace: "shop", Name: "x", Captured: true}); err == nil {
		t.Error("Apply of an attachment without a netns cookie succeeded")
	}
}

// TestRedecideFollowsTheSource: a label or an annotation changed at run
// time marks and unmarks recorded pods.
func TestRedecideFollowsTheSource(t *testing.T) {
	f := newFixture(t, true)
	plain := model.Namespace{Name: "shop"}
	f.source([]model.Namespace{plain}, pod("web", "10.0.0.2", nil))
	a := f.attach(t, cniAttachment("web", 10, "10.0.0.2"))
	if a.Captured || len(f.marker.marked()) != 0 {
		t.Fatalf("a pod of a namespace outside ambient was captured: %+v", a)
	}

	f.source([]model.Namespace{ambientNS}, pod("web", "10.0.0.2", nil))
	if got := f.marker.marked(); !slices.Equal(got, []uint64{10}) {
		t.Errorf("marks %v after the namespace joined ambient, want [10]", got)
	}
	if got := f.pods.Attachments()[a.Key()]; !got.Captured || got.Reason != ambient.ReasonAmbient {
		t.Errorf("attachment %+v, want captured (ambient)", got)
	}

	f.source([]model.Namespace{ambientNS}, pod("web", "10.0.0.2", map[string]string{model.AnnotationDNSCapture: "false"}))
	if got := f.marker.marked(); len(got) != 0 {
		t.Errorf("marks %v after the pod was annotated off, want none", got)
	}
	if got := f.pods.Attachments()[a.Key()]; got.Captured || got.Reason != ambient.ReasonAnnotationOff {
		t.Errorf("attachment %+v, want not captured (annotation-off)", got)
	}
}

// TestRedecideWaitsForTheSource: before the first snapshot every namespace
// looks unlabelled, and restored pods must keep their marks.
func TestRedecideWaitsForTheSource(t *testing.T) {
	f := newFixture(t, true)
	a := cniAttachment("web", 10, "10.0.0.2")
	a.Captured, a.Reason = true, ambient.ReasonAmbient
	if err := f.ctl.Apply(a); err != nil {
		t.Fatal(err)
	}
	f.ctl.Redecide()
	if got := f.marker.marked(); !slices.Equal(got, []uint64{10}) {
		t.Errorf("marks %v: a redecision before the source's first snapshot unmarked a pod", got)
	}
}

// TestRestore: a restarted controller reads the record, forgets pods whose
// namespace is gone or is another one now, removes marks nobody records and
// puts back lost ones.
func TestRestore(t *testing.T) {
	f := newFixture(t, true)
	f.source([]model.Namespace{ambientNS})
	for i, name := range []string{"kept", "lost-mark", "gone", "replaced"} {
		cookie := uint64(10 + i)
		f.netns.add("/var/run/netns/"+name, cookie, fmt.Sprintf("10.0.0.%d", 2+i))
		f.attach(t, cniAttachment(name, cookie, fmt.Sprintf("10.0.0.%d", 2+i)))
	}
	hand := podcache.Attachment{Namespace: "default", Name: "vm", NetnsCookie: 20, Captured: true, Reason: ReasonByHand}
	if err := f.ctl.Apply(hand); err != nil {
		t.Fatal(err)
	}
	f.ctl.Close()

	// What happened while no agent ran.
	f.marker.Unmark(11)                                    // lost-mark lost its mark
	delete(f.netns.byPath, "/var/run/netns/gone")          // gone's sandbox is gone
	f.netns.add("/var/run/netns/replaced", 99, "10.0.0.5") // another netns at replaced's path
	f.marker.Mark(30, redirect.PodInfo{})                  // a mark nobody records

	g := f.restarted(t)
	if got, want := g.marker.marked(), []uint64{10, 11, 20}; !slices.Equal(got, want) {
		t.Errorf("marks after restore %v, want %v (kept, lost-mark put back, the hand-marked one without a path)", got, want)
	}
	var keys []string
	for _, a := range g.savedRecord(t) {
		keys = append(keys, a.Key())
	}
	if want := []string{"ctr-kept", "ctr-lost-mark", "netns-cookie:20"}; !slices.Equal(keys, want) {
		t.Errorf("record after restore %q, want %q", keys, want)
	}
}

// TestRestoreWarnsOnceOfMarksNoRecordHolds: the state directory removed
// while no agent ran (a systemd unit's RuntimeDirectory, removed at every
// stop) leaves marks that no record holds. The next agent removes them,
// and says so once, at WARN, with their count and the state directory:
// before, one INFO line a mark said only "removing a stale mark", and
// namespaces captured by hand went uncaptured without a warning.
func TestRestoreWarnsOnceOfMarksNoRecordHolds(t *testing.T) {
	f := newFixture(t, true)
	f.source([]model.Namespace{ambientNS})
	f.attach(t, cniAttachment("web", 10, "10.0.0.2"))
	for i, name := range []string{"vm1", "vm2"} {
		hand := podcache.Attachment{Namespace: "default", Name: name, NetnsCookie: uint64(20 + i), Captured: true, Reason: ReasonByHand}
		if err := f.ctl.Apply(hand); err != nil {
			t.Fatal(err)
		}
	}
	f.ctl.Close()
	if err := os.Remove(filepath.Join(f.dir, StateFile)); err != nil {
		t.Fatal(err)
	}

	var log strings.Builder
	f.ctl.cfg.Logger = slog.New(slog.NewTextHandler(&log, nil))
	g := f.restarted(t)
	if got := g.marker.marked(); len(got) != 0 {
		t.Errorf("marks after restore %v, want none: no record holds them", got)
	}
	var warns []string
	for line := range strings.Lines(log.String()) {
		if strings.Contains(line, "mark") {
			warns = append(warns, line)
		}
	}
	if len(warns) != 1 || !strings.Contains(warns[0], "level=WARN") || !strings.Contains(warns[0], "marks=3") ||
		!strings.Contains(warns[0], "stateDir="+f.dir) || !strings.Contains(warns[0], "capture add them again") {
		t.Errorf("log lines about marks:\n%s\nwant one WARN line with marks=3 and stateDir=%s, saying what to do", strings.Join(warns, ""), f.dir)
	}
}

// TestMarkRecorded: a successor whose pods map is new (an upgrade changed
// its layout) marks there, before its programs read it, every pod its
// predecessor's record captures, without looking at their network
// namespaces and changing no record; Restore then checks them as ever and
// removes the mark of a namespace that is gone. Of two records of one
// namespace, the newer gives the mark its IPs.
func TestMarkRecorded(t *testing.T) {
	f := newFixture(t, true)
	f.source([]model.Namespace{ambientNS})
	f.attach(t, cniAttachment("web", 10, "10.0.0.2"))
	f.attach(t, cniAttachment("gone", 11, "10.0.0.3"))
	old := cniAttachment("z-old", 12, "10.0.0.4")
	f.attach(t, old)
	readd := cniAttachment("a-new", 12, "10.0.0.5") // filed before z-old, attached after
	readd.NetnsPath = old.NetnsPath
	f.attach(t, readd)
	hand := podcache.Attachment{Namespace: "default", Name: "vm", NetnsCookie: 20, Captured: true, Reason: ReasonByHand}
	if err := f.ctl.Apply(hand); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.ctl.Release(hand.Key()); err != nil {
		t.Fatal(err)
	}
	f.ctl.Close()
	record := f.savedRecord(t)
	delete(f.netns.byPath, "/var/run/netns/gone") // gone's sandbox went since

	g := &fixture{pods: podcache.New(), marker: newFakeMarker(), netns: f.netns, dir: f.dir, now: f.now}
	g.ctl = New(f.ctl.cfg, g.pods, g.marker, f.netns)
	t.Cleanup(g.ctl.Close)
	n, err := g.ctl.MarkRecorded()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := g.marker.marked(), []uint64{10, 11, 12}; n != 3 || !slices.Equal(got, want) {
		t.Errorf("marked %v (%d), want %v: web, gone (not looked at yet) and the re-added pod, not the released one", got, n, want)
	}
	if got, want := g.marker.marks[12].IPv4, netip.MustParseAddr("10.0.0.5"); got != want {
		t.Errorf("the re-added pod's mark has IPv4 %s, want the newer record's %s", got, want)
	}
	if atts := g.pods.Attachments(); len(atts) != 0 {
		t.Errorf("records in memory before Restore: %v", atts)
	}
	if got := g.savedRecord(t); !reflect.DeepEqual(got, record) {
		t.Errorf("record changed: %v, was %v", got, record)
	}

	if err := g.ctl.Restore(); err != nil {
		t.Fatal(err)
	}
	if got, want := g.marker.marked(), []uint64{10, 12}; !slices.Equal(got, want) {
		t.Errorf("marks after Restore %v, want %v (gone's removed)", got, want)
	}
}

// TestRestoreKeepsWhatItCannotLookInto: a restarted controller that cannot
// look into a recorded network namespace for a reason that does not say it
// is gone (EACCES, EMFILE) keeps the record and its mark; an adopted pod
// whose namespace no process holds any more is forgotten.
func TestRestoreKeepsWhatItCannotLookInto(t *testing.T) {
	f := newFixture(t, true)
	f.netns.add("/host/proc/100/ns/net", 100, "10.0.0.2")
	f.netns.add("/host/proc/200/ns/net", 200, "10.0.0.3")
	f.source([]model.Namespace{ambientNS}, pod("web", "10.0.0.2", nil), pod("gone", "10.0.0.3", nil))
	api := f.attach(t, cniAttachment("api", 10, "10.0.0.4"))
	if got := f.marker.marked(); !slices.Equal(got, []uint64{10, 100, 200}) {
		t.Fatalf("marks %v, want two adopted pods and api", got)
	}
	f.ctl.Close()

	f.netns.cookieErr = map[string]error{
		api.NetnsPath:           &fs.PathError{Op: "open", Path: api.NetnsPath, Err: syscall.EMFILE},
		"/host/proc/100/ns/net": &fs.PathError{Op: "open", Path: "/host/proc/100/ns/net", Err: syscall.EACCES},
	}
	delete(f.netns.byPath, "/host/proc/200/ns/net") // gone's pod is gone

	g := f.restarted(t)
	if got, want := g.marker.marked(), []uint64{10, 100}; !slices.Equal(got, want) {
		t.Errorf("marks after restore %v, want %v (api's and web's, which could not be looked into)", got, want)
	}
	if got, want := g.marker.unmarks(), []uint64{200}; !slices.Equal(got, want) {
		t.Errorf("unmarked %v, want %v: gone's alone", got, want)
	}
	var keys []string
	for _, a := range g.savedRecord(t) {
		keys = append(keys, a.Key())
	}
	if want := []string{"adopted-100", api.Key()}; !slices.Equal(keys, want) {
		t.Errorf("record after restore %q, want %q", keys, want)
	}
}

// TestRedecideWaitsForRestore: a successor's source delivers its first
// snapshot (and the agent decides) before the successor reads its
// predecessor's record. Deciding then must not adopt the recorded pods
// and overwrite the record: the ADD's and the by-hand records survive
// Restore, with their marks.
func TestRedecideWaitsForRestore(t *testing.T) {
	f := newFixture(t, true)
	f.source([]model.Namespace{ambientNS}, pod("web", "10.0.0.2", nil))
	web := f.attach(t, cniAttachment("web", 10, "10.0.0.2"))
	hand := podcache.Attachment{Namespace: "default", Name: "vm", NetnsCookie: 20, Captured: true, Reason: ReasonByHand}
	if err := f.ctl.Apply(hand); err != nil {
		t.Fatal(err)
	}
	f.ctl.Close()

	g := f.restart(t)
	g.source([]model.Namespace{ambientNS}, pod("web", "10.0.0.2", nil)) // the first table, before Restore
	if err := g.ctl.Restore(); err != nil {
		t.Fatal(err)
	}
	g.ctl.Redecide()
	var keys []string
	for _, a := range g.savedRecord(t) {
		keys = append(keys, a.Key())
	}
	if want := []string{web.Key(), hand.Key()}; !slices.Equal(keys, want) {
		t.Errorf("record after restore %q, want %q", keys, want)
	}
	if got, want := g.marker.marked(), []uint64{10, 20}; !slices.Equal(got, want) {
		t.Errorf("marks after restore %v, want %v", got, want)
	}
}

// TestRestoreIgnoresAnUnreadableRecord: an unreadable record marks nobody
// and is replaced, but kept aside first (attachments.json.corrupt-TIME):
// pods captured by hand are in no other record.
func TestRestoreIgnoresAnUnreadableRecord(t *testing.T) {
	f := newFixture(t, true)
	if err := os.WriteFile(filepath.Join(f.dir, StateFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.marker.Mark(30, redirect.PodInfo{})
	if err := f.ctl.Restore(); err != nil {
		t.Fatal(err)
	}
	if got := f.marker.marked(); len(got) != 0 {
		t.Errorf("marks %v: with no readable record, no mark is anyone's", got)
	}
	if got := f.savedRecord(t); len(got) != 0 {
		t.Errorf("record %+v, want it rewritten empty", got)
	}
	aside := filepath.Join(f.dir, StateFile+".corrupt-"+f.now.UTC().Format("20060102T150405Z"))
	if b, err := os.ReadFile(aside); err != nil || string(b) != "{not json" {
		t.Errorf("the unreadable record kept aside at %s: %q %v, want it as it was", aside, b, err)
	}
}

// TestUnwritableRecord: a record that cannot be written fails no pod, is
// reported by Unsaved, and is written once the directory is usable again.
func TestUnwritableRecord(t *testing.T) {
	f := newFixture(t, true)
	f.source([]model.Namespace{ambientNS})
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	f.ctl.cfg.StateDir = filepath.Join(blocker, "state") // a directory under a file
	f.attach(t, cniAttachment("web", 10, "10.0.0.2"))
	if got := f.marker.marked(); !slices.Equal(got, []uint64{10}) {
		t.Errorf("marks %v: an unwritable record must not fail the pod", got)
	}
	if f.ctl.Unsaved() == nil {
		t.Fatal("Unsaved is nil with an unwritable state directory")
	}
	f.ctl.mu.Lock()
	f.ctl.cfg.StateDir = f.dir
	f.ctl.mu.Unlock()
	f.ctl.retrySave() // what the retry timer does
	if err := f.ctl.Unsaved(); err != nil {
		t.Errorf("Unsaved = %v after a successful retry", err)
	}
	if got := f.savedRecord(t); len(got) != 1 {
		t.Errorf("record %+v after the retry, want the pod", got)
	}
}

// TestAdoptRunningPods: pods that run on this node and should be captured,
// but that no CNI event announced, are found by their IP among the node's
// network namespaces and marked.
func TestAdoptRunningPods(t *testing.T) {
	f := newFixture(t, true)
	f.netns.add("/host/proc/100/ns/net", 100, "10.0.0.2", "fd00::2")
	f.netns.add("/host/proc/200/ns/net", 200, "10.0.0.3")
	f.netns.add("/host/proc/1/ns/net", hostCookie, "10.0.0.4") // the node's: never adopted
	elsewhere := pod("elsewhere", "10.0.0.3", nil)
	elsewhere.NodeName = "node-b"
	f.source([]model.Namespace{ambientNS},
		pod("web", "10.0.0.2", nil),
		pod("opted-out", "10.0.0.5", map[string]string{model.AnnotationDNSCapture: "false"}),
		elsewhere,
		pod("hostish", "10.0.0.4", nil),
	)
	if got := f.marker.marked(); !slices.Equal(got, []uint64{100}) {
		t.Fatalf("marks %v, want web's namespace (100) alone", got)
	}
	p := f.pods.Get("shop", "web")
	if p.Attachment == nil || p.Attachment.ContainerID != "adopted-100" || p.Attachment.NetnsPath != "/host/proc/100/ns/net" || !p.Attachment.Captured {
		t.Errorf("web's attachment %+v, want adopted from /host/proc/100/ns/net, captured", p.Attachment)
	}

	// The same pods are not looked for again before adoptInterval (the
	// first Redecide looks for hostish alone, a new set)...
	f.ctl.Redecide()
	scans := f.netns.scans
	f.ctl.Redecide()
	if f.netns.scans != scans {
		t.Errorf("scanned again at once for the same pods")
	}
	// ...but a new pod is.
	f.netns.add("/host/proc/300/ns/net", 300, "10.0.0.6")
	f.source([]model.Namespace{ambientNS}, pod("web", "10.0.0.2", nil), pod("late", "10.0.0.6", nil), pod("hostish", "10.0.0.4", nil))
	if got := f.marker.marked(); !slices.Equal(got, []uint64{100, 300}) {
		t.Errorf("marks %v, want web's and the new pod's", got)
	}
	// A pod still missing is looked for again after adoptInterval.
	f.ctl.Redecide()
	scans = f.netns.scans
	f.ctl.Redecide()
	f.now = f.now.Add(adoptInterval)
	f.ctl.Redecide()
	if f.netns.scans != scans+1 {
		t.Errorf("%d scans after adoptInterval, want one", f.netns.scans-scans)
	}
}

// TestMissingPodLoggedOnce: a pod to capture that adoption looks for and
// does not find is logged once, however often it is looked for again, and
// `ztdns pods` gives it a reason (Unrecorded); found, it is adopted.
func TestMissingPodLoggedOnce(t *testing.T) {
	f := newFixture(t, true)
	var log strings.Builder
	f.ctl.log = slog.New(slog.NewTextHandler(&log, nil))
	const missing = "a pod to capture is not found running"
	f.source([]model.Namespace{ambientNS}, pod("ghost", "10.0.0.9", nil))
	for range 3 {
		f.now = f.now.Add(adoptInterval)
		f.ctl.Redecide()
	}
	if f.netns.scans < 4 {
		t.Fatalf("%d scans, want at least 4", f.netns.scans)
	}
	if n := strings.Count(log.String(), missing); n != 1 {
		t.Errorf("logged %d times that ghost is missing, want once:\n%s", n, log.String())
	}
	if !strings.Contains(log.String(), "pod=shop/ghost") {
		t.Errorf("the log does not name the pod:\n%s", log.String())
	}
	if got := f.ctl.Unrecorded(f.pods.Get("shop", "ghost")); got != ReasonNotFoundRunning {
		t.Errorf("ghost's reason %q, want %q", got, ReasonNotFoundRunning)
	}
	f.netns.add("/host/proc/900/ns/net", 900, "10.0.0.9")
	f.now = f.now.Add(adoptInterval)
	f.ctl.Redecide()
	if p := f.pods.Get("shop", "ghost"); p.Attachment == nil || !p.Attachment.Captured {
		t.Errorf("ghost's attachment %+v, want adopted, captured", p.Attachment)
	}
}

// TestAddOfAPodTheWatchHasNotDelivered: with a source that watches the
// node's pods, a CNI ADD of a pod the watch has not delivered (its watch
// failing, a 429 from API priority and fairness, or lagging behind the
// runtime) is not captured, although its namespace is ambient: the pod
// may opt out, by its label istio.io/dataplane-mode=none or its annotation
// ztdns.io/dns-capture: "false", and ztunnel routes none of the VIPs ztdns
// would answer such a pod with. Each says why (pod-unknown), and stays so
// while the watch delivers nothing; once it delivers the pods, the rules
// decide: the opted-out ones stay uncaptured, the other is captured.
func TestAddOfAPodTheWatchHasNotDelivered(t *testing.T) {
	f := newFixture(t, true)
	f.ctl.cfg.PodsWatched = true
	web := pod("web", "10.0.0.2", nil)
	f.source([]model.Namespace{ambientNS}, web) // the last snapshot before the watch fails
	f.attach(t, cniAttachment("web", 10, "10.0.0.2"))

	quiet := pod("quiet", "10.0.0.3", nil)
	quiet.Labels = map[string]string{model.LabelDataplaneMode: ambient.DataplaneModeNone}
	optedOut := pod("opted-out", "10.0.0.4", map[string]string{model.AnnotationDNSCapture: "false"})
	plain := pod("plain", "10.0.0.5", nil)
	unseen := []struct {
		pod      model.Pod
		cookie   uint64
		captured bool   // once the watch delivers the pod
		reason   string // likewise
	}{
		{quiet, 11, false, ambient.ReasonDataplaneNone},
		{optedOut, 12, false, ambient.ReasonAnnotationOff},
		{plain, 13, true, ambient.ReasonAmbient},
	}
	for _, u := range unseen {
		att := f.attach(t, cniAttachment(u.pod.Name, u.cookie, u.pod.IPs[0].String()))
		if att.Captured || att.Reason != ambient.ReasonPodUnknown {
			t.Errorf("ADD of %s, unseen: captured=%v, %q; want false, %q", u.pod.Name, att.Captured, att.Reason, ambient.ReasonPodUnknown)
		}
	}
	f.now = f.now.Add(adoptInterval)
	f.ctl.Redecide() // housekeeping, while the watch still delivers nothing
	for _, u := range unseen {
		if p := f.pods.Get("shop", u.pod.Name); p.Attachment == nil || p.Attachment.Captured || p.Attachment.Reason != ambient.ReasonPodUnknown {
			t.Errorf("%s, still unseen: attachment %+v, want not captured, %q", u.pod.Name, p.Attachment, ambient.ReasonPodUnknown)
		}
	}
	if got := f.marker.marked(); !slices.Equal(got, []uint64{10}) {
		t.Errorf("marks %v while the pods are unseen, want web's alone (10)", got)
	}

	f.source([]model.Namespace{ambientNS}, web, quiet, optedOut, plain) // the watch recovers
	for _, u := range unseen {
		if p := f.pods.Get("shop", u.pod.Name); p.Attachment == nil || p.Attachment.Captured != u.captured || p.Attachment.Reason != u.reason {
			t.Errorf("%s, delivered: attachment %+v, want captured=%v, %q", u.pod.Name, p.Attachment, u.captured, u.reason)
		}
	}
	if got := f.marker.marked(); !slices.Equal(got, []uint64{10, 13}) {
		t.Errorf("marks %v once the pods are delivered, want web's and plain's (10, 13)", got)
	}
}

// TestEnrollmentRequired: where the source watches the node's pods and
// enrollment is required, a pod of an ambient namespace that istio-cni has
// not enrolled (no ambient.istio.io/redirection) is captured at its ADD,
// for the watch may lag behind istio-cni's annotation, and released once
// EnrollmentGrace has passed (not-enrolled); an annotation delivered within
// the grace keeps it captured, one delivered after captures it again, and
// its removal (istio-cni taking the pod out of the mesh) releases it. A pod
// already recorded (restored, adopted) gets no grace, and adoption does not
// take a pod that is not enrolled.
func TestEnrollmentRequired(t *testing.T) {
	f := newFixture(t, true)
	f.ctl.cfg.PodsWatched, f.ctl.cfg.RequireEnrollment = true, true
	enrolled := func(p model.Pod, e model.Enrollment) model.Pod { p.Enrollment = e; return p }
	late, quick, pending := pod("late", "10.0.0.2", nil), pod("quick", "10.0.0.3", nil), pod("pending", "10.0.0.4", nil)
	f.source([]model.Namespace{ambientNS}, late, quick, enrolled(pending, model.EnrollmentPending))
	want := func(name string, captured bool, reason string) {
		t.Helper()
		if p := f.pods.Get("shop", name); p.Attachment == nil || p.Attachment.Captured != captured || p.Attachment.Reason != reason {
			t.Errorf("%s: attachment %+v, want captured=%v, %q", name, p.Attachment, captured, reason)
		}
	}
	for i, name := range []string{"late", "quick", "pending"} {
		if att := f.attach(t, cniAttachment(name, uint64(10+i), fmt.Sprintf("10.0.0.%d", 2+i))); !att.Captured || att.Reason != ambient.ReasonAmbient {
			t.Errorf("ADD of %s: captured=%v, %q; want true, %q (within the grace)", name, att.Captured, att.Reason, ambient.ReasonAmbient)
		}
	}
	f.now = f.now.Add(EnrollmentGrace / 2)
	f.source([]model.Namespace{ambientNS}, late, enrolled(quick, model.EnrollmentEnabled), enrolled(pending, model.EnrollmentPending))
	want("late", true, ambient.ReasonAmbient)

	f.now = f.now.Add(EnrollmentGrace)
	f.ctl.Redecide() // as graceEnded does
	want("late", false, ambient.ReasonNotEnrolled)
	want("quick", true, ambient.ReasonAmbient)
	want("pending", true, ambient.ReasonAmbient)
	if got := f.marker.marked(); !slices.Equal(got, []uint64{11, 12}) {
		t.Errorf("marks %v after the grace, want quick's and pending's (11, 12)", got)
	}

	f.source([]model.Namespace{ambientNS}, enrolled(late, model.EnrollmentEnabled), quick, enrolled(pending, model.EnrollmentPending))
	want("late", true, ambient.ReasonAmbient)
	want("quick", false, ambient.ReasonNotEnrolled) // istio-cni removed its annotation

	// A restarted agent gives its records no grace.
	g := f.restarted(t)
	g.ctl.cfg.PodsWatched, g.ctl.cfg.RequireEnrollment = true, true
	g.source([]model.Namespace{ambientNS}, late, quick, enrolled(pending, model.EnrollmentPending))
	if p := g.pods.Get("shop", "late"); p.Attachment == nil || p.Attachment.Captured || p.Attachment.Reason != ambient.ReasonNotEnrolled {
		t.Errorf("late, restored, not enrolled: attachment %+v, want not captured, %q", p.Attachment, ambient.ReasonNotEnrolled)
	}
	// Nor is a running pod that is not enrolled adopted.
	g.netns.add("/proc/99/ns/net", 20, "10.0.0.9")
	g.source([]model.Namespace{ambientNS}, late, quick, enrolled(pending, model.EnrollmentPending), pod("running", "10.0.0.9", nil))
	if p := g.pods.Get("shop", "running"); p.Attachment != nil || g.ctl.Unrecorded(p) != ambient.ReasonNotEnrolled {
		t.Errorf("running pod not enrolled: attachment %+v, reason %q; want none, %q", p.Attachment, g.ctl.Unrecorded(p), ambient.ReasonNotEnrolled)
	}
}

// TestIstioCNILeavingTheChain: istio-cni's entry leaving the node's CNI
// chain (SetNoIstioCNI(true)) releases only the sandboxes CNI ADDs
// announced since, once their EnrollmentGrace ends: a pod it enrolled
// before stays captured, as ztunnel keeps serving it, and so does a
// running pod adopted then. A restarted agent, istio-cni still missing,
// decides both alike from its record; one that finds istio-cni back
// captures both on their annotation, and istio-cni leaving again releases
// neither. (Before: every enrolled pod of the node was released.)
func TestIstioCNILeavingTheChain(t *testing.T) {
	enrolled := func(name, ip string) model.Pod {
		p := pod(name, ip, nil)
		p.Enrollment = model.EnrollmentEnabled
		return p
	}
	// "after" carries the annotation of another sandbox (a pod copied, a
	// StatefulSet pod made again): istio-cni set up none of its own.
	pods := []model.Pod{enrolled("before", "10.0.0.2"), enrolled("after", "10.0.0.3"), enrolled("running", "10.0.0.4")}
	watched := func(f *fixture) *fixture {
		f.ctl.cfg.PodsWatched, f.ctl.cfg.RequireEnrollment = true, true
		return f
	}
	want := func(f *fixture, name string, captured bool, reason string) {
		t.Helper()
		if p := f.pods.Get("shop", name); p == nil || p.Attachment == nil || p.Attachment.Captured != captured || p.Attachment.Reason != reason {
			var att *podcache.Attachment
			if p != nil {
				att = p.Attachment
			}
			t.Errorf("%s: attachment %+v, want captured=%v, %q", name, att, captured, reason)
		}
	}

	f := watched(newFixture(t, true))
	f.source([]model.Namespace{ambientNS}, pods[:2]...)
	f.attach(t, cniAttachment("before", 10, "10.0.0.2"))
	want(f, "before", true, ambient.ReasonAmbient)

	f.ctl.SetNoIstioCNI(true)
	want(f, "before", true, ambient.ReasonAmbient)
	if att := f.attach(t, cniAttachment("after", 11, "10.0.0.3")); !att.Captured {
		t.Errorf("ADD of after within its grace: %+v, want captured", att)
	}
	// A pod running since before ztdns: adopted on its annotation.
	f.netns.add("/proc/99/ns/net", 12, "10.0.0.4")
	f.now = f.now.Add(EnrollmentGrace + time.Second)
	f.source([]model.Namespace{ambientNS}, pods...)
	want(f, "before", true, ambient.ReasonAmbient)
	want(f, "after", false, ambient.ReasonNotEnrolled)
	want(f, "running", true, ambient.ReasonAmbient)
	if got := f.marker.marked(); !slices.Equal(got, []uint64{10, 12}) {
		t.Errorf("marks %v, want before's and running's (10, 12)", got)
	}
	f.ctl.Close()

	// Restarted while istio-cni is still missing: the first look at the
	// chain comes before the record is read, as in the agent.
	g := watched(f.restart(t))
	g.ctl.SetNoIstioCNI(true)
	if err := g.ctl.Restore(); err != nil {
		t.Fatal(err)
	}
	g.source([]model.Namespace{ambientNS}, pods...)
	want(g, "before", true, ambient.ReasonAmbient)
	want(g, "after", false, ambient.ReasonNotEnrolled)
	want(g, "running", true, ambient.ReasonAmbient)
	g.ctl.Close()

	// Restarted once istio-cni is back: it enrolled the running pods, and
	// its leaving again is a new moment.
	h := watched(g.restart(t))
	h.ctl.SetNoIstioCNI(false)
	if err := h.ctl.Restore(); err != nil {
		t.Fatal(err)
	}
	h.source([]model.Namespace{ambientNS}, pods...)
	want(h, "after", true, ambient.ReasonAmbient)
	h.ctl.SetNoIstioCNI(true)
	want(h, "before", true, ambient.ReasonAmbient)
	want(h, "after", true, ambient.ReasonAmbient)
	want(h, "running", true, ambient.ReasonAmbient)
	if got := h.marker.marked(); !slices.Equal(got, []uint64{10, 11, 12}) {
		t.Errorf("marks %v, want all three (10, 11, 12)", got)
	}
}

// TestAddInANamespaceNotYetKnown: a CNI ADD for a pod whose namespace the
// source has not seen yet (the ADD usually comes first) is not captured,
// as in a namespace without the label, but says why (namespace-unknown);
// once the namespace arrives labelled ambient, the pod is captured.
func TestAddInANamespaceNotYetKnown(t *testing.T) {
	f := newFixture(t, true)
	f.source([]model.Namespace{ambientNS})
	att := podcache.Attachment{ContainerID: "ctr-new", Namespace: "fresh", Name: "web", UID: "uid-web",
		NetnsPath: "/var/run/netns/fresh-web", NetnsCookie: 30, IPs: []netip.Addr{netip.MustParseAddr("10.0.3.2")}}
	att = f.attach(t, att)
	if att.Captured || att.Reason != ambient.ReasonNamespaceUnknown {
		t.Errorf("ADD decided captured=%v, %q; want false, %q", att.Captured, att.Reason, ambient.ReasonNamespaceUnknown)
	}
	if got := f.marker.marked(); len(got) != 0 {
		t.Errorf("marks %v, want none", got)
	}
	fresh := model.Namespace{Name: "fresh", Labels: ambientNS.Labels}
	web := model.Pod{Namespace: "fresh", Name: "web", UID: "uid-web", NodeName: node, IPs: att.IPs}
	f.source([]model.Namespace{ambientNS, fresh}, web)
	if p := f.pods.Get("fresh", "web"); p.Attachment == nil || !p.Attachment.Captured || p.Attachment.Reason != ambient.ReasonAmbient {
		t.Errorf("fresh/web's attachment %+v, want captured, %q", p.Attachment, ambient.ReasonAmbient)
	}
	if got := f.marker.marked(); !slices.Equal(got, []uint64{30}) {
		t.Errorf("marks %v, want fresh/web's (30)", got)
	}
}

func TestNoAdoptionWithoutANodeName(t *testing.T) {
	f := newFixture(t, true)
	f.ctl.cfg.NodeName = ""
	f.netns.add("/proc/100/ns/net", 100, "10.0.0.2")
	f.source([]model.Namespace{ambientNS}, pod("web", "10.0.0.2", nil))
	if got := f.marker.marked(); len(got) != 0 || f.netns.scans != 0 {
		t.Errorf("standalone: marks %v after %d scans, want none", got, f.netns.scans)
	}
}

// TestDelReleasesAnAdoptedPod: the runtime's DEL of a pod the controller
// adopted names a container ID the controller never heard of; the pod's
// namespace and name, and its network namespace, find the adopted record.
// A repeated DEL that names no namespace leaves a live adopted pod alone.
func TestDelReleasesAnAdoptedPod(t *testing.T) {
	f := newFixture(t, true)
	f.netns.add("/host/proc/100/ns/net", 100, "10.0.0.2")
	f.netns.add("/host/proc/200/ns/net", 200, "10.0.0.3")
	f.source([]model.Namespace{ambientNS}, pod("web", "10.0.0.2", nil), pod("api", "10.0.0.3", nil))
	if got := f.marker.marked(); !slices.Equal(got, []uint64{100, 200}) {
		t.Fatalf("marks %v, want both running pods adopted", got)
	}

	if released, err := f.ctl.ForgetAdopted("shop", "api", ""); len(released) != 0 || err != nil {
		t.Errorf("a DEL without a netns for api, whose namespace is alive: released %+v, %v; want nothing", released, err)
	}
	// The runtime names web's namespace by its own path.
	f.netns.add("/var/run/netns/cni-web", 100, "10.0.0.2")
	released, err := f.ctl.ForgetAdopted("shop", "web", "/var/run/netns/cni-web")
	if err != nil || len(released) != 1 || released[0].Key() != "adopted-100" {
		t.Fatalf("web's DEL released %+v, %v; want its adopted record", released, err)
	}
	if got := f.marker.marked(); !slices.Equal(got, []uint64{200}) {
		t.Errorf("marks %v after web's DEL, want api's alone", got)
	}
	if p := f.pods.Get("shop", "web"); p.Attachment != nil {
		t.Errorf("web still has an attachment after its DEL: %+v", p.Attachment)
	}
	var keys []string
	for _, a := range f.savedRecord(t) {
		keys = append(keys, a.Key())
	}
	if want := []string{"adopted-200"}; !slices.Equal(keys, want) {
		t.Errorf("record %q after web's DEL, want %q", keys, want)
	}

	// api's pod is gone, and the DEL comes after the runtime removed its
	// namespace.
	delete(f.netns.byPath, "/host/proc/200/ns/net")
	if released, err := f.ctl.ForgetAdopted("shop", "api", ""); len(released) != 1 || err != nil {
		t.Errorf("api's DEL after its namespace is gone: released %+v, %v; want its record", released, err)
	}
	if got := f.marker.marked(); len(got) != 0 {
		t.Errorf("marks %v, want none", got)
	}
}

// hookHandler calls hook with each log record's message, then drops it.
type hookHandler struct {
	hook func(msg string, r slog.Record)
}

func (h hookHandler) Enabled(context.Context, slog.Level) bool      { return true }
func (h hookHandler) Handle(_ context.Context, r slog.Record) error { h.hook(r.Message, r); return nil }
func (h hookHandler) WithAttrs([]slog.Attr) slog.Handler            { return h }
func (h hookHandler) WithGroup(string) slog.Handler                 { return h }

// TestRedecideDoesNotBringBackAForgottenPod: a DEL that lands while
// Redecide works through a changed decision must not see its pod marked and
// recorded again. The DEL runs between the first pod's new decision and the
// second's (a Marker's Mark runs with the controller's lock held, so no DEL
// can run inside it; the log line after the first decision comes without
// it).
func TestRedecideDoesNotBringBackAForgottenPod(t *testing.T) {
	f := newFixture(t, true)
	plain := model.Namespace{Name: "shop"}
	f.source([]model.Namespace{plain}, pod("a", "10.0.0.2", nil), pod("b", "10.0.0.3", nil))
	a := f.attach(t, cniAttachment("a", 10, "10.0.0.2"))
	b := f.attach(t, cniAttachment("b", 11, "10.0.0.3"))
	if got := f.marker.marked(); len(got) != 0 {
		t.Fatalf("marks %v outside ambient", got)
	}

	var forgotten string
	f.ctl.log = slog.New(hookHandler{func(msg string, r slog.Record) {
		if msg != "capture decision changed" || forgotten != "" {
			return
		}
		r.Attrs(func(at slog.Attr) bool {
			if at.Key == "pod" {
				forgotten = b.Key() // the DEL of the pod not decided yet
				if at.Value.String() == "shop/b" {
					forgotten = a.Key()
				}
			}
			return true
		})
		att, ok, err := f.ctl.Forget(forgotten)
		if !ok || err != nil {
			t.Errorf("Forget(%s) = %v, %v", forgotten, ok, err)
		}
		f.netns.mu.Lock()
		delete(f.netns.byPath, att.NetnsPath) // and the sandbox goes
		f.netns.mu.Unlock()
	}})
	f.source([]model.Namespace{ambientNS}, pod("a", "10.0.0.2", nil), pod("b", "10.0.0.3", nil))
	if forgotten == "" {
		t.Fatal("no decision changed")
	}
	left := a
	if forgotten == a.Key() {
		left = b
	}
	if got := f.marker.marked(); !slices.Equal(got, []uint64{left.NetnsCookie}) {
		t.Errorf("marks %v, want %s's alone (%s's DEL came during the redecision)", got, left.Key(), forgotten)
	}
	if _, ok := f.pods.Attachments()[forgotten]; ok {
		t.Errorf("%s is recorded again after its DEL", forgotten)
	}
	if got := f.savedRecord(t); len(got) != 1 || got[0].Key() != left.Key() {
		t.Errorf("record %+v, want %s's alone", got, left.Key())
	}
}

// TestAdoptionDoesNotRaceAnAdd: a CNI ADD of a pod that lands while the
// scan for running pods looks for it leaves one record of the sandbox, the
// ADD's, and its DEL leaves none.
func TestAdoptionDoesNotRaceAnAdd(t *testing.T) {
	f := newFixture(t, true)
	f.netns.add("/host/proc/100/ns/net", 100, "10.0.0.2")
	web := cniAttachment("web", 100, "10.0.0.2")
	f.netns.onScan = func() {
		f.netns.onScan = nil
		f.attach(t, web)
	}
	f.source([]model.Namespace{ambientNS}, pod("web", "10.0.0.2", nil))
	if got := slices.Sorted(maps.Keys(f.pods.Attachments())); !slices.Equal(got, []string{web.Key()}) {
		t.Errorf("records %q, want the ADD's alone", got)
	}
	if _, ok, err := f.ctl.Forget(web.Key()); !ok || err != nil {
		t.Fatalf("DEL: %v, %v", ok, err)
	}
	if got := f.pods.Attachments(); len(got) != 0 {
		t.Errorf("records %+v after the DEL, want none", got)
	}
}

// TestDelOfAnotherSandboxKeepsAMovedAdoptedPod: a DEL that names no
// namespace (a repeated one for an older sandbox) finds the adopted
// record's process gone, but another process still holds its namespace:
// the record follows that process, and the pod stays captured.
func TestDelOfAnotherSandboxKeepsAMovedAdoptedPod(t *testing.T) {
	f := newFixture(t, true)
	f.netns.add("/host/proc/100/ns/net", 100, "10.0.0.2")
	f.source([]model.Namespace{ambientNS}, pod("web", "10.0.0.2", nil))
	delete(f.netns.byPath, "/host/proc/100/ns/net")
	f.netns.add("/host/proc/300/ns/net", 100, "10.0.0.2")
	if released, err := f.ctl.ForgetAdopted("shop", "web", ""); len(released) != 0 || err != nil {
		t.Errorf("released %+v, %v; want nothing: the namespace is alive", released, err)
	}
	if got := f.marker.marked(); !slices.Equal(got, []uint64{100}) {
		t.Errorf("marks %v, want web's", got)
	}
	if p := f.pods.Get("shop", "web"); p.Attachment == nil || p.Attachment.NetnsPath != "/host/proc/300/ns/net" {
		t.Errorf("web's attachment %+v, want it through /host/proc/300/ns/net", p.Attachment)
	}
}

// TestAddAfterAdoption: an ADD of a sandbox adopted before it (a replayed
// pending ADD) replaces the adopted record: one record of the namespace
// is left, and the ADD's DEL releases it.
func TestAddAfterAdoption(t *testing.T) {
	f := newFixture(t, true)
	f.netns.add("/host/proc/100/ns/net", 100, "10.0.0.2")
	f.source([]model.Namespace{ambientNS}, pod("web", "10.0.0.2", nil))
	web := f.attach(t, cniAttachment("web", 100, "10.0.0.2"))
	if got := slices.Sorted(maps.Keys(f.pods.Attachments())); !slices.Equal(got, []string{web.Key()}) {
		t.Errorf("records %q, want the ADD's alone", got)
	}
	if _, ok, err := f.ctl.Forget(web.Key()); !ok || err != nil {
		t.Fatalf("DEL: %v, %v", ok, err)
	}
	if got := f.marker.marked(); len(got) != 0 {
		t.Errorf("marks %v after the DEL, want none", got)
	}
}

// TestForgetKeepsAMarkAnotherRecordHolds: of two records of one network
// namespace, forgetting one leaves the mark the other captures.
func TestForgetKeepsAMarkAnotherRecordHolds(t *testing.T) {
	f := newFixture(t, true)
	f.source([]model.Namespace{ambientNS})
	web := f.attach(t, cniAttachment("web", 10, "10.0.0.2"))
	hand := podcache.Attachment{Namespace: "default", Name: "vm", NetnsCookie: 10, Captured: true, Reason: ReasonByHand}
	if err := f.ctl.Apply(hand); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := f.ctl.Forget(hand.Key()); !ok || err != nil {
		t.Fatalf("Forget(%s): %v, %v", hand.Key(), ok, err)
	}
	if got := f.marker.marked(); !slices.Equal(got, []uint64{10}) {
		t.Errorf("marks %v, want web's: its record still captures it", got)
	}
	if _, ok, err := f.ctl.Forget(web.Key()); !ok || err != nil {
		t.Fatalf("Forget(%s): %v, %v", web.Key(), ok, err)
	}
	if got := f.marker.marked(); len(got) != 0 {
		t.Errorf("marks %v, want none", got)
	}
}

// TestAdoptionSkipsAnIPSeveralNamespacesHold: of two namespaces the node's
// user namespace owns that hold a pod's IP, neither is adopted, and a
// warning names the IP.
func TestAdoptionSkipsAnIPSeveralNamespacesHold(t *testing.T) {
	f := newFixture(t, true)
	f.netns.add("/host/proc/100/ns/net", 100, "10.0.0.2")
	f.netns.add("/host/proc/200/ns/net", 200, "10.0.0.2")
	var warned []string
	f.ctl.log = slog.New(hookHandler{func(msg string, r slog.Record) {
		r.Attrs(func(at slog.Attr) bool {
			if r.Level == slog.LevelWarn && at.Key == "ip" {
				warned = append(warned, at.Value.String())
			}
			return true
		})
	}})
	f.source([]model.Namespace{ambientNS}, pod("web", "10.0.0.2", nil))
	if got := f.marker.marked(); len(got) != 0 {
		t.Errorf("marks %v, want none: two namespaces hold web's IP", got)
	}
	if p := f.pods.Get("shop", "web"); p.Attachment != nil {
		t.Errorf("web adopted as %+v", p.Attachment)
	}
	if !slices.Contains(warned, "10.0.0.2") {
		t.Errorf("warnings named IPs %v, want 10.0.0.2", warned)
	}
}

// TestAdoptionReadsOtherUserNamespacesOnlyWhenNeeded: any user may make
// network namespaces (unshare -Urn), as many as it may and with what
// addresses it likes, so their addresses are read only for an IP none of
// the node's own namespaces holds (a pod with hostUsers: false).
func TestAdoptionReadsOtherUserNamespacesOnlyWhenNeeded(t *testing.T) {
	f := newFixture(t, true)
	f.netns.add("/host/proc/100/ns/net", 100, "10.0.0.2")
	f.netns.add("/host/proc/300/ns/net", 300, "10.0.0.2", "10.0.0.3")
	f.netns.add("/host/proc/400/ns/net", 400, "10.0.0.2")
	f.netns.mu.Lock()
	for _, p := range []string{"/host/proc/300/ns/net", "/host/proc/400/ns/net"} {
		n := f.netns.byPath[p]
		n.ForeignUserns = true
		f.netns.byPath[p] = n
	}
	f.netns.mu.Unlock()

	f.source([]model.Namespace{ambientNS}, pod("web", "10.0.0.2", nil))
	if p := f.pods.Get("shop", "web"); p.Attachment == nil || p.Attachment.NetnsCookie != 100 {
		t.Errorf("web's attachment %+v, want adopted through the node's user namespace's (100)", p.Attachment)
	}
	if len(f.netns.addrReads) != 0 {
		t.Errorf("read the addresses of %v, want none: the node's own namespaces held every IP", f.netns.addrReads)
	}

	f.source([]model.Namespace{ambientNS}, pod("web", "10.0.0.2", nil), pod("api", "10.0.0.3", nil))
	if p := f.pods.Get("shop", "api"); p.Attachment == nil || p.Attachment.NetnsCookie != 300 {
		t.Errorf("api's attachment %+v, want adopted through the one namespace holding its IP (300)", p.Attachment)
	}
	if want := []string{"/host/proc/300/ns/net", "/host/proc/400/ns/net"}; !slices.Equal(f.netns.addrReads, want) {
		t.Errorf("read the addresses of %v, want %v", f.netns.addrReads, want)
	}
}

// TestAdoptionIgnoresARecordedNamespaceHoldingAnotherPodsIP: a pod the
// runtime recorded that adds another pod's IP to its namespace does not
// keep that pod from being adopted.
func TestAdoptionIgnoresARecordedNamespaceHoldingAnotherPodsIP(t *testing.T) {
	f := newFixture(t, true)
	f.source([]model.Namespace{ambientNS}, pod("web", "10.0.0.2", nil))
	f.attach(t, cniAttachment("web", 10, "10.0.0.2"))
	f.netns.add("/var/run/netns/web", 10, "10.0.0.2", "10.0.0.3") // api's IP too
	f.netns.add("/host/proc/200/ns/net", 200, "10.0.0.3")
	f.source([]model.Namespace{ambientNS}, pod("web", "10.0.0.2", nil), pod("api", "10.0.0.3", nil))
	if p := f.pods.Get("shop", "api"); p.Attachment == nil || p.Attachment.NetnsCookie != 200 {
		t.Errorf("api's attachment %+v, want adopted through its own namespace (200)", p.Attachment)
	}
	if p := f.pods.Get("shop", "web"); p.Attachment == nil || p.Attachment.NetnsCookie != 10 {
		t.Errorf("web's attachment %+v, want its CNI record's (10)", p.Attachment)
	}
}

// TestReleaseKeepsTheRecord: a namespace marked by hand and released
// (`ztdns capture del`) is unmarked, and its record stays, not captured,
// through decisions and a restart, so the resolver still knows whose its
// addresses are (a socket connected while captured still reaches it); the
// record goes once the namespace is gone. Released again, or released
// when its namespace is gone already, it is forgotten at once.
func TestReleaseKeepsTheRecord(t *testing.T) {
	f := newFixture(t, true)
	f.source([]model.Namespace{ambientNS})
	f.netns.add("/run/netns/vm", 20, "10.0.0.9")
	hand := podcache.Attachment{Namespace: "default", Name: "vm", NetnsPath: "/run/netns/vm", NetnsCookie: 20,
		IPs: []netip.Addr{netip.MustParseAddr("10.0.0.9")}, Captured: true, Reason: ReasonByHand}
	if err := f.ctl.Apply(hand); err != nil {
		t.Fatal(err)
	}

	if _, ok, err := f.ctl.Release(hand.Key()); !ok || err != nil {
		t.Fatalf("Release = %v, %v; want the record released", ok, err)
	}
	released := func(t *testing.T, g *fixture) {
		t.Helper()
		if got := g.marker.marked(); len(got) != 0 {
			t.Errorf("marks %v, want none", got)
		}
		p := g.pods.Lookup(netip.MustParseAddr("10.0.0.9"))
		if p == nil || p.Attachment == nil || p.Attachment.Captured || p.Attachment.Reason != ReasonReleased || !p.Uncaptured() {
			t.Errorf("the released namespace's address is %+v, want its record, not captured, reason %s", p, ReasonReleased)
		}
	}
	released(t, f)
	f.ctl.Redecide()
	released(t, f)
	g := f.restarted(t)
	g.ctl.SetNamespaces([]model.Namespace{ambientNS})
	g.ctl.Redecide()
	released(t, g)

	delete(g.netns.byPath, "/run/netns/vm")
	g.now = g.now.Add(adoptInterval)
	g.ctl.Redecide()
	if _, ok := g.pods.Attachment(hand.Key()); ok {
		t.Errorf("the released record outlived its network namespace")
	}

	// Its namespace gone before the release: forgotten at once.
	if err := g.ctl.Apply(hand); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := g.ctl.Release(hand.Key()); !ok || err != nil {
		t.Fatalf("Release = %v, %v; want the record released", ok, err)
	}
	if _, ok := g.pods.Attachment(hand.Key()); ok || len(g.marker.marked()) != 0 {
		t.Errorf("a release of a namespace that is gone kept its record or mark")
	}
}

// TestRestoreKeepsTheAttachOrder: two records claim one IP (the old pod's
// DEL is late) when the agent restarts: the restarted agent reads which is
// newer from the record, and the new pod keeps its IP. (Before: the record
// whose name sorts last, the old pod's, took it after a restart.)
func TestRestoreKeepsTheAttachOrder(t *testing.T) {
	f := newFixture(t, true)
	f.source([]model.Namespace{ambientNS})
	f.attach(t, cniAttachment("zz-job", 10, "10.0.0.2"))
	f.attach(t, cniAttachment("web", 11, "10.0.0.2"))
	ip := netip.MustParseAddr("10.0.0.2")
	if p := f.pods.Lookup(ip); p == nil || p.Name != "web" {
		t.Fatalf("%s is %v's, want shop/web's: the newer record", ip, p)
	}
	f.ctl.Close()

	g := f.restarted(t)
	if p := g.pods.Lookup(ip); p == nil || p.Name != "web" {
		t.Errorf("after a restart %s is %v's, want shop/web's", ip, p)
	}
	g.attach(t, cniAttachment("api", 12, "10.0.0.2"))
	if p := g.pods.Lookup(ip); p == nil || p.Name != "api" {
		t.Errorf("%s is %v's, want shop/api's: added after the restart", ip, p)
	}
}

// TestRestoreForgetsRecordsOfAnotherBoot: a record kept on disk across a
// reboot (a --state-dir that is no tmpfs) names netns cookies of the boot
// before, which count from 1 again: a pod adopted early then has the cookie
// of a pod started as early in this boot. Restore forgets every record of
// another boot, marking nothing for it, and keeps one an older agent wrote
// without a boot ID. (Before: the adopted record followed this boot's
// process holding its cookie, and marked that pod with the dead one's IPs.)
func TestRestoreForgetsRecordsOfAnotherBoot(t *testing.T) {
	f := newFixture(t, true)
	f.netns.add("/host/proc/100/ns/net", 12, "10.0.0.2")
	f.source([]model.Namespace{ambientNS}, pod("web-old", "10.0.0.2", nil))
	f.attach(t, cniAttachment("api-old", 13, "10.0.0.3"))
	if got := f.marker.marked(); !slices.Equal(got, []uint64{12, 13}) {
		t.Fatalf("marks %v, want web-old's (adopted) and api-old's", got)
	}
	f.ctl.Close()

	// The node reboots: the pods map starts empty, process 100 and the
	// sandbox are gone, and this boot's process 999 (another pod) holds a
	// namespace with web-old's cookie, one at api-old's path api-old's.
	f.netns = &fakeNamespaces{byPath: map[string]Netns{}}
	f.netns.add("/host/proc/999/ns/net", 12, "10.0.0.9")
	f.netns.add("/var/run/netns/api-old", 13, "10.0.0.8")
	f.marker = newFakeMarker()
	g := &fixture{pods: podcache.New(), marker: f.marker, netns: f.netns, dir: f.dir, now: f.now}
	cfg := f.ctl.cfg
	cfg.BootID = "another-boot"
	g.ctl = New(cfg, g.pods, g.marker, g.netns)
	t.Cleanup(g.ctl.Close)
	if n, err := g.ctl.MarkRecorded(); n != 0 || err != nil {
		t.Errorf("MarkRecorded marked %d (%v), want none: the record is of another boot", n, err)
	}
	if err := g.ctl.Restore(); err != nil {
		t.Fatal(err)
	}
	if got := g.marker.marked(); len(got) != 0 {
		t.Errorf("marks after a reboot %v, want none", got)
	}
	if got := g.savedRecord(t); len(got) != 0 {
		t.Errorf("record after a reboot %+v, want it empty", got)
	}
	g.ctl.Close()

	// A record without a boot ID (an older agent's) is this boot's.
	legacy := `[{"containerID": "ctr-api-old", "namespace": "shop", "name": "api-old", "netnsPath": "/var/run/netns/api-old", "netnsCookie": 13, "ips": ["10.0.0.8"], "captured": true}]`
	if err := os.WriteFile(filepath.Join(f.dir, StateFile), []byte(legacy), 0o600); err != nil {
		t.Fatal(err)
	}
	h := g.restarted(t)
	if got := h.marker.marked(); !slices.Equal(got, []uint64{13}) {
		t.Errorf("marks from an older agent's record %v, want [13]", got)
	}
}

// TestRestoreMarksFromTheNewestRecord: of two captured records for one
// network namespace (a re-ADD of the sandbox before the old record's DEL),
// a lost mark is put back with the newest record's IPs. (Before: from
// whichever a map's iteration gave last, half the time the older's.)
func TestRestoreMarksFromTheNewestRecord(t *testing.T) {
	f := newFixture(t, true)
	f.source([]model.Namespace{ambientNS})
	older := cniAttachment("web", 10, "10.0.0.2")
	newer := older
	newer.ContainerID, newer.IPs = "ctr-web-again", []netip.Addr{netip.MustParseAddr("10.0.0.3")}
	f.attach(t, older)
	f.attach(t, newer)
	f.netns.add(older.NetnsPath, older.NetnsCookie, "10.0.0.2", "10.0.0.3")
	f.ctl.Close()
	// Map iteration order is random: restore often enough that the older
	// record would come last at least once.
	for range 20 {
		f.marker.Unmark(10)
		g := f.restarted(t)
		g.ctl.Close()
		f.marker.mu.Lock()
		got, ok := f.marker.marks[10]
		f.marker.mu.Unlock()
		if want := netip.MustParseAddr("10.0.0.3"); !ok || got.IPv4 != want {
			t.Fatalf("mark after restore %+v (%v), want the newest record's %s", got, ok, want)
		}
	}
}

// TestAdoptionDoesNotLookIntoRecordedNamespacesAgain: on a dense node most
// network namespaces are recorded pods'; a scan for running pods looks
// into each once, and not again while it is recorded (a scan knows it by
// its NsID). One no process holds any more is not listed.
func TestAdoptionDoesNotLookIntoRecordedNamespacesAgain(t *testing.T) {
	f := newFixture(t, true)
	f.netns.add("/host/proc/1/ns/net", hostCookie, "192.0.2.1")
	var pods []model.Pod
	for i := range 20 {
		name := fmt.Sprintf("p%d", i)
		pods = append(pods, pod(name, fmt.Sprintf("10.0.1.%d", i+1), nil))
		f.attach(t, cniAttachment(name, uint64(100+i), fmt.Sprintf("10.0.1.%d", i+1)))
	}
	ghost := pod("ghost", "10.0.2.1", nil) // never found: looked for every adoptInterval
	f.source([]model.Namespace{ambientNS}, append(pods, ghost)...)
	for range 3 {
		f.now = f.now.Add(adoptInterval)
		f.ctl.Redecide()
	}
	if f.netns.scans != 4 {
		t.Fatalf("%d scans, want 4", f.netns.scans)
	}
	for path, n := range f.netns.inspected {
		if n != 1 {
			t.Errorf("%s looked into %d times in 4 scans, want once", path, n)
		}
	}
	if n := len(f.netns.inspected); n != 21 {
		t.Errorf("%d namespaces looked into, want the node's and the 20 pods'", n)
	}
}

// TestDeletedPodIsNotLookedFor: the runtime tears a pod's sandbox down,
// and its CNI DEL comes, before the source hears the pod ended (the kubelet
// writes the final status after it stops the sandbox, and deletes the pod
// after that): the pod is listed a while longer, without a record. It is
// not looked for in the node's processes, nor warned about as not found
// running, while the source lists it with that UID; a pod made again under
// its name is.
func TestDeletedPodIsNotLookedFor(t *testing.T) {
	f := newFixture(t, true)
	var log strings.Builder
	f.ctl.log = slog.New(slog.NewTextHandler(&log, nil))
	var pods []model.Pod
	f.source([]model.Namespace{ambientNS})
	for i := range 20 {
		pods = append(pods, pod(fmt.Sprintf("p%d", i), fmt.Sprintf("10.0.1.%d", i+1), nil))
		f.attach(t, cniAttachment(pods[i].Name, uint64(100+i), pods[i].IPs[0].String())) // ADDs come first
	}
	f.source([]model.Namespace{ambientNS}, pods...)
	scans := f.netns.scans
	for i, p := range pods {
		att, ok, err := f.ctl.Forget("ctr-" + p.Name) // its DEL
		if !ok || err != nil {
			t.Fatalf("Forget(ctr-%s) = %v, %v", p.Name, ok, err)
		}
		delete(f.netns.byPath, att.NetnsPath)
		f.source([]model.Namespace{ambientNS}, pods[i:]...) // the source lags by one
	}
	if n := f.netns.scans - scans; n != 0 {
		t.Errorf("%d scans for 20 pods deleted, want none", n)
	}
	if strings.Contains(log.String(), "not found running") {
		t.Errorf("warned about deleted pods:\n%s", log.String())
	}
	if got := f.marker.marked(); len(got) != 0 {
		t.Errorf("marks %v, want none", got)
	}

	// p0 made again (a StatefulSet's), not running yet: looked for.
	again := pods[0]
	again.UID = "uid-p0-again"
	f.source([]model.Namespace{ambientNS}, again, pods[19])
	if n := f.netns.scans - scans; n != 1 {
		t.Errorf("%d scans for a pod made again under a deleted one's name, want one", n)
	}
}
