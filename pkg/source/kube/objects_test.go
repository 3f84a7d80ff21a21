package kube

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/model/kubeapi"
)

// changeCounter counts the changes a store reports.
type changeCounter struct{ n int }

func (c *changeCounter) changed(kind) { c.n++ }

func service(ns, name, rv string, clusterIP string) *kubeapi.Service {
	s := &kubeapi.Service{}
	s.Namespace, s.Name, s.ResourceVersion = ns, name, rv
	s.Spec.ClusterIP = clusterIP
	return s
}

// TestStore follows a store through what a reflector does to it: the first
// list, watch events, and a relist; it reports exactly the changes that
// matter to a snapshot and keeps objects that cannot be converted out of
// them.
func TestStore(t *testing.T) {
	var c changeCounter
	st := newStore(kindServices, testLogger(), modelOf[model.Service], serviceKeyOf, c.changed)
	web := model.Service{Namespace: "shop", Name: "web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}}
	names := func() []string {
		got, _ := collect(st)
		var out []string
		for _, s := range got {
			out = append(out, s.Key())
		}
		return out
	}
	steps := []struct {
		name        string
		do          func() error
		wantChanges int
		wantNames   []string
		wantErrs    string
	}{
		{name: "before the first list: nothing, not even an empty list", do: func() error { return nil }},
		{name: "the first list, even an empty one, is a change",
			do: func() error { return st.Replace(nil, "1") }, wantChanges: 1},
		{name: "added, out of order, one broken",
			do: func() error {
				for _, s := range []*kubeapi.Service{service("shop", "web", "2", "10.96.0.10"), service("a", "broken", "3", "not-an-ip"), service("a", "db", "4", "None")} {
					if err := st.Add(s); err != nil {
						return err
					}
				}
				return nil
			},
			wantChanges: 4, wantNames: []string{"a/db", "shop/web"}, wantErrs: `[service a/broken: clusterIP "not-an-ip" is not an IP address]`},
		{name: "an update of nothing ztdns reads is no change",
			do:          func() error { return st.Update(service("shop", "web", "5", "10.96.0.10")) },
			wantChanges: 4, wantNames: []string{"a/db", "shop/web"}, wantErrs: `[service a/broken: clusterIP "not-an-ip" is not an IP address]`},
		{name: "fixing the broken one brings it in",
			do:          func() error { return st.Update(service("a", "broken", "6", "10.96.0.11")) },
			wantChanges: 5, wantNames: []string{"a/broken", "a/db", "shop/web"}},
		{name: "delete",
			do:          func() error { return st.Delete(service("a", "db", "7", "None")) },
			wantChanges: 6, wantNames: []string{"a/broken", "shop/web"}},
		{name: "deleting what is not there is no change",
			do:          func() error { return st.Delete(service("a", "db", "7", "None")) },
			wantChanges: 6, wantNames: []string{"a/broken", "shop/web"}},
		{name: "a relist of the same objects is no change",
			do: func() error {
				return st.Replace([]any{service("shop", "web", "9", "10.96.0.10"), service("a", "broken", "9", "10.96.0.11")}, "9")
			},
			wantChanges: 6, wantNames: []string{"a/broken", "shop/web"}},
		{name: "a relist without one is a change",
			do:          func() error { return st.Replace([]any{service("shop", "web", "10", "10.96.0.10")}, "10") },
			wantChanges: 7, wantNames: []string{"shop/web"}},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		_, errs := collect(st)
		if c.n != s.wantChanges || !reflect.DeepEqual(names(), s.wantNames) || (s.wantErrs != "" && fmt.Sprint(errs) != s.wantErrs) || (s.wantErrs == "" && len(errs) > 0) {
			t.Errorf("%s: %d changes, objects %v, errors %v; want %d, %v, %s", s.name, c.n, names(), errs, s.wantChanges, s.wantNames, s.wantErrs)
		}
	}
	got, _ := collect(st)
	if !reflect.DeepEqual(got, []model.Service{web}) {
		t.Errorf("collected %+v, want %+v", got, web)
	}
}

func serviceKeyOf(s *model.Service) objKey { return objKey{s.Namespace, s.Name} }

// TestStoreKeepsOneCopy checks that the store keeps an object once: in
// the slice of the last snapshot, until it changes.
func TestStoreKeepsOneCopy(t *testing.T) {
	st := newStore(kindServices, testLogger(), modelOf[model.Service], serviceKeyOf, func(kind) {})
	if err := st.Replace([]any{service("a", "y", "1", "10.96.0.2"), service("a", "x", "1", "10.96.0.1")}, "1"); err != nil {
		t.Fatal(err)
	}
	snap, _ := collect(st)
	x, y := objKey{"a", "x"}, objKey{"a", "y"}
	inSnapshot := func(snap []model.Service, key objKey) bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		p := st.get(key)
		return p != nil && (p == &snap[0] || p == &snap[1])
	}
	if !inSnapshot(snap, x) || !inSnapshot(snap, y) {
		t.Fatal("after collect, the store's objects are not those of the snapshot")
	}
	if err := st.Update(service("a", "x", "2", "10.96.0.1")); err != nil { // nothing ztdns reads changed
		t.Fatal(err)
	}
	if err := st.Update(service("a", "y", "2", "10.96.0.3")); err != nil {
		t.Fatal(err)
	}
	if !inSnapshot(snap, x) || inSnapshot(snap, y) {
		t.Errorf("after updates: x in the snapshot %v (want true, it did not change), y %v (want false)", inSnapshot(snap, x), inSnapshot(snap, y))
	}
	next, _ := collect(st)
	if got := snap[1].ClusterIPs[0]; got != netip.MustParseAddr("10.96.0.2") {
		t.Errorf("the delivered snapshot changed: y is at %v", got)
	}
	if got := next[1].ClusterIPs[0]; got != netip.MustParseAddr("10.96.0.3") || !inSnapshot(next, x) || !inSnapshot(next, y) {
		t.Errorf("the next snapshot has y at %v and holds the store's objects: %v", got, inSnapshot(next, x) && inSnapshot(next, y))
	}
	if again, _ := collect(st); &again[0] != &next[0] {
		t.Error("a snapshot without changes copied the objects")
	}
}

// BenchmarkCollect is the cost of rebuilding one kind's part of a snapshot
// at 10,000 objects after one of them changed, which every change of that
// kind pays.
func BenchmarkCollect(b *testing.B) {
	st := newStore(kindServiceEntries, testLogger(), modelOf[model.ServiceEntry],
		func(s *model.ServiceEntry) objKey { return objKey{s.Namespace, s.Name} }, func(kind) {})
	newSE := func(i int, host string) *kubeapi.ServiceEntry {
		se := &kubeapi.ServiceEntry{}
		se.Namespace, se.Name = fmt.Sprintf("ns-%d", i%50), fmt.Sprintf("se-%d", i)
		se.Spec.Hosts, se.Spec.Resolution = []string{host}, model.ResolutionDNS
		return se
	}
	var list []any
	for i := range 10_000 {
		list = append(list, newSE(i, fmt.Sprintf("se-%d.example.com", i)))
	}
	if err := st.Replace(list, "1"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if err := st.Update(newSE(7, fmt.Sprintf("v%d.example.com", i))); err != nil {
			b.Fatal(err)
		}
		if got, _ := collect(st); len(got) != len(list) || !strings.HasPrefix(got[0].Name, "se-") {
			b.Fatalf("collected %d", len(got))
		}
	}
}
