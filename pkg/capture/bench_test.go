package capture

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
)

// denseNode is a controller over fakes that records a given number of
// pods, for what a CNI event costs on a busy node.
type denseNode struct {
	tb    testing.TB
	ctl   *Controller
	pods  *podcache.Cache
	netns *fakeNamespaces
	dir   string
}

// tmpfsDir is a temporary directory on a tmpfs, as the chart's --state-dir
// (under /var/run) is, when /dev/shm is one; else the test's TempDir.
func tmpfsDir(tb testing.TB) string {
	dir, err := os.MkdirTemp("/dev/shm", "ztdns-capture-")
	if err != nil {
		return tb.TempDir()
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newDenseNode(tb testing.TB, records int) *denseNode {
	tb.Helper()
	n := &denseNode{tb: tb, pods: podcache.New(), netns: &fakeNamespaces{byPath: map[string]Netns{}}, dir: tmpfsDir(tb)}
	n.ctl = New(Config{StateDir: n.dir, NodeName: node, DNSCaptureDefault: true, HostCookies: []uint64{hostCookie},
		Logger: slog.New(slog.DiscardHandler), Now: time.Now}, n.pods, newFakeMarker(), n.netns)
	tb.Cleanup(n.ctl.Close)
	if err := n.ctl.Restore(); err != nil {
		tb.Fatal(err)
	}
	n.ctl.SetNamespaces([]model.Namespace{ambientNS})
	for i := range records {
		n.add(n.sandbox(i))
	}
	return n
}

// sandbox is pod i's sandbox, its network namespace made.
func (n *denseNode) sandbox(i int) podcache.Attachment {
	name := fmt.Sprintf("pod-%d", i)
	ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	a := podcache.Attachment{ContainerID: "ctr-" + name, Namespace: "shop", Name: name, UID: "uid-" + name,
		NetnsPath: "/var/run/netns/" + name, NetnsCookie: uint64(i) + 100, IPs: []netip.Addr{ip}}
	n.netns.add(a.NetnsPath, a.NetnsCookie, ip.String())
	return a
}

// add is what the agent's CNI ADD asks of the controller.
func (n *denseNode) add(a podcache.Attachment) {
	n.ctl.ForgetDeadClaims(a)
	a.Captured, a.Reason = n.ctl.Decide(a)
	if err := n.ctl.Apply(a); err != nil {
		n.tb.Fatal(err)
	}
}

// del is what the agent's CNI DEL of pod i asks.
func (n *denseNode) del(i int) {
	if _, ok, err := n.ctl.Forget(fmt.Sprintf("ctr-pod-%d", i)); !ok || err != nil {
		n.tb.Fatalf("Forget(pod-%d) = %v, %v", i, ok, err)
	}
}

// BenchmarkCNIAdd is what a CNI ADD costs the controller, holding its lock
// (ADDs are serialised), on a node that already records `records` pods:
// the claims check, the decision, the mark (a fake), the registry's update
// and the record written to disk (a tmpfs, as the chart's). Each ADD is
// followed, off the clock, by the DEL of the oldest pod, so the node stays
// at `records`.
func BenchmarkCNIAdd(b *testing.B) {
	for _, records := range []int{10, 1000} {
		b.Run(fmt.Sprintf("records=%d", records), func(b *testing.B) {
			n := newDenseNode(b, records)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				a := n.sandbox(records + i)
				b.StartTimer()
				n.add(a)
				b.StopTimer()
				n.del(i)
				b.StartTimer()
			}
		})
	}
}

// TestCNIEventWorkDoesNotGrowWithTheNode: a CNI ADD and DEL on a node of a
// thousand pods do about the work they do on a node of ten (counted in
// allocations: each pod's object remade, each record encoded, would show),
// and the record on disk still holds every pod, as the JSON array of them
// by key it always was. (Before: every ADD and DEL rebuilt every pod of
// the registry and encoded every record, indented: 30,900 allocations at
// 1,000 pods, 237 at 10; 6–9 ms an ADD.)
func TestCNIEventWorkDoesNotGrowWithTheNode(t *testing.T) {
	allocs := map[int]float64{}
	for _, records := range []int{10, 1000} {
		n := newDenseNode(t, records)
		next := records
		allocs[records] = testing.AllocsPerRun(20, func() {
			n.add(n.sandbox(next))
			n.del(next)
			next++
		})
		// Records replaced and forgotten: what is on disk is every record,
		// as json.Marshal writes the list sorted by key.
		n.del(0)
		a, _ := n.pods.Attachment("ctr-pod-1")
		a.Captured, a.Reason = false, "changed"
		if err := n.ctl.Apply(a); err != nil {
			t.Fatal(err)
		}
		n.add(n.sandbox(next))
		got, err := os.ReadFile(filepath.Join(n.dir, StateFile))
		if err != nil {
			t.Fatal(err)
		}
		all := n.pods.Attachments()
		var list []record
		for _, key := range slices.Sorted(maps.Keys(all)) {
			list = append(list, record{Attachment: all[key], BootID: n.ctl.cfg.BootID})
		}
		want, err := json.Marshal(list)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("%d records: the record on disk (%d bytes) is not the list of every record (%d bytes)", records, len(got), len(want))
		}
		var saved []record
		if err := json.Unmarshal(got, &saved); err != nil {
			t.Fatal(err)
		}
		if i := slices.IndexFunc(saved, func(r record) bool { return r.Name == "pod-1" }); i < 0 || saved[i].Reason != "changed" {
			t.Errorf("%d records: the replaced record is not on disk as changed", records)
		}
	}
	t.Logf("allocations of an ADD and a DEL: %v at 10 records, %v at 1,000", allocs[10], allocs[1000])
	if allocs[1000] > 2*allocs[10] {
		t.Errorf("an ADD and a DEL make %v allocations at 1,000 records, %v at 10: the work grows with the node", allocs[1000], allocs[10])
	}
}
