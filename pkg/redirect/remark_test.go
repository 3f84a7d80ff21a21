//go:build linux

package redirect

import (
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/ztdns/ztdns/internal/testenv"
)

// TestRemarkKeepsEveryCount: re-marking a pod with what it is marked with
// already, as the agent does at each replayed CNI ADD, unchanged decision
// and adoption, loses none of the counts the programs add meanwhile. A
// write of the whole value would put back the counters it read just
// before, without the queries counted in between: re-marked in a tight
// loop while the pod sends its queries, the pod's redirected fell short of
// the queries sent.
func TestRemarkKeepsEveryCount(t *testing.T) {
	t.Parallel()
	const queries = 3000
	e := newCaptureEnv(t, envOptions{})
	pod, cookie := e.markedPod(t, 0, nowhere4)
	info := e.reported(t, cookie).PodInfo
	h := testenv.StartHelper(t, t.Context(), pod, e.cg, "ready", helperEnv+"="+helperSendTo)

	done := make(chan struct{})
	var (
		wg      sync.WaitGroup
		remarks int
		markErr error
	)
	stop := sync.OnceFunc(func() {
		close(done)
		wg.Wait()
	})
	defer stop() // when the helper fails the test
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			if markErr = e.r.Mark(cookie, info); markErr != nil {
				return
			}
			remarks++
		}
	})
	// All the lines at once, so queries follow each other as fast as the
	// helper sends them.
	lines := strings.Repeat(nowhere4+" "+uniqueName("remark")+"\n", queries)
	wg.Go(func() { _, _ = io.WriteString(h.Stdin(), lines) })
	var failed []string
	for range queries {
		if line := h.Line(t); line != "sent" {
			failed = append(failed, line)
		}
	}
	stop()
	if markErr != nil {
		t.Fatalf("Mark: %v", markErr)
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d queries not sent: %s", len(failed), queries, failed[0])
	}

	got := e.reported(t, cookie)
	if got.PodInfo != info {
		t.Errorf("pod info %+v after re-marking, want %+v", got.PodInfo, info)
	}
	if got.Counters.Redirected != queries {
		t.Errorf("redirected %d after %d queries and %d re-marks, want %d", got.Counters.Redirected, queries, remarks, queries)
	}
	t.Logf("%d re-marks while %d queries were sent", remarks, queries)
}
