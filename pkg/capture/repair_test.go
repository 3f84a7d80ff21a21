package capture

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
)

// TestDeletedPodsNotKeptWithoutANodeName: without a NodeName (a standalone
// agent taking CNI events, a Kubernetes source without $NODE_NAME) every
// CNI DEL was remembered for adoption, which never runs then, and nothing
// forgot it: about 190 bytes a DEL for as long as the agent ran.
func TestDeletedPodsNotKeptWithoutANodeName(t *testing.T) {
	f := newFixture(t, true)
	f.ctl.cfg.NodeName = ""
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
