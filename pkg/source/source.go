// Package source defines where the agent learns about Services,
// ServiceEntries, Namespaces and Pods: a directory of manifests (configdir) or
// a Kubernetes API server (kube). Both hand the agent complete snapshots, so
// the name table is always built from one consistent view.
package source

import (
	"context"

	"github.com/ztdns/ztdns/pkg/model"
)

// Source delivers the current state of the world.
type Source interface {
	// Run calls deliver with a complete snapshot once the source has its first
	// consistent view, and again after every change, until ctx is done. Calls
	// to deliver are sequential. Run returns nil when ctx ends, or an error
	// that makes the source unusable (bad flags, a directory missing at the
	// start).
	// Errors in individual objects are logged and the last good state kept.
	//
	// A delivered snapshot is never changed afterwards: the agent keeps
	// pointers into it (a later snapshot may share its unchanged parts).
	Run(ctx context.Context, deliver func(*model.Snapshot)) error
}

// ErrorReporter is implemented by sources that keep serving past broken
// input (a manifest with a syntax error, say) and can list what is broken,
// for `ztdns status` and /readyz.
type ErrorReporter interface {
	Errors() []error
}

// WarningReporter is implemented by sources that serve some inputs other
// than as written (a manifest's field ztdns does not know, ignored), and
// can list where, for `ztdns status`. Unlike Errors, nothing in them keeps
// an input from being served.
type WarningReporter interface {
	Warnings() []error
}

// HealthReporter is implemented by sources that can lose their connection
// (a Kubernetes API server): Healthy is nil while the source keeps up, and
// says what is failing otherwise. The agent keeps serving the last table and
// reports the error in /readyz.
type HealthReporter interface {
	Healthy() error
}

// PodWatcher is implemented by sources whose snapshots hold every pod of the
// node as a watch of the API server delivers it (kube), rather than only
// the pods someone wrote down (configdir): a pod missing from the last
// snapshot is one the watch has not delivered yet, lagging behind the
// container runtime or failing. The capture decision leaves such a pod
// alone until it arrives (reason pod-unknown). A marker: implementing it
// says so.
type PodWatcher interface {
	WatchesPods()
}
