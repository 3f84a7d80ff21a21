package kube

import (
	"context"
	"errors"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
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
// IstiodAllocatorLock and istiod's mesh config, MeshConfigMap (default
// DefaultIstioNamespace); empty turns both looks off.
func WithIstioNamespace(ns string) Option { return func(s *Source) { s.istioNamespace = ns } }

// withForbiddenRetry sets how often a ConfigMap the source may not read is
// asked for again (default 2 minutes: a node's agent costs the API server
// one refused list and watch per period until its RBAC is fixed).
func withForbiddenRetry(d time.Duration) Option { return func(s *Source) { s.forbiddenRetry = d } }

// defaultLockCheck is how often, once istiod's allocator lock has been
// seen, the source checks that it is still there (lockWatch), with jitter
// of up to half as much again: 5 to 7.5 minutes. istiod leaves the lock
// when it stops, so it goes only when istiod is uninstalled (or someone
// deletes it), and what it says (--vip-source=auto: istiod allocates) is
// also said by any ServiceEntry carrying status.addresses; its going is
// worth minutes, not a watch event per node per renewal. At 5,000 nodes
// the checks cost some 13 small lists a second, where the watch cost 670
// events.
const defaultLockCheck = 5 * time.Minute

// withLockCheck sets how often the lock, once seen, is checked (default
// defaultLockCheck).
func withLockCheck(d time.Duration) Option { return func(s *Source) { s.lockCheck = d } }

// allocatorLock is what the source keeps of the lock: that it exists.
type allocatorLock struct{ namespace, name string }

// lockForbidden is told whether the lock may be read. Without that
// permission (a chart from before it was needed, or one whose binding the
// API server has not applied yet when the agent starts) the source runs as
// if istiod did not allocate, says so once, relies on status.addresses
// alone, and asks again every forbiddenRetry (see tolerateForbidden).
// Refused after it was read (kept), the source keeps what it read.
func (r *run) lockForbidden() func(err error, kept bool) {
	var once, onceKept sync.Once
	return func(err error, kept bool) {
		switch {
		case err == nil:
		case kept:
			onceKept.Do(func() {
				r.log.Warn("no longer allowed to read istiod's VIP allocator lock; keeping whether it was there, as last read, while client-go retries",
					"namespace", r.src.istioNamespace, "configMap", IstiodAllocatorLock, "err", err)
			})
		default:
			once.Do(func() {
				r.log.Warn("cannot read istiod's VIP allocator lock; --vip-source=auto then sees istiod allocate only from status.addresses",
					"namespace", r.src.istioNamespace, "configMap", IstiodAllocatorLock, "err", err)
			})
		}
	}
}

// refusedBy returns the judge of a list or watch call's outcome (err,
// for a call made with ctx) that tolerateForbidden and crdFromDiscovery
// share: it reports whether RBAC refused the call, and tells forbidden the
// refusal, or nil for a call that was not refused. A call whose ctx has
// ended tells nothing.
func refusedBy(forbidden func(error)) func(ctx context.Context, err error) bool {
	return func(ctx context.Context, err error) bool {
		switch {
		case ctx.Err() != nil: // stopped: says nothing of RBAC
		case err == nil:
			forbidden(nil)
		case apierrors.IsForbidden(err):
			forbidden(err)
			return true
		}
		return false
	}
}

// tolerateForbidden wraps the list and watch of a resource the source can
// run without (istiod's lock, ServiceEntries, istiod's mesh config,
// kube-dns's Corefile), whose store is st. Refused by RBAC while st holds
// nothing (a ClusterRole from before the rule, a binding not applied yet,
// a cluster without Istio's RBAC: nothing to lose), the list is empty
// (newList), the watch a stand-in that ends after forbiddenRetry (with
// jitter, so that a DaemonSet's agents do not ask together), and
// forbidden is told the error; a call that is not refused tells it nil.
// The reflector then watches again: with the permission granted since,
// the API server's watch starts with every object there is.
//
// Refused while st holds what an allowed call brought (the binding
// deleted, a ClusterRole re-created, the 403s of an API server whose RBAC
// cache is still filling), the refusal is an ordinary error: an empty list
// would wipe that from every node's table (every mesh-only host NXDOMAIN,
// while ztunnel, whose istiod keeps its cache, still routes them), and a
// stand-in would count as a watch that works. The reflector backs off and
// lists again, the store keeps what it holds, health marks the watch
// failing, and forbidden is told the error with kept set. Only objects
// held say that a call was allowed: a watch's HTTP 200 may be a proxy's,
// ending in an error event, and an empty store has nothing to keep.
func (r *run) tolerateForbidden(k kind, e endpoint, st objectStore, forbidden func(err error, kept bool),
	list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error),
) (func(context.Context, metav1.ListOptions) (runtime.Object, error), func(context.Context, metav1.ListOptions) (watch.Interface, error)) {
	// standsIn reports whether the call's outcome (err) is to be stood
	// in for: refused while the store holds nothing. The store is asked
	// only about a refusal.
	standsIn := func(ctx context.Context, err error) bool {
		kept := false
		refused := refusedBy(func(err error) {
			kept = err != nil && st.size() > 0
			forbidden(err, kept)
		})
		return refused(ctx, err) && !kept
	}
	return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			l, err := list(ctx, o)
			if standsIn(ctx, err) {
				return e.newList(), nil
			}
			return l, err
		}, func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			w, err := watchFn(ctx, o)
			if standsIn(ctx, err) {
				// Running without the resource is no failure: this
				// stand-in is the watch that works.
				r.health.observe(ctx, k.String(), nil)
				return standIn(ctx, o, e.example.(kubeapi.Object), nil, r.src.forbiddenRetry, nil), nil
			}
			return w, err
		}
}

// initialEvents reports whether a watch asks for the initial events
// (client-go's WatchList) rather than following a list.
func initialEvents(o metav1.ListOptions) bool {
	return o.SendInitialEvents != nil && *o.SendInitialEvents
}

// standInWatch is the watch of a resource the source may not watch.
type standInWatch struct {
	ch   chan watch.Event
	stop chan struct{}
	once sync.Once
}

// standIn returns a stand-in watch: it sends initial, and when the watch
// asks for initial events (o) ends them as the API server would, with a
// bookmark of example's kind, so that the reflector counts itself synced.
// After retry, with jitter, it sends what atEnd (if any) returns and ends,
// and the reflector watches again.
func standIn(ctx context.Context, o metav1.ListOptions, example kubeapi.Object, initial []watch.Event, retry time.Duration, atEnd func(context.Context) []watch.Event) watch.Interface {
	if initialEvents(o) {
		end := "true"
		b := example.DeepCopyObject().(kubeapi.Object)
		b.Meta().Annotations.InitialEventsEnd = &end
		initial = append(initial, watch.Event{Type: watch.Bookmark, Object: b})
	}
	w := &standInWatch{ch: make(chan watch.Event), stop: make(chan struct{})}
	go w.run(ctx, initial, wait.Jitter(retry, 0.5), atEnd)
	return w
}

func (w *standInWatch) ResultChan() <-chan watch.Event { return w.ch }

func (w *standInWatch) Stop() { w.once.Do(func() { close(w.stop) }) }

func (w *standInWatch) run(ctx context.Context, initial []watch.Event, retry time.Duration, atEnd func(context.Context) []watch.Event) {
	defer close(w.ch)
	send := func(evs []watch.Event) bool {
		for _, ev := range evs {
			select {
			case w.ch <- ev:
			case <-w.stop:
				return false
			case <-ctx.Done():
				return false
			}
		}
		return true
	}
	if !send(initial) {
		return
	}
	t := time.NewTimer(retry)
	defer t.Stop()
	select {
	case <-t.C:
	case <-w.stop:
		return
	case <-ctx.Done():
		return
	}
	if atEnd != nil {
		send(atEnd(ctx))
	}
}

// lockWatch wraps the watch of istiod's allocator lock (watchFn; list is
// its list, st its store). istiod renews its lock every 7.5 s (RetryPeriod,
// a quarter of its 30 s lease; pilot/pkg/leaderelection), each renewal an
// update of the ConfigMap that a watch sends every node's agent, though the
// source reads only that the lock exists: some 670 watch events a second at
// 5,000 nodes, from idle agents. So the lock is watched only until it is
// seen; from then a list of it by name every lockCheck (with jitter) checks
// that it is still there. A check that finds it gone tells the store so
// (a Deleted event at the list's resource version) and ends, and the
// reflector watches again, until the lock is back. A check that fails ends
// with the failure as an error event: the reflector lists again, which
// says whether the lock is there.
func (r *run) lockWatch(st objectStore, list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error),
) func(context.Context, metav1.ListOptions) (watch.Interface, error) {
	return func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
		w := &lockWatcher{r: r, list: list, out: make(chan watch.Event), stop: make(chan struct{})}
		if !initialEvents(o) && st.size() > 0 {
			go w.run(ctx, nil, false)
			return w, nil
		}
		in, err := watchFn(ctx, o)
		if err != nil {
			return nil, err
		}
		w.in = in
		go w.run(ctx, in, initialEvents(o))
		return w, nil
	}
}

// lockWatcher is the watch lockWatch hands the reflector: the API
// server's watch (in) until the lock is seen, then the checks.
type lockWatcher struct {
	r    *run
	list func(context.Context, metav1.ListOptions) (runtime.Object, error)
	in   watch.Interface // nil when the lock was held from the start
	out  chan watch.Event
	stop chan struct{}
	once sync.Once
}

func (w *lockWatcher) ResultChan() <-chan watch.Event { return w.out }

func (w *lockWatcher) Stop() {
	w.once.Do(func() { close(w.stop) })
	if w.in != nil {
		w.in.Stop()
	}
}

func (w *lockWatcher) run(ctx context.Context, in watch.Interface, initial bool) {
	defer close(w.out)
	if in != nil {
		seen := w.follow(ctx, in, initial)
		in.Stop()
		if !seen {
			return
		}
	}
	w.check(ctx)
}

// send passes ev on; false when the watch was stopped meanwhile.
func (w *lockWatcher) send(ctx context.Context, ev watch.Event) bool {
	select {
	case w.out <- ev:
		return true
	case <-w.stop:
	case <-ctx.Done():
	}
	return false
}

// follow passes in's events on until the lock is seen (past the initial
// events, when in sends them), and reports whether it was; false when in
// ended first, or the watch was stopped.
func (w *lockWatcher) follow(ctx context.Context, in watch.Interface, initial bool) bool {
	present, pastInitial := false, !initial
	for {
		select {
		case ev, ok := <-in.ResultChan():
			if !ok {
				return false
			}
			switch ev.Type {
			case watch.Added, watch.Modified:
				present = true
			case watch.Deleted:
				present = false
			case watch.Bookmark:
				if o, ok := ev.Object.(kubeapi.Object); ok && o.Meta().Annotations.InitialEventsEnd != nil {
					pastInitial = true
				}
			}
			if !w.send(ctx, ev) {
				return false
			}
			if present && pastInitial {
				return true
			}
		case <-w.stop:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// check lists the lock every lockCheck, with jitter, until it is gone, a
// list fails, or the watch is stopped. A list that works is a watch that
// works, as is the one the reflector made just before, or the watch that
// saw the lock.
func (w *lockWatcher) check(ctx context.Context) {
	k := kindIstiodAllocator.String()
	w.r.health.observe(ctx, k, nil)
	for {
		t := time.NewTimer(wait.Jitter(w.r.src.lockCheck, 0.5))
		select {
		case <-t.C:
		case <-w.stop:
			t.Stop()
			return
		case <-ctx.Done():
			t.Stop()
			return
		}
		obj, err := w.list(ctx, metav1.ListOptions{})
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			// The list reported its failure to health.
			w.send(ctx, watch.Event{Type: watch.Error, Object: statusOf(err)})
			return
		}
		w.r.health.observe(ctx, k, nil)
		l, ok := obj.(*kubeapi.ConfigMapList)
		if !ok || len(l.Items) > 0 {
			continue
		}
		gone := &kubeapi.ConfigMap{}
		gone.Namespace, gone.Name, gone.ResourceVersion = w.r.src.istioNamespace, IstiodAllocatorLock, l.ResourceVersion
		w.send(ctx, watch.Event{Type: watch.Deleted, Object: gone})
		return
	}
}

// statusOf is err as the Status object of a watch's error event.
func statusOf(err error) *metav1.Status {
	var s apierrors.APIStatus
	if !errors.As(err, &s) {
		s = apierrors.NewInternalError(err)
	}
	st := s.Status()
	return &st
}
