package kube

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/pkg/model"
)

// TestAPIServerOutage stops the API server under a running source: the
// source reports itself unhealthy, delivers nothing (so the agent keeps its
// table), and after the restart delivers the changes made while its watches
// were still reconnecting, and turns healthy again.
func TestAPIServerOutage(t *testing.T) {
	env := kubetest.Start(t)
	kube := env.Client()
	ns := createNamespace(t, kube, "outage")
	services := kube.CoreV1().Services(ns)
	createService := func(name string) {
		t.Helper()
		if _, err := services.Create(t.Context(), &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create Service %s: %v", name, err)
		}
	}
	servicesAre := func(want ...string) func(*model.Snapshot) error {
		return func(s *model.Snapshot) error {
			var got []string
			for _, svc := range s.Services {
				if svc.Namespace == ns {
					got = append(got, svc.Name)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("services %v, want %v", got, want)
			}
			return nil
		}
	}

	createService("before")
	rec := runSource(t, env.Config)
	rec.waitFor(t, "the service made before the outage", servicesAre("before"))
	rec.waitHealth(t, "healthy", func(err error) bool { return err == nil })
	_, delivered := rec.latest()

	env.Stop()
	outage := time.Now()
	rec.waitHealth(t, "unhealthy while the API server is down", func(err error) bool { return err != nil })
	t.Logf("unhealthy %v after the API server stopped: %v", time.Since(outage).Round(time.Millisecond), rec.src.Healthy())
	if errs := rec.src.Errors(); len(errs) == 0 {
		t.Errorf("Errors() is empty while the API server is down")
	}

	if got := rec.since(delivered); len(got) != 0 {
		t.Errorf("%d snapshots delivered during the outage, want none: the last one must stay in force", len(got))
	}

	env.Restart()
	// Written at once, while the source's watches are still backing off.
	createService("after")
	if err := services.Delete(t.Context(), "before", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete Service before: %v", err)
	}
	d := rec.waitFor(t, "the changes made after the restart", servicesAre("after"))
	t.Logf("changes delivered %v after the outage began", d.at.Sub(outage).Round(time.Millisecond))
	// Reconnecting (a relist, or a watch resumed from the last
	// resourceVersion) never shows an empty or partial state on the way.
	for _, d := range rec.since(delivered) {
		if servicesAre("before")(d.snap) != nil && servicesAre("after", "before")(d.snap) != nil && servicesAre("after")(d.snap) != nil {
			t.Errorf("a snapshot after the restart has neither the old nor the new state: %v", servicesAre("after")(d.snap))
		}
	}
	rec.waitHealth(t, "healthy after the restart", func(err error) bool { return err == nil })
	if errs := rec.src.Errors(); len(errs) != 0 {
		t.Errorf("Errors() after recovery = %v, want none", errs)
	}
}
