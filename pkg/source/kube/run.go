package kube

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"k8s.io/client-go/tools/cache"

	"github.com/ztdns/ztdns/pkg/model"
)

// kind is one watched resource; it indexes the parts of a snapshot.
type kind int

const (
	kindNamespaces kind = iota
	kindServices
	kindEndpointSlices
	kindServiceEntries
	kindPods
	kindIstiodAllocator // istiod's VIP allocator lock (istiod.go)
	numKinds
)

// kindNames are the resources' plural names, as in logs and metrics.
var kindNames = [numKinds]string{"namespaces", "services", "endpointslices", "serviceentries", "pods", "istiod-allocator"}

func (k kind) String() string { return kindNames[k] }

// run is the state of one Source.Run.
type run struct {
	src     *Source
	log     *slog.Logger
	clients *clients
	health  *health

	// informers are the running informers; the ServiceEntry one is nil while
	// the CRD is missing. handled reports whether an informer's event
	// handler has seen its initial list. Owned by Run's goroutine.
	informers [numKinds]cache.SharedIndexInformer
	handled   [numKinds]func() bool
	// stopServiceEntryInformer stops the ServiceEntry informer.
	stopServiceEntryInformer context.CancelFunc
	// recheck asks followServiceEntryAPI to look again: the ServiceEntry
	// watch found its resource missing.
	recheck chan struct{}

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
		recheck: make(chan struct{}, 1),
		notify:  make(chan struct{}, 1),
	}
}
