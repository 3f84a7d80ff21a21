package kube

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/ztdns/ztdns/pkg/model"
)

func TestTransform(t *testing.T) {
	transform := transformTo("services", testLogger(), convertService)
	web := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "shop", Name: "web", ResourceVersion: "42",
			Annotations:   map[string]string{"kubectl.kubernetes.io/last-applied-configuration": strings.Repeat("x", 4096)},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
		},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"}},
	}
	broken := web.DeepCopy()
	broken.Name, broken.Spec.ClusterIP, broken.Spec.ClusterIPs = "broken", "not-an-ip", []string{"not-an-ip"}
	webStored := &stored[model.Service]{
		namespace: "shop", name: "web", resourceVersion: "42",
		obj: model.Service{Namespace: "shop", Name: "web", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}},
	}
	tombstone := cache.DeletedFinalStateUnknown{Key: "shop/web", Obj: webStored}

	tests := []struct {
		name    string
		in      any
		want    any
		wantErr string // in the stored object
	}{
		{name: "API object becomes its model form", in: web, want: webStored},
		{name: "already stored object passes through", in: webStored, want: webStored},
		{name: "deletion tombstone passes through", in: tombstone, want: tombstone},
		{name: "conversion failure is kept", in: broken, wantErr: `service shop/broken: clusterIP "not-an-ip" is not an IP address`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := transform(tt.in)
			if err != nil {
				t.Fatalf("transform returned error %v; it must never fail (it would drop the event)", err)
			}
			if tt.wantErr != "" {
				s, ok := got.(*stored[model.Service])
				if !ok {
					t.Fatalf("transform = %T, want *stored[model.Service]", got)
				}
				if s.err == nil || s.err.Error() != tt.wantErr {
					t.Errorf("stored error = %v, want %q", s.err, tt.wantErr)
				}
				if s.namespace != "shop" || s.name != "broken" || s.resourceVersion != "42" {
					t.Errorf("stored identity = %s/%s@%s, want shop/broken@42", s.namespace, s.name, s.resourceVersion)
				}
				return
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("transform = %#v, want %#v", got, tt.want)
			}
		})
	}
}

// TestStoredIdentity checks that client-go's key function and a real store
// work on stored objects, which are not API objects.
func TestStoredIdentity(t *testing.T) {
	s := &stored[model.Service]{namespace: "shop", name: "web", resourceVersion: "7"}
	key, err := cache.MetaNamespaceKeyFunc(s)
	if err != nil || key != "shop/web" {
		t.Errorf("MetaNamespaceKeyFunc = %q, %v; want shop/web", key, err)
	}
	store := cache.NewStore(cache.DeletionHandlingMetaNamespaceKeyFunc)
	if err := store.Add(s); err != nil {
		t.Fatalf("store.Add: %v", err)
	}
	if got, ok, err := store.GetByKey("shop/web"); err != nil || !ok || got != s {
		t.Errorf("GetByKey(shop/web) = %v, %v, %v; want the stored object", got, ok, err)
	}
	if err := store.Delete(cache.DeletedFinalStateUnknown{Key: "shop/web", Obj: s}); err != nil {
		t.Fatalf("store.Delete(tombstone): %v", err)
	}
	if n := len(store.List()); n != 0 {
		t.Errorf("%d objects left after delete", n)
	}
}

func TestSameModel(t *testing.T) {
	base := &stored[model.Namespace]{name: "shop", resourceVersion: "1", obj: model.Namespace{Name: "shop", Labels: map[string]string{model.LabelDataplaneMode: "ambient"}}}
	with := func(change func(*stored[model.Namespace])) *stored[model.Namespace] {
		c := *base
		c.obj.Labels = map[string]string{model.LabelDataplaneMode: "ambient"}
		change(&c)
		return &c
	}
	tests := []struct {
		name     string
		old, new any
		want     bool
	}{
		{name: "only the resourceVersion changed", old: base, new: with(func(s *stored[model.Namespace]) { s.resourceVersion = "2" }), want: true},
		{name: "a kept label changed", old: base, new: with(func(s *stored[model.Namespace]) { s.obj.Labels[model.LabelDataplaneMode] = "none" }), want: false},
		{name: "conversion started failing", old: base, new: with(func(s *stored[model.Namespace]) { s.err = errors.New("bad") }), want: false},
		{name: "not stored objects", old: "a", new: "a", want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sameModel[model.Namespace](tt.old, tt.new); got != tt.want {
				t.Errorf("sameModel = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCollect(t *testing.T) {
	svc := func(ns, name string, err error) *stored[model.Service] {
		return &stored[model.Service]{namespace: ns, name: name, obj: model.Service{Namespace: ns, Name: name}, err: err}
	}
	objs := []any{
		svc("b", "x", nil),
		svc("a", "z", errors.New("a/z is broken")),
		svc("a", "y", nil),
		"not a stored object",
		svc("a", "b", errors.New("a/b is broken")),
		svc("a", "x", nil),
	}
	got, errs := collect[model.Service](objs)
	var names []string
	for _, s := range got {
		names = append(names, s.Key())
	}
	if want := []string{"a/x", "a/y", "b/x"}; !reflect.DeepEqual(names, want) {
		t.Errorf("collected %v, want %v (sorted, broken ones left out)", names, want)
	}
	if want := "[a/b is broken a/z is broken]"; fmt.Sprint(errs) != want {
		t.Errorf("errors %v, want %s", errs, want)
	}
}

// BenchmarkCollect is the cost of rebuilding one kind's part of a snapshot
// at 10,000 objects, which every change of that kind pays.
func BenchmarkCollect(b *testing.B) {
	objs := make([]any, 10_000)
	for i := range objs {
		ns, name := fmt.Sprintf("ns-%d", i%50), fmt.Sprintf("se-%d", i)
		objs[i] = &stored[model.ServiceEntry]{namespace: ns, name: name, obj: model.ServiceEntry{
			Namespace: ns, Name: name, Hosts: []string{name + ".example.com"}, Resolution: model.ResolutionDNS, AutoAllocate: true,
		}}
	}
	b.ReportAllocs()
	for b.Loop() {
		if got, _ := collect[model.ServiceEntry](objs); len(got) != len(objs) {
			b.Fatalf("collected %d", len(got))
		}
	}
}
