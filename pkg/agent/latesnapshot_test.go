package agent

import (
	"context"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// TestSnapshotWhileStopping: the source may deliver a snapshot after the
// agent began to stop (its goroutine ends only with the context shutdown
// cancels). That snapshot is applied without a panic, and the agent stays
// not ready. (Before: shutdown cleared the ready flag that also guarded the
// first table's signal, so the late snapshot set it again and closed the
// first table's channel a second time: "close of closed channel", seen in
// test/kube.)
func TestSnapshotWhileStopping(t *testing.T) {
	a, err := newAgent(Config{
		Source:    configdir.New(t.TempDir()),
		Listen:    []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")},
		Upstreams: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:5353")},
		Registry:  prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	a.apply(&model.Snapshot{})
	if err := a.readiness(); err != nil {
		t.Fatalf("after the first table: %v, want ready", err)
	}
	if err := a.shutdown(&group{}, context.Canceled); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	a.apply(&model.Snapshot{}) // panicked before
	if err := a.readiness(); err == nil {
		t.Error("ready after shutdown began, want not ready")
	}
}
