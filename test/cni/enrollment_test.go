//go:build linux

package cnie2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/ambient"
	"github.com/ztdns/ztdns/pkg/model"
)

// TestKubePodsIstioCNIEnrollsByItsOwnRules runs the agent against a real API
// server, enrollment required (the default), with pods istio-cni enrolls
// where ztdns's own reading of the labels would not:
//
//   - a pod of a namespace without the ambient label, labelled mesh=on,
//     which istio-cni's custom ambient.enablementSelectors enroll: istio-cni
//     annotates it ambient.istio.io/redirection: enabled, ztunnel routes it,
//     and ztdns captures it (before: not-ambient, answered by kube-dns while
//     the mesh's ServiceEntry hosts did not resolve). istio-cni taking it
//     out of the mesh releases it.
//   - an ingress gateway of a Gateway API Gateway labelled
//     istio.io/dataplane-mode=ambient, as istiod's kube-gateway template
//     makes its pod (gateway.istio.io/managed: istio.io-gateway-controller,
//     an istio-proxy container): istio-cni enrolls it like any pod, and
//     ztdns captures it (before: gateway).
//
// A waypoint istio-cni enrolled (its dataplane-mode=none label gone) stays
// uncaptured: reason gateway.
func TestKubePodsIstioCNIEnrollsByItsOwnRules(t *testing.T) {
	t.Parallel()
	env, n, _ := newKubeNode(t)
	ctx := context.Background()
	kc := env.Client()

	const nsName = "payments"
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsName}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createAddressEntry(t, env)
	proxyPod := func(name string, labels map[string]string) *corev1.Pod {
		pod, err := kc.CoreV1().Pods(nsName).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: nsName, Labels: labels},
			Spec: corev1.PodSpec{NodeName: kubeNode,
				Containers: []corev1.Container{{Name: model.SidecarContainer, Image: "docker.io/istio/proxyv2"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return pod
	}
	member := createAPIPod(t, env, nsName, "member", map[string]string{"mesh": "on"})
	ingress := proxyPod("ingress-istio", map[string]string{model.LabelGatewayManaged: ambient.GatewayControllerIngress,
		model.LabelDataplaneMode: ambient.DataplaneModeAmbient, "sidecar.istio.io/inject": "false"})
	waypoint := proxyPod("waypoint", map[string]string{model.LabelGatewayManaged: "istio.io-mesh-controller"})
	pods := []**corev1.Pod{&member, &ingress, &waypoint}
	for _, pod := range pods { // istio-cni's ADD, before ztdns's, enrolls them
		env.SetEnrollment(ctx, nsName, (*pod).Name, model.RedirectionEnabled)
		annotated, err := kc.CoreV1().Pods(nsName).Get(ctx, (*pod).Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		*pod = annotated
	}
	n.startAgent(t)
	for _, pod := range pods {
		n.waitSourceHas(t, nsName, (*pod).Name)
	}

	pm, ipsMember := n.addAPIPod(t, member)
	env.SetRunning(ctx, member, ipsMember[:1]...)
	pi, ipsIngress := n.addAPIPod(t, ingress)
	env.SetRunning(ctx, ingress, ipsIngress[:1]...)
	pw, ipsWaypoint := n.addAPIPod(t, waypoint)
	env.SetRunning(ctx, waypoint, ipsWaypoint[:1]...)

	took := n.waitMarked(t, pm, true, markBound)
	t.Logf("the pod istio-cni's custom selectors enrolled was marked %v after the first look", took.Round(time.Millisecond))
	n.requireRow(t, pm, ipsMember, true, ambient.ReasonAmbient)
	n.requireCaptured(t, pm)
	n.waitMarked(t, pi, true, markBound)
	n.requireRow(t, pi, ipsIngress, true, ambient.ReasonAmbient)
	n.requireCaptured(t, pi)
	n.requireRow(t, pw, ipsWaypoint, false, ambient.ReasonGateway)
	n.requireNotCaptured(t, pw)

	env.SetEnrollment(ctx, nsName, member.Name, "") // istio-cni takes it out of the mesh
	n.waitMarked(t, pm, false, markBound)
	n.requireRow(t, pm, ipsMember, false, ambient.ReasonNotAmbient)
	n.requireNotCaptured(t, pm)
}

// TestIstioCNIExcludeNamespacesCompared: an agent that installs the plugin
// (--cni-install) reads the namespaces istio-cni's entry in the node's
// chain excludes (exclude_namespaces, istio-cni's excludeNamespaces). While
// they are not --exclude-namespaces, `ztdns status` says both lists,
// ztdns_cni_istio_exclude_namespaces_differ is 1, and the agent logs it
// once; istio-cni's installer writing the same list as ztdns's ends it
// (before, nothing said so: a namespace only istio-cni excludes showed its
// pods not-enrolled, and ZtdnsPodsNotEnrolled fired, with no hint why).
func TestIstioCNIExcludeNamespacesCompared(t *testing.T) {
	t.Parallel()
	n := newCapturingNode(t, NodeOptions{})
	n.sourceArgs = append(n.sourceArgs, "--cni-install", "--cni-bin-dir", n.BinDir, "--cni-conf-dir", n.ConfDir)
	n.istioCNIEntry(t, true, "kube-system", "monitoring")
	const metrics = "127.0.0.1:15053" // the node namespace's own loopback
	a := testenv.StartAgent(t, n.Node, n.bin, append(n.agentArgs(), "--metrics", metrics)...)
	a.WaitReady(t, n.Socket, 30*time.Second)
	const gauge = "ztdns_cni_istio_exclude_namespaces_differ"
	const warning = "istio-cni's entry in the node's CNI chain"

	w := n.statusWarning(t, warning)
	for _, part := range []string{n.ConfFile, "excludes the namespaces [kube-system monitoring]", "--exclude-namespaces [kube-system]"} {
		if !strings.Contains(w, part) {
			t.Errorf("status warning %q does not say %q", w, part)
		}
	}
	if got := metricValue(n.Node.HTTPGet(t, "http://"+metrics+"/metrics"), gauge); got != 1 {
		t.Errorf("%s = %v while the lists differ, want 1", gauge, got)
	}

	n.istioCNIEntry(t, true, "kube-system") // istio-cni's installer, its excludeNamespaces changed
	deadline := time.Now().Add(30 * time.Second)
	for n.statusWarning(t, warning) != "" {
		if time.Now().After(deadline) {
			t.Fatalf("status still warns %q once the lists agree", n.statusWarning(t, warning))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := metricValue(n.Node.HTTPGet(t, "http://"+metrics+"/metrics"), gauge); got != 0 {
		t.Errorf("%s = %v once the lists agree, want 0", gauge, got)
	}
	if got := strings.Count(a.Log(), "istio-cni excludes other namespaces than --exclude-namespaces"); got != 1 {
		t.Errorf("logged the difference %d times, want once:\n%s", got, a.Log())
	}
}
