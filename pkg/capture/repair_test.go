package capture

import (
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
)

// TestDeletedPodsNotKeptWithoutANodeName: without a NodeName (a standalone
// agent taking CNI events, a Kubernetes source without $NODE_NAME) every
// CNI DEL was remembered for adoption, which never runs then, and nothing
// forgot it: about 190 bytes a DEL for as long as the agent ran.
func TestDeletedPodsNotKeptWithoutANodeName(t *testing.T) {
	f := &fixture{pods: podcache.New("cluster.local"), marker: newFakeMarker(), netns: &fakeNamespaces{byPath: map[string]Netns{}}, dir: t.TempDir(),
		now: time.Unix(1_700_000_000, 0)}
	f.ctl = New(Config{StateDir: f.dir, DNSCaptureDefault: true, HostCookies: []uint64{hostCookie},
		Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return f.now }}, f.pods, f.marker, f.netns)
	t.Cleanup(f.ctl.Close)
	if err := f.ctl.Restore(); err != nil {
		t.Fatal(err)
	}
	f.source([]model.Namespace{ambientNS})
	for i := range 1000 {
		name := fmt.Sprintf("job-%d", i)
		a := f.attach(t, cniAttachment(name, uint64(100+i), fmt.Sprintf("10.1.%d.%d", i/250, i%250+1)))
		if _, ok, err := f.ctl.Forget(a.Key()); !ok || err != nil {
			t.Fatalf("DEL of %s: %v, %v", name, ok, err)
		}
	}
	f.now = f.now.Add(deletedMemory + time.Second)
	f.ctl.Redecide()
	f.ctl.RepairMarks()
	f.ctl.mu.Lock()
	n := len(f.ctl.deleted)
	f.ctl.mu.Unlock()
	if n != 0 {
		t.Errorf("after 1,000 DELs, %v later, the controller remembers %d deleted pods; want none", deletedMemory, n)
	}
	if got := f.marker.marked(); len(got) != 0 {
		t.Errorf("marks %v after every pod's DEL, want none", got)
	}
}

// TestRepairMarksDoesNotRaceAnAdd: an ADD marks its pod, then records it;
// RepairMarks, run meanwhile, must not take that mark for one no record
// holds and remove it.
func TestRepairMarksDoesNotRaceAnAdd(t *testing.T) {
	f := newFixture(t, true)
	f.source([]model.Namespace{ambientNS})
	const pods = 300
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
				f.ctl.RepairMarks()
			}
		}
	}()
	for i := range pods {
		f.attach(t, cniAttachment(fmt.Sprintf("web-%d", i), uint64(100+i), fmt.Sprintf("10.2.%d.%d", i/250, i%250+1)))
	}
	close(done)
	wg.Wait()
	if got := f.marker.unmarks(); len(got) != 0 {
		t.Errorf("RepairMarks removed the marks %v of pods being added", got)
	}
	if got := len(f.marker.marked()); got != pods {
		t.Errorf("%d pods marked, want %d", got, pods)
	}
}
