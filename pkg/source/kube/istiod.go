package kube

import (
	"context"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
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

// allocatorLock is what the informer keeps of the lock: that it exists.
type allocatorLock struct{}

func convertAllocatorLock(*corev1.ConfigMap) (allocatorLock, error) { return allocatorLock{}, nil }

// allocatorLockListWatch lists and watches the one ConfigMap by name (RBAC
// grants exactly that name: PolicyRules). Without that permission (a chart
// from before it was needed) the source runs as if istiod did not allocate,
// says so once, and relies on status.addresses alone.
func (r *run) allocatorLockListWatch() listWatch {
	c := r.clients.kube.CoreV1().ConfigMaps(r.src.istioNamespace)
	byName := fields.OneTermEqualSelector("metadata.name", IstiodAllocatorLock).String()
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
	return listWatch{
		example: &corev1.ConfigMap{},
		list: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = byName
			l, err := c.List(ctx, o)
			if forbidden(err) {
				return &corev1.ConfigMapList{}, nil
			}
			return l, err
		},
		watch: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = byName
			w, err := c.Watch(ctx, o)
			if forbidden(err) {
				return watch.NewFake(), nil // nothing will ever come
			}
			return w, err
		},
	}
}
