package capture

import (
	"log/slog"
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
