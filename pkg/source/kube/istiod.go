package kube

import (
	"context"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/ztdns/ztdns/pkg/model/kubeapi"
)

// IstiodAllocatorLock is the leader-election lock istiod's VIP allocator
// holds (pilot/pkg/leaderelection: IPAutoallocateController, a ConfigMap
// lock in istiod's namespace). istiod creates it when it runs with
// PILOT_ENABLE_IP_AUTOALLOCATE (the default since Istio 1.25) and leaves it
// when it stops, so its presence says "istiod allocates VIPs here", also
// while istiod is down, and before it has written any status.addresses.
const IstiodAllocatorLock = "istio-ip-autoallocate"

// DefaultIstioNamespace is where istiod runs unless told otherwise.
const DefaultIstioNamespace = "istio-system"

// WithIstioNamespace sets istiod's namespace, where the source looks for
// IstiodAllocatorLock (default DefaultIstioNamespace); empty turns the look
// off.
func WithIstioNamespace(ns string) Option { return func(s *Source) { s.istioNamespace = ns } }

// withForbiddenRetry sets how often a lock the source may not read is
// asked for again (default 2 minutes: a node's agent costs the API server
// one refused list and watch per period until its RBAC is fixed).
func withForbiddenRetry(d time.Duration) Option { return func(s *Source) { s.forbiddenRetry = d } }

// allocatorLock is what the source keeps of the lock: that it exists.
type allocatorLock struct{ namespace, name string }

// tolerateForbidden wraps the lock's list and watch (by name: RBAC grants
// exactly that name, see PolicyRules). Without that permission (a chart
// from before it was needed, or one whose binding the API server has not
// applied yet when the agent starts) the source runs as if istiod did not
// allocate, says so once, relies on status.addresses alone, and asks again
// every forbiddenRetry.
func (r *run) tolerateForbidden(
	list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error),
) (func(context.Context, metav1.ListOptions) (runtime.Object, error), func(context.Context, metav1.ListOptions) (watch.Interface, error)) {
	var once sync.Once
	forbidden := func(err error) bool {
		if !apierrors.IsForbidden(err) {
			return false
		}
		once.Do(func() {
			r.log.Warn("cannot read istiod's VIP allocator lock; --vip-source=auto then sees istiod allocate only from status.addresses",
				"namespace", r.src.istioNamespace, "configMap", IstiodAllocatorLock, "err", err)
		})
		return true
	}
	return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			l, err := list(ctx, o)
			if forbidden(err) {
				return &kubeapi.ConfigMapList{}, nil
			}
			return l, err
		}, func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			w, err := watchFn(ctx, o)
			if forbidden(err) {
				// Running without the lock is no failure: this stand-in
				// is the watch that works.
				r.health.observe(ctx, kindIstiodAllocator.String(), nil)
				return noLock(o, r.src.forbiddenRetry), nil
			}
			return w, err
		}
}

// noLock is the watch of a lock the source may not read: nothing comes,
// but a watch that was asked for its initial events ends them, as the API
// server would, so that the reflector counts itself synced. It ends after
// retry, and the reflector watches again: with the permission granted
// since, the API server's watch then starts with the lock if it exists.
func noLock(o metav1.ListOptions, retry time.Duration) watch.Interface {
	w := watch.NewFakeWithChanSize(1, false)
	if o.SendInitialEvents != nil && *o.SendInitialEvents {
		end := "true"
		w.Action(watch.Bookmark, &kubeapi.ConfigMap{ObjectMeta: kubeapi.ObjectMeta{
			Annotations: kubeapi.Annotations{InitialEventsEnd: &end}}})
	}
	// Armed after the send: a Stop closing the channel must not race it.
	time.AfterFunc(retry, w.Stop)
	return w
}
