package kube

import (
	"context"
	"fmt"
	"sync"

	istionetworkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/ztdns/ztdns/pkg/model"
)

// listWatch lists and watches one kind of object through the typed clients.
type listWatch struct {
	example runtime.Object
	list    func(context.Context, metav1.ListOptions) (runtime.Object, error)
	watch   func(context.Context, metav1.ListOptions) (watch.Interface, error)
}

// listWatchFor returns the list and watch calls for k, cluster-wide except
// for Pods, which are those of the source's node when it has one.
func (r *run) listWatchFor(k kind) listWatch {
	kube, istio := r.clients.kube, r.clients.istio
	switch k {
	case kindNamespaces:
		c := kube.CoreV1().Namespaces()
		return listWatch{&corev1.Namespace{}, listOf(c.List), c.Watch}
	case kindServices:
		c := kube.CoreV1().Services(metav1.NamespaceAll)
		return listWatch{&corev1.Service{}, listOf(c.List), c.Watch}
	case kindEndpointSlices:
		c := kube.DiscoveryV1().EndpointSlices(metav1.NamespaceAll)
		return listWatch{&discoveryv1.EndpointSlice{}, listOf(c.List), c.Watch}
	case kindServiceEntries:
		c := istio.NetworkingV1().ServiceEntries(metav1.NamespaceAll)
		return listWatch{&istionetworkingv1.ServiceEntry{}, listOf(c.List), c.Watch}
	case kindPods:
		c := kube.CoreV1().Pods(metav1.NamespaceAll)
		lw := listWatch{&corev1.Pod{}, listOf(c.List), c.Watch}
		if r.src.nodeName == "" {
			return lw
		}
		onNode := fields.OneTermEqualSelector("spec.nodeName", r.src.nodeName).String()
		return listWatch{
			example: lw.example,
			list: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				o.FieldSelector = onNode
				return lw.list(ctx, o)
			},
			watch: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				o.FieldSelector = onNode
				return lw.watch(ctx, o)
			},
		}
	case kindIstiodAllocator:
		return r.allocatorLockListWatch()
	}
	panic(fmt.Sprintf("kube: no list/watch for kind %d", k))
}

// listOf adapts a typed List method to the informer's list function.
func listOf[L runtime.Object](list func(context.Context, metav1.ListOptions) (L, error)) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
	return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return list(ctx, o)
	}
}

// transformFor returns k's informer transform and its "nothing ztdns reads
// changed" test for updates.
func (r *run) transformFor(k kind) (cache.TransformFunc, func(oldObj, newObj any) bool) {
	switch k {
	case kindNamespaces:
		return transformTo(k.String(), r.log, convertNamespace), sameModel[model.Namespace]
	case kindServices:
		return transformTo(k.String(), r.log, convertService), sameModel[model.Service]
	case kindEndpointSlices:
		return transformTo(k.String(), r.log, convertEndpointSlice), sameModel[model.EndpointSlice]
	case kindServiceEntries:
		return transformTo(k.String(), r.log, convertServiceEntry), sameModel[model.ServiceEntry]
	case kindPods:
		return transformTo(k.String(), r.log, convertPod), sameModel[model.Pod]
	case kindIstiodAllocator:
		return transformTo(k.String(), r.log, convertAllocatorLock), sameModel[allocatorLock]
	}
	panic(fmt.Sprintf("kube: no transform for kind %d", k))
}

// newInformer makes the informer for k and records it in r. Its list and
// watch calls report to health; its cache holds stored model objects; its
// events mark k changed.
func (r *run) newInformer(k kind) (cache.SharedIndexInformer, error) {
	lw := r.listWatchFor(k)
	observe := func(ctx context.Context, err error) {
		r.health.observe(ctx, k.String(), err)
		if k == kindServiceEntries && apierrors.IsNotFound(err) {
			select { // the CRD may be gone
			case r.recheck <- struct{}{}:
			default:
			}
		}
	}
	inf := cache.NewSharedIndexInformerWithOptions(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			obj, err := lw.list(ctx, o)
			observe(ctx, err)
			return obj, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			w, err := lw.watch(ctx, o)
			observe(ctx, err)
			return w, err
		},
	}, lw.example, cache.SharedIndexInformerOptions{Indexers: cache.Indexers{}})

	transform, unchanged := r.transformFor(k)
	if err := inf.SetTransform(transform); err != nil {
		return nil, fmt.Errorf("%s informer: %w", k, err)
	}
	// The default handler logs through klog; failures are logged (once, on
	// the transition) by health instead.
	if err := inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, _ *cache.Reflector, err error) {
		observe(ctx, err)
	}); err != nil {
		return nil, fmt.Errorf("%s informer: %w", k, err)
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { r.changed(k) },
		UpdateFunc: func(oldObj, newObj any) {
			if !unchanged(oldObj, newObj) {
				r.changed(k)
			}
		},
		DeleteFunc: func(any) { r.changed(k) },
	})
	if err != nil {
		return nil, fmt.Errorf("%s informer: %w", k, err)
	}
	r.informers[k], r.handled[k] = inf, reg.HasSynced
	return inf, nil
}

// startServiceEntries starts the ServiceEntry informer. When announce is
// set (the CRD appeared after the first snapshot), a snapshot with the
// ServiceEntries follows once it has synced; before the first snapshot, that
// snapshot waits for it anyway.
func (r *run) startServiceEntries(ctx context.Context, wg *sync.WaitGroup, announce bool) error {
	inf, err := r.newInformer(kindServiceEntries)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	r.stopServiceEntryInformer = cancel
	wg.Go(func() { inf.RunWithContext(ctx) })
	if announce {
		handled := r.handled[kindServiceEntries]
		wg.Go(func() {
			if cache.WaitForCacheSync(ctx.Done(), inf.HasSynced, handled) {
				r.changed(kindServiceEntries)
			}
		})
	}
	r.log.Info("watching ServiceEntries", "groupVersion", serviceEntryGroupVersion)
	return nil
}

// stopServiceEntries stops the ServiceEntry informer after the CRD was
// deleted (which deletes every ServiceEntry with it).
func (r *run) stopServiceEntries() {
	if r.stopServiceEntryInformer == nil {
		return
	}
	r.stopServiceEntryInformer()
	r.stopServiceEntryInformer = nil
	r.informers[kindServiceEntries], r.handled[kindServiceEntries] = nil, nil
	r.health.forget(kindServiceEntries.String())
	r.changed(kindServiceEntries)
	r.log.Info("ServiceEntry CRD deleted; running without ServiceEntries until it is back",
		"pollInterval", r.src.crdPollInterval)
}

// hasSynced reports whether every running informer has listed its resource
// and its event handler has seen the initial list, so that the list's events
// do not trigger a second snapshot just after the first.
func (r *run) hasSynced() bool {
	for k, inf := range r.informers {
		if inf != nil && !(inf.HasSynced() && r.handled[k]()) {
			return false
		}
	}
	return true
}
