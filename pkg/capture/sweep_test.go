package capture

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/redirect"
)

// sweepingMarker is a fakeMarker that also sweeps nameservers, as
// *redirect.Redirector does; it records the marks at each sweep.
type sweepingMarker struct {
	*fakeMarker
	sweeps [][]uint64
}

func (m *sweepingMarker) SweepNameservers() (int, error) {
	m.sweeps = append(m.sweeps, m.marked())
	return 0, nil
}

// TestRestoreSweepsNameservers: the reconcile at start forgets the learned
// nameservers of unmarked network namespaces, once the marks are right
// (a stale mark removed, a lost one put back): sweeping earlier would forget
// the slots of a pod whose mark is about to come back.
func TestRestoreSweepsNameservers(t *testing.T) {
	f := newFixture(t, true)
	f.source([]model.Namespace{ambientNS})
	f.netns.add("/var/run/netns/kept", 10, "10.0.0.2")
	f.netns.add("/var/run/netns/lost-mark", 11, "10.0.0.3")
	f.attach(t, cniAttachment("kept", 10, "10.0.0.2"))
	f.attach(t, cniAttachment("lost-mark", 11, "10.0.0.3"))
	f.ctl.Close()
	f.marker.Unmark(11)
	f.marker.Mark(30, redirect.PodInfo{}) // a mark nobody records

	m := &sweepingMarker{fakeMarker: f.marker}
	ctl := New(Config{StateDir: f.dir, NodeName: node, DNSCaptureDefault: true, HostCookies: []uint64{hostCookie},
		Logger: slog.New(slog.DiscardHandler)}, podcache.New(), m, f.netns)
	t.Cleanup(ctl.Close)
	if err := ctl.Restore(); err != nil {
		t.Fatal(err)
	}
	if want := [][]uint64{{10, 11}}; !slices.EqualFunc(m.sweeps, want, slices.Equal) {
		t.Errorf("swept with marks %v, want %v: once, after the marks were made right", m.sweeps, want)
	}
}

// TestFencedControllerChangesNothing: once its agent handed over
// (Fence), a controller that lingers changes neither the marks nor the
// record the successor keeps now, whatever its source and housekeeping
// feed it.
func TestFencedControllerChangesNothing(t *testing.T) {
	f := newFixture(t, true)
	m := &sweepingMarker{fakeMarker: f.marker}
	f.ctl.marker = m
	f.netns.add("/host/proc/100/ns/net", 100, "10.0.0.2")
	f.source([]model.Namespace{ambientNS}, pod("web", "10.0.0.2", nil))
	api := f.attach(t, cniAttachment("api", 10, "10.0.0.3"))
	before, err := os.ReadFile(filepath.Join(f.dir, StateFile))
	if err != nil {
		t.Fatal(err)
	}
	m.sweeps = nil

	f.ctl.Fence()
	// The successor marks a pod the old agent never heard of.
	f.marker.Mark(30, redirect.PodInfo{})
	// What the old agent's source, housekeeping and CNI events would do:
	// a new pod to adopt, web gone, api's sandbox gone.
	f.netns.add("/host/proc/300/ns/net", 300, "10.0.0.4")
	delete(f.netns.byPath, "/host/proc/100/ns/net")
	delete(f.netns.byPath, api.NetnsPath)
	f.now = f.now.Add(adoptInterval)
	f.source([]model.Namespace{ambientNS}, pod("late", "10.0.0.4", nil))
	f.ctl.SweepNameservers()
	if err := f.ctl.Apply(cniAttachment("new", 40, "10.0.0.5")); !errors.Is(err, ErrFenced) {
		t.Errorf("Apply = %v, want ErrFenced", err)
	}
	if _, ok, err := f.ctl.Forget(api.Key()); ok || !errors.Is(err, ErrFenced) {
		t.Errorf("Forget = %v, %v; want nothing forgotten, ErrFenced", ok, err)
	}
	if released, err := f.ctl.ForgetAdopted("shop", "web", ""); len(released) != 0 || !errors.Is(err, ErrFenced) {
		t.Errorf("ForgetAdopted = %+v, %v; want nothing released, ErrFenced", released, err)
	}
	if removed, err := f.ctl.UnmarkStale(30); removed || !errors.Is(err, ErrFenced) {
		t.Errorf("UnmarkStale = %v, %v; want nothing removed, ErrFenced", removed, err)
	}
	if err := f.ctl.Restore(); !errors.Is(err, ErrFenced) {
		t.Errorf("Restore = %v, want ErrFenced", err)
	}

	if got, want := f.marker.marked(), []uint64{10, 30, 100}; !slices.Equal(got, want) {
		t.Errorf("marks %v, want %v as they were, with the successor's", got, want)
	}
	if len(m.sweeps) != 0 {
		t.Errorf("swept %d times after the fence", len(m.sweeps))
	}
	after, err := os.ReadFile(filepath.Join(f.dir, StateFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(after, before) {
		t.Errorf("the record changed after the fence:\n%s\nwas:\n%s", after, before)
	}
}

func TestUnmarkStale(t *testing.T) {
	f := newFixture(t, true)
	f.source([]model.Namespace{ambientNS})
	f.attach(t, cniAttachment("web", 10, "10.0.0.2"))
	f.marker.Mark(30, redirect.PodInfo{})
	if removed, err := f.ctl.UnmarkStale(10); removed || err != nil {
		t.Errorf("UnmarkStale of a recorded pod = %v, %v; want left alone", removed, err)
	}
	if removed, err := f.ctl.UnmarkStale(30); !removed || err != nil {
		t.Errorf("UnmarkStale of a stale mark = %v, %v; want removed", removed, err)
	}
	if removed, err := f.ctl.UnmarkStale(31); removed || err != nil {
		t.Errorf("UnmarkStale of an unknown cookie = %v, %v; want nothing", removed, err)
	}
	if got := f.marker.marked(); !slices.Equal(got, []uint64{10}) {
		t.Errorf("marks %v, want the recorded pod's alone", got)
	}
}

// TestRedecideDropsDeadRecords: a record whose network namespace is dead
// is dropped when decisions are made again, whether or not a DEL
// ever names it, and so is its claim on its IP and its pod's name.
func TestRedecideDropsDeadRecords(t *testing.T) {
	f := newFixture(t, true)
	other := model.Namespace{Name: "other"}
	f.netns.add("/host/proc/100/ns/net", 100, "10.0.0.2")
	f.netns.add("/host/proc/200/ns/net", 200, "10.0.0.3")
	f.source([]model.Namespace{ambientNS, other}, pod("web-0", "10.0.0.2", nil), pod("api", "10.0.0.3", nil))
	kept := f.attach(t, cniAttachment("kept", 10, "10.0.0.4"))
	lost := f.attach(t, cniAttachment("lost", 11, "10.0.0.5"))
	if got := f.marker.marked(); !slices.Equal(got, []uint64{10, 11, 100, 200}) {
		t.Fatalf("marks %v, want two adopted and two added pods", got)
	}

	// What happened with no DEL the controller could match: web-0's
	// processes are gone and the StatefulSet made it again, in another
	// sandbox with another IP; api's PID now runs in another namespace;
	// lost's sandbox went while no agent heard its DEL; and a pod of
	// another namespace got web-0's old IP.
	delete(f.netns.byPath, "/host/proc/100/ns/net")
	f.netns.add("/host/proc/200/ns/net", 999)
	delete(f.netns.byPath, lost.NetnsPath)
	web := f.attach(t, cniAttachment("web-0", 30, "10.0.0.9"))
	reused := cniAttachment("reused", 31, "10.0.0.2")
	reused.Namespace = other.Name
	f.attach(t, reused)

	f.now = f.now.Add(adoptInterval)
	web0 := pod("web-0", "10.0.0.9", nil)
	web0.UID = "uid-web-0-again"
	f.source([]model.Namespace{ambientNS, other}, web0)

	if got := f.marker.marked(); !slices.Equal(got, []uint64{10, 30}) {
		t.Errorf("marks %v, want kept's and web-0's new sandbox's", got)
	}
	var keys []string
	for _, a := range f.savedRecord(t) {
		keys = append(keys, a.Key())
	}
	if want := []string{kept.Key(), "ctr-reused", web.Key()}; !slices.Equal(keys, want) {
		t.Errorf("record %q, want %q", keys, want)
	}
	if p := f.pods.Get("shop", "web-0"); p.Attachment == nil || p.Attachment.NetnsCookie != 30 {
		t.Errorf("web-0's attachment %+v, want its live sandbox (cookie 30)", p.Attachment)
	}
	if p := f.pods.ByCookie(30); p == nil || p.Key() != "shop/web-0" {
		t.Errorf("cookie 30 is %v's, want shop/web-0's", p)
	}
	if p := f.pods.Lookup(netip.MustParseAddr("10.0.0.2")); p == nil || p.Namespace != other.Name {
		t.Errorf("10.0.0.2, web-0's old IP, is %v's, want the pod of %q that has it now", p, other.Name)
	}
}

// TestRedecideLooksAtOnceAtAPodUnknownToTheSource: the source's word that
// a pod is gone, or is another pod now, has the pod's namespace looked at on
// the next decision, not adoptInterval later; pods the source still has
// wait for the next full look.
func TestRedecideLooksAtOnceAtAPodUnknownToTheSource(t *testing.T) {
	f := newFixture(t, true)
	for i := range 3 {
		f.netns.add(fmt.Sprintf("/host/proc/%d/ns/net", 100*(i+1)), uint64(100*(i+1)), fmt.Sprintf("10.0.0.%d", 2+i))
	}
	f.source([]model.Namespace{ambientNS}, pod("web", "10.0.0.2", nil), pod("db-0", "10.0.0.3", nil), pod("api", "10.0.0.4", nil))
	if got := f.marker.marked(); !slices.Equal(got, []uint64{100, 200, 300}) {
		t.Fatalf("marks %v, want the three running pods adopted", got)
	}
	// All three sandboxes go; web is deleted, db-0 made again (a new UID,
	// not running yet), api's object has not changed yet.
	f.netns.byPath = map[string]Netns{}
	db := pod("db-0", "10.0.0.3", nil)
	db.UID = "uid-db-0-again"
	f.source([]model.Namespace{ambientNS}, db, pod("api", "10.0.0.4", nil))
	if got := f.marker.marked(); !slices.Equal(got, []uint64{300}) {
		t.Errorf("marks %v, want api's alone until the next full look", got)
	}
	f.now = f.now.Add(adoptInterval)
	f.ctl.Redecide()
	if got := f.marker.marked(); len(got) != 0 {
		t.Errorf("marks %v after adoptInterval, want none", got)
	}
}

// TestOrphanedRecordIsForgotten: a sandbox whose DEL never comes (the
// runtime crashed) and whose network namespace stays mounted is
// forgotten, and its namespace unmarked, once the source (which watches
// the node's pods) has been without its pod for unknownToSourceGrace and
// no process is in its namespace; one whose namespace a process still holds
// is kept, and so is every record while a scan cannot open every
// process's namespace.
func TestOrphanedRecordIsForgotten(t *testing.T) {
	f := newFixture(t, true)
	f.ctl.cfg.PodsWatched = true
	var log strings.Builder
	f.ctl.log = slog.New(slog.NewTextHandler(&log, nil))
	f.source([]model.Namespace{ambientNS})
	lost := f.attach(t, cniAttachment("p100", 100, "10.0.0.2"))
	kept := f.attach(t, cniAttachment("p200", 200, "10.0.0.3"))
	f.source([]model.Namespace{ambientNS}, pod("p100", "10.0.0.2", nil), pod("p200", "10.0.0.3", nil))
	if got := f.marker.marked(); !slices.Equal(got, []uint64{100, 200}) {
		t.Fatalf("marks %v, want both pods'", got)
	}
	recorded := func() []string {
		var keys []string
		for _, a := range f.savedRecord(t) {
			keys = append(keys, a.Key())
		}
		return keys
	}

	// p100's processes are gone, its namespace still mounted; p200's run
	// on. The source has lost both.
	f.netns.mountOnly = map[string]bool{lost.NetnsPath: true}
	f.source([]model.Namespace{ambientNS})
	for elapsed := time.Duration(0); elapsed < unknownToSourceGrace; elapsed += adoptInterval {
		if got, want := recorded(), []string{lost.Key(), kept.Key()}; !slices.Equal(got, want) {
			t.Fatalf("record %q %v after the source lost the pods, want %q until unknownToSourceGrace", got, elapsed, want)
		}
		f.now = f.now.Add(adoptInterval)
		f.ctl.Redecide()
	}
	if got, want := recorded(), []string{kept.Key()}; !slices.Equal(got, want) {
		t.Errorf("record %q, want %q (p100's namespace holds no process)", got, want)
	}
	if p := f.pods.ByCookie(100); p != nil {
		t.Errorf("cookie 100 is still %s's", p.Key())
	}
	if got := f.marker.marked(); slices.Contains(got, 100) {
		t.Errorf("marks %v, want p100's namespace (100) unmarked", got)
	}
	if !strings.Contains(log.String(), "no process is in its network namespace") || !strings.Contains(log.String(), "pod=shop/p100") {
		t.Errorf("the log does not say p100 was forgotten:\n%s", log.String())
	}

	// A scan that cannot open every process's namespace proves nothing.
	f.netns.denied = 1
	f.netns.mountOnly[kept.NetnsPath] = true
	f.now = f.now.Add(adoptInterval)
	f.ctl.Redecide()
	if got, want := recorded(), []string{kept.Key()}; !slices.Equal(got, want) {
		t.Errorf("record %q after a scan that could not open every namespace, want %q", got, want)
	}
}
