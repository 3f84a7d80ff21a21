package kube

import (
	"context"
	"sync"
	"sync/atomic"
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
// kube-dns's Corefile). Refused by RBAC before any call of it was allowed
// (a ClusterRole from before the rule, a binding not applied yet, a
// cluster without Istio's RBAC), the list is empty (newList), the watch a
// stand-in that ends after forbiddenRetry (with jitter, so that a
// DaemonSet's agents do not ask together), and forbidden is told the
// error; a call that is not refused tells it nil. The reflector then
// watches again: with the permission granted since, the API server's
// watch starts with every object there is.
//
// Refused after a call was allowed (the binding deleted, a ClusterRole
// re-created, the 403s of an API server whose RBAC cache is still
// filling), the refusal is an ordinary error: an empty list would wipe
// what the store holds from every node's table (every mesh-only host
// NXDOMAIN, while ztunnel, whose istiod keeps its cache, still routes
// them), and a stand-in would count as a watch that works. The reflector
// backs off and lists again, the store keeps what it read, health marks
// the watch failing, and forbidden is told the error with kept set.
func (r *run) tolerateForbidden(k kind, e endpoint, forbidden func(err error, kept bool),
	list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error),
) (func(context.Context, metav1.ListOptions) (runtime.Object, error), func(context.Context, metav1.ListOptions) (watch.Interface, error)) {
	// allowed is set once a list or watch of k was not refused: the store
	// holds what the API server sent from then on.
	var allowed atomic.Bool
	refused := refusedBy(func(err error) { forbidden(err, err != nil && allowed.Load()) })
	// standsIn reports whether the call's outcome (err) is to be stood
	// in for: refused before any call was allowed.
	standsIn := func(ctx context.Context, err error) bool {
		if refused(ctx, err) {
			return !allowed.Load()
		}
		if err == nil && ctx.Err() == nil {
			allowed.Store(true)
		}
		return false
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
