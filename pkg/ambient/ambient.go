// Package ambient decides whether a pod's DNS is captured, with Istio ambient
// mode's enrollment rules: the same pods ztunnel would capture, minus the
// ones whose DNS must not be redirected.
//
// Istio enrolls a pod when its namespace or the pod itself carries
// istio.io/dataplane-mode=ambient, unless the pod says
// istio.io/dataplane-mode=none: the default of istio-cni's
// ambient.enablementSelectors (a pod label "ambient", or a namespace label
// "ambient" with a pod label NotIn ["none"]), which ztdns applies itself.
// Where the source watches every pod of the node and istio-cni's
// enrollment is required (Policy.RequireEnrollment), istio-cni's
// ambient.istio.io/redirection "enabled" or "pending" is the enrollment
// itself: it is the result of whatever selectors istio-cni runs with,
// custom ones included, so a pod it carries is enrolled whatever its
// labels and its namespace's say (the exclusions below still apply).
// Host-network pods and pods with a sidecar are never enrolled: istio-cni
// takes a pod for a sidecar pod when it carries the injector's
// sidecar.istio.io/status annotation, whatever its value, which proxyless
// gRPC pods carry too without an istio-proxy container; ztdns also counts
// a pod running an istio-proxy container (model.Pod.HasSidecar), except an
// ingress gateway's, whose istio-proxy is the gateway itself.
//
// Gateways istiod deploys (gateway.istio.io/managed) follow Istio's rules
// as istio-cni applies them: an ingress gateway of a Gateway API Gateway
// (the value "istio.io-gateway-controller", Istio's kube-gateway and
// agentgateway templates) is an ordinary pod to istio-cni. istiod labels
// it istio.io/dataplane-mode=none unless the Gateway sets that label
// itself, so it is enrolled, and captured, only when its Gateway puts it
// in the mesh. Waypoints and east-west gateways (every other value:
// istio.io-mesh-controller, istio.io-agentgateway-waypoint-controller,
// istio.io-eastwest-controller) are made by Istio's waypoint templates,
// which label them dataplane-mode=none; ztdns leaves them alone even when
// that label is gone (ReasonGateway), as it did every managed pod before:
// they resolve names for other pods' traffic, which they send on outside
// ztunnel's capture, so a VIP only ztunnel routes would lead nowhere.
//
// For an enrolled pod, two annotations override the node-wide default
// (--dns-capture-default), parsed as Istio parses its own (strconv.ParseBool;
// any other value is ignored):
//
//   - ztdns.io/dns-capture, ztdns's own, in both directions: "true" captures
//     the pod when the default is off, "false" leaves it alone;
//   - ambient.istio.io/dns-capture, istio-cni's switch for Istio's own DNS
//     capture, only as an opt-out: "false" says the pod's DNS must not be
//     proxied, and ztdns leaves it alone too. Its "true" is not read:
//     istio-cni takes it as "capture this pod's DNS in ztunnel" even when
//     Istio's global switch is off, so it cannot double as ztdns's opt-in.
//
// ztdns's annotation wins when both are set. Neither enrolls a pod by
// itself: like Istio's per-pod override, they apply only to pods that are in
// the ambient mesh, so annotating a pod outside the mesh changes nothing. A
// user who wants the DNS of a pod captured puts the pod in the mesh; sending
// the DNS of a pod the mesh does not know to the mesh's name table would
// answer with VIPs that only ztunnel can route.
//
// Before all of these, a pod in a namespace istio-cni excludes
// (excludeNamespaces in its chart, [kube-system] by default; the agent's
// --exclude-namespaces mirrors it) is left alone whatever it or its
// namespace says: istio-cni never enrolls such a pod, so ztunnel routes
// none of its traffic and the VIPs ztdns would answer with would lead
// nowhere. In kube-system that also keeps CoreDNS's own upstream queries,
// the whole cluster's external DNS, from funnelling through one node's
// ztdns under per-pod limits.
//
// Where the source watches every pod of the node, a pod is left alone
// unless istio-cni enrolled it (ambient.istio.io/redirection "enabled" or
// "pending"; Policy.RequireEnrollment), whatever its labels say: istio-cni
// may not run on the node, may have failed for good, may run with
// selectors that leave the pod out, or Istio may be gone with the labels
// left. ztunnel
// routes nothing for such a pod, and istiod gives it no HBONE, so the VIPs
// ztdns would answer with would lead nowhere. (pkg/capture gives a new pod
// a grace: its watch may deliver the pod before istio-cni's annotation.)
// Where the agent installs ztdns into the node's CNI chain and a pod's
// sandbox was set up while istio-cni was not there (Policy.NoIstioCNI,
// which pkg/capture sets per sandbox), that pod is not taken for enrolled:
// the annotation belongs to the pod and outlives the sandbox istio-cni set
// up. Pods set up before istio-cni left stay enrolled, as Istio leaves
// them.
//
// Then a pod the source has not seen, where the source watches every pod of
// the node (a Kubernetes API server), is left alone until the watch
// delivers it: a CNI ADD names the pod and nothing more, and any of its
// labels or annotations may keep it out. istio-cni likewise enrolls no pod
// it has not read from the API server. A directory of manifests names only
// the pods someone wrote down, so there a pod it does not name is decided
// on its namespace.
package ambient

import (
	"slices"
	"strconv"

	"github.com/ztdns/ztdns/pkg/model"
)

// Label and annotation values Decide reads.
const (
	// DataplaneModeAmbient enrolls a namespace or a pod.
	DataplaneModeAmbient = "ambient"
	// DataplaneModeNone keeps a pod out even when its namespace is enrolled.
	DataplaneModeNone = "none"
	// GatewayControllerIngress is the gateway.istio.io/managed of the
	// ingress gateways istiod deploys for Gateway API Gateways (Istio's
	// constants.ManagedGatewayControllerLabel): pods Istio enrolls by its
	// rules like any other. Every other value is a waypoint's or an
	// east-west gateway's.
	GatewayControllerIngress = "istio.io-gateway-controller"
)

// Reasons Decide gives. They are short and stable: the agent shows them in
// `ztdns pods` and uses them as a metric label, so never change one.
const (
	// ReasonExcludedNamespace: the pod's namespace is one istio-cni
	// excludes (--exclude-namespaces), so Istio never enrolls it.
	ReasonExcludedNamespace = "excluded-namespace"
	// ReasonAmbient: enrolled, and capture is on by default.
	ReasonAmbient = "ambient"
	// ReasonAnnotationOn: enrolled, and ztdns.io/dns-capture is true.
	ReasonAnnotationOn = "annotation-on"
	// ReasonAnnotationOff: enrolled, but ztdns.io/dns-capture is false.
	ReasonAnnotationOff = "annotation-off"
	// ReasonIstioAnnotationOff: enrolled, but ambient.istio.io/dns-capture
	// is false (and ztdns's own annotation is not set).
	ReasonIstioAnnotationOff = "istio-annotation-off"
	// ReasonDefaultOff: enrolled, but capture is off node-wide and the pod
	// does not opt in.
	ReasonDefaultOff = "default-off"
	// ReasonNotAmbient: neither the pod nor its namespace is labelled ambient.
	ReasonNotAmbient = "not-ambient"
	// ReasonNamespaceUnknown: the pod is not labelled ambient and the
	// source does not know its namespace (a namespace made a moment ago,
	// or the namespaces watch failing since before it was made): not
	// captured until the namespace, and its label, is known.
	ReasonNamespaceUnknown = "namespace-unknown"
	// ReasonPodUnknown: the source watches the node's pods (Policy.PodsWatched)
	// and has not seen this one: its pods watch lags behind the container
	// runtime, or is failing. Not captured until the pod, with its labels
	// and annotations, is known.
	ReasonPodUnknown = "pod-unknown"
	// ReasonDataplaneNone: the pod is labelled istio.io/dataplane-mode=none.
	ReasonDataplaneNone = "dataplane-none"
	// ReasonHostNetwork: the pod shares the node's network namespace;
	// marking it would capture the node's own DNS.
	ReasonHostNetwork = "host-network"
	// ReasonSidecar: Istio injected the pod (sidecar.istio.io/status, which
	// keeps it out of ambient) or it runs an istio-proxy container.
	ReasonSidecar = "sidecar"
	// ReasonGateway: the pod is a waypoint or an east-west gateway
	// (gateway.istio.io/managed, any value but an ingress gateway's
	// GatewayControllerIngress).
	ReasonGateway = "gateway"
	// ReasonNotEnrolled: the labels put the pod in the mesh, but istio-cni
	// has not enrolled it (Policy.RequireEnrollment): no
	// ambient.istio.io/redirection "enabled" or "pending", or istio-cni is
	// not in the node's CNI chain (Policy.NoIstioCNI).
	ReasonNotEnrolled = "not-enrolled"
)

// Policy is the node-wide part of the decision, from the agent's flags.
type Policy struct {
	// DNSCaptureDefault is the node-wide switch (cni.ambient.dnsCapture,
	// --dns-capture-default).
	DNSCaptureDefault bool
	// ExcludeNamespaces are the namespaces whose pods are never captured:
	// istio-cni's excludeNamespaces (--exclude-namespaces). Names match
	// exactly, as istio-cni matches them.
	ExcludeNamespaces []string
	// PodsWatched says the pods come from a watch of every pod of the node
	// (a Kubernetes API server): a pod missing from it is one the watch
	// has not delivered yet, about whose labels and annotations nothing is
	// known, and it is not captured (ReasonPodUnknown). Without it (a
	// directory of manifests, which need name no pod) such a pod is decided
	// on its namespace alone, as if it carried no label or annotation.
	PodsWatched bool
	// RequireEnrollment leaves alone a pod the labels put in the mesh that
	// istio-cni has not enrolled (model.Pod.Enrollment neither enabled nor
	// pending): ReasonNotEnrolled. Only with PodsWatched (a pod the source
	// has not seen is ReasonPodUnknown already); a directory of manifests
	// need not carry istio-cni's annotation.
	//
	// And it makes istio-cni's enrollment enough: a pod enabled or pending
	// is in the mesh whatever its labels and its namespace's say, as
	// istio-cni may run with enablementSelectors of its own (a pod label
	// mesh=on, say) that ztdns does not read; its annotation is their
	// result. The rules that keep a pod out whatever enrolled it still
	// apply: an excluded namespace, host network, a sidecar, a waypoint,
	// dataplane-mode=none and the pod's opt-outs.
	//
	// "pending" counts as enrolled: istio-cni writes it once its in-pod
	// rules are in place, the pod's traffic (and its DNS, with Istio's DNS
	// capture on) already goes to ztunnel's in-pod listeners, and istio-cni
	// retries handing the pod to ztunnel until it takes it ("enabled").
	// Until then the pod reaches nothing through the mesh whatever the
	// answer; releasing it would only make its answers change twice.
	RequireEnrollment bool
	// NoIstioCNI says the pod's sandbox was set up while istio-cni was not
	// in the node's CNI chain (no istio-cni entry with ambient on in the
	// file the runtime uses, as the agent installing ztdns's entry finds
	// it; pkg/capture decides it per sandbox): istio-cni set up nothing for
	// it, and an annotation the pod carries was written for
	// another sandbox (one made before istio-cni left, or on another node:
	// a node rebooted after Istio was removed, a StatefulSet pod made
	// again, a pod copied with its annotations), so with RequireEnrollment
	// no pod is enrolled: ReasonNotEnrolled.
	NoIstioCNI bool
}

// Decide reports whether the DNS of pod, in the namespace named namespace
// (ns, when the source knows it), is captured, and why.
//
// A namespace in p.ExcludeNamespaces settles it first
// (ReasonExcludedNamespace); then, with p.PodsWatched, a pod the source has
// not seen (pod nil) is not captured (ReasonPodUnknown): any of its labels
// or annotations may leave it out, and istio-cni enrolls no pod it has not
// seen either. Then decide applies Istio's enrollment rules. namespace is
// given apart from pod and ns because either may be unknown yet.
func (p Policy) Decide(namespace string, pod *model.Pod, ns *model.Namespace) (capture bool, reason string) {
	switch {
	case slices.Contains(p.ExcludeNamespaces, namespace):
		return false, ReasonExcludedNamespace
	case pod == nil && p.PodsWatched:
		return false, ReasonPodUnknown
	}
	return decide(pod, ns, p.DNSCaptureDefault, p.RequireEnrollment && p.PodsWatched, p.NoIstioCNI)
}

// decide applies Istio's enrollment rules and ztdns's annotations to pod, in
// namespace ns. dnsCaptureDefault is the node-wide switch;
// requireEnrollment leaves alone a pod istio-cni has not enrolled, every
// pod with noIstioCNI.
//
// pod is nil when the source names no such pod (Policy.Decide settles that
// first when the source watches the node's pods): the decision then rests
// on the namespace alone, as if the pod carried no labels or annotations,
// and the caller decides again if the pod becomes known. ns is nil when the
// namespace is not known: a pod that is not enrolled by its own label is
// then not captured, as in a namespace without the label, but for its own
// reason (ReasonNamespaceUnknown), so that an operator does not read a
// namespace the agent has not seen as one without the label.
//
// The rules apply in order and the first that settles the question gives
// the reason (after Policy.Decide's excluded namespaces and unseen pods):
// host network, waypoint, sidecar, dataplane-mode=none, enrollment by the
// labels (or, with requireEnrollment, by istio-cni's annotation), the
// pod's opt-out (ztdns's annotation false, or, without it, Istio's),
// istio-cni's enrollment, ztdns's annotation true, the default.
func decide(pod *model.Pod, ns *model.Namespace, dnsCaptureDefault, requireEnrollment, noIstioCNI bool) (capture bool, reason string) {
	var podLabels, podAnnotations map[string]string
	if pod != nil {
		podLabels, podAnnotations = pod.Labels, pod.Annotations
		// The gateway label before the sidecar: gateways run an istio-proxy
		// container, which is the gateway, not a sidecar. istio-cni looks
		// only at the injector's annotation, which Istio's gateway
		// templates do not get.
		controller, gateway := podLabels[model.LabelGatewayManaged]
		switch {
		case pod.HostNetwork:
			return false, ReasonHostNetwork
		case gateway && controller != GatewayControllerIngress:
			return false, ReasonGateway
		case pod.HasSidecar && !gateway:
			return false, ReasonSidecar
		}
	}

	// With requireEnrollment, istio-cni's annotation enrolls the pod as its
	// selectors, whichever they are, decided.
	enrolled := requireEnrollment && pod != nil && !noIstioCNI && pod.Enrollment.Redirected()
	switch podLabels[model.LabelDataplaneMode] {
	case DataplaneModeNone:
		return false, ReasonDataplaneNone
	case DataplaneModeAmbient:
	default:
		if enrolled {
			break
		}
		if ns == nil {
			return false, ReasonNamespaceUnknown
		}
		if ns.Labels[model.LabelDataplaneMode] != DataplaneModeAmbient {
			return false, ReasonNotAmbient
		}
	}

	// The pod's own opt-out before istio-cni's enrollment: it keeps the
	// pod uncaptured whether or not istio-cni enrolls it, and is the reason
	// its owner looks for.
	on, annotated := boolAnnotation(podAnnotations, model.AnnotationDNSCapture)
	switch {
	case annotated && !on:
		return false, ReasonAnnotationOff
	case !annotated:
		if istioOn, ok := boolAnnotation(podAnnotations, model.AnnotationIstioDNSCapture); ok && !istioOn {
			return false, ReasonIstioAnnotationOff
		}
	}
	if requireEnrollment && pod != nil && (noIstioCNI || !pod.Enrollment.Redirected()) {
		return false, ReasonNotEnrolled
	}
	if annotated {
		return true, ReasonAnnotationOn
	}
	if dnsCaptureDefault {
		return true, ReasonAmbient
	}
	return false, ReasonDefaultOff
}

// boolAnnotation reads a boolean annotation as Istio does: a value
// strconv.ParseBool does not take counts as absent.
func boolAnnotation(annotations map[string]string, key string) (on, ok bool) {
	v, present := annotations[key]
	if !present {
		return false, false
	}
	on, err := strconv.ParseBool(v)
	return on, err == nil
}
