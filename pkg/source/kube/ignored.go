package kube

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/ztdns/ztdns/pkg/model"
)

// The ServiceEntries istiod ignores, which the source leaves out of its
// snapshots: ztunnel learns of no ServiceEntry but through istiod, so it
// routes none of their addresses, and ztunnel's own DNS proxy does not
// know their hosts; answered, a pod would connect to an address nothing
// routes. Left out, their hosts are forwarded, as ztunnel's proxy forwards
// them. istiod's ambient index (pilot/pkg/serviceregistry/ambient, New)
// watches ServiceEntries through two filters:
//
//   - its revision (inRevision, config.LabelsInRevision): an object
//     labelled istio.io/rev with another revision than istiod's is
//     ignored; one without the label is every revision's. Revision tags
//     do not count there (LabelsInRevision, not LabelsInRevisionOrTags).
//     istiod's revision is its REVISION, which the Istio chart sets to
//     `default` unless told otherwise: --istio-revision, empty for
//     "default". (An istiod run without REVISION at all takes every
//     revision's: ztdns cannot tell that one apart.) Several istiods of
//     different revisions may run side by side (a canary upgrade); the
//     one that counts is the one the node's ztunnel connects to, whose
//     entries ztunnel routes: the flag must name its revision, and the
//     source warns while it does not (ztunnel.go).
//   - the mesh config's discoverySelectors (pkg/kube/namespace
//     discoveryNamespacesFilter, the client's ObjectFilter): none, every
//     namespace; else an object is seen only in a namespace whose labels
//     one of them matches. istiod's VIP allocator (pilot/pkg/controllers/
//     ipallocate) uses the same filter, but not the revision's: an entry
//     of another revision still gets status.addresses, which is why its
//     VIPs must not be answered.
//
// Both apply to every namespaced object istiod watches, but only
// ServiceEntries are left out: istiod does not see a Service or Pod of a
// namespace it does not select either, but Istio's DNS proxy forwards
// such a Service's name to the cluster's nameserver, which answers its
// ClusterIPs, as ztdns does. Such a Service only yields its name to a
// ServiceEntry naming it (the snapshot's IstiodUnselected): istiod sends
// ztunnel the ServiceEntry alone for that host (its Services pass the
// same filter: multicluster's defaultFilter), and ztunnel routes it.
// Revision labels are not read on Services.
//
// With no istiod (WithIstioNamespace empty) nothing is left out.

// ignored is what leaveOutIgnored decided, kept for the next decision.
type ignored struct {
	all  []model.ServiceEntry // the store's, every one
	lock bool                 // istiod's allocator lock is there
	// kept is from without the entries at leftOut, its indexes.
	from, kept []model.ServiceEntry
	leftOut    []int
}

// leaveOutIgnored puts into the next snapshot the ServiceEntries istiod of
// the source's revision sees, and which it ignores, by why, from the
// entries, Namespaces and discoverySelectors in force. An entry left out
// that carries status.addresses still tells that istiod allocates, as an
// entry the table leaves out over its namespace's budget does (istiodAllocates).
func (r *run) leaveOutIgnored() {
	ig := &r.ignored
	var otherRev, unselected []string
	var leftOut []int
	status := false
	if r.src.istioNamespace != "" {
		for i := range ig.all {
			se := &ig.all[i]
			switch {
			case se.Revision != nil && *se.Revision != r.src.istioRevision:
				otherRev = append(otherRev, se.Key())
			case r.selectors != nil && !r.selected(se.Namespace):
				unselected = append(unselected, se.Key())
			default:
				continue
			}
			leftOut = append(leftOut, i)
			status = status || len(se.StatusAddresses) > 0
		}
	}
	switch {
	case len(leftOut) == 0:
		ig.kept = ig.all
	case !sameSlice(ig.from, ig.all) || !slices.Equal(leftOut, ig.leftOut):
		// Made again only when the entries, or those left out, changed:
		// the table builder takes an unchanged slice as nothing to do.
		ig.kept = make([]model.ServiceEntry, 0, len(ig.all)-len(leftOut))
		next := 0
		for _, i := range leftOut {
			ig.kept, next = append(ig.kept, ig.all[next:i]...), i+1
		}
		ig.kept = append(ig.kept, ig.all[next:]...)
	}
	ig.from, ig.leftOut = ig.all, leftOut
	r.last.IstiodUnselected = r.unselectedNamespaces(r.last.IstiodUnselected)
	r.last.ServiceEntries = ig.kept
	r.last.IstiodAllocates = ig.lock || status
	r.last.IstiodIgnores = nil
	const routes = "so istiod ignores them, and ztunnel routes none of their addresses"
	if len(otherRev) > 0 {
		r.last.IstiodIgnores = append(r.last.IstiodIgnores, model.LeftOut{Kind: "ServiceEntry", Keys: otherRev,
			Why: fmt.Sprintf("labelled istio.io/rev with another revision than istiod's, %q (--istio-revision), %s", r.src.istioRevision, routes)})
	}
	if len(unselected) > 0 {
		r.last.IstiodIgnores = append(r.last.IstiodIgnores, model.LeftOut{Kind: "ServiceEntry", Keys: unselected,
			Why: fmt.Sprintf("in namespaces the discoverySelectors of mesh config %s (%s) do not select, %s",
				r.src.meshConfigWhere(), selectorsString(r.selectors), routes)})
	}
}

// unselectedNamespaces lists the namespaces the discoverySelectors in
// force do not select: nil with no istiod or no selectors. last, the list
// before, is kept when it did not change, as the kept ServiceEntries are:
// a snapshot's slice is new only when what it holds changed (the table
// builder compares this one by value all the same).
func (r *run) unselectedNamespaces(last []string) []string {
	if r.src.istioNamespace == "" || r.selectors == nil {
		return nil
	}
	var out []string
	for _, ns := range r.last.Namespaces { // sorted by name
		if !r.selected(ns.Name) {
			out = append(out, ns.Name)
		}
	}
	if slices.Equal(out, last) {
		return last
	}
	return out
}

// selected reports whether the discoverySelectors in force select the
// namespace ns: any of them matching its labels, as istiod's filter has
// it. A namespace the source does not know (not created yet, or its watch
// not synced) is not selected, as in istiod's filter.
func (r *run) selected(ns string) bool {
	i, ok := slices.BinarySearchFunc(r.last.Namespaces, ns, func(n model.Namespace, name string) int { return strings.Compare(n.Name, name) })
	if !ok {
		return false
	}
	set := labels.Set(r.last.Namespaces[i].Labels)
	return slices.ContainsFunc(r.selectors, func(s labels.Selector) bool { return s.Matches(set) })
}

// sameSlice reports whether a and b are the same slice: a store hands out
// the same one until its objects change (collect).
func sameSlice[T any](a, b []T) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}
