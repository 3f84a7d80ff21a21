//go:build linux

package cnie2e

import (
	"context"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	istionetworkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/ambient"
	"github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/model"
)

// kubeNode is the node name the Kubernetes test's agent runs for.
const kubeNode = "cni-node"

// TestKubeNamespaceLabelledAtRunTime runs the agent against a real API
// server (--kubeconfig, --node-name) instead of --config-dir. A pod of a
// namespace that is not ambient is created through the API on this node,
// added through CNI (not captured), given its IP in status as a kubelet
// would; then the namespace is labelled istio.io/dataplane-mode=ambient
// through the API, istio-cni enrolls the pod (its annotation), and the
// running pod is captured (how long it took is logged).
// Finally the agent is restarted, and the pod keeps its mark: the same
// entry of the pods map, counters included.
func TestKubeNamespaceLabelledAtRunTime(t *testing.T) {
	t.Parallel()
	env, n, _ := newKubeNode(t)
	ctx := context.Background()

	const nsName, podName = "orders", "orders-0"
	kc := env.Client()
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsName}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createAddressEntry(t, env)
	pod := createAPIPod(t, env, nsName, podName, nil)

	first := n.startAgent(t)
	n.waitSourceHas(t, nsName, podName)
	p, ips := n.addAPIPod(t, pod)
	env.SetRunning(t.Context(), pod, ips[:1]...)
	n.requireRow(t, p, ips, false, ambient.ReasonNotAmbient)
	n.requireNotCaptured(t, p)

	ns, err := kc.CoreV1().Namespaces().Get(ctx, nsName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Labels = map[string]string{model.LabelDataplaneMode: ambient.DataplaneModeAmbient}
	if _, err := kc.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	env.SetEnrollment(ctx, nsName, podName, model.RedirectionEnabled) // istio-cni, seeing the label
	took := n.waitMarked(t, p, true, markBound)
	t.Logf("the running pod was marked %v after the namespace label was written to the API server", took.Round(time.Millisecond))
	n.requireCaptured(t, p)

	// The API's Pod object is who orders-0 is: an ADD naming it from another
	// sandbox with another UID gets nothing recorded (nor refused: the API
	// may be the one that lags, and a refusal would fail the pod).
	impostor := n.NewPod(t, PodOptions{Namespace: nsName, Name: podName, UID: "not-" + string(pod.UID)})
	resp, err := control.NewClient(n.Socket, 10*time.Second).CNIAdd(ctx, control.CNIAddRequest{ContainerID: impostor.ContainerID,
		Netns: impostor.Path(), PodNamespace: nsName, PodName: podName, PodUID: impostor.UID, NetnsCookie: cookieOf(t, impostor)})
	if err != nil || resp.Captured || resp.Reason != capture.ReasonSourceMismatch {
		t.Errorf("an ADD of %s/%s with another UID: %+v, %v; want not captured (%s)", nsName, podName, resp, err, capture.ReasonSourceMismatch)
	}
	if rows := rowsOf(n.podRows(t), impostor); len(rows) != 0 {
		t.Errorf("the ADD with another UID was recorded: %+v", rows)
	}

	before := n.requireRow(t, p, ips, true, ambient.ReasonAmbient)
	first.Stop(t, 10*time.Second)
	n.startAgent(t)
	after := n.requireRow(t, p, ips, true, ambient.ReasonAmbient)
	if after.Redirected < before.Redirected {
		t.Errorf("across the restart the pod's counters went from %d to %d redirected queries: its mark was removed and made again",
			before.Redirected, after.Redirected)
	}
	n.requireCaptured(t, p)
}

// TestKubeUnseenPodLeftAloneUntilTheWatchDeliversIt runs the agent against
// a real API server whose pods watch stalls: the bytes between them wait
// in a forwarder that holds the connection open, as across a partition
// client-go has not noticed yet, or behind an API server that lags, so the
// agent still counts its watches as working. Pods created meanwhile in an
// ambient namespace, one labelled istio.io/dataplane-mode=none and one
// without a label, are added through CNI: neither is captured, and `ztdns
// pods` says why (pod-unknown), for the agent cannot know whether the pod
// opted out (before, it was captured on its namespace's label alone, and
// answered with VIPs ztunnel would not route for it). Once the watch
// delivers them, the rules decide: the opted-out pod stays uncaptured
// (dataplane-none), the other is captured.
func TestKubeUnseenPodLeftAloneUntilTheWatchDeliversIt(t *testing.T) {
	t.Parallel()
	env, n, fwd := newKubeNode(t)
	ctx := context.Background()

	const nsName = "shop"
	createAmbientNamespace(t, env, nsName)
	createAddressEntry(t, env)
	n.startAgent(t) // its first table has the namespace and the ServiceEntry

	fwd.hold()
	// Created in this order, so that once the watch delivers the second,
	// it has delivered the first.
	cases := []struct {
		name     string
		labels   map[string]string
		captured bool
		reason   string // once the watch delivers the pod
	}{
		{"quiet", map[string]string{model.LabelDataplaneMode: ambient.DataplaneModeNone}, false, ambient.ReasonDataplaneNone},
		{"plain", nil, true, ambient.ReasonAmbient},
	}
	type added struct {
		p   *Pod
		ips []netip.Addr
	}
	var pods []added
	for _, tc := range cases {
		pod := createAPIPod(t, env, nsName, tc.name, tc.labels)
		if tc.captured { // istio-cni's ADD, before ztdns's, enrolls it
			env.SetEnrollment(ctx, nsName, tc.name, model.RedirectionEnabled)
		}
		p, ips := n.addAPIPod(t, pod)
		if n.isMarked(t, p) {
			t.Errorf("ADD of %s/%s, which the agent's watch has not delivered, marked it", nsName, tc.name)
		}
		n.requireRow(t, p, ips, false, ambient.ReasonPodUnknown)
		n.requireNotCaptured(t, p)
		pods = append(pods, added{p, ips})
	}

	fwd.release()
	took := n.waitMarked(t, pods[1].p, true, markBound)
	t.Logf("the pod was marked %v after the watch went on", took.Round(time.Millisecond))
	for i, tc := range cases {
		p := pods[i]
		n.requireRow(t, p.p, p.ips, tc.captured, tc.reason)
		if tc.captured {
			n.requireCaptured(t, p.p)
		} else {
			n.requireNotCaptured(t, p.p)
		}
	}
}

// TestKubeNotEnrolledPodReleased: a pod of an ambient namespace that
// istio-cni never enrolled (no ambient.istio.io/redirection: istio-cni not
// on the node, a failure it does not retry, Istio uninstalled with the
// labels left) is captured at its ADD, as the agent's watch may lag behind
// istio-cni's annotation, and released once capture.EnrollmentGrace has
// passed: no mark in the pods map, `ztdns pods` says not-enrolled, and the
// pod's own nameserver answers, not a VIP ztunnel would not route for it
// (before, it stayed captured, reason ambient). istio-cni enrolling it
// captures it; istio-cni removing its annotation releases it again.
func TestKubeNotEnrolledPodReleased(t *testing.T) {
	t.Parallel()
	env, n, _ := newKubeNode(t)
	ctx := context.Background()

	const nsName, podName = "billing", "billing-0"
	createAmbientNamespace(t, env, nsName)
	createAddressEntry(t, env)
	pod := createAPIPod(t, env, nsName, podName, nil)
	n.startAgent(t)
	n.waitSourceHas(t, nsName, podName)

	p, ips := n.addAPIPod(t, pod)
	if !n.isMarked(t, p) {
		t.Errorf("ADD of %s/%s within capture.EnrollmentGrace did not mark it: the watch may lag behind istio-cni's annotation", nsName, podName)
	}
	env.SetRunning(t.Context(), pod, ips[:1]...)

	took := n.waitMarked(t, p, false, capture.EnrollmentGrace+markBound)
	t.Logf("the pod istio-cni did not enroll was released %v after the first look at its mark", took.Round(time.Millisecond))
	n.requireRow(t, p, ips, false, ambient.ReasonNotEnrolled)
	n.requireNotCaptured(t, p)

	env.SetEnrollment(ctx, nsName, podName, model.RedirectionEnabled)
	n.waitMarked(t, p, true, markBound)
	n.requireRow(t, p, ips, true, ambient.ReasonAmbient)
	n.requireCaptured(t, p)

	env.SetEnrollment(ctx, nsName, podName, "") // istio-cni takes it out of the mesh
	n.waitMarked(t, p, false, markBound)
	n.requireRow(t, p, ips, false, ambient.ReasonNotEnrolled)
	n.requireNotCaptured(t, p)
}

// TestKubeNotEnrolledPodsCounted: the pods istio-cni never enrolled are
// counted where an operator looks, ztdns_capture_pods{reason="not-enrolled"}
// on the agent's /metrics, at 0 from the start (before, only the log said
// so: ztdns_cni_events_total counts their ADDs as ambient, decided within
// capture.EnrollmentGrace). A pod that opts out itself
// (ztdns.io/dns-capture: "false") shows that reason, annotation-off, in
// `ztdns pods` and the metric, whether istio-cni enrolled it or not
// (before, not-enrolled once its grace had passed).
func TestKubeNotEnrolledPodsCounted(t *testing.T) {
	t.Parallel()
	env, n, _ := newKubeNode(t)
	ctx := context.Background()

	const nsName = "billing"
	kc := env.Client()
	createAmbientNamespace(t, env, nsName)
	const metrics = "127.0.0.1:15053" // the node namespace's own loopback
	a := testenv.StartAgent(t, n.Node, n.bin, append(n.agentArgs(), "--metrics", metrics)...)
	a.WaitReady(t, n.Socket, 30*time.Second)
	const (
		notEnrolled = `ztdns_capture_pods{captured="false",reason="not-enrolled"}`
		optedOut    = `ztdns_capture_pods{captured="false",reason="annotation-off"}`
		captured    = `ztdns_capture_pods{captured="true",reason="ambient"}`
	)
	requireMetrics := func(when string, want map[string]float64) {
		t.Helper()
		body := n.Node.HTTPGet(t, "http://"+metrics+"/metrics")
		for _, series := range slices.Sorted(maps.Keys(want)) {
			if got := metricValue(body, series); got != want[series] {
				t.Errorf("%s: %s = %v, want %v", when, series, got, want[series])
			}
		}
	}
	requireMetrics("no pod yet", map[string]float64{notEnrolled: 0, optedOut: -1, captured: -1})

	quiet, err := kc.CoreV1().Pods(nsName).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "quiet", Namespace: nsName, Annotations: map[string]string{model.AnnotationDNSCapture: "false"}},
		Spec:       corev1.PodSpec{NodeName: kubeNode, Containers: []corev1.Container{{Name: "app", Image: "example"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	plain := createAPIPod(t, env, nsName, "plain", nil)
	n.waitSourceHas(t, nsName, quiet.Name)
	n.waitSourceHas(t, nsName, plain.Name)

	// The pod that opts out first: its grace ends before the other's, whose
	// end decides every record again.
	pq, ipsQuiet := n.addAPIPod(t, quiet)
	env.SetRunning(ctx, quiet, ipsQuiet[:1]...)
	pp, ipsPlain := n.addAPIPod(t, plain)
	env.SetRunning(ctx, plain, ipsPlain[:1]...)
	n.waitMarked(t, pp, false, capture.EnrollmentGrace+markBound)
	n.requireRow(t, pp, ipsPlain, false, ambient.ReasonNotEnrolled)
	requireMetrics("istio-cni enrolled neither pod", map[string]float64{notEnrolled: 1, optedOut: 1, captured: -1})

	// Decided again once more, after the grace: the decisions that follow
	// the grace's end are all made by the time the pod is marked.
	env.SetEnrollment(ctx, nsName, plain.Name, model.RedirectionEnabled)
	n.waitMarked(t, pp, true, markBound)
	n.requireRow(t, pp, ipsPlain, true, ambient.ReasonAmbient)
	n.requireRow(t, pq, ipsQuiet, false, ambient.ReasonAnnotationOff)
	requireMetrics("istio-cni enrolled the pod that does not opt out", map[string]float64{notEnrolled: 0, optedOut: 1, captured: 1})
}

// createAmbientNamespace creates the namespace name, labelled for the
// ambient mesh (istio.io/dataplane-mode=ambient), through the API.
func createAmbientNamespace(t *testing.T, env *kubetest.Env, name string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name,
		Labels: map[string]string{model.LabelDataplaneMode: ambient.DataplaneModeAmbient}}}
	if _, err := env.Client().CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// createAPIPod creates the pod namespace/name, with labels, through the
// API on this node, as the scheduler would place it.
func createAPIPod(t *testing.T, env *kubetest.Env, namespace, name string, labels map[string]string) *corev1.Pod {
	t.Helper()
	pod, err := env.Client().CoreV1().Pods(namespace).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: kubeNode, Containers: []corev1.Container{{Name: "app", Image: "example"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// addAPIPod runs the CNI ADD of pod, one of createAPIPod's, with the
// node's nameserver, and returns its IPs from the result.
func (n *capturingNode) addAPIPod(t *testing.T, pod *corev1.Pod) (*Pod, []netip.Addr) {
	t.Helper()
	p := n.NewPod(t, PodOptions{Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID), Nameservers: []string{ownNameserver}})
	res, err := n.Add(t, p)
	if err != nil {
		t.Fatalf("ADD of %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	return p, requireBridgeResult(t, n.Runtime, p, res, false)
}

// createAddressEntry creates the ServiceEntry that gives addressHost
// addressVIP, which requireCaptured asks for.
func createAddressEntry(t *testing.T, env *kubetest.Env) {
	t.Helper()
	se := &istionetworkingv1.ServiceEntry{ObjectMeta: metav1.ObjectMeta{Name: "external-address", Namespace: "default"}}
	se.Spec.Hosts, se.Spec.Addresses = []string{addressHost}, []string{addressVIP.String()}
	se.Spec.Ports = []*networkingv1alpha3.ServicePort{{Name: "http", Number: 80, Protocol: "HTTP"}}
	if _, err := env.IstioClient().NetworkingV1().ServiceEntries("default").Create(context.Background(), se, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// tcpForward is what forwardTCP runs: hold stops the bytes either way,
// without closing anything, and release lets what waited through.
type tcpForward struct {
	mu   sync.Mutex
	cond *sync.Cond
	held bool
}

func (f *tcpForward) hold() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.held = true
}

func (f *tcpForward) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.held = false
	f.cond.Broadcast()
}

// wait returns once the forwarder is not held.
func (f *tcpForward) wait() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for f.held {
		f.cond.Wait()
	}
}

// newKubeNode starts a real API server and a capturing node whose agent
// reads it (--kubeconfig, --node-name kubeNode). The API server listens on
// the machine's loopback and the agent lives in the node namespace, which
// has a loopback of its own: the returned forward carries the agent's
// connections across.
func newKubeNode(t *testing.T) (*kubetest.Env, *capturingNode, *tcpForward) {
	t.Helper()
	env := kubetest.Start(t)
	n := newCapturingNode(t, NodeOptions{SourceArgs: []string{"--kubeconfig", env.Kubeconfig, "--node-name", kubeNode}})
	apiserver, err := url.Parse(env.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	return env, n, forwardTCP(t, &n.Node.Netns, apiserver.Host)
}

// forwardTCP listens on addr inside netns and forwards each connection to
// the same address in the test's own namespace, until cleanup.
func forwardTCP(t *testing.T, netns *testenv.Netns, addr string) *tcpForward {
	t.Helper()
	f := &tcpForward{}
	f.cond = sync.NewCond(&f.mu)
	var ln net.Listener
	err := netns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, netns.Name, err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if conns == nil {
			c.Close() // closing down
			return false
		}
		conns = append(conns, c)
		return true
	}
	conns = []net.Conn{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			if !track(in) {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil || !track(out) {
					in.Close()
					return
				}
				pipe(in, out, f.wait)
			}()
		}
	}()
	t.Cleanup(func() {
		f.release() // a test that failed while held
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		conns = nil
		mu.Unlock()
		wg.Wait()
	})
	return f
}

// pipe copies both ways until either side ends, then closes both; each
// chunk read waits for gate before it is written.
func pipe(a, b net.Conn, gate func()) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				gate()
				if _, err := dst.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil { // either side went away
				return
			}
		}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	a.Close()
	b.Close()
	<-done
}
