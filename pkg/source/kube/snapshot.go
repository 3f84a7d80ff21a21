package kube

import (
	"slices"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
)

// changed marks k changed and wakes the delivery loop. Called by informers'
// event handlers.
func (r *run) changed(k kind) {
	r.mu.Lock()
	if r.since.IsZero() {
		r.since = time.Now()
	}
	r.pending[k] = true
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// pendingSince is the time of the oldest change not in a snapshot yet, or
// zero when there is none.
func (r *run) pendingSince() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.since
}

// snapshot builds a snapshot of what the informers hold now, rebuilding the
// parts of the kinds that changed since the last one and sharing the others
// with it. It returns the time of the oldest change it includes.
func (r *run) snapshot() (*model.Snapshot, time.Time) {
	r.mu.Lock()
	pending, since := r.pending, r.since
	r.pending, r.since = [numKinds]bool{}, time.Time{}
	r.mu.Unlock()
	if !r.built {
		for k := range pending {
			pending[k] = true
		}
		r.built = true
	}
	for k, changed := range pending {
		if !changed {
			continue
		}
		// A missing or unsynced informer (ServiceEntries while the CRD is
		// missing or still being listed) contributes nothing rather than a
		// partial list.
		var objs []any
		if inf := r.informers[k]; inf != nil && inf.HasSynced() {
			objs = inf.GetStore().List()
		}
		switch kind(k) {
		case kindNamespaces:
			r.last.Namespaces, r.errs[k] = collect[model.Namespace](objs)
		case kindServices:
			r.last.Services, r.errs[k] = collect[model.Service](objs)
		case kindEndpointSlices:
			r.last.EndpointSlices, r.errs[k] = collect[model.EndpointSlice](objs)
		case kindServiceEntries:
			r.last.ServiceEntries, r.errs[k] = collect[model.ServiceEntry](objs)
		case kindPods:
			r.last.Pods, r.errs[k] = collect[model.Pod](objs)
		case kindIstiodAllocator:
			var locks []allocatorLock
			locks, r.errs[k] = collect[allocatorLock](objs)
			r.last.IstiodAllocates = len(locks) > 0
		}
	}
	snap := r.last
	return &snap, since
}

// objectErrors lists the objects left out of the last snapshot.
func (r *run) objectErrors() []error {
	var errs []error
	for _, e := range r.errs {
		errs = append(errs, e...)
	}
	return errs
}

// collect returns the model objects among objs (an informer cache's
// content), sorted by namespace and name, and the conversion errors of those
// left out, in the same order.
func collect[T any](objs []any) ([]T, []error) {
	items := make([]*stored[T], 0, len(objs))
	var errs []*stored[T]
	for _, o := range objs {
		s, ok := o.(*stored[T])
		switch {
		case !ok:
		case s.err != nil:
			errs = append(errs, s)
		default:
			items = append(items, s)
		}
	}
	slices.SortFunc(items, (*stored[T]).compare)
	slices.SortFunc(errs, (*stored[T]).compare)
	out := make([]T, len(items))
	for i, s := range items {
		out[i] = s.obj
	}
	var outErrs []error
	for _, s := range errs {
		outErrs = append(outErrs, s.err)
	}
	return out, outErrs
}
