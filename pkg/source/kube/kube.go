// Package kube is ztdns's Kubernetes source: it watches an API server and
// hands the agent complete snapshots of Namespaces, Services, the
// EndpointSlices of headless Services, ServiceEntries
// (networking.istio.io/v1) and the Pods of one node, with what it reads of
// istiod's ConfigMaps: its VIP allocator lock and its mesh config's
// defaultServiceExportTo.
//
// client-go's reflectors list and watch each resource through plain REST
// clients that decode into package kubeapi's cut-down objects; the source's
// stores convert them to their pkg/model form at once, so nothing holds an
// API object, and no generated clientset or scheme is linked. An object
// that cannot be converted is logged with its namespace and name and left
// out; the rest is served.
//
// Of the EndpointSlices, which in most clusters are one or more per Service,
// only those of headless Services are watched: the EndpointSlice
// controller labels those (service.kubernetes.io/headless), and the few
// slices it does not manage (mirrored from Endpoints, or written by hand)
// are watched whatever their Service.
//
// The first snapshot is delivered once every watch has listed its
// resource; after that, changes are coalesced (a short quiet period, bounded
// so that a steady stream of changes still delivers regularly) and every
// snapshot is complete, so the name table built from it never shows half of
// a change.
//
// The ServiceEntry CRD may be missing, or serve no networking.istio.io/v1,
// or RBAC may refuse ServiceEntries: the source then runs without them and
// says why (Errors, ztdns_kube_serviceentries_unavailable). It watches the
// CRD object itself, so it starts watching ServiceEntries as soon as they
// are served, and stops when the CRD is deleted (see crd.go).
//
// When the API server is unreachable client-go retries with backoff; the
// source delivers nothing new, so the agent keeps serving the last table, and
// Healthy reports the failing watches until they recover.
package kube

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/client-go/rest"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/source"
)

const (
	// DefaultDebounce is how long the watches must be quiet after a change
	// before a snapshot is built: long enough to take a burst of events (a
	// Service and its EndpointSlice, a `kubectl apply` of many objects) as
	// one change, short next to the 100 ms budget for a change to show.
	DefaultDebounce = 5 * time.Millisecond
	// DefaultMaxDelay bounds how long a steady stream of changes can hold
	// back a snapshot: the first change of a burst is delivered within this
	// time plus the time to build the snapshot.
	DefaultMaxDelay = 50 * time.Millisecond
	// syncCheckInterval is how often the stores are checked for their
	// first sync besides when they notify: a store's first list notifies,
	// so this is only a safety net, and slow enough that an agent waiting
	// for an unreachable API server does not wake for it 100 times a
	// second.
	syncCheckInterval = time.Second
)

// Source watches one Kubernetes API server. It implements source.Source and
// source.ErrorReporter.
type Source struct {
	cfg            *rest.Config
	log            *slog.Logger
	nodeName       string
	debounce       time.Duration
	maxDelay       time.Duration
	istioNamespace string
	// ztunnelNamespace is where the node's ztunnel runs (WithZtunnelNamespace);
	// empty: istioNamespace.
	ztunnelNamespace string
	meshConfigMap    string // MeshConfigMapName of istiod's revision
	istioRevision    string // istiod's revision (WithIstioRevision)
	clusterDomain    string // whose server block of kube-dns's Corefile is read
	// forbiddenRetry is how often what RBAC refuses, and the source can run
	// without, is asked for again.
	forbiddenRetry time.Duration
	// lockCheck is how often istiod's allocator lock, once seen, is
	// checked (lockWatch).
	lockCheck time.Duration
	metrics   *metrics
	health    *health
	// crdFollows counts followCRD's runs on a synced CRD store, so that
	// tests can check it runs when the CRD changes, not on every change.
	crdFollows atomic.Int64

	mu      sync.Mutex
	objErrs []error // objects left out of the last snapshot
	// meshNote says why the mesh config is not followed, if it is not
	// (followMeshConfig).
	meshNote string
	// meshWarning says that the mesh config is absent, if it is
	// (warnMeshConfigAbsent).
	meshWarning string
	// kubeDNSNotes say why the source follows nothing of kube-dns's
	// Corefile, kubeDNSWarnings what of it the source does not follow
	// (followKubeDNS).
	kubeDNSNotes, kubeDNSWarnings []string
	// ztunnelWarnings say which ztunnel pods follow another istiod than
	// istioRevision (followZtunnel).
	ztunnelWarnings []string
}

var (
	_ source.Source        = (*Source)(nil)
	_ source.ErrorReporter = (*Source)(nil)
)

// Option configures a Source.
type Option func(*Source)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(s *Source) { s.log = l } }

// WithNodeName limits the Pods watched to those scheduled on node (field
// selector spec.nodeName), as the agent on that node needs. Without it, or
// with an empty name, all Pods are watched (standalone runs and tests).
func WithNodeName(node string) Option { return func(s *Source) { s.nodeName = node } }

// New returns a source that watches the API server cfg points at. Nothing
// is contacted until Run. See RESTConfig for --kubeconfig and in-cluster
// configuration.
func New(cfg *rest.Config, opts ...Option) *Source {
	s := &Source{
		cfg:            cfg,
		log:            slog.Default(),
		debounce:       DefaultDebounce,
		maxDelay:       DefaultMaxDelay,
		istioNamespace: DefaultIstioNamespace,
		meshConfigMap:  MeshConfigMap,
		istioRevision:  DefaultIstioRevision,
		clusterDomain:  DefaultClusterDomain,
		forbiddenRetry: 2 * time.Minute,
		lockCheck:      defaultLockCheck,
		metrics:        newMetrics(),
	}
	for _, o := range opts {
		o(s)
	}
	s.log = s.log.With("source", "kube")
	if s.nodeName != "" {
		s.log = s.log.With("node", s.nodeName)
	}
	s.maxDelay = max(s.maxDelay, s.debounce)
	s.health = newHealth(s.log, s.metrics)
	return s
}

// Healthy returns nil while the source is in step with the API server: the
// first snapshot has been delivered and every list and watch call is
// succeeding. Otherwise it says what is wrong (not synced yet, which watches
// fail and since when); the last snapshot stays in force meanwhile. Safe to
// call at any time, for /readyz and status.
func (s *Source) Healthy() error { return s.health.err() }

// Errors lists the objects left out of the last snapshot because they cannot
// be converted, then the watches that are currently failing, then what the
// source runs without though nothing fails: ServiceEntries, when their CRD
// is not installed, does not serve networking.istio.io/v1, or RBAC refuses
// them; Istio's mesh config, when RBAC refuses it or it does not parse;
// kube-dns's Corefile, when RBAC refuses it, it does not parse, or it has
// no kubernetes plugin for the cluster domain (kubedns.go).
func (s *Source) Errors() []error {
	s.mu.Lock()
	errs := slices.Clone(s.objErrs)
	note := s.meshNote
	kubeDNS := s.kubeDNSNotes
	s.mu.Unlock()
	errs = append(errs, s.health.errors()...)
	errs = append(errs, s.health.notes()...)
	if note != "" {
		errs = append(errs, errors.New(note))
	}
	for _, n := range kubeDNS {
		errs = append(errs, errors.New(n))
	}
	return errs
}

// Run starts the watches, delivers the first snapshot once every one of
// them has synced, then a new snapshot after every change, until ctx is
// done. It returns nil when ctx ends, and an error only when the clients
// cannot be built from the configuration: an unreachable API server is
// waited for, not an error. Run must not be called again before it returns.
//
// Snapshots share their slices, and the objects' inner slices and maps, with
// the source and with each other: receivers must treat them as read-only.
func (s *Source) Run(ctx context.Context, deliver func(*model.Snapshot)) error {
	c, err := newClients(s.cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()

	r := newRun(s, c)
	kinds := []kind{kindNamespaces, kindServices, kindEndpointSlices, kindOtherEndpointSlices, kindPods, kindServiceEntryCRD, kindKubeDNS}
	if s.istioNamespace != "" {
		kinds = append(kinds, kindIstiodAllocator, kindMeshConfig)
	}
	for _, k := range kinds {
		r.start(ctx, &wg, k)
	}
	defer s.health.setUnsynced()
	return r.follow(ctx, &wg, deliver)
}

// follow delivers the first snapshot once every watch has synced, then a
// snapshot after each burst of changes, and starts and stops the
// ServiceEntry watch as the CRD comes and goes. Whether ServiceEntries are
// served is known before the first snapshot (hasSynced waits for the CRD):
// a table without them would make every ServiceEntry host unknown for a
// while after each restart.
func (r *run) follow(ctx context.Context, wg *sync.WaitGroup, deliver func(*model.Snapshot)) error {
	syncCheck := time.NewTicker(syncCheckInterval)
	defer syncCheck.Stop()
	synced := false
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var due <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-syncCheck.C:
			r.followCRDChange(ctx, wg)
			if synced = r.deliverFirst(synced, deliver); synced {
				syncCheck.Stop()
			}
		case <-r.notify:
			r.followCRDChange(ctx, wg)
			if !synced {
				if synced = r.deliverFirst(synced, deliver); synced {
					syncCheck.Stop()
				}
				continue // the first snapshot has what changed before it
			}
			since := r.pendingSince()
			if since.IsZero() {
				continue // the last snapshot had it
			}
			timer.Reset(max(min(r.src.debounce, time.Until(since.Add(r.src.maxDelay))), 0))
			due = timer.C
		case <-due:
			due = nil
			snap, since := r.snapshot()
			r.deliver(snap, since, deliver)
		}
	}
}

// deliverFirst delivers the first snapshot once every watch has synced,
// and reports whether it has been delivered.
func (r *run) deliverFirst(delivered bool, deliver func(*model.Snapshot)) bool {
	if delivered || !r.hasSynced() {
		return delivered
	}
	snap, _ := r.snapshot()
	r.log.Info("cluster synced", counts(snap)...)
	// Synced before the first snapshot is out, so whoever has it finds the
	// source healthy (the agent's readiness waits for the table itself).
	r.health.setSynced()
	r.deliver(snap, time.Time{}, deliver)
	return true
}

// deliver hands snap, which holds the changes pending since since (zero for
// the first snapshot), to the receiver and records it.
func (r *run) deliver(snap *model.Snapshot, since time.Time, deliver func(*model.Snapshot)) {
	errs := r.objectErrors()
	r.src.mu.Lock()
	r.src.objErrs = errs
	r.src.mu.Unlock()
	r.src.metrics.leftOut.Set(float64(len(errs)))
	deliver(snap)
	r.src.metrics.snapshots.Inc()
	if !since.IsZero() {
		r.src.metrics.delay.Observe(time.Since(since).Seconds())
	}
	r.src.log.Debug("snapshot delivered", counts(snap)...)
}

func counts(s *model.Snapshot) []any {
	return []any{
		"namespaces", len(s.Namespaces), "services", len(s.Services),
		"endpointSlices", len(s.EndpointSlices), "serviceEntries", len(s.ServiceEntries), "pods", len(s.Pods),
	}
}
