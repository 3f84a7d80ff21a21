package table_test

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/ztdns/ztdns/bench/workload"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// scaleCluster is make bench's Scale cluster: 100,000 Services (one in ten
// headless, 3 endpoints each), 50,000 ServiceEntries.
var scaleCluster = workload.Config{Services: 100_000, Entries: 50_000, EndpointsPerService: 3, HeadlessEvery: 10}

// BenchmarkUpdateAtScale: one change at a time to a built table of the
// Scale cluster, in process: what the builder costs a change there (the
// source's own work and the watch are not in it).
//
//	go test -run '^$' -bench UpdateAtScale -benchtime 20x ./pkg/resolver/table/
func BenchmarkUpdateAtScale(b *testing.B) {
	s := workload.Snapshot(scaleCluster)
	// The Kubernetes source watches only headless Services' EndpointSlices.
	s.EndpointSlices = slices.DeleteFunc(s.EndpointSlices, func(es model.EndpointSlice) bool { return len(es.Endpoints[0].Hostname) == 0 })
	changes := []struct {
		name   string
		change func(s *model.Snapshot, i int)
	}{
		{"service", func(s *model.Snapshot, i int) {
			s.Services = slices.Clone(s.Services)
			s.Services[i].ClusterIPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 100, byte(i >> 8), byte(i)})}
		}},
		{"serviceentry", func(s *model.Snapshot, i int) {
			s.ServiceEntries = slices.Clone(s.ServiceEntries)
			s.ServiceEntries[2*i+1].Addresses = []netip.Addr{netip.AddrFrom4([4]byte{10, 120, byte(i >> 8), byte(i)})}
		}},
		{"endpoints", func(s *model.Snapshot, i int) {
			s.EndpointSlices = slices.Clone(s.EndpointSlices)
			es := &s.EndpointSlices[i]
			es.Endpoints = append(slices.Clip(es.Endpoints), model.Endpoint{Ready: true, Hostname: "extra",
				Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, 130, byte(i >> 8), byte(i)})}})
		}},
	}
	for _, c := range changes {
		b.Run(c.name, func(b *testing.B) {
			bld := table.NewBuilder(table.Options{Domain: workload.Domain})
			bld.Build(s)
			next := *s
			i := 0
			for b.Loop() {
				b.StopTimer()
				i++
				c.change(&next, i%1000)
				b.StartTimer()
				bld.Build(&next)
			}
		})
	}
}
