package kube

import (
	"time"

	"github.com/ztdns/ztdns/pkg/model"
)

// changed marks k changed and wakes the delivery loop. Called by the
// stores as the watches report changes.
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

// crdChanged marks the CRD changed and wakes the delivery loop, with no
// change for a snapshot: the loop follows the CRD (followCRD). Called by
// the CRD's store: on its first list, and whenever what it keeps of the
// CRD changes, also when discovery stands in for the CRD's watch.
func (r *run) crdChanged() {
	r.crdPending.Store(true)
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

// snapshot builds a snapshot of what the stores hold now, rebuilding the
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
	slicesChanged := false
	for k, changed := range pending {
		if !changed {
			continue
		}
		// A missing or unsynced store (ServiceEntries while the CRD is
		// missing or still being listed) contributes nothing rather than a
		// partial list.
		switch st := r.stores[k]; kind(k) {
		case kindNamespaces:
			r.last.Namespaces, r.errs[k] = collect(storeOf[model.Namespace](st))
		case kindServices:
			r.last.Services, r.errs[k] = collect(storeOf[model.Service](st))
		case kindEndpointSlices, kindOtherEndpointSlices:
			slicesChanged = true
		case kindServiceEntries:
			r.ignored.all, r.errs[k] = collect(storeOf[model.ServiceEntry](st))
		case kindPods:
			r.last.Pods, r.errs[k] = collect(storeOf[model.Pod](st))
		case kindIstiodAllocator:
			var locks []allocatorLock
			locks, r.errs[k] = collect(storeOf[allocatorLock](st))
			r.ignored.lock = len(locks) > 0
		case kindMeshConfig:
			if st == nil {
				break // not read (no --istio-namespace)
			}
			var cms []meshConfig
			cms, r.errs[k] = collect(storeOf[meshConfig](st))
			r.followMeshConfig(cms)
		case kindKubeDNS:
			var cms []corefile
			cms, r.errs[k] = collect(storeOf[corefile](st))
			r.followKubeDNS(cms)
		}
	}
	if pending[kindPods] || pending[kindMeshConfig] {
		r.followZtunnel() // its warning says whether the mesh config is absent
	}
	if slicesChanged {
		r.last.EndpointSlices = r.endpointSlices()
	}
	if pending[kindMeshConfig] || pending[kindServices] {
		r.warnMeshConfigAbsent()
	}
	if pending[kindServiceEntries] || pending[kindNamespaces] || pending[kindMeshConfig] || pending[kindIstiodAllocator] {
		r.leaveOutIgnored()
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

// storeOf is st as a store of T, nil when st is nil.
func storeOf[T any](st objectStore) *store[T] {
	s, _ := st.(*store[T])
	return s
}

// endpointSlices merges the two EndpointSlice watches' objects, in order. A
// slice that moves from one to the other (its Service became headless or
// stopped being so) may be in both for a moment: it is listed once.
func (r *run) endpointSlices() []model.EndpointSlice {
	var a, b []model.EndpointSlice
	a, r.errs[kindEndpointSlices] = collect(storeOf[model.EndpointSlice](r.stores[kindEndpointSlices]))
	b, r.errs[kindOtherEndpointSlices] = collect(storeOf[model.EndpointSlice](r.stores[kindOtherEndpointSlices]))
	key := func(s *model.EndpointSlice) objKey { return objKey{s.Namespace, s.Name} }
	out := make([]model.EndpointSlice, 0, len(a)+len(b))
	for len(a) > 0 || len(b) > 0 {
		switch {
		case len(b) == 0 || (len(a) > 0 && key(&a[0]).compare(key(&b[0])) < 0):
			out, a = append(out, a[0]), a[1:]
		case len(a) == 0 || key(&a[0]).compare(key(&b[0])) > 0:
			out, b = append(out, b[0]), b[1:]
		default: // in both
			out, a, b = append(out, a[0]), a[1:], b[1:]
		}
	}
	return out
}
