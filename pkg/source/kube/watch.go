package kube

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/model/kubeapi"
	"github.com/ztdns/ztdns/pkg/source"
)

// Labels of EndpointSlices (k8s.io/api: discovery/v1 LabelManagedBy, core/v1
// IsHeadlessService; set by pkg/controller/endpointslice).
const (
	labelManagedBy = "endpointslice.kubernetes.io/managed-by"
	// endpointSliceController is the EndpointSlice controller's managed-by
	// value; it labels the slices of a Service without a cluster IP (a
	// headless one) labelHeadless, and keeps the label in step with the
	// Service.
	endpointSliceController = "endpointslice-controller.k8s.io"
	labelHeadless           = "service.kubernetes.io/headless"
)

// Label selectors of the two EndpointSlice watches: together they see every
// slice of a headless Service and, of the slices the controller makes for
// the other Services (nearly all slices in a cluster), none.
var (
	headlessSlices = labelHeadless
	otherSlices    = labelManagedBy + "!=" + endpointSliceController + ",!" + labelHeadless
)

var _ source.PodWatcher = (*Source)(nil)

// WatchesPods marks a source.PodWatcher: the source watches every pod of
// its node (of the cluster without a node name), so a pod a CNI ADD names
// that its last snapshot lacks is one its watch has not delivered yet.
func (s *Source) WatchesPods() {}

// endpointFor says where objects of k are listed and watched: cluster-wide,
// except Pods, which are those of the source's node when it has one, and
// istiod's lock and mesh config, one ConfigMap each.
func (r *run) endpointFor(k kind) endpoint {
	c := r.clients
	switch k {
	case kindNamespaces:
		return endpoint{client: c.core, resource: "namespaces", example: &kubeapi.Namespace{},
			newList: func() runtime.Object { return &kubeapi.NamespaceList{} }}
	case kindServices:
		return endpoint{client: c.core, resource: "services", example: &kubeapi.Service{},
			newList: func() runtime.Object { return &kubeapi.ServiceList{} }}
	case kindEndpointSlices, kindOtherEndpointSlices:
		e := endpoint{client: c.discovery, resource: "endpointslices", labelSelector: headlessSlices, example: &kubeapi.EndpointSlice{},
			newList: func() runtime.Object { return &kubeapi.EndpointSliceList{} }}
		if k == kindOtherEndpointSlices {
			e.labelSelector = otherSlices
		}
		return e
	case kindServiceEntries:
		return endpoint{client: c.istio, resource: serviceEntryResource, example: &kubeapi.ServiceEntry{},
			newList: func() runtime.Object { return &kubeapi.ServiceEntryList{} }}
	case kindPods:
		e := endpoint{client: c.core, resource: "pods", example: &kubeapi.Pod{},
			newList: func() runtime.Object { return &kubeapi.PodList{} }}
		// Finished pods' IPs are no longer their own: not asked for.
		var sel []fields.Selector
		if r.src.nodeName != "" {
			sel = append(sel, fields.OneTermEqualSelector("spec.nodeName", r.src.nodeName))
		}
		for _, phase := range kubeapi.FinishedPhases {
			sel = append(sel, fields.OneTermNotEqualSelector("status.phase", phase))
		}
		e.fieldSelector = fields.AndSelectors(sel...).String()
		return e
	case kindIstiodAllocator:
		return r.istiodConfigMap(IstiodAllocatorLock)
	case kindMeshConfig:
		return r.istiodConfigMap(r.src.meshConfigMap)
	case kindServiceEntryCRD:
		return c.crdEndpoint()
	case kindKubeDNS:
		return configMapEndpoint(c, KubeDNSNamespace, KubeDNSConfigMap)
	}
	panic(fmt.Sprintf("kube: no endpoint for kind %d", k))
}

// istiodConfigMap is the endpoint of one ConfigMap in istiod's namespace,
// by name: the only ConfigMaps PolicyRules grants, each by its name.
func (r *run) istiodConfigMap(name string) endpoint {
	return configMapEndpoint(r.clients, r.src.istioNamespace, name)
}

// configMapEndpoint is the endpoint of the ConfigMap ns/name alone.
func configMapEndpoint(c *clients, ns, name string) endpoint {
	return endpoint{client: c.core, namespace: ns, resource: "configmaps",
		fieldSelector: fields.OneTermEqualSelector("metadata.name", name).String(), example: &kubeapi.ConfigMap{},
		newList: func() runtime.Object { return &kubeapi.ConfigMapList{} }}
}

// serviceEntryModel reduces a ServiceEntry, warning of what it skipped in
// its addresses (status.addresses, which has no schema; an address with an
// IPv6 zone): the rest is served.
func (r *run) serviceEntryModel(o kubeapi.Object) (model.ServiceEntry, error) {
	out, skipped, err := o.(*kubeapi.ServiceEntry).ModelSkipping()
	if skipped != nil && err == nil {
		m := o.Meta()
		r.log.Warn("object's addresses hold values no answer can carry; they are skipped, the rest is served",
			"kind", kindServiceEntries.String(), "namespace", m.Namespace, "name", m.Name, "skipped", skipped)
	}
	return out, err
}

// newStore makes k's store.
func (r *run) newStore(k kind) objectStore {
	switch k {
	case kindNamespaces:
		return newStore(k, r.log, modelOf[model.Namespace], func(n *model.Namespace) objKey { return objKey{name: n.Name} }, r.changed)
	case kindServices:
		return newStore(k, r.log, modelOf[model.Service], func(s *model.Service) objKey { return objKey{s.Namespace, s.Name} }, r.changed)
	case kindEndpointSlices, kindOtherEndpointSlices:
		return newStore(k, r.log, modelOf[model.EndpointSlice], func(s *model.EndpointSlice) objKey { return objKey{s.Namespace, s.Name} }, r.changed)
	case kindServiceEntries:
		return newStore(k, r.log, r.serviceEntryModel, func(s *model.ServiceEntry) objKey { return objKey{s.Namespace, s.Name} }, r.changed)
	case kindPods:
		return newStore(k, r.log, modelOf[model.Pod], func(p *model.Pod) objKey { return objKey{p.Namespace, p.Name} }, r.changed)
	case kindIstiodAllocator:
		return newStore(k, r.log, func(o kubeapi.Object) (allocatorLock, error) {
			return allocatorLock{o.Meta().Namespace, o.Meta().Name}, nil
		},
			func(l *allocatorLock) objKey { return objKey{l.namespace, l.name} }, r.changed)
	case kindMeshConfig:
		return newStore(k, r.log, meshConfigOf, func(m *meshConfig) objKey { return objKey{m.namespace, m.name} }, r.changed)
	case kindKubeDNS:
		return newStore(k, r.log, corefileOf(r.src.clusterDomain), func(c *corefile) objKey { return objKey{c.namespace, c.name} }, r.changed)
	case kindServiceEntryCRD:
		// Not part of snapshots: a change only wakes Run to follow it.
		return newStore(k, r.log, crdStateOf, func(c *crdState) objKey { return objKey{name: c.name} }, func(kind) { r.crdChanged() })
	}
	panic(fmt.Sprintf("kube: no store for kind %d", k))
}

// listWatch is k's list and watch calls at e, filling st, each reporting
// to health. A list that works clears no failure: the reflector lists
// exactly when its watches fail, so only a watch that works (see
// judgeWatch) does. A call refused by RBAC names what was refused.
func (r *run) listWatch(k kind, e endpoint, st objectStore) *cache.ListWatch {
	observe := func(ctx context.Context, err error) { r.health.observe(ctx, k.String(), err) }
	list := func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		out, err := r.clients.list(ctx, e, o)
		return out, refusal("list", e, err)
	}
	watchFn := func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
		start := time.Now()
		w, err := r.clients.watch(ctx, e, o)
		if err != nil {
			return nil, refusal("watch", e, err)
		}
		return judgeWatch(w, start, time.Now(), func(err error) { observe(ctx, err) }), nil
	}
	switch k {
	case kindIstiodAllocator:
		list, watchFn = r.tolerateForbidden(k, e, st, r.lockForbidden(), list, watchFn)
	case kindMeshConfig:
		list, watchFn = r.tolerateForbidden(k, e, st, r.meshConfigForbidden(), list, watchFn)
	case kindKubeDNS:
		list, watchFn = r.tolerateForbidden(k, e, st, r.kubeDNSForbidden(), list, watchFn)
	case kindServiceEntries:
		// As without the CRD: snapshots without ServiceEntries, and a
		// note in Errors() and the metric; refused once some were
		// read, those.
		list, watchFn = r.tolerateForbidden(k, e, st, r.health.setServiceEntriesForbidden, list, watchFn)
	case kindServiceEntryCRD:
		list, watchFn = r.crdFromDiscovery(list, watchFn)
	}
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			obj, err := list(ctx, o)
			if err != nil {
				observe(ctx, err)
			}
			return obj, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			w, err := watchFn(ctx, o)
			if err != nil && !watchListRefused(o, err) {
				observe(ctx, err)
			}
			return w, err
		},
	}
}

// refusal adds to an RBAC refusal (403) of verb on e what was refused, in
// the terms of a ClusterRole rule; other errors pass unchanged. The API
// server's own message says it too, but in a sentence that is easy to miss
// in a list of failing watches.
func refusal(verb string, e endpoint, err error) error {
	if !apierrors.IsForbidden(err) {
		return err
	}
	res := e.resource
	if g := e.client.APIVersion().Group; g != "" {
		res += "." + g
	}
	return &forbiddenError{what: fmt.Sprintf("forbidden to %s %s (RBAC)", verb, res), err: err}
}

// forbiddenError is an RBAC refusal with what was refused; errors.As and
// apierrors.IsForbidden see the API server's error through it.
type forbiddenError struct {
	what string
	err  error
}

func (e *forbiddenError) Error() string { return e.what + ": " + e.err.Error() }
func (e *forbiddenError) Unwrap() error { return e.err }

// watchListRefused reports whether err is an API server's refusal of a
// watch-list request (sendInitialEvents): one without the WatchList
// feature gate on answers it as invalid, and
// the reflector then lists and watches as before, which is no failure.
func watchListRefused(o metav1.ListOptions, err error) bool {
	return o.SendInitialEvents != nil && *o.SendInitialEvents && apierrors.IsInvalid(err)
}

// start runs k's reflector until ctx ends, filling a new store for k.
func (r *run) start(ctx context.Context, wg *sync.WaitGroup, k kind) {
	st := r.newStore(k)
	// client-go's reflector logs every failed call, at error level, each
	// time it retries; health logs a failure once, when it starts.
	logger := logr.FromSlogHandler(debugOnly{r.log.With("resource", k.String()).Handler()})
	ctx = klog.NewContext(ctx, logger)
	e := r.endpointFor(k)
	lw := r.listWatch(k, e, st)
	if k == kindIstiodAllocator {
		lw.WatchFuncWithContext = r.lockWatch(e, st, lw.ListWithContextFunc, lw.WatchFuncWithContext)
	}
	refl := cache.NewReflectorWithOptions(lw, e.example, st, cache.ReflectorOptions{
		Name: k.String(), TypeDescription: k.String(), Logger: &logger,
	})
	r.stores[k] = st
	wg.Go(func() { refl.RunWithContext(ctx) })
}

// startServiceEntries starts watching ServiceEntries. When the CRD appeared
// after the first snapshot, the store's first list brings a snapshot with
// them; before it, the first snapshot waits for that list anyway.
func (r *run) startServiceEntries(ctx context.Context, wg *sync.WaitGroup) {
	ctx, cancel := context.WithCancel(ctx)
	r.stopServiceEntryWatch = cancel
	r.start(ctx, wg, kindServiceEntries)
	r.log.Info("watching ServiceEntries", "groupVersion", serviceEntryGroupVersion)
}

// stopServiceEntries stops the ServiceEntry watch after the CRD was
// deleted (which deletes every ServiceEntry with it) or stopped serving v1.
func (r *run) stopServiceEntries(deleted bool) {
	if r.stopServiceEntryWatch == nil {
		return
	}
	r.stopServiceEntryWatch()
	r.stopServiceEntryWatch = nil
	r.stores[kindServiceEntries] = nil
	r.health.forget(kindServiceEntries.String())
	r.health.setServiceEntriesForbidden(nil, false)
	r.changed(kindServiceEntries)
	if deleted {
		r.log.Info("ServiceEntry CRD deleted; running without ServiceEntries until it is back")
	} else {
		r.log.Info("ServiceEntry CRD no longer serves " + serviceEntryGroupVersion + "; running without ServiceEntries until it does")
	}
}

// hasSynced reports whether every running store has its first list, and
// the CRD's has been acted on.
func (r *run) hasSynced() bool {
	if !r.crdKnown {
		return false
	}
	for _, st := range r.stores {
		if st != nil && !st.hasSynced() {
			return false
		}
	}
	return true
}

// debugOnly passes every record on at debug level.
type debugOnly struct{ slog.Handler }

func (h debugOnly) Enabled(ctx context.Context, _ slog.Level) bool {
	return h.Handler.Enabled(ctx, slog.LevelDebug)
}

func (h debugOnly) Handle(ctx context.Context, rec slog.Record) error {
	rec.Level = slog.LevelDebug
	return h.Handler.Handle(ctx, rec)
}

func (h debugOnly) WithAttrs(attrs []slog.Attr) slog.Handler {
	return debugOnly{h.Handler.WithAttrs(attrs)}
}

func (h debugOnly) WithGroup(name string) slog.Handler { return debugOnly{h.Handler.WithGroup(name)} }
