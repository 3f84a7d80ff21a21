package kube

import (
	"cmp"
	"log/slog"
	"reflect"
	"strings"

	istionetworkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/ztdns/ztdns/pkg/model"
)

// stored is what an informer's cache holds in place of the API object: the
// model form of the object (or why it could not be converted) and the three
// metadata fields client-go itself reads, the key (namespace and name) and the
// resourceVersion. Everything else of the API object is garbage as soon as
// the informer's transform has run.
type stored[T any] struct {
	namespace       string
	name            string
	resourceVersion string
	obj             T
	// err is why the object could not be converted; such objects stay in the
	// cache, so that a later update can fix them, but out of snapshots.
	err error
}

// GetObjectMeta lets client-go's key functions and stores read the identity
// of a stored object: meta.Accessor accepts any ObjectMetaAccessor. The
// ObjectMeta is made on demand so that the cache does not keep one per object.
func (s *stored[T]) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Namespace: s.namespace, Name: s.name, ResourceVersion: s.resourceVersion}
}

// compare orders stored objects by namespace, then name, so snapshots
// list objects in the same order on every node and in every run.
func (s *stored[T]) compare(o *stored[T]) int {
	return cmp.Or(strings.Compare(s.namespace, o.namespace), strings.Compare(s.name, o.name))
}

// transformTo returns an informer transform that converts API objects of
// type A with convert and stores the result. Conversion failures are logged
// with the object's namespace and name and kept in the stored object.
//
// The transform must be idempotent: client-go passes objects that already
// went through it back in when it replaces the cache after a (watch-)list.
// Anything that is not an A (a stored object, a deletion tombstone) passes
// through unchanged.
func transformTo[A metav1.Object, T any](kind string, log *slog.Logger, convert func(A) (T, error)) cache.TransformFunc {
	return func(obj any) (any, error) {
		api, ok := obj.(A)
		if !ok {
			return obj, nil
		}
		m, err := convert(api)
		if err != nil {
			log.Warn("object left out: it cannot be converted", "kind", kind,
				"namespace", api.GetNamespace(), "name", api.GetName(), "error", err)
		}
		return &stored[T]{
			namespace:       api.GetNamespace(),
			name:            api.GetName(),
			resourceVersion: api.GetResourceVersion(),
			obj:             m,
			err:             err,
		}, nil
	}
}

// sameModel reports whether an informer update changed nothing ztdns reads
// (an annotation, a managed field, a status condition): both sides are
// stored objects with equal model forms and conversion results.
func sameModel[T any](oldObj, newObj any) bool {
	o, ok1 := oldObj.(*stored[T])
	n, ok2 := newObj.(*stored[T])
	if !ok1 || !ok2 {
		return false
	}
	if (o.err == nil) != (n.err == nil) || (o.err != nil && o.err.Error() != n.err.Error()) {
		return false
	}
	return reflect.DeepEqual(o.obj, n.obj)
}

func convertService(s *corev1.Service) (model.Service, error) { return model.FromService(s) }

func convertEndpointSlice(s *discoveryv1.EndpointSlice) (model.EndpointSlice, error) {
	return model.FromEndpointSlice(s)
}

func convertNamespace(n *corev1.Namespace) (model.Namespace, error) {
	return model.FromNamespace(n), nil
}

func convertPod(p *corev1.Pod) (model.Pod, error) { return model.FromPod(p) }

func convertServiceEntry(se *istionetworkingv1.ServiceEntry) (model.ServiceEntry, error) {
	return model.FromServiceEntry(&se.ObjectMeta, &se.Spec, &se.Status)
}
