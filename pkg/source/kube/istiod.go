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
// its list, st its store, e its endpoint). istiod renews its lock every
// 7.5 s (RetryPeriod, a quarter of its 30 s lease;
// pilot/pkg/leaderelection), each renewal an update of the ConfigMap that
// a watch sends every node's agent, though the source reads only that the
// lock exists: some 670 watch events a second at 5,000 nodes, from idle
// agents. So the lock is watched only until it is seen; from then the
// watch is a stand-in that after lockCheck (with jitter) lists the lock by
// name (checkLock) and ends, and the reflector, watching again, gets the
// next. A check that finds the lock gone tells the store so (a Deleted
// event at the list's resource version), and the reflector's next watch is
// the API server's, until the lock is back. A check that fails ends with
// the failure as an error event: the reflector lists again, which says
// whether the lock is there.
func (r *run) lockWatch(e endpoint, st objectStore, list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error),
) func(context.Context, metav1.ListOptions) (watch.Interface, error) {
	example := e.example.(kubeapi.Object)
	// checks is the watch once the lock is seen. It works, as did the
	// watch that saw the lock.
	checks := func(ctx context.Context) watch.Interface {
		r.health.observe(ctx, kindIstiodAllocator.String(), nil)
		return standIn(ctx, metav1.ListOptions{}, example, nil, r.src.lockCheck, r.checkLock(example, list))
	}
	return func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
		if !initialEvents(o) && st.size() > 0 {
			return checks(ctx), nil
		}
		in, err := watchFn(ctx, o)
		if err != nil {
			return nil, err
		}
		w := &lockWatcher{out: make(chan watch.Event), stop: make(chan struct{})}
		go w.run(ctx, in, initialEvents(o), checks)
		return w, nil
	}
}

// checkLock returns the end of a lock check's stand-in: it lists the lock
// and says what the list found. There, a bookmark at the list's resource
// version (an event, so that the reflector watches again at once rather
// than backing off from a watch that brought none, however short
// lockCheck is); gone, its deletion; failed, the failure. A list that
// works is a watch that works; one that fails reported itself to health.
func (r *run) checkLock(example kubeapi.Object, list func(context.Context, metav1.ListOptions) (runtime.Object, error)) func(context.Context) []watch.Event {
	return func(ctx context.Context) []watch.Event {
		obj, err := list(ctx, metav1.ListOptions{})
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			return []watch.Event{{Type: watch.Error, Object: statusOf(err)}}
		}
		r.health.observe(ctx, kindIstiodAllocator.String(), nil)
		l, ok := obj.(*kubeapi.ConfigMapList)
		if !ok {
			return nil
		}
		at := example.DeepCopyObject().(kubeapi.Object)
		at.Meta().ResourceVersion = l.ResourceVersion
		if len(l.Items) > 0 {
			return []watch.Event{{Type: watch.Bookmark, Object: at}}
		}
		at.Meta().Namespace, at.Meta().Name = r.src.istioNamespace, IstiodAllocatorLock
		return []watch.Event{{Type: watch.Deleted, Object: at}}
	}
}

// lockWatcher is the watch lockWatch hands the reflector when the lock is
// not held: the API server's until the lock is seen, then the checks. It
// does not end when the lock is seen: the reflector goes on with the watch
// whose initial events (client-go's WatchList) it asked for.
type lockWatcher struct {
	out  chan watch.Event
	stop chan struct{}
	once sync.Once
}

func (w *lockWatcher) ResultChan() <-chan watch.Event { return w.out }

func (w *lockWatcher) Stop() { w.once.Do(func() { close(w.stop) }) }

// run passes on in's events until the lock is seen (past the initial
// events, when in sends them), then those of checks.
func (w *lockWatcher) run(ctx context.Context, in watch.Interface, initial bool, checks func(context.Context) watch.Interface) {
	defer close(w.out)
	present, pastInitial := false, !initial
	seen := w.pass(ctx, in, func(ev watch.Event) bool {
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
		return present && pastInitial
	})
	if seen {
		w.pass(ctx, checks(ctx), func(watch.Event) bool { return false })
	}
}

// pass passes on from's events, and stops from, once last says an event
// was its last (true), or from ended or the watch was stopped (false).
func (w *lockWatcher) pass(ctx context.Context, from watch.Interface, last func(watch.Event) bool) bool {
	defer from.Stop()
	for {
		select {
		case ev, ok := <-from.ResultChan():
			if !ok {
				return false
			}
			done := last(ev)
			select {
			case w.out <- ev:
			case <-w.stop:
				return false
			case <-ctx.Done():
				return false
			}
			if done {
				return true
			}
		case <-w.stop:
			return false
		case <-ctx.Done():
			return false
		}
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
