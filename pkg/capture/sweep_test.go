package capture

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"

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
		Logger: slog.New(slog.DiscardHandler)}, podcache.New("cluster.local"), m, f.netns)
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
