package table

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"
	"weak"

	"github.com/ztdns/ztdns/pkg/model"
)

// namespaces is a cluster of n namespaces, each with a ClusterIP Service,
// a headless Service with an EndpointSlice and a ServiceEntry, in fresh
// arrays, as the Kubernetes source makes each snapshot.
func namespaces(n int) *model.Snapshot {
	s := &model.Snapshot{
		Services:       make([]model.Service, 0, 2*n),
		EndpointSlices: make([]model.EndpointSlice, 0, n),
		ServiceEntries: make([]model.ServiceEntry, 0, n),
	}
	port := []model.Port{{Name: "http", Protocol: "TCP", Port: 80}}
	for i := range n {
		ns := fmt.Sprintf("ci-%d", i)
		a := func(x byte) netip.Addr { return netip.AddrFrom4([4]byte{10, x, byte(i >> 8), byte(i)}) }
		s.Services = append(s.Services,
			model.Service{Namespace: ns, Name: "web", ClusterIPs: []netip.Addr{a(96)}, Ports: port},
			model.Service{Namespace: ns, Name: "db", Headless: true, Ports: port})
		s.EndpointSlices = append(s.EndpointSlices, model.EndpointSlice{Namespace: ns, Name: "db-x", ServiceName: "db",
			Endpoints: []model.Endpoint{{Addresses: []netip.Addr{a(244)}, Hostname: "db-0", Ready: true}}, Ports: port})
		s.ServiceEntries = append(s.ServiceEntries, model.ServiceEntry{Namespace: ns, Name: "ext", Created: time.Unix(int64(i), 0),
			Hosts: []string{ns + ".example.com"}, Addresses: []netip.Addr{a(240)}, Resolution: model.ResolutionStatic, Ports: port})
	}
	return s
}

// TestBuilderForgetsDeletedObjects: once a cluster shrinks, nothing the
// builder keeps holds on to a deleted object's state, or to the snapshot
// it was last built from. (Before: the walk's spare order kept the states
// past the new count, so the agent's memory stayed at the largest cluster
// it had seen, with the arrays of the snapshots between.)
func TestBuilderForgetsDeletedObjects(t *testing.T) {
	bld := NewBuilder(Options{})
	deleted := objKey{"ci-600", "web"}
	for round := range 3 {
		bld.Build(namespaces(10))
		big := namespaces(1000)
		bld.Build(big)
		svc, se := bld.services.get(deleted), bld.ses.get(objKey{"ci-600", "ext"})
		if svc == nil || se == nil {
			t.Fatalf("round %d: no state for ci-600's objects after building 1,000 namespaces", round)
		}
		weakSvc, weakSE := weak.Make(svc), weak.Make(se)
		weakServices, weakSlices, weakSEs := weak.Make(&big.Services[0]), weak.Make(&big.EndpointSlices[0]), weak.Make(&big.ServiceEntries[0])
		svc, se, big = nil, nil, nil
		tbl, _ := bld.Build(namespaces(10))
		runtime.GC()
		if tbl.Len() == 0 || bld.services.get(deleted) != nil {
			t.Fatalf("round %d: the table of 10 namespaces has %d names, ci-600/web's state is %v", round, tbl.Len(), bld.services.get(deleted))
		}
		if weakSvc.Value() != nil {
			t.Errorf("round %d: the state of deleted Service ci-600/web is still reachable", round)
		}
		if weakSE.Value() != nil {
			t.Errorf("round %d: the state of deleted ServiceEntry ci-600/ext is still reachable", round)
		}
		if weakServices.Value() != nil || weakSlices.Value() != nil || weakSEs.Value() != nil {
			t.Errorf("round %d: the 1,000 namespaces' snapshot arrays are still reachable (Services %t, EndpointSlices %t, ServiceEntries %t)", round,
				weakServices.Value() != nil, weakSlices.Value() != nil, weakSEs.Value() != nil)
		}
	}
}

// TestBuilderMemoryShrinksWithCluster: after a cluster of 10,000
// namespaces (40,000 objects) shrinks to 10, the builder and its table take
// about what they took before it grew. (Before: the maps copied from one
// table to the next, the states' index and the walk's spare order kept
// their largest size, 4 MB and more here.)
func TestBuilderMemoryShrinksWithCluster(t *testing.T) {
	const slack = 1 << 20 // well under what was kept, well over what the runtime's own figures vary by
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	bld := NewBuilder(Options{})
	small := namespaces(10)
	bld.Build(small)
	before := heap()
	for round := range 2 {
		bld.Build(namespaces(10_000))
		tbl, _ := bld.Build(small)
		after := heap()
		if tbl.Len() == 0 {
			t.Fatalf("round %d: an empty table", round)
		}
		t.Logf("round %d: heap after GC %d B before the cluster grew, %d B after it shrank", round, before, after)
		if after > before+slack {
			t.Errorf("round %d: after the cluster shrank back to 10 namespaces the heap holds %.1f MB more than before it grew; want at most %.1f MB more",
				round, float64(after-before)/(1<<20), float64(slack)/(1<<20))
		}
		runtime.KeepAlive(tbl)
	}
	runtime.KeepAlive(bld)
}
