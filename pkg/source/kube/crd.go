package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/ztdns/ztdns/pkg/model/kubeapi"
)

// Whether ServiceEntries are served is Istio's CRD's to say: the source
// watches that one object (a list and watch of customresourcedefinitions
// with the field selector metadata.name, which the API server authorizes
// as that resourceName, so RBAC grants exactly it, see PolicyRules), and
// starts or stops the ServiceEntry watch as it comes, changes the
// versions it serves, and goes. An idle watch costs the API server
// nothing until client-go renews it (every 5 to 10 minutes), where asking
// the discovery API cost a request every few seconds on every node for as
// long as the CRD was missing, and, with the API server down, every
// second. Like every watch, it backs off with jitter (0.8 s doubling to
// 30 s) while the API server does not answer.
//
// A ClusterRole from before this rule (a hand-made one, or manifests
// applied without it) may refuse the CRD: the source then asks discovery,
// open to every authenticated user, once per forbiddenRetry (2 minutes,
// with jitter), and says so in Errors().

const (
	// serviceEntryGroupVersion and serviceEntryResource are the ServiceEntry
	// API ztdns watches. Istio serves networking.istio.io/v1 since 1.22; the
	// older versions carry the same spec and status.
	serviceEntryGroupVersion = serviceEntryGroup + "/" + serviceEntryVersion
	serviceEntryGroup        = "networking.istio.io"
	serviceEntryVersion      = "v1"
	serviceEntryResource     = "serviceentries"
	// ServiceEntryCRD is the name of Istio's ServiceEntry CRD, the one
	// CustomResourceDefinition the source reads (see PolicyRules).
	ServiceEntryCRD = serviceEntryResource + ".networking.istio.io"
	// discoveryTimeout bounds one question to the discovery API.
	discoveryTimeout = 10 * time.Second
)

// Why ServiceEntries are not in the snapshots: the reason label of
// ztdns_kube_serviceentries_unavailable.
const (
	seNotInstalled = "not-installed"
	seNotServed    = "v1-not-served"
	seForbidden    = "forbidden"
)

// seReasons are the reasons, in the order the metric lists them.
var seReasons = []string{seNotInstalled, seNotServed, seForbidden}

// crdState is what the source keeps of the CRD.
type crdState struct {
	name string
	// served are the versions it serves, sorted: none before it is
	// Established, or while it is being deleted.
	served      []string
	terminating bool
}

func crdStateOf(o kubeapi.Object) (crdState, error) {
	c := o.(*kubeapi.CustomResourceDefinition)
	st := crdState{name: c.Name, served: slices.Sorted(slices.Values(c.ServedVersions())), terminating: c.Terminating()}
	if st.terminating {
		st.served = nil
	}
	return st, nil
}

// crdEndpoint is where the CRD is listed and watched: that one object.
func (c *clients) crdEndpoint() endpoint {
	return endpoint{client: c.apiextensions, resource: "customresourcedefinitions",
		fieldSelector: fields.OneTermEqualSelector("metadata.name", ServiceEntryCRD).String(),
		example:       &kubeapi.CustomResourceDefinition{},
		newList:       func() runtime.Object { return &kubeapi.CRDList{} }}
}

// followCRDChange follows the CRD if its store changed since the last
// time. What followCRD does depends on that store alone (and on what it
// did before), and the store tells of its first list and of every change
// (crdChanged), so a wake-up without one has nothing for it. Called by
// Run's goroutine whenever it wakes.
func (r *run) followCRDChange(ctx context.Context, wg *sync.WaitGroup) {
	// Cleared before the store is read: a change after that marks it
	// again, and wakes the loop again.
	if r.crdPending.Swap(false) {
		r.followCRD(ctx, wg)
	}
}

// followCRD starts or stops the ServiceEntry watch as the CRD store says,
// and records why ServiceEntries are missing, if they are. It does nothing
// before the CRD's first list.
func (r *run) followCRD(ctx context.Context, wg *sync.WaitGroup) {
	st := storeOf[crdState](r.stores[kindServiceEntryCRD])
	if st == nil || !st.hasSynced() {
		return
	}
	r.src.crdFollows.Add(1)
	crds, _ := collect(st)
	first := !r.crdKnown
	r.crdKnown = true
	var served []string
	installed := len(crds) > 0 && !crds[0].terminating
	if installed {
		served = crds[0].served
	}
	watching := r.stopServiceEntryWatch != nil
	wanted := slices.Contains(served, serviceEntryVersion)
	var reason, msg string
	switch {
	case !installed:
		reason = seNotInstalled
		msg = fmt.Sprintf("ServiceEntries: CRD %s not installed; running without ServiceEntries until it is", ServiceEntryCRD)
	case !wanted:
		reason = seNotServed
		have := "no version yet (not Established)"
		if len(served) > 0 {
			have = strings.Join(served, ", ")
		}
		msg = fmt.Sprintf("ServiceEntries: CRD %s does not serve %s (it serves %s; Istio serves v1 since 1.22); running without ServiceEntries until it does",
			ServiceEntryCRD, serviceEntryGroupVersion, have)
	}
	r.health.setServiceEntryCRD(reason, msg)
	if r.noIstio != !installed {
		r.noIstio = !installed
		r.warnMeshConfigAbsent()
	}
	switch {
	case wanted && !watching:
		r.startServiceEntries(ctx, wg)
	case !wanted && watching:
		r.stopServiceEntries(!installed)
	case first && !installed:
		r.log.Info("ServiceEntry CRD not installed; running without ServiceEntries until it appears", "crd", ServiceEntryCRD)
	}
}

// servedVersions asks the discovery API which versions of Istio's
// networking group serve ServiceEntries, for when the CRD may not be read:
// v1 alone when it does (one request), else those of the group's other
// versions that do (Istio before 1.22), so that a CRD without v1 reads as
// that, not as no Istio. None: no CRD. An error means no answer (the API
// server is unreachable, say), not "absent".
func (r *run) servedVersions(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, discoveryTimeout)
	defer cancel()
	served, err := r.servesServiceEntries(ctx, serviceEntryVersion)
	switch {
	case err != nil:
		return nil, err
	case served:
		return []string{serviceEntryVersion}, nil
	}
	var group metav1.APIGroup
	if found, err := r.discover(ctx, "/apis/"+serviceEntryGroup, &group); err != nil || !found {
		return nil, err
	}
	var out []string
	for _, v := range group.Versions {
		if v.Version == serviceEntryVersion {
			continue
		}
		served, err := r.servesServiceEntries(ctx, v.Version)
		if err != nil {
			return nil, err
		}
		if served {
			out = append(out, v.Version)
		}
	}
	return out, nil
}

// servesServiceEntries reports whether version of Istio's networking group
// serves ServiceEntries, as discovery says.
func (r *run) servesServiceEntries(ctx context.Context, version string) (bool, error) {
	var list metav1.APIResourceList
	if found, err := r.discover(ctx, "/apis/"+serviceEntryGroup+"/"+version, &list); err != nil || !found {
		return false, err
	}
	for _, res := range list.APIResources {
		if res.Name == serviceEntryResource {
			return true, nil
		}
	}
	return false, nil
}

// discover reads the discovery document at path into out; found is false
// when the API server serves none there.
func (r *run) discover(ctx context.Context, path string, out any) (found bool, err error) {
	raw, err := r.clients.core.Get().AbsPath(path).Do(ctx).Raw()
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err == nil {
		err = json.Unmarshal(raw, out)
	}
	if err != nil {
		return false, fmt.Errorf("discovery of %s: %w", strings.TrimPrefix(path, "/apis/"), err)
	}
	return true, nil
}

// discoveredCRD is the CRD as discovery shows it: serving the versions
// that serve ServiceEntries (servedVersions), or absent (nil).
func (r *run) discoveredCRD(ctx context.Context) (*kubeapi.CustomResourceDefinition, error) {
	served, err := r.servedVersions(ctx)
	if err != nil || len(served) == 0 {
		return nil, err
	}
	c := &kubeapi.CustomResourceDefinition{ObjectMeta: kubeapi.ObjectMeta{Name: ServiceEntryCRD}}
	for _, v := range served {
		c.Spec.Versions = append(c.Spec.Versions, kubeapi.CRDVersion{Name: v, Served: true})
	}
	c.Status.Conditions = []kubeapi.CRDCondition{{Type: "Established", Status: "True"}}
	return c, nil
}

// crdFromDiscovery wraps the CRD's list and watch: refused by RBAC, the
// list is discovery's answer, and the watch a stand-in that asks
// discovery again after forbiddenRetry and ends, so that the reflector
// watches again (and gets the real watch once it is allowed).
func (r *run) crdFromDiscovery(
	list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error),
) (func(context.Context, metav1.ListOptions) (runtime.Object, error), func(context.Context, metav1.ListOptions) (watch.Interface, error)) {
	refused := refusedBy(func(err error) { r.health.setCRDForbidden(err, r.src.forbiddenRetry) })
	return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			l, err := list(ctx, o)
			if !refused(ctx, err) {
				return l, err
			}
			c, err := r.discoveredCRD(ctx)
			if err != nil {
				return nil, err
			}
			out := &kubeapi.CRDList{}
			if c != nil {
				out.Items = append(out.Items, *c)
			}
			return out, nil
		}, func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			w, err := watchFn(ctx, o)
			if !refused(ctx, err) {
				return w, err
			}
			var initial []watch.Event
			if initialEvents(o) {
				c, err := r.discoveredCRD(ctx)
				if err != nil {
					return nil, err
				}
				if c != nil {
					initial = append(initial, watch.Event{Type: watch.Added, Object: c})
				}
			}
			r.health.observe(ctx, kindServiceEntryCRD.String(), nil)
			return standIn(ctx, o, &kubeapi.CustomResourceDefinition{}, initial, r.src.forbiddenRetry, func(ctx context.Context) []watch.Event {
				c, err := r.discoveredCRD(ctx)
				switch {
				case err != nil:
					return nil // asked again at the next watch
				case c == nil:
					gone := &kubeapi.CustomResourceDefinition{ObjectMeta: kubeapi.ObjectMeta{Name: ServiceEntryCRD}}
					return []watch.Event{{Type: watch.Deleted, Object: gone}}
				}
				return []watch.Event{{Type: watch.Modified, Object: c}}
			}), nil
		}
}
