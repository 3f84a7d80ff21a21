//go:build linux

package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/model"
)

// stepSource delivers the snapshots the test sends, one at a time: send
// returns once the agent has applied it.
type stepSource struct {
	snaps   chan *model.Snapshot
	applied chan struct{}
}

func (s *stepSource) Run(ctx context.Context, deliver func(*model.Snapshot)) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case snap := <-s.snaps:
			deliver(snap)
			select {
			case s.applied <- struct{}{}:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

func (s *stepSource) send(snap *model.Snapshot) {
	s.snaps <- snap
	<-s.applied
}

// TestTableUpdatesLoggedOncePerInterval: the first table is logged at
// INFO at once; of the 100 snapshots after it within tableLogEvery (a
// cluster's churn: from Kubernetes up to 20 a second, on every node),
// none is, and the first one after says how many went unlogged, with the
// table's size now. (Before: one INFO line per snapshot, 102 here.)
func TestTableUpdatesLoggedOncePerInterval(t *testing.T) {
	src := &stepSource{snaps: make(chan *model.Snapshot), applied: make(chan struct{})}
	var log testenv.Log
	a, err := newAgent(Config{
		Source:    src,
		Listen:    []netip.AddrPort{testenv.FreePort(t)},
		Upstreams: []netip.AddrPort{testenv.DeadAddr(t)},
		Socket:    filepath.Join(t.TempDir(), "ztdns.sock"),
		Logger:    slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	a.tableUpdates.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", log.String())
		}
	})

	snapshot := func(services int) *model.Snapshot {
		s := &model.Snapshot{}
		for i := range services {
			s.Services = append(s.Services, model.Service{Name: fmt.Sprintf("svc-%d", i), Namespace: "shop",
				ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(i%250 + 1)})}})
		}
		return s
	}
	lines := func() []string {
		var got []string
		for l := range strings.SplitSeq(log.String(), "\n") {
			if strings.Contains(l, `msg="name table updated"`) {
				got = append(got, l)
			}
		}
		return got
	}
	for i := 1; i <= 101; i++ {
		src.send(snapshot(i))
	}
	if got := lines(); len(got) != 1 || !strings.Contains(got[0], "level=INFO") || !strings.Contains(got[0], "services=1 ") {
		t.Errorf("table lines after 101 snapshots within %v:\n%s\nwant one, at INFO, of the first table (services=1)", tableLogEvery, strings.Join(got, "\n"))
	}
	mu.Lock()
	now = now.Add(tableLogEvery)
	mu.Unlock()
	src.send(snapshot(102))
	got := lines()
	if len(got) != 2 || !strings.Contains(got[1], "services=102 ") || !strings.Contains(got[1], "unloggedBefore=100") {
		t.Errorf("table lines after one more snapshot %v later:\n%s\nwant a second saying services=102 and unloggedBefore=100", tableLogEvery, strings.Join(got, "\n"))
	}
}
