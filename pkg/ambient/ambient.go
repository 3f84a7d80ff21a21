// Package ambient decides whether a pod's DNS is captured, with Istio ambient
// mode's enrollment rules: the same pods ztunnel would capture, minus the
// ones whose DNS must not be redirected.
//
// Istio enrolls a pod when its namespace or the pod itself carries
// istio.io/dataplane-mode=ambient, unless the pod says
// istio.io/dataplane-mode=none (the chart's default enablement selectors:
// a pod label "ambient", or a namespace label "ambient" with a pod label
// NotIn ["none"]). Host-network pods and pods with an istio-proxy sidecar are
// never enrolled. Waypoints and gateways are proxies that resolve names for
// others; capturing their DNS loops it back through ztdns, so a pod labelled
// gateway.istio.io/managed (any value: istiod sets "istio.io-mesh-controller"
// on waypoints and "istio.io-gateway-controller" on gateways) is left alone
// even when someone removed the dataplane-mode=none label Istio's templates
// put on them.
//
// For an enrolled pod, the annotation ambient.istio.io/dns-capture overrides
// the node-wide default (cni.ambient.dnsCapture) in both directions, parsed as
// Istio parses it (strconv.ParseBool; any other value is ignored). It never
// enrolls a pod by itself: like Istio's per-pod override, it applies only to
// pods that are in the ambient mesh, so annotating a pod outside the mesh
// changes nothing. A user who wants the DNS of a pod captured puts the pod in
// the mesh; sending the DNS of a pod the mesh does not know to the mesh's
// name table would answer with VIPs that only ztunnel can route.
package ambient

import (
	"strconv"

	"github.com/ztdns/ztdns/pkg/model"
)

// Label and annotation values Decide reads.
const (
	// DataplaneModeAmbient enrolls a namespace or a pod.
	DataplaneModeAmbient = "ambient"
	// DataplaneModeNone keeps a pod out even when its namespace is enrolled.
	DataplaneModeNone = "none"
)

// Reasons Decide gives. They are short and stable: the agent shows them in
// `ztdns pods` and uses them as a metric label, so never change one.
const (
	// ReasonAmbient: enrolled, and capture is on by default.
	ReasonAmbient = "ambient"
	// ReasonAnnotationOn: enrolled, and ambient.istio.io/dns-capture is true.
	ReasonAnnotationOn = "annotation-on"
	// ReasonAnnotationOff: enrolled, but ambient.istio.io/dns-capture is false.
	ReasonAnnotationOff = "annotation-off"
	// ReasonDefaultOff: enrolled, but capture is off node-wide and the pod
	// does not opt in.
	ReasonDefaultOff = "default-off"
	// ReasonNotAmbient: neither the pod nor its namespace is labelled ambient.
	ReasonNotAmbient = "not-ambient"
	// ReasonDataplaneNone: the pod is labelled istio.io/dataplane-mode=none.
	ReasonDataplaneNone = "dataplane-none"
	// ReasonHostNetwork: the pod shares the node's network namespace;
	// marking it would capture the node's own DNS.
	ReasonHostNetwork = "host-network"
	// ReasonSidecar: the pod runs an istio-proxy container, which handles
	// its DNS itself.
	ReasonSidecar = "sidecar"
	// ReasonGateway: the pod is a waypoint or gateway (gateway.istio.io/managed).
	ReasonGateway = "gateway"
)

// Decide reports whether the DNS of pod, in namespace ns, is captured, and
// why. dnsCaptureDefault is the node-wide switch (cni.ambient.dnsCapture).
//
// pod is nil when the pod source has not seen the pod yet (a CNI ADD usually
// arrives before the watch event): the decision then rests on the namespace
// alone, as if the pod carried no labels or annotations, and the caller
// decides again once the pod is known. ns is nil when the namespace is not
// known either, which counts as no labels.
//
// The rules apply in order and the first that settles the question gives
// the reason: host network, sidecar, gateway, dataplane-mode=none,
// enrollment, the annotation, the default.
func Decide(pod *model.Pod, ns *model.Namespace, dnsCaptureDefault bool) (capture bool, reason string) {
	var podLabels, podAnnotations, nsLabels map[string]string
	if pod != nil {
		switch {
		case pod.HostNetwork:
			return false, ReasonHostNetwork
		case pod.HasSidecar:
			return false, ReasonSidecar
		}
		podLabels, podAnnotations = pod.Labels, pod.Annotations
	}
	if ns != nil {
		nsLabels = ns.Labels
	}

	if _, ok := podLabels[model.LabelGatewayManaged]; ok {
		return false, ReasonGateway
	}
	switch podLabels[model.LabelDataplaneMode] {
	case DataplaneModeNone:
		return false, ReasonDataplaneNone
	case DataplaneModeAmbient:
	default:
		if nsLabels[model.LabelDataplaneMode] != DataplaneModeAmbient {
			return false, ReasonNotAmbient
		}
	}

	if v, ok := podAnnotations[model.AnnotationDNSCapture]; ok {
		if on, err := strconv.ParseBool(v); err == nil {
			if on {
				return true, ReasonAnnotationOn
			}
			return false, ReasonAnnotationOff
		}
	}
	if dnsCaptureDefault {
		return true, ReasonAmbient
	}
	return false, ReasonDefaultOff
}
