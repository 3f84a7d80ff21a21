package kube

import (
	"cmp"
	"fmt"
	"strings"

	"github.com/ztdns/ztdns/pkg/model"
)

// The revision that matters is that of the node's ztunnel. ztdns answers
// what ztunnel routes, and ztunnel learns its services from one istiod:
// Istio's ztunnel chart points it (XDS_ADDRESS, CA_ADDRESS) at
// istiod-REVISION.NS.svc when given a revision, and then annotates its
// pods istio.io/rev: REVISION; without one, at the Service istiod, which
// only the Istio chart's istio-discovery without a revision makes, with
// the selector app=istiod, istio=pilot: that istiod's pods alone carry
// istio=pilot (those of a revision carry istio=istiod), and its REVISION
// is "default". Revision tags, `istioctl tag set default` included, make
// Services of their own (istiod-revision-tag-TAG) and leave istiod alone.
// So a ztunnel pod's revision is its annotation, "default" without one.
// The Service's selector is not read: it names no revision, and one edited
// by hand to select another istiod would be the only case it changed.
// Nor is ztunnel's XDS_ADDRESS (the chart's xdsAddress), which the pod
// watch does not decode.
//
// Istio's ambient upgrade keeps one ztunnel DaemonSet and upgrades it in
// place (`helm upgrade ztunnel --set revision=1-28`), node by node. Each
// istiod sends ztunnel its own revision's ServiceEntries (and those
// without the label), and all of them share one VIP allocator: with
// --istio-revision behind the node's ztunnel, a ServiceEntry of ztunnel's
// revision is forwarded while ztunnel routes its VIP, one of the flag's
// answered with a VIP ztunnel no longer routes, and the flag's istiod's
// mesh config followed. The source does not follow ztunnel (the flag
// says which mesh config it may read: RBAC grants that one by name); it
// says so (Warnings, ztdns_kube_ztunnel_revision_mismatch) until the
// flag moves.

// ztunnelRevision is the Istio revision of ztunnel pod p: its
// AnnotationIstioRev, DefaultIstioRevision without one.
func ztunnelRevision(p *model.Pod) string {
	return cmp.Or(p.Annotations[model.AnnotationIstioRev], DefaultIstioRevision)
}

// isZtunnel reports whether p is a pod of Istio's ztunnel in istiod's
// namespace ns.
func isZtunnel(p *model.Pod, ns string) bool {
	return p.Namespace == ns && p.Labels[model.LabelApp] == model.ZtunnelApp
}

// followZtunnel compares the revision of the ztunnel pods the source
// watches (the node's, with a node name) with istiod's, --istio-revision,
// and says of each that differs, in Warnings and the metric. Pods starting
// count: a DaemonSet's new pod is the node's ztunnel to be. Logged when
// what it says changes. Nothing without istiod's namespace.
func (r *run) followZtunnel() {
	var warnings []string
	if ns := r.src.istioNamespace; ns != "" {
		for i := range r.last.Pods {
			p := &r.last.Pods[i]
			if !isZtunnel(p, ns) {
				continue
			}
			rev := ztunnelRevision(p)
			if rev == r.src.istioRevision {
				continue
			}
			warnings = append(warnings, ztunnelWarning(p, rev, r.src.istioRevision, r.src.meshConfigWhere(), r.meshState == "absent"))
		}
	}
	mismatch := 0.0
	if len(warnings) > 0 {
		mismatch = 1
	}
	r.src.metrics.ztunnelRevisionMismatch.Set(mismatch)
	state := strings.Join(warnings, "\n")
	if state != r.ztunnelState {
		for _, w := range warnings {
			r.log.Warn("the node's ztunnel follows another istiod than --istio-revision", "detail", w)
		}
		if len(warnings) == 0 && r.ztunnelState != "" {
			r.log.Info("the node's ztunnel follows istiod of --istio-revision", "revision", r.src.istioRevision)
		}
		r.ztunnelState = state
	}
	r.src.mu.Lock()
	r.src.ztunnelWarnings = warnings
	r.src.mu.Unlock()
}

// ztunnelWarning says that ztunnel pod p follows istiod of revision rev
// while the source follows istiod of flag, what that does, and the fix.
// meshConfig is the flag's mesh config, which the source follows unless
// it is absent (meshAbsent): Istio's defaults then, as the mesh config's
// own warning says.
func ztunnelWarning(p *model.Pod, rev, flag, meshConfig string, meshAbsent bool) string {
	how := "its istio.io/rev annotation"
	if _, ok := p.Annotations[model.AnnotationIstioRev]; !ok {
		how = "no istio.io/rev annotation: it connects to Service istiod, istiod of revision default"
	}
	on := ""
	if p.NodeName != "" {
		on = " on node " + p.NodeName
	}
	followed := fmt.Sprintf("mesh config %s is followed", meshConfig)
	if meshAbsent {
		followed = fmt.Sprintf("Istio's defaults are followed (mesh config %s is absent)", meshConfig)
	}
	return fmt.Sprintf("ztunnel %s%s follows istiod of revision %q (%s), but --istio-revision is %q: "+
		"ServiceEntries labelled istio.io/rev=%s are forwarded though ztunnel routes their VIPs, "+
		"those labelled istio.io/rev=%s are answered with VIPs ztunnel does not route, and %s; "+
		"set --istio-revision=%s (chart resolver.istioRevision) as ztunnel's upgrade reaches the node",
		p.Key(), on, rev, how, flag, rev, flag, followed, rev)
}
