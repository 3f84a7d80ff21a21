package kube

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"

	"github.com/ztdns/ztdns/pkg/model"
)

// kind is one watched resource; it indexes the parts of a snapshot.
type kind int

const (
	kindNamespaces kind = iota
	kindServices
	// kindEndpointSlices are the slices the EndpointSlice controller made
	// for headless Services (it labels them so).
	kindEndpointSlices
	// kindOtherEndpointSlices are the slices it did not make: mirrored from
	// Endpoints, written by hand or by another controller. Nothing on them
	// says whether their Service is headless, so all are watched; there are
	// few of them.
	kindOtherEndpointSlices
	kindServiceEntries
	kindPods
	kindIstiodAllocator // istiod's VIP allocator lock (istiod.go)
	// kindServiceEntryCRD is Istio's ServiceEntry CRD (crd.go): whether,
	// and in which versions, ServiceEntries are served.
	kindServiceEntryCRD
	// kindMeshConfig is Istio's mesh config ConfigMap (meshconfig.go).
	kindMeshConfig
	// kindKubeDNS is kube-dns's Corefile ConfigMap (kubedns.go).
	kindKubeDNS
	numKinds
)

// kindNames are the resources' names, as in logs and metrics.
var kindNames = [numKinds]string{"namespaces", "services", "endpointslices", "endpointslices-other", "serviceentries", "pods", "istiod-allocator", "serviceentry-crd", "mesh-config", "kube-dns-corefile"}

func (k kind) String() string { return kindNames[k] }

// objectStore is a running kind's store (a *store[T]).
type objectStore interface {
	cache.ReflectorStore
	hasSynced() bool
	size() int
}

// run is the state of one Source.Run.
type run struct {
	src     *Source
	log     *slog.Logger
	clients *clients
	health  *health

	// stores hold the running kinds' objects; the ServiceEntry one is nil
	// while the CRD is missing. Owned by Run's goroutine (the stores
	// themselves are safe for concurrent use).
	stores [numKinds]objectStore
	// stopServiceEntryWatch stops the ServiceEntry reflector.
	stopServiceEntryWatch context.CancelFunc
	// crdKnown is set once the CRD's first list has been acted on: the
	// first snapshot waits for it, so that it has the ServiceEntries
	// whenever they are served.
	crdKnown bool
	// crdPending is set by the CRD's store when it changed, and cleared
	// by Run's goroutine before it follows the change: the other stores'
	// changes, far more frequent, leave the CRD alone.
	crdPending atomic.Bool
	// meshRefused is set while RBAC refuses the mesh config
	// (meshConfigForbidden); meshState is what followMeshConfig last
	// logged of it, owned by Run's goroutine.
	meshRefused atomic.Bool
	meshState   string
	// meshWarned is set while Warnings() says the mesh config is absent
	// (warnMeshConfigAbsent). noIstio is set while Istio's ServiceEntry
	// CRD is not installed (followCRD): a cluster without Istio. Owned by
	// Run's goroutine.
	meshWarned bool
	noIstio    bool
	// kubeDNSRefused and kubeDNSState are the same for kube-dns's
	// Corefile (kubeDNSForbidden, followKubeDNS).
	kubeDNSRefused atomic.Bool
	kubeDNSState   string
	// selectors are the mesh config's discoverySelectors in force, nil
	// when none (followMeshConfig). Owned by Run's goroutine.
	selectors []labels.Selector
	// ignored is what leaveOutIgnored last decided. Owned by Run's
	// goroutine.
	ignored ignored
	// ztunnelState is what followZtunnel last logged, ztunnelMismatch
	// whether that held a revision mismatch. Owned by Run's goroutine.
	ztunnelState    string
	ztunnelMismatch bool

	mu      sync.Mutex
	pending [numKinds]bool // kinds changed since the last snapshot
	since   time.Time      // first pending change; zero when none
	// notify has a value when a change may be pending.
	notify chan struct{}

	// last is the previous snapshot; the parts of kinds that did not change
	// are reused. errs are each kind's objects left out. Owned by Run's
	// goroutine.
	last  model.Snapshot
	errs  [numKinds][]error
	built bool // last holds a first snapshot
}

func newRun(s *Source, c *clients) *run {
	return &run{
		src:     s,
		log:     s.log,
		clients: c,
		health:  s.health,
		notify:  make(chan struct{}, 1),
	}
}
