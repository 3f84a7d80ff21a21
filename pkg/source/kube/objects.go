package kube

import (
	"cmp"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/ztdns/ztdns/pkg/model/kubeapi"
)

// objKey names an object: its namespace (empty for cluster-scoped kinds)
// and name, both shared with the object's own strings.
type objKey struct{ namespace, name string }

func (k objKey) compare(o objKey) int {
	return cmp.Or(strings.Compare(k.namespace, o.namespace), strings.Compare(k.name, o.name))
}

// stored is what the source keeps of one API object: its model form, or why
// it could not be converted. Such objects stay, so that a later update can
// fix them, but out of snapshots.
type stored[T any] struct {
	obj T
	err error
}

// same reports whether two stored forms are equal: an update that changed
// nothing ztdns reads (an annotation, a managed field, a status condition)
// changes nothing here.
func (s *stored[T]) same(o *stored[T]) bool {
	if (s.err == nil) != (o.err == nil) || (s.err != nil && s.err.Error() != o.err.Error()) {
		return false
	}
	return reflect.DeepEqual(s.obj, o.obj)
}

// store holds one watched resource's objects in their model form. It is
// the store of a client-go Reflector, which lists and watches the resource
// and calls it with each object it decodes (package kubeapi's); the API
// object is garbage as soon as it is converted. There is no informer: no
// queue, no second cache, no per-object key string.
type store[T any] struct {
	kind    kind
	log     *slog.Logger
	convert func(kubeapi.Object) (T, error)
	// changed is told of every change that matters to a snapshot.
	changed func(kind)

	mu     sync.Mutex
	objs   map[objKey]*stored[T]
	synced bool // the first list (or the initial events of a watch) is in
}

func newStore[T any](k kind, log *slog.Logger, convert func(kubeapi.Object) (T, error), changed func(kind)) *store[T] {
	return &store[T]{kind: k, log: log, convert: convert, changed: changed, objs: map[objKey]*stored[T]{}}
}

// modelOf converts the kubeapi objects that reduce to T.
func modelOf[T any](o kubeapi.Object) (T, error) {
	return o.(interface{ Model() (T, error) }).Model()
}

// reduce converts an object the reflector hands over; ok is false for
// anything else (it never hands over anything else).
func (s *store[T]) reduce(obj any) (key objKey, st *stored[T], ok bool) {
	o, ok := obj.(kubeapi.Object)
	if !ok {
		return key, nil, false
	}
	m := o.Meta()
	key = objKey{m.Namespace, m.Name}
	v, err := s.convert(o)
	if err != nil {
		s.log.Warn("object left out: it cannot be converted", "kind", s.kind.String(),
			"namespace", m.Namespace, "name", m.Name, "error", err)
	}
	return key, &stored[T]{obj: v, err: err}, true
}

// Add and Update store an object the watch reported.
func (s *store[T]) Add(obj any) error { return s.Update(obj) }

func (s *store[T]) Update(obj any) error {
	key, st, ok := s.reduce(obj)
	if !ok {
		return nil
	}
	s.mu.Lock()
	old := s.objs[key]
	s.objs[key] = st
	synced := s.synced
	s.mu.Unlock()
	if synced && (old == nil || !old.same(st)) {
		s.changed(s.kind)
	}
	return nil
}

// Delete forgets an object the watch reported deleted.
func (s *store[T]) Delete(obj any) error {
	o, ok := obj.(kubeapi.Object)
	if !ok {
		return nil
	}
	m := o.Meta()
	key := objKey{m.Namespace, m.Name}
	s.mu.Lock()
	_, had := s.objs[key]
	delete(s.objs, key)
	synced := s.synced
	s.mu.Unlock()
	if synced && had {
		s.changed(s.kind)
	}
	return nil
}

// Replace takes a complete list: the first one, or a relist after the
// watch could not resume.
func (s *store[T]) Replace(list []any, _ string) error {
	objs := make(map[objKey]*stored[T], len(list))
	for _, obj := range list {
		if key, st, ok := s.reduce(obj); ok {
			objs[key] = st
		}
	}
	s.mu.Lock()
	old, first := s.objs, !s.synced
	s.objs, s.synced = objs, true
	s.mu.Unlock()
	if first || !sameObjects(old, objs) {
		s.changed(s.kind)
	}
	return nil
}

// Resync is for stores that replay their content; this one has no one to
// replay it to.
func (s *store[T]) Resync() error { return nil }

// hasSynced reports whether the first complete list is in.
func (s *store[T]) hasSynced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

func sameObjects[T any](a, b map[objKey]*stored[T]) bool {
	if len(a) != len(b) {
		return false
	}
	for k, x := range a {
		if y, ok := b[k]; !ok || !x.same(y) {
			return false
		}
	}
	return true
}

// collect returns the model objects of s, or of nothing when s is nil or
// has not synced, sorted by namespace and name so that snapshots list
// objects in the same order on every node and in every run, and the
// conversion errors of those left out, in the same order.
func collect[T any](s *store[T]) ([]T, []error) {
	if s == nil {
		return nil, nil
	}
	type item struct {
		key objKey
		st  *stored[T]
	}
	s.mu.Lock()
	if !s.synced {
		s.mu.Unlock()
		return nil, nil
	}
	items := make([]item, 0, len(s.objs))
	for k, st := range s.objs {
		items = append(items, item{k, st})
	}
	s.mu.Unlock()
	slices.SortFunc(items, func(a, b item) int { return a.key.compare(b.key) })
	out := make([]T, 0, len(items))
	var errs []error
	for _, it := range items {
		if it.st.err != nil {
			errs = append(errs, it.st.err)
			continue
		}
		out = append(out, it.st.obj)
	}
	return out, errs
}
