package kube

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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

// Istio installs ztunnel in istiod's namespace unless told otherwise:
// istiod's chart trusts ztunnel there (CA_TRUSTED_NODE_ACCOUNTS
// NS/ztunnel) unless trustedZtunnelNamespace names another. On OpenShift,
// which lets privileged pods run in kube-system, ztunnel runs there while
// istiod stays in istio-system: istioctl's openshift-ambient profile
// installs it there, and the charts' platform: openshift sets
// trustedZtunnelNamespace: kube-system. istio-cni, likewise, takes a pod
// for ztunnel by one namespace and the label app=ztunnel (cni/pkg/util
// IsZtunnelPod).

// WithZtunnelNamespace sets the namespace of Istio's ztunnel, where the
// source looks for the node's ztunnel pod (label app=ztunnel) to compare
// its revision with istiod's. Empty (the default): istiod's namespace
// (WithIstioNamespace), as Istio's trustedZtunnelNamespace. Without
// istiod's namespace nothing is compared, whatever this says: with no
// istiod there is no revision to follow (ignored.go).
func WithZtunnelNamespace(ns string) Option { return func(s *Source) { s.ztunnelNamespace = ns } }

// ztunnelNamespaceOrIstiod is where the source looks for ztunnel pods.
func (s *Source) ztunnelNamespaceOrIstiod() string {
	return cmp.Or(s.ztunnelNamespace, s.istioNamespace)
}

// ztunnelRevision is the Istio revision of ztunnel pod p: its
// AnnotationIstioRev, DefaultIstioRevision without one.
func ztunnelRevision(p *model.Pod) string {
	return cmp.Or(p.Annotations[model.AnnotationIstioRev], DefaultIstioRevision)
}

// isZtunnelApp reports whether p carries the label of Istio's ztunnel
// pods, in whatever namespace.
func isZtunnelApp(p *model.Pod) bool { return p.Labels[model.LabelApp] == model.ZtunnelApp }

// followZtunnel compares the revision of the ztunnel pods the source
// watches (the node's, with a node name) in ztunnel's namespace with
// istiod's, --istio-revision, and says of each that differs, in Warnings
// and the metric. Pods starting count: a DaemonSet's new pod is the node's
// ztunnel to be. With none there, a pod labelled app=ztunnel in another
// namespace is most likely ztunnel installed elsewhere than the flag says
// (Istio on OpenShift): that is said too, without the metric, as
// its revision is not compared. Logged when what it says changes (of the
// pods elsewhere, the one it names). Nothing without istiod's namespace.
func (r *run) followZtunnel() {
	var mismatches, elsewhere []string
	elsewhereKey := "" // the pod elsewhere names
	if r.src.istioNamespace != "" {
		ns := r.src.ztunnelNamespaceOrIstiod()
		found := false
		var others []*model.Pod
		for i := range r.last.Pods {
			p := &r.last.Pods[i]
			if !isZtunnelApp(p) {
				continue
			}
			if p.Namespace != ns {
				others = append(others, p)
				continue
			}
			found = true
			rev := ztunnelRevision(p)
			if rev == r.src.istioRevision {
				continue
			}
			mismatches = append(mismatches, ztunnelWarning(p, rev, r.src.istioRevision, r.src.meshConfigWhere(), r.meshState == "absent"))
		}
		// One line however many: any pod may carry the label. It names a
		// pod in kube-system if there is one, where Istio on OpenShift
		// runs ztunnel and tenants make no pods, so that a tenant's pod
		// sorting first does not stand in for the node's ztunnel.
		if !found && len(others) > 0 {
			named := others[0]
			if i := slices.IndexFunc(others, func(p *model.Pod) bool { return p.Namespace == metav1.NamespaceSystem }); i >= 0 {
				named = others[i]
			}
			elsewhere = append(elsewhere, ztunnelElsewhereWarning(named, len(others)-1, ns, r.src.ztunnelNamespace == ""))
			elsewhereKey = named.Key()
		}
	}
	mismatch := 0.0
	if len(mismatches) > 0 {
		mismatch = 1
	}
	r.src.metrics.ztunnelRevisionMismatch.Set(mismatch)
	// What is logged changes with the pod named, not with how many more
	// are labelled: tenants' pods come and go at will.
	state := strings.Join(append(slices.Clone(mismatches), elsewhereKey), "\n")
	warnings := append(mismatches, elsewhere...)
	if state != r.ztunnelState {
		for _, w := range mismatches {
			r.log.Warn("the node's ztunnel follows another istiod than --istio-revision", "detail", w)
		}
		for _, w := range elsewhere {
			r.log.Warn("no ztunnel pod on the node in ztunnel's namespace, but one outside it", "detail", w)
		}
		if len(mismatches) == 0 && r.ztunnelMismatch {
			r.log.Info("the node's ztunnel follows istiod of --istio-revision", "revision", r.src.istioRevision)
		}
		r.ztunnelState, r.ztunnelMismatch = state, len(mismatches) > 0
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

// ztunnelElsewhereWarning says that pod p, labelled app=ztunnel, and more
// others are not in ztunnel's namespace ns, where no ztunnel pod is, so
// that no revision is compared; defaulted, ns is istiod's namespace (no
// --ztunnel-namespace).
func ztunnelElsewhereWarning(p *model.Pod, more int, ns string, defaulted bool) string {
	on := ""
	if p.NodeName != "" {
		on = " on node " + p.NodeName
	}
	also := ""
	if more > 0 {
		also = fmt.Sprintf(" (and %d more pods so labelled)", more)
	}
	flag := "--ztunnel-namespace"
	if defaulted {
		flag = "--ztunnel-namespace not given: --istio-namespace"
	}
	return fmt.Sprintf("ztunnel %s%s (label app=ztunnel)%s is not in ztunnel's namespace %q (%s), which holds no ztunnel pod: "+
		"no ztunnel's revision is compared with --istio-revision; if it is the node's ztunnel (Istio on OpenShift runs it in kube-system), "+
		"set --ztunnel-namespace=%s (chart resolver.ztunnelNamespace)",
		p.Key(), on, also, ns, flag, p.Namespace)
}
