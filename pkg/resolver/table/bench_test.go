package table

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
)

// bigSnapshot is the scale: 10,000 Services and 10,000 ServiceEntry
// hosts (half with addresses, half with auto-allocated VIPs).
func bigSnapshot() *model.Snapshot {
	s := &model.Snapshot{}
	for i := range 10000 {
		ns := fmt.Sprintf("ns%d", i%100)
		s.Services = append(s.Services, model.Service{Namespace: ns, Name: fmt.Sprintf("svc%d", i),
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
			Ports:      []model.Port{{Name: "http", Protocol: "TCP", Port: 80}}})
		se := model.ServiceEntry{Namespace: ns, Name: fmt.Sprintf("se%d", i), Created: time.Unix(int64(i), 0),
			Hosts: []string{fmt.Sprintf("host%d.example.com", i)}, Resolution: "DNS", AutoAllocate: true}
		if i%2 == 0 {
			se.Addresses = []netip.Addr{netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})}
		}
		s.ServiceEntries = append(s.ServiceEntries, se)
	}
	return s
}

func BenchmarkBuild20k(b *testing.B) {
	s := bigSnapshot()
	b.ReportAllocs()
	for b.Loop() {
		Build(s, Options{})
	}
}

// BenchmarkUpdateOne is the incremental case: 20,000 objects, one
// ServiceEntry changes between builds.
func BenchmarkUpdateOne(b *testing.B) {
	s := bigSnapshot()
	bld := NewBuilder(Options{})
	bld.Build(s)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		next := *s
		next.ServiceEntries = append([]model.ServiceEntry(nil), s.ServiceEntries...)
		next.ServiceEntries[7].Addresses = []netip.Addr{netip.AddrFrom4([4]byte{203, 0, 113, byte(i)})}
		bld.Build(&next)
	}
}
