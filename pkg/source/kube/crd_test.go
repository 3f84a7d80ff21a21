package kube

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	istionetworkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"

	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/pkg/model"
)

// Messages the CRD test waits for.
const (
	msgWatchingServiceEntries = "watching ServiceEntries"
	msgCRDDeleted             = "ServiceEntry CRD deleted; running without ServiceEntries until it is back"
)

// TestServiceEntryCRDComesAndGoes starts without Istio's CRD: the source
// syncs and serves without ServiceEntries, picks them up once the CRD is
// installed, drops them and stops watching when it is deleted, and picks
// them up again when it is back.
func TestServiceEntryCRDComesAndGoes(t *testing.T) {
	env := kubetest.Start(t, kubetest.WithoutCRDs())
	kube, istio := env.Client(), env.IstioClient()
	ns := createNamespace(t, kube, "mesh")
	if _, err := kube.CoreV1().Services(ns).Create(t.Context(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create Service: %v", err)
	}
	logs := newLogWatcher()
	rec := runSource(t, env.Config, WithLogger(slog.New(logs)))

	serviceEntries := func(want ...string) func(*model.Snapshot) error {
		return func(s *model.Snapshot) error {
			if find(s.Services, serviceKey, ns, "web") == nil {
				return fmt.Errorf("service web missing")
			}
			var got []string
			for _, se := range s.ServiceEntries {
				got = append(got, se.Name)
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("serviceentries %v, want %v", got, want)
			}
			return nil
		}
	}
	createServiceEntry := func(name string) {
		t.Helper()
		se := &istionetworkingv1.ServiceEntry{ObjectMeta: metav1.ObjectMeta{Name: name}}
		se.Spec.Hosts = []string{name + ".example.com"}
		se.Spec.Resolution = networkingv1alpha3.ServiceEntry_DNS
		se.Spec.Ports = []*networkingv1alpha3.ServicePort{{Number: 80, Name: "http", Protocol: "HTTP"}}
		if _, err := istio.NetworkingV1().ServiceEntries(ns).Create(t.Context(), se, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create ServiceEntry %s: %v", name, err)
		}
	}

	rec.waitFor(t, "the first sync, without ServiceEntries", serviceEntries())
	if err := rec.src.Healthy(); err != nil {
		t.Fatalf("Healthy() without the CRD = %v, want nil", err)
	}

	env.InstallCRDs()
	createServiceEntry("first")
	rec.waitFor(t, "the ServiceEntry made after the CRD appeared", serviceEntries("first"))

	deleteServiceEntryCRD(t, env)
	rec.waitFor(t, "no ServiceEntries after the CRD is deleted", serviceEntries())
	logs.waitFor(t, 1, msgCRDDeleted)
	if err := rec.src.Healthy(); err != nil {
		t.Errorf("Healthy() after the CRD is deleted = %v, want nil", err)
	}

	env.InstallCRDs()
	logs.waitFor(t, 2, msgWatchingServiceEntries)
	createServiceEntry("second")
	rec.waitFor(t, "the ServiceEntry made after the CRD came back", serviceEntries("second"))
	if err := rec.src.Healthy(); err != nil {
		t.Errorf("Healthy() after the CRD came back = %v, want nil", err)
	}
}

// deleteServiceEntryCRD deletes Istio's ServiceEntry CRD, which deletes
// every ServiceEntry, and waits until it is gone.
func deleteServiceEntryCRD(tb testing.TB, env *kubetest.Env) {
	tb.Helper()
	client, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		tb.Fatalf("dynamic client: %v", err)
	}
	crds := client.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	const name = "serviceentries.networking.istio.io"
	if err := crds.Delete(tb.Context(), name, metav1.DeleteOptions{}); err != nil {
		tb.Fatalf("delete CRD %s: %v", name, err)
	}
	err = wait.PollUntilContextTimeout(tb.Context(), 50*time.Millisecond, waitTimeout, true, func(ctx context.Context) (bool, error) {
		_, err := crds.Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		tb.Fatalf("CRD %s not gone within %v: %v", name, waitTimeout, err)
	}
}
