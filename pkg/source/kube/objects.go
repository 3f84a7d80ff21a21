package kube

import (
	"cmp"
	"log/slog"
	"maps"
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

// store holds one watched resource's objects in their model form. It is
// the store of a client-go Reflector, which lists and watches the resource
// and calls it with each object it decodes (package kubeapi's); the API
// object is garbage as soon as it is converted. There is no informer: no
// queue, no second cache, no per-object key string.
//
// An object is kept once, in the slice of the last snapshot (base, sorted by
// key, never changed once made) unless it changed since: changes holds the
// new form of those (nil for one deleted), until the next snapshot merges
// them in. So the store costs no more than the snapshot's own slice and its
// few pending changes. An object that cannot be converted is kept as its
// error, so that a later update can fix it, but out of snapshots.
type store[T any] struct {
	kind    kind
	log     *slog.Logger
	convert func(kubeapi.Object) (T, error)
	keyOf   func(*T) objKey
	// changed is told of every change that matters to a snapshot: an update
	// that changed nothing ztdns reads (an annotation, a managed field, a
	// status condition) is none.
	changed func(kind)

	mu      sync.Mutex
	base    []T
	changes map[objKey]*T
	errs    map[objKey]error
	synced  bool // the first list (or the initial events of a watch) is in
}

func newStore[T any](k kind, log *slog.Logger, convert func(kubeapi.Object) (T, error), keyOf func(*T) objKey, changed func(kind)) *store[T] {
	return &store[T]{kind: k, log: log, convert: convert, keyOf: keyOf, changed: changed,
		changes: map[objKey]*T{}, errs: map[objKey]error{}}
}

// modelOf converts the kubeapi objects that reduce to T.
func modelOf[T any](o kubeapi.Object) (T, error) {
	return o.(interface{ Model() (T, error) }).Model()
}

// reduce converts an object the reflector hands over; ok is false for
// anything else (it never hands over anything else).
func (s *store[T]) reduce(obj any) (key objKey, v T, err error, ok bool) {
	o, ok := obj.(kubeapi.Object)
	if !ok {
		return key, v, nil, false
	}
	m := o.Meta()
	key = objKey{m.Namespace, m.Name}
	if v, err = s.convert(o); err != nil {
		s.log.Warn("object left out: it cannot be converted", "kind", s.kind.String(),
			"namespace", m.Namespace, "name", m.Name, "error", err)
	}
	return key, v, err, true
}

// get returns the current form of key, nil when there is none. Called
// with s.mu held.
func (s *store[T]) get(key objKey) *T {
	if p, ok := s.changes[key]; ok {
		return p
	}
	if i, ok := slices.BinarySearchFunc(s.base, key, func(v T, k objKey) int { return s.keyOf(&v).compare(k) }); ok {
		return &s.base[i]
	}
	return nil
}

// Add and Update store an object the watch reported.
func (s *store[T]) Add(obj any) error { return s.Update(obj) }

func (s *store[T]) Update(obj any) error {
	key, v, err, ok := s.reduce(obj)
	if !ok {
		return nil
	}
	s.mu.Lock()
	old, oldErr := s.get(key), s.errs[key]
	var changed bool
	if err != nil {
		if old != nil {
			s.changes[key] = nil
		}
		s.errs[key] = err
		changed = old != nil || oldErr == nil || oldErr.Error() != err.Error()
	} else {
		delete(s.errs, key)
		changed = oldErr != nil
		if old == nil || !reflect.DeepEqual(*old, v) {
			s.changes[key] = &v
			changed = true
		}
	}
	changed = changed && s.synced
	s.mu.Unlock()
	if changed {
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
	had := s.get(key) != nil
	_, broken := s.errs[key]
	if had {
		s.changes[key] = nil
	}
	delete(s.errs, key)
	changed := s.synced && (had || broken)
	s.mu.Unlock()
	if changed {
		s.changed(s.kind)
	}
	return nil
}

// Replace takes a complete list: the first one, or a relist after the
// watch could not resume.
func (s *store[T]) Replace(list []any, _ string) error {
	objs, errs := make([]T, 0, len(list)), map[objKey]error{}
	for _, obj := range list {
		key, v, err, ok := s.reduce(obj)
		switch {
		case !ok:
		case err != nil:
			errs[key] = err
		default:
			objs = append(objs, v)
		}
	}
	slices.SortStableFunc(objs, func(a, b T) int { return s.keyOf(&a).compare(s.keyOf(&b)) })
	objs = slices.CompactFunc(objs, func(a, b T) bool { return s.keyOf(&a) == s.keyOf(&b) })
	s.mu.Lock()
	changed := !s.synced || len(errs) != len(s.errs) || !reflect.DeepEqual(s.merged(), objs)
	for k, err := range errs {
		if old, ok := s.errs[k]; !ok || old.Error() != err.Error() {
			changed = true
		}
	}
	s.base, s.changes, s.errs, s.synced = objs, map[objKey]*T{}, errs, true
	s.mu.Unlock()
	if changed {
		s.changed(s.kind)
	}
	return nil
}

// Resync is for stores that replay their content; this one has no one to
// replay it to.
func (s *store[T]) Resync() error { return nil }

// size is how many objects the store holds.
func (s *store[T]) size() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.base)
	for k, v := range s.changes {
		_, inBase := slices.BinarySearchFunc(s.base, k, func(v T, k objKey) int { return s.keyOf(&v).compare(k) })
		switch {
		case v != nil && !inBase:
			n++
		case v == nil && inBase:
			n--
		}
	}
	return n
}

// hasSynced reports whether the first complete list is in.
func (s *store[T]) hasSynced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

// merged returns base with the changes applied, in order: base itself when
// there are none. Called with s.mu held.
func (s *store[T]) merged() []T {
	if len(s.changes) == 0 {
		return s.base
	}
	keys := slices.SortedFunc(maps.Keys(s.changes), objKey.compare)
	out := make([]T, 0, len(s.base)+len(keys))
	base := s.base
	for _, k := range keys {
		for len(base) > 0 && s.keyOf(&base[0]).compare(k) < 0 {
			out, base = append(out, base[0]), base[1:]
		}
		if len(base) > 0 && s.keyOf(&base[0]) == k {
			base = base[1:] // changed or deleted
		}
		if p := s.changes[k]; p != nil {
			out = append(out, *p)
		}
	}
	return append(out, base...)
}

// collect returns the model objects of s, or of nothing when s is nil or
// has not synced, sorted by namespace and name so that snapshots list
// objects in the same order on every node and in every run, and the
// conversion errors of those left out, in the same order. The returned
// slice becomes s's base: it must not change.
func collect[T any](s *store[T]) ([]T, []error) {
	if s == nil {
		return nil, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.synced {
		return nil, nil
	}
	if len(s.changes) > 0 {
		s.base, s.changes = s.merged(), map[objKey]*T{}
	}
	var errs []error
	for _, k := range slices.SortedFunc(maps.Keys(s.errs), objKey.compare) {
		errs = append(errs, s.errs[k])
	}
	return s.base, errs
}
