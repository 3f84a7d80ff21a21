package ambient

import (
	"encoding/json"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/model/kubeapi"
	"github.com/ztdns/ztdns/pkg/model/typed"
)

func TestDecide(t *testing.T) {
	t.Parallel()
	const (
		mode = model.LabelDataplaneMode
		gw   = model.LabelGatewayManaged
		dns  = model.AnnotationDNSCapture
		idns = model.AnnotationIstioDNSCapture
	)
	ambientNS := &model.Namespace{Name: "shop", Labels: map[string]string{mode: "ambient"}}
	plainNS := &model.Namespace{Name: "shop"}
	noneNS := &model.Namespace{Name: "shop", Labels: map[string]string{mode: "none"}}
	pod := func(labels, annotations map[string]string) *model.Pod {
		return &model.Pod{Namespace: "shop", Name: "web", Labels: labels, Annotations: annotations}
	}
	l := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}

	tests := []struct {
		name       string
		pod        *model.Pod
		ns         *model.Namespace
		defaultOn  bool
		wantCap    bool
		wantReason string
	}{
		// Enrollment.
		{"namespace ambient", pod(nil, nil), ambientNS, true, true, ReasonAmbient},
		{"pod ambient in plain namespace", pod(l(mode, "ambient"), nil), plainNS, true, true, ReasonAmbient},
		{"pod ambient in namespace labelled none", pod(l(mode, "ambient"), nil), noneNS, true, true, ReasonAmbient},
		{"pod ambient, namespace unknown", pod(l(mode, "ambient"), nil), nil, true, true, ReasonAmbient},
		{"neither labelled", pod(nil, nil), plainNS, true, false, ReasonNotAmbient},
		{"namespace labelled none", pod(nil, nil), noneNS, true, false, ReasonNotAmbient},
		{"namespace label with another value", pod(nil, nil), &model.Namespace{Labels: l(mode, "Ambient")}, true, false, ReasonNotAmbient},
		{"pod label with another value in ambient namespace", pod(l(mode, "sidecar"), nil), ambientNS, true, true, ReasonAmbient},
		{"pod label with another value in plain namespace", pod(l(mode, "sidecar"), nil), plainNS, true, false, ReasonNotAmbient},
		{"nothing known", nil, nil, true, false, ReasonNamespaceUnknown},
		{"pod not labelled, namespace unknown", pod(nil, nil), nil, true, false, ReasonNamespaceUnknown},
		{"pod none, namespace unknown", pod(l(mode, "none"), nil), nil, true, false, ReasonDataplaneNone},

		// Opt-outs that no label or annotation overrides.
		{"pod none in ambient namespace", pod(l(mode, "none"), nil), ambientNS, true, false, ReasonDataplaneNone},
		{"pod none with annotation true", pod(l(mode, "none"), l(dns, "true")), ambientNS, true, false, ReasonDataplaneNone},
		{"host network", &model.Pod{HostNetwork: true, Labels: l(mode, "ambient")}, ambientNS, true, false, ReasonHostNetwork},
		{"host network with annotation true", &model.Pod{HostNetwork: true, Annotations: l(dns, "true")}, ambientNS, true, false, ReasonHostNetwork},
		{"sidecar", &model.Pod{HasSidecar: true}, ambientNS, true, false, ReasonSidecar},
		{"sidecar with pod label ambient", &model.Pod{HasSidecar: true, Labels: l(mode, "ambient")}, plainNS, true, false, ReasonSidecar},
		{"host network wins over sidecar", &model.Pod{HostNetwork: true, HasSidecar: true}, ambientNS, true, false, ReasonHostNetwork},
		{"waypoint", pod(l(gw, "istio.io-mesh-controller"), nil), ambientNS, true, false, ReasonGateway},
		{"agentgateway waypoint", pod(l(gw, "istio.io-agentgateway-waypoint-controller"), nil), ambientNS, true, false, ReasonGateway},
		{"east-west gateway", pod(l(gw, "istio.io-eastwest-controller"), nil), ambientNS, true, false, ReasonGateway},
		{"managed label with empty value", pod(l(gw, ""), nil), ambientNS, true, false, ReasonGateway},
		{"waypoint labelled ambient with annotation true", pod(l(gw, "istio.io-mesh-controller", mode, "ambient"), l(dns, "true")), ambientNS, true, false, ReasonGateway},
		{"waypoint as Istio labels it", pod(l(gw, "istio.io-mesh-controller", mode, "none"), nil), ambientNS, true, false, ReasonGateway},
		{"waypoint with its istio-proxy container", &model.Pod{Namespace: "shop", Name: "waypoint",
			Labels: l(gw, "istio.io-mesh-controller", mode, "none"), HasSidecar: true}, ambientNS, true, false, ReasonGateway},
		// An ingress gateway of a Gateway API Gateway is an ordinary pod to
		// istio-cni: its istio-proxy container (HasSidecar) is the gateway,
		// and istiod's dataplane-mode=none keeps it out unless its Gateway
		// labels it otherwise.
		{"ingress gateway as istiod labels it", &model.Pod{Namespace: "shop", Name: "gw",
			Labels: l(gw, "istio.io-gateway-controller", mode, "none"), HasSidecar: true}, ambientNS, true, false, ReasonDataplaneNone},
		{"ingress gateway its Gateway puts in the mesh", &model.Pod{Namespace: "shop", Name: "gw",
			Labels: l(gw, "istio.io-gateway-controller", mode, "ambient"), HasSidecar: true}, plainNS, true, true, ReasonAmbient},
		{"ingress gateway without istiod's label in an ambient namespace", pod(l(gw, "istio.io-gateway-controller"), nil), ambientNS, true, true, ReasonAmbient},
		{"ingress gateway outside the mesh", pod(l(gw, "istio.io-gateway-controller"), nil), plainNS, true, false, ReasonNotAmbient},
		{"ingress gateway opted out", pod(l(gw, "istio.io-gateway-controller", mode, "ambient"), l(dns, "false")), plainNS, true, false, ReasonAnnotationOff},
		{"ingress gateway on the host network", &model.Pod{HostNetwork: true, Labels: l(gw, "istio.io-gateway-controller", mode, "ambient")}, plainNS, true, false, ReasonHostNetwork},

		// The annotation, for enrolled pods.
		{"annotation false", pod(nil, l(dns, "false")), ambientNS, true, false, ReasonAnnotationOff},
		{"annotation false, default off", pod(nil, l(dns, "false")), ambientNS, false, false, ReasonAnnotationOff},
		{"annotation true, default off", pod(nil, l(dns, "true")), ambientNS, false, true, ReasonAnnotationOn},
		{"annotation true, default on", pod(nil, l(dns, "true")), ambientNS, true, true, ReasonAnnotationOn},
		{"annotation true on pod-labelled pod, default off", pod(l(mode, "ambient"), l(dns, "true")), plainNS, false, true, ReasonAnnotationOn},
		{"annotation parsed like Istio: 0", pod(nil, l(dns, "0")), ambientNS, true, false, ReasonAnnotationOff},
		{"annotation parsed like Istio: TRUE", pod(nil, l(dns, "TRUE")), ambientNS, false, true, ReasonAnnotationOn},
		{"annotation unparsable: default on", pod(nil, l(dns, "yes")), ambientNS, true, true, ReasonAmbient},
		{"annotation unparsable: default off", pod(nil, l(dns, "no")), ambientNS, false, false, ReasonDefaultOff},
		{"annotation empty", pod(nil, l(dns, "")), ambientNS, true, true, ReasonAmbient},

		// Istio's annotation: an opt-out only, and ztdns's own wins.
		{"istio annotation false", pod(nil, l(idns, "false")), ambientNS, true, false, ReasonIstioAnnotationOff},
		{"istio annotation true, default off: not an opt-in", pod(nil, l(idns, "true")), ambientNS, false, false, ReasonDefaultOff},
		{"istio annotation true, default on", pod(nil, l(idns, "true")), ambientNS, true, true, ReasonAmbient},
		{"istio annotation unparsable", pod(nil, l(idns, "nope")), ambientNS, true, true, ReasonAmbient},
		{"istio false, ztdns true", pod(nil, l(idns, "false", dns, "true")), ambientNS, true, true, ReasonAnnotationOn},
		{"istio true, ztdns false", pod(nil, l(idns, "true", dns, "false")), ambientNS, true, false, ReasonAnnotationOff},
		{"istio false outside the mesh", pod(nil, l(idns, "false")), plainNS, true, false, ReasonNotAmbient},

		// The annotation never enrolls a pod.
		{"annotation true outside the mesh", pod(nil, l(dns, "true")), plainNS, true, false, ReasonNotAmbient},
		{"annotation true outside the mesh, default off", pod(nil, l(dns, "true")), plainNS, false, false, ReasonNotAmbient},

		// The default.
		{"default off", pod(nil, nil), ambientNS, false, false, ReasonDefaultOff},
		{"pod unknown, namespace ambient", nil, ambientNS, true, true, ReasonAmbient},
		{"pod unknown, namespace ambient, default off", nil, ambientNS, false, false, ReasonDefaultOff},
		{"pod unknown, namespace plain", nil, plainNS, true, false, ReasonNotAmbient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := Policy{DNSCaptureDefault: tt.defaultOn, ExcludeNamespaces: []string{"kube-system"}}
			gotCap, gotReason := p.Decide("shop", tt.pod, tt.ns)
			if gotCap != tt.wantCap || gotReason != tt.wantReason {
				t.Errorf("Decide = (%t, %q), want (%t, %q)", gotCap, gotReason, tt.wantCap, tt.wantReason)
			}
		})
	}
}

// TestDecideExcludedNamespacesAndPodsWatched checks that a namespace
// istio-cni excludes settles the decision before any label, annotation or
// default: Istio never enrolls its pods, so ztunnel would route none of the
// VIPs ztdns answers. And where the source watches the node's pods, a pod
// it has not seen is not captured (pod-unknown), whatever its namespace
// says: the pod may be opted out. An excluded namespace still says so
// first, and a pod the source knows is decided as without the watch.
func TestDecideExcludedNamespacesAndPodsWatched(t *testing.T) {
	t.Parallel()
	const (
		mode     = model.LabelDataplaneMode
		dns      = model.AnnotationDNSCapture
		istioDNS = model.AnnotationIstioDNSCapture
	)
	ambientKS := &model.Namespace{Name: "kube-system", Labels: map[string]string{mode: "ambient"}}
	ambientNS := &model.Namespace{Name: "shop", Labels: map[string]string{mode: "ambient"}}
	plainNS := &model.Namespace{Name: "shop"}
	coredns := &model.Pod{Namespace: "kube-system", Name: "coredns", Labels: map[string]string{mode: "ambient"},
		Annotations: map[string]string{dns: "true"}}
	kubeSystem := Policy{DNSCaptureDefault: true, ExcludeNamespaces: []string{"kube-system"}}
	watched := Policy{DNSCaptureDefault: true, ExcludeNamespaces: []string{"kube-system"}, PodsWatched: true}
	enrolling := watched
	enrolling.RequireEnrollment = true
	noIstioCNI := enrolling
	noIstioCNI.NoIstioCNI = true
	web := func(e model.Enrollment, labels, annotations map[string]string) *model.Pod {
		return &model.Pod{Namespace: "shop", Name: "web", Enrollment: e, Labels: labels, Annotations: annotations}
	}
	tests := []struct {
		name       string
		policy     Policy
		namespace  string
		pod        *model.Pod
		ns         *model.Namespace
		wantCap    bool
		wantReason string
	}{
		{"kube-system labelled ambient, pod labelled and annotated", kubeSystem, "kube-system", coredns, ambientKS, false, ReasonExcludedNamespace},
		{"kube-system, pod and namespace unknown yet", kubeSystem, "kube-system", nil, nil, false, ReasonExcludedNamespace},
		{"kube-system, host network pod: exclusion first", kubeSystem, "kube-system", &model.Pod{HostNetwork: true}, ambientKS, false, ReasonExcludedNamespace},
		{"another namespace the user excludes", Policy{DNSCaptureDefault: true, ExcludeNamespaces: []string{"kube-system", "monitoring"}},
			"monitoring", nil, &model.Namespace{Name: "monitoring", Labels: map[string]string{mode: "ambient"}}, false, ReasonExcludedNamespace},
		{"names match exactly, as istio-cni's", kubeSystem, "kube-system-extra", nil,
			&model.Namespace{Name: "kube-system-extra", Labels: map[string]string{mode: "ambient"}}, true, ReasonAmbient},
		{"an empty list excludes nothing", Policy{DNSCaptureDefault: true}, "kube-system", coredns, ambientKS, true, ReasonAnnotationOn},

		// Pods watched.
		{"pod unseen, namespace ambient", watched, "shop", nil, ambientNS, false, ReasonPodUnknown},
		{"pod unseen, namespace ambient, default off", Policy{PodsWatched: true}, "shop", nil, ambientNS, false, ReasonPodUnknown},
		{"pod and namespace unseen", watched, "shop", nil, nil, false, ReasonPodUnknown},
		{"pod unseen in an excluded namespace", watched, "kube-system", nil, ambientNS, false, ReasonExcludedNamespace},
		{"pod seen, namespace ambient", watched, "shop", &model.Pod{Namespace: "shop", Name: "web"}, ambientNS, true, ReasonAmbient},
		{"pod seen, labelled none", watched, "shop", &model.Pod{Namespace: "shop", Name: "web", Labels: map[string]string{mode: "none"}},
			ambientNS, false, ReasonDataplaneNone},
		{"pod seen, namespace unseen", watched, "shop", &model.Pod{Namespace: "shop", Name: "web"}, nil, false, ReasonNamespaceUnknown},
		{"no pods watched: pod unseen, namespace ambient", Policy{DNSCaptureDefault: true}, "shop", nil, ambientNS, true, ReasonAmbient},

		// istio-cni's enrollment, where required.
		{"not enrolled", enrolling, "shop", web(model.EnrollmentAbsent, nil, nil), ambientNS, false, ReasonNotEnrolled},
		{"enrolled", enrolling, "shop", web(model.EnrollmentEnabled, nil, nil), ambientNS, true, ReasonAmbient},
		{"enrolled partly: its in-pod rules are in place", enrolling, "shop", web(model.EnrollmentPending, nil, nil), ambientNS, true, ReasonAmbient},
		{"another enrollment value", enrolling, "shop", web(model.EnrollmentOther, nil, nil), ambientNS, false, ReasonNotEnrolled},
		{"not enrolled, labelled ambient itself", enrolling, "shop", web(model.EnrollmentAbsent, map[string]string{mode: "ambient"}, nil), nil, false, ReasonNotEnrolled},
		{"not enrolled, annotated true", enrolling, "shop", web(model.EnrollmentAbsent, nil, map[string]string{dns: "true"}), ambientNS, false, ReasonNotEnrolled},
		{"not enrolled, annotated false: the pod's own opt-out", enrolling, "shop", web(model.EnrollmentAbsent, nil, map[string]string{dns: "false"}), ambientNS, false, ReasonAnnotationOff},
		{"not enrolled, Istio's annotation false", enrolling, "shop", web(model.EnrollmentAbsent, nil, map[string]string{istioDNS: "false"}), ambientNS, false, ReasonIstioAnnotationOff},
		{"not enrolled, ztdns's true over Istio's false", enrolling, "shop", web(model.EnrollmentAbsent, nil, map[string]string{dns: "true", istioDNS: "false"}), ambientNS, false, ReasonNotEnrolled},
		{"enrolled, annotated false", enrolling, "shop", web(model.EnrollmentEnabled, nil, map[string]string{dns: "false"}), ambientNS, false, ReasonAnnotationOff},
		{"not enrolled outside the mesh: not-ambient", enrolling, "shop", web(model.EnrollmentAbsent, nil, nil), &model.Namespace{Name: "shop"}, false, ReasonNotAmbient},
		{"not enrolled, labelled none", enrolling, "shop", web(model.EnrollmentAbsent, map[string]string{mode: "none"}, nil), ambientNS, false, ReasonDataplaneNone},
		{"not enrolled, not required", watched, "shop", web(model.EnrollmentAbsent, nil, nil), ambientNS, true, ReasonAmbient},
		{"required without pods watched: manifests need no annotation", Policy{DNSCaptureDefault: true, RequireEnrollment: true}, "shop",
			web(model.EnrollmentAbsent, nil, nil), ambientNS, true, ReasonAmbient},
		{"pod unseen, enrollment required", enrolling, "shop", nil, ambientNS, false, ReasonPodUnknown},

		// istio-cni not in the node's CNI chain: an annotation is another sandbox's.
		{"no istio-cni, enrolled", noIstioCNI, "shop", web(model.EnrollmentEnabled, nil, nil), ambientNS, false, ReasonNotEnrolled},
		{"no istio-cni, pending", noIstioCNI, "shop", web(model.EnrollmentPending, nil, nil), ambientNS, false, ReasonNotEnrolled},
		{"no istio-cni, outside the mesh", noIstioCNI, "shop", web(model.EnrollmentEnabled, nil, nil), &model.Namespace{Name: "shop"}, false, ReasonNotAmbient},
		{"no istio-cni, enrollment not required", func() Policy { p := watched; p.NoIstioCNI = true; return p }(), "shop",
			web(model.EnrollmentAbsent, nil, nil), ambientNS, true, ReasonAmbient},

		// istio-cni's enrollment is enough: its enablementSelectors may be
		// custom (a pod label mesh=on, which ztdns does not keep), and its
		// annotation is their result.
		{"enrolled by custom selectors, neither labelled ambient", enrolling, "shop", web(model.EnrollmentEnabled, nil, nil), plainNS, true, ReasonAmbient},
		{"enrolled partly by custom selectors", enrolling, "shop", web(model.EnrollmentPending, nil, nil), plainNS, true, ReasonAmbient},
		{"enrolled, namespace unseen", enrolling, "shop", web(model.EnrollmentEnabled, nil, nil), nil, true, ReasonAmbient},
		{"enrolled, namespace labelled none", enrolling, "shop", web(model.EnrollmentEnabled, nil, nil), &model.Namespace{Name: "shop", Labels: map[string]string{mode: "none"}}, true, ReasonAmbient},
		{"enrolled by custom selectors, default off", func() Policy { p := enrolling; p.DNSCaptureDefault = false; return p }(), "shop",
			web(model.EnrollmentEnabled, nil, nil), plainNS, false, ReasonDefaultOff},
		{"enrolled by custom selectors, annotated true, default off", func() Policy { p := enrolling; p.DNSCaptureDefault = false; return p }(), "shop",
			web(model.EnrollmentEnabled, nil, map[string]string{dns: "true"}), plainNS, true, ReasonAnnotationOn},
		{"enrolled by custom selectors, annotated false", enrolling, "shop", web(model.EnrollmentEnabled, nil, map[string]string{dns: "false"}), plainNS, false, ReasonAnnotationOff},
		{"enrolled by custom selectors, Istio's annotation false", enrolling, "shop", web(model.EnrollmentEnabled, nil, map[string]string{istioDNS: "false"}), plainNS, false, ReasonIstioAnnotationOff},
		{"enrolled by custom selectors, labelled none", enrolling, "shop", web(model.EnrollmentEnabled, map[string]string{mode: "none"}, nil), plainNS, false, ReasonDataplaneNone},
		{"enrolled, host network", enrolling, "shop", &model.Pod{Namespace: "shop", Name: "web", Enrollment: model.EnrollmentEnabled, HostNetwork: true}, plainNS, false, ReasonHostNetwork},
		{"enrolled, sidecar", enrolling, "shop", &model.Pod{Namespace: "shop", Name: "web", Enrollment: model.EnrollmentEnabled, HasSidecar: true}, plainNS, false, ReasonSidecar},
		{"enrolled, waypoint", enrolling, "shop", web(model.EnrollmentEnabled, map[string]string{model.LabelGatewayManaged: "istio.io-mesh-controller"}, nil), plainNS, false, ReasonGateway},
		{"enrolled in an excluded namespace", enrolling, "kube-system", &model.Pod{Namespace: "kube-system", Name: "coredns", Enrollment: model.EnrollmentEnabled},
			&model.Namespace{Name: "kube-system"}, false, ReasonExcludedNamespace},
		{"another enrollment value, neither labelled", enrolling, "shop", web(model.EnrollmentOther, nil, nil), plainNS, false, ReasonNotAmbient},
		{"enrolled, no istio-cni in the chain: the labels decide", noIstioCNI, "shop", web(model.EnrollmentEnabled, nil, nil), plainNS, false, ReasonNotAmbient},
		{"enrolled, enrollment not required: the labels decide", watched, "shop", web(model.EnrollmentEnabled, nil, nil), plainNS, false, ReasonNotAmbient},
		{"enrolled, manifests: the labels decide", Policy{DNSCaptureDefault: true, RequireEnrollment: true}, "shop", web(model.EnrollmentEnabled, nil, nil), plainNS, false, ReasonNotAmbient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			gotCap, gotReason := tt.policy.Decide(tt.namespace, tt.pod, tt.ns)
			if gotCap != tt.wantCap || gotReason != tt.wantReason {
				t.Errorf("Decide = (%t, %q), want (%t, %q)", gotCap, gotReason, tt.wantCap, tt.wantReason)
			}
		})
	}
}

// TestDecideReasonsAreDistinct guards the promise that a reason names one
// rule: two rules sharing a string would merge their metric series.
func TestDecideReasonsAreDistinct(t *testing.T) {
	t.Parallel()
	reasons := []string{
		ReasonAmbient, ReasonAnnotationOn, ReasonAnnotationOff, ReasonDefaultOff, ReasonNotAmbient,
		ReasonDataplaneNone, ReasonHostNetwork, ReasonSidecar, ReasonGateway, ReasonIstioAnnotationOff,
		ReasonExcludedNamespace, ReasonNamespaceUnknown, ReasonPodUnknown, ReasonNotEnrolled,
	}
	seen := map[string]bool{}
	for _, r := range reasons {
		if seen[r] || r == "" {
			t.Errorf("reason %q is empty or used twice", r)
		}
		seen[r] = true
	}
}

// TestDecideInjectedPod: a pod Istio's injector annotated with
// sidecar.istio.io/status, as it does for proxyless gRPC pods that get no
// istio-proxy container, is a sidecar pod to istio-cni, which never
// enrolls it, whatever the annotation's value; ztdns leaves it alone for
// the same reason, whether the pod comes from a watch or a manifest.
func TestDecideInjectedPod(t *testing.T) {
	t.Parallel()
	ambientNS := &model.Namespace{Name: "shop", Labels: map[string]string{model.LabelDataplaneMode: "ambient"}}
	for _, status := range []string{`{"initContainers":null,"containers":null,"volumes":["istio-xds"],"imagePullSecrets":null}`, ""} {
		annotations := map[string]string{model.AnnotationSidecarStatus: status, model.AnnotationDNSCapture: "true"}
		doc, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Pod",
			"metadata": map[string]any{"name": "grpc", "namespace": "shop", "annotations": annotations},
			"spec":     map[string]any{"containers": []any{map[string]any{"name": "app"}}}})
		if err != nil {
			t.Fatal(err)
		}
		var watched kubeapi.Pod
		if err := json.Unmarshal(doc, &watched); err != nil {
			t.Fatal(err)
		}
		fromWatch, err := watched.Model()
		if err != nil {
			t.Fatal(err)
		}
		fromManifest, err := typed.FromPod(&corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "grpc", Namespace: "shop", Annotations: annotations},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}},
		})
		if err != nil {
			t.Fatal(err)
		}
		for source, pod := range map[string]model.Pod{"watch": fromWatch, "manifest": fromManifest} {
			p := Policy{DNSCaptureDefault: true}
			if gotCap, gotReason := p.Decide("shop", &pod, ambientNS); gotCap || gotReason != ReasonSidecar {
				t.Errorf("status %q from a %s: Decide = (%t, %q), want (false, %q)", status, source, gotCap, gotReason, ReasonSidecar)
			}
		}
	}
}

// TestDecideGatewayPods: pods as Istio's templates make them, read from the
// API server as the agent reads them. Each runs an istio-proxy container,
// without the injector's annotation. An ingress gateway of a Gateway API
// Gateway (kube-gateway template) is decided as istio-cni decides it:
// istiod labels it istio.io/dataplane-mode=none, unless its Gateway sets
// that label; a Gateway labelled ambient puts it in the mesh, istio-cni
// enrolls it, and ztdns captures it (before, every gateway.istio.io/managed
// pod was left alone, reason gateway, while Istio's own DNS capture took
// it). A waypoint (waypoint template) stays reason gateway, also if its
// dataplane-mode=none label is gone; none of them is a sidecar pod.
func TestDecideGatewayPods(t *testing.T) {
	t.Parallel()
	ambientNS := &model.Namespace{Name: "shop", Labels: map[string]string{model.LabelDataplaneMode: "ambient"}}
	podDoc := func(name, controller, mode, redirection string) []byte {
		labels := map[string]string{"sidecar.istio.io/inject": "false", "service.istio.io/canonical-name": name,
			"service.istio.io/canonical-revision": "latest", "gateway.networking.k8s.io/gateway-name": name,
			"gateway.istio.io/managed": controller}
		if mode != "" {
			labels["istio.io/dataplane-mode"] = mode
		}
		annotations := map[string]string{"istio.io/rev": "default", "prometheus.io/path": "/stats/prometheus",
			"prometheus.io/port": "15020", "prometheus.io/scrape": "true"}
		if redirection != "" {
			annotations["ambient.istio.io/redirection"] = redirection
		}
		doc, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Pod",
			"metadata": map[string]any{"name": name + "-5d9c7", "namespace": "shop", "labels": labels, "annotations": annotations},
			"spec": map[string]any{"serviceAccountName": name,
				"containers": []any{map[string]any{"name": "istio-proxy", "image": "docker.io/istio/proxyv2"}}}})
		if err != nil {
			t.Fatal(err)
		}
		return doc
	}
	const ingress, waypoint = "istio.io-gateway-controller", "istio.io-mesh-controller"
	for _, tt := range []struct {
		name                         string
		controller, mode, redirected string
		wantCap                      bool
		wantReason                   string
	}{
		{"ingress gateway as istiod labels it", ingress, "none", "", false, ReasonDataplaneNone},
		{"ingress gateway its Gateway labels ambient, enrolled", ingress, "ambient", "enabled", true, ReasonAmbient},
		{"ingress gateway its Gateway labels ambient, not enrolled", ingress, "ambient", "", false, ReasonNotEnrolled},
		{"waypoint as Istio labels it", waypoint, "none", "", false, ReasonGateway},
		{"waypoint without its none label, enrolled", waypoint, "", "enabled", false, ReasonGateway},
	} {
		var watched kubeapi.Pod
		if err := json.Unmarshal(podDoc(tt.name, tt.controller, tt.mode, tt.redirected), &watched); err != nil {
			t.Fatal(err)
		}
		pod, err := watched.Model()
		if err != nil {
			t.Fatal(err)
		}
		if !pod.HasSidecar {
			t.Fatalf("%s: the pod's istio-proxy container was not seen: %+v", tt.name, pod)
		}
		p := Policy{DNSCaptureDefault: true, PodsWatched: true, RequireEnrollment: true}
		if gotCap, gotReason := p.Decide("shop", &pod, ambientNS); gotCap != tt.wantCap || gotReason != tt.wantReason {
			t.Errorf("%s: Decide = (%t, %q), want (%t, %q)", tt.name, gotCap, gotReason, tt.wantCap, tt.wantReason)
		}
	}
}
