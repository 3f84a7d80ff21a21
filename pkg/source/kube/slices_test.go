package kube

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/pkg/model"
)

// requestLog records the requests a client makes.
type requestLog struct {
	mu   sync.Mutex
	reqs []*url.URL
}

func (l *requestLog) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		u := *r.URL
		l.mu.Lock()
		l.reqs = append(l.reqs, &u)
		l.mu.Unlock()
		return rt.RoundTrip(r)
	})
}

// matching returns the requests for path, as "path?labelSelector".
func (l *requestLog) matching(path string) []string {
	var out []string
	for _, u := range l.to(path) {
		out = append(out, u.Path+"?"+u.Query().Get("labelSelector"))
	}
	return out
}

// to returns the requests for path.
func (l *requestLog) to(path string) []*url.URL {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*url.URL
	for _, u := range l.reqs {
		if u.Path == path {
			out = append(out, u)
		}
	}
	return out
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestEndpointSlicesOfHeadlessServicesOnly checks that the source asks the
// API server only for the EndpointSlices of headless Services (as the
// EndpointSlice controller labels them) and for the slices that controller
// did not make, so that the slices of every other Service never reach the
// node: they are not in any snapshot, and the requests carry the label
// selectors that leave them on the server.
func TestEndpointSlicesOfHeadlessServicesOnly(t *testing.T) {
	env := kubetest.Start(t)
	kube := env.Client()
	ns := createNamespace(t, kube, "slices")
	var reqs requestLog
	cfg := rest.CopyConfig(env.Config)
	cfg.Wrap(reqs.wrap)
	rec := runSource(t, cfg)
	rec.waitFor(t, "the first sync", func(*model.Snapshot) error { return nil })

	ready := true
	createService := func(ctx context.Context, name string, headless bool) error {
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
		if headless {
			svc.Spec.ClusterIP = corev1.ClusterIPNone
		}
		_, err := kube.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
		return err
	}
	// createSlice writes a slice of service with the labels its maker puts
	// on it: the EndpointSlice controller's (with the headless label for a
	// headless Service), the mirroring controller's, or none but the
	// Service's name (written by hand).
	createSlice := func(ctx context.Context, name, service, managedBy string, headless bool) error {
		labels := map[string]string{discoveryv1.LabelServiceName: service}
		if managedBy != "" {
			labels[discoveryv1.LabelManagedBy] = managedBy
		}
		if headless {
			labels[corev1.IsHeadlessService] = ""
		}
		_, err := kube.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name, Labels: labels},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"203.0.113.7"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		}, metav1.CreateOptions{})
		return err
	}
	slicesAre := func(want ...string) func(*model.Snapshot) error {
		return func(s *model.Snapshot) error {
			var got []string
			for _, es := range s.EndpointSlices {
				if es.Namespace == ns {
					got = append(got, es.Name)
				}
			}
			if !slices.Equal(got, want) {
				return fmt.Errorf("endpointslices %v, want %v", got, want)
			}
			return nil
		}
	}
	// The managed-by values of kubernetes/pkg/controller/endpointslice and
	// endpointslicemirroring.
	const controller, mirroring = "endpointslice-controller.k8s.io", "endpointslicemirroring-controller.k8s.io"

	runSteps(t, rec, []step{{
		name: "the controller's slice of a ClusterIP Service is never seen",
		write: func(ctx context.Context) error {
			if err := createService(ctx, "web", false); err != nil {
				return err
			}
			return createSlice(ctx, "web-abcde", "web", controller, false)
		},
		want: func(s *model.Snapshot) error {
			if find(s.Services, serviceKey, ns, "web") == nil {
				return fmt.Errorf("service web missing")
			}
			return slicesAre()(s)
		},
	}, {
		name: "the controller's slice of a headless Service",
		write: func(ctx context.Context) error {
			if err := createService(ctx, "db", true); err != nil {
				return err
			}
			return createSlice(ctx, "db-abcde", "db", controller, true)
		},
		want: slicesAre("db-abcde"),
	}, {
		name: "a slice written by hand, and one mirrored from Endpoints",
		write: func(ctx context.Context) error {
			if err := createService(ctx, "legacy", true); err != nil {
				return err
			}
			if err := createSlice(ctx, "legacy-1", "legacy", "", false); err != nil {
				return err
			}
			return createSlice(ctx, "legacy-mirrored", "legacy", mirroring, false)
		},
		want: slicesAre("db-abcde", "legacy-1", "legacy-mirrored"),
	}, {
		// The controller relabels a Service's slices when it stops being
		// headless (an ExternalName Service turned ClusterIP, say): the
		// watch then reports them gone.
		name: "a slice that loses the headless label leaves",
		write: func(ctx context.Context) error {
			es, err := kube.DiscoveryV1().EndpointSlices(ns).Get(ctx, "db-abcde", metav1.GetOptions{})
			if err != nil {
				return err
			}
			delete(es.Labels, corev1.IsHeadlessService)
			_, err = kube.DiscoveryV1().EndpointSlices(ns).Update(ctx, es, metav1.UpdateOptions{})
			return err
		},
		want: slicesAre("legacy-1", "legacy-mirrored"),
	}, {
		name: "and comes back with it",
		write: func(ctx context.Context) error {
			es, err := kube.DiscoveryV1().EndpointSlices(ns).Get(ctx, "db-abcde", metav1.GetOptions{})
			if err != nil {
				return err
			}
			es.Labels[corev1.IsHeadlessService] = ""
			_, err = kube.DiscoveryV1().EndpointSlices(ns).Update(ctx, es, metav1.UpdateOptions{})
			return err
		},
		want: slicesAre("db-abcde", "legacy-1", "legacy-mirrored"),
	}})

	// Every EndpointSlice request selected one of the two sets.
	got := reqs.matching("/apis/discovery.k8s.io/v1/endpointslices")
	if len(got) == 0 {
		t.Fatal("no EndpointSlice requests recorded")
	}
	seen := map[string]bool{}
	for _, r := range got {
		_, sel, _ := strings.Cut(r, "?")
		if sel != headlessSlices && sel != otherSlices {
			t.Errorf("EndpointSlice request %q selects neither %q nor %q", r, headlessSlices, otherSlices)
		}
		seen[sel] = true
	}
	if !seen[headlessSlices] || !seen[otherSlices] {
		t.Errorf("EndpointSlice requests %v: want both selectors", got)
	}
	if n := len(reqs.matching("/api/v1/services")); n == 0 {
		t.Errorf("no Service requests recorded: is the log wired?")
	}
}
