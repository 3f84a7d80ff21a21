package kube

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	istionetworkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientfeatures "k8s.io/client-go/features"
	clientfeaturestesting "k8s.io/client-go/features/testing"
	"k8s.io/client-go/rest"

	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/pkg/model"
)

// TestListThenWatch runs the source with client-go's streaming initial list
// (WatchList) off, as against API servers that do not serve it (it is off
// by default in Kubernetes 1.33): every kind is listed, then watched, and
// decodes the same.
func TestListThenWatch(t *testing.T) {
	clientfeaturestesting.SetFeatureDuringTest(t, clientfeatures.WatchListClient, false)
	env := kubetest.Start(t)
	kube, istio := env.Client(), env.IstioClient()
	ctx := t.Context()
	const ns = "listed"
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	_, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
		Labels: map[string]string{model.LabelDataplaneMode: "ambient"}}}, metav1.CreateOptions{})
	must("namespace", err)
	createNamespace(t, kube, DefaultIstioNamespace)
	createIstiodConfigMap(t, kube, IstiodAllocatorLock, nil)
	_, err = kube.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Name: "pg", Port: 5432}}}}, metav1.CreateOptions{})
	must("service", err)
	ready := true
	_, err = kube.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "db-1", Labels: map[string]string{discoveryv1.LabelServiceName: "db", corev1.IsHeadlessService: ""}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"203.0.113.9"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
	}, metav1.CreateOptions{})
	must("endpointslice", err)
	se := &istionetworkingv1.ServiceEntry{ObjectMeta: metav1.ObjectMeta{Name: "ext"}}
	se.Spec.Hosts, se.Spec.Resolution = []string{"ext.example.com"}, networkingv1alpha3.ServiceEntry_DNS
	_, err = istio.NetworkingV1().ServiceEntries(ns).Create(ctx, se, metav1.CreateOptions{})
	must("serviceentry", err)
	_, err = kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "client"},
		Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}}}, metav1.CreateOptions{})
	must("pod", err)

	var reqs requestLog
	cfg := rest.CopyConfig(env.Config)
	cfg.Wrap(reqs.wrap)
	rec := runSource(t, cfg, WithNodeName("node-a"))
	rec.waitFor(t, "every kind, listed", func(s *model.Snapshot) error {
		switch n := find(s.Namespaces, namespaceKey, "", ns); {
		case n == nil || n.Labels[model.LabelDataplaneMode] != "ambient":
			return fmt.Errorf("namespace %s: %+v", ns, n)
		case find(s.Services, serviceKey, ns, "db") == nil:
			return fmt.Errorf("service db missing")
		case find(s.EndpointSlices, sliceKey, ns, "db-1") == nil:
			return fmt.Errorf("endpointslice db-1 missing")
		case find(s.ServiceEntries, serviceEntryKey, ns, "ext") == nil:
			return fmt.Errorf("serviceentry ext missing")
		case find(s.Pods, podKey, ns, "client") == nil:
			return fmt.Errorf("pod client missing")
		case !s.IstiodAllocates:
			return fmt.Errorf("istiod's allocator lock not seen")
		}
		return nil
	})
	runSteps(t, rec, []step{{
		name: "a change after the list comes through the watch",
		write: func(ctx context.Context) error {
			es, err := kube.DiscoveryV1().EndpointSlices(ns).Get(ctx, "db-1", metav1.GetOptions{})
			if err != nil {
				return err
			}
			es.Endpoints[0].Addresses = []string{"203.0.113.10"}
			_, err = kube.DiscoveryV1().EndpointSlices(ns).Update(ctx, es, metav1.UpdateOptions{})
			return err
		},
		want: func(s *model.Snapshot) error {
			es := find(s.EndpointSlices, sliceKey, ns, "db-1")
			if es == nil || len(es.Endpoints) != 1 || !slices.Equal(es.Endpoints[0].Addresses, []netip.Addr{netip.MustParseAddr("203.0.113.10")}) {
				return fmt.Errorf("endpointslice db-1 = %+v", es)
			}
			return nil
		},
	}})
	var lists, watches int
	for _, u := range reqs.to("/api/v1/services") {
		if u.Query().Get("watch") == "true" {
			watches++
		} else {
			lists++
		}
		if u.Query().Get("sendInitialEvents") != "" {
			t.Errorf("request %s asks for initial events with WatchList off", u)
		}
	}
	if lists == 0 || watches == 0 {
		t.Errorf("%d lists and %d watches of Services, want both", lists, watches)
	}
}

// TestAllocatorLockForbidden runs the source as a ServiceAccount that may
// not read istiod's allocator lock (a chart from before it was needed, or a
// binding the API server has not applied yet): the source syncs and stays
// healthy, says so once, and sees no lock; once the permission is granted,
// it sees the lock without a restart.
func TestAllocatorLockForbidden(t *testing.T) {
	env := kubetest.Start(t)
	createNamespace(t, env.Client(), DefaultIstioNamespace)
	createIstiodConfigMap(t, env.Client(), IstiodAllocatorLock, nil)
	testForbiddenConfigMap(t, env, forbiddenConfigMap{
		what:   "the lock",
		rule:   func(r PolicyRule) bool { return slices.Contains(r.Resources, "configmaps") },
		logged: "cannot read istiod's VIP allocator lock; --vip-source=auto then sees istiod allocate only from status.addresses",
		refused: func(s *model.Snapshot) error {
			if s.IstiodAllocates {
				return fmt.Errorf("IstiodAllocates is true, but the lock cannot be read")
			}
			return nil
		},
		followed: func(s *model.Snapshot) error {
			if !s.IstiodAllocates {
				return fmt.Errorf("IstiodAllocates is false, though the lock may be read now")
			}
			return nil
		},
	})
}
