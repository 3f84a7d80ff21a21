package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	istionetworkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/pkg/model"
)

// step is one write to the API server and what the next snapshots must then
// show.
type step struct {
	name  string
	write func(ctx context.Context) error
	want  func(*model.Snapshot) error
}

// runSteps applies the steps in order, each waiting for a snapshot that
// shows its write.
func runSteps(t *testing.T, rec *recorder, steps []step) {
	t.Helper()
	for _, s := range steps {
		start := time.Now()
		if err := s.write(t.Context()); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		d := rec.waitFor(t, "the result of "+s.name, s.want)
		t.Logf("%s: in a snapshot %v after the write began", s.name, d.at.Sub(start).Round(time.Millisecond))
	}
}

// TestSource writes every kind of object ztdns reads through a real API
// server and follows each create, update and delete into the snapshots.
func TestSource(t *testing.T) {
	env := kubetest.Start(t)
	kube, istio := env.Client(), env.IstioClient()
	rec := runSource(t, env.Config)
	rec.waitFor(t, "the first sync", func(*model.Snapshot) error { return nil })
	if err := rec.src.Healthy(); err != nil {
		t.Fatalf("Healthy() after the first snapshot = %v, want nil", err)
	}
	crdFollows := rec.src.crdFollows.Load()

	t.Run("namespaces", func(t *testing.T) { testNamespaces(t, kube, rec) })
	t.Run("services", func(t *testing.T) { testServices(t, kube, rec) })
	t.Run("headless service and endpointslices", func(t *testing.T) { testHeadless(t, kube, rec) })
	t.Run("serviceentries", func(t *testing.T) { testServiceEntries(t, kube, istio, rec) })
	t.Run("pods", func(t *testing.T) { testPods(t, kube, rec) })
	t.Run("object that cannot be converted", func(t *testing.T) { testConversionFailure(t, kube, istio, rec) })
	t.Run("pods of other nodes", func(t *testing.T) { testNodeSelector(t, env, rec) })
	// None of the changes above touched the ServiceEntry CRD: the source
	// had nothing to act on in it.
	if n := rec.src.crdFollows.Load() - crdFollows; n != 0 {
		t.Errorf("the CRD was followed %d times after the first sync, though it did not change; want 0", n)
	}
	t.Run("least privilege", func(t *testing.T) { testLeastPrivilege(t, env) })
	t.Run("kubeconfig", func(t *testing.T) { testKubeconfig(t, env) })
}

// testKubeconfig runs a source configured the way `--kubeconfig PATH` does.
func testKubeconfig(t *testing.T, env *kubetest.Env) {
	cfg, err := RESTConfig(env.Kubeconfig)
	if err != nil {
		t.Fatalf("RESTConfig(%s): %v", env.Kubeconfig, err)
	}
	if cfg.Host != env.Config.Host {
		t.Errorf("RESTConfig host = %s, want %s", cfg.Host, env.Config.Host)
	}
	rec := runSource(t, cfg)
	rec.waitFor(t, "the first sync through the kubeconfig", func(s *model.Snapshot) error {
		if find(s.Services, serviceKey, metav1.NamespaceDefault, "kubernetes") == nil {
			return fmt.Errorf("service default/kubernetes missing")
		}
		return nil
	})
}

func testNamespaces(t *testing.T, kube kubernetes.Interface, rec *recorder) {
	const name = "labelled-later"
	get := func(s *model.Snapshot) *model.Namespace { return find(s.Namespaces, namespaceKey, "", name) }
	nss := kube.CoreV1().Namespaces()
	runSteps(t, rec, []step{{
		name: "create without labels",
		write: func(ctx context.Context) error {
			_, err := nss.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
			return err
		},
		// The API server labels every namespace with its name.
		want: expect("namespace", get, &model.Namespace{Name: name, Labels: map[string]string{"kubernetes.io/metadata.name": name}}),
	}, {
		name: "label ambient",
		write: func(ctx context.Context) error {
			return updateNamespace(ctx, kube, name, func(ns *corev1.Namespace) {
				ns.Labels = map[string]string{model.LabelDataplaneMode: "ambient", "team": "dns"}
			})
		},
		// Every label is kept: discoverySelectors select by any.
		want: expect("namespace", get, &model.Namespace{Name: name, Labels: map[string]string{
			model.LabelDataplaneMode: "ambient", "team": "dns", "kubernetes.io/metadata.name": name}}),
	}, {
		name: "delete",
		write: func(ctx context.Context) error {
			if err := nss.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				return err
			}
			// No namespace controller runs: finalize as it would.
			ns, err := nss.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			ns.Spec.Finalizers = nil
			_, err = nss.Finalize(ctx, ns, metav1.UpdateOptions{})
			return err
		},
		want: expect("namespace", get, nil),
	}})
}

func testServices(t *testing.T, kube kubernetes.Interface, rec *recorder) {
	ns := createNamespace(t, kube, "services")
	svcs := kube.CoreV1().Services(ns)
	getWeb := func(s *model.Snapshot) *model.Service { return find(s.Services, serviceKey, ns, "web") }
	getExt := func(s *model.Snapshot) *model.Service { return find(s.Services, serviceKey, ns, "ext") }
	var clusterIP netip.Addr // allocated by the API server
	web := func(ports ...model.Port) *model.Service {
		return &model.Service{Namespace: ns, Name: "web", ClusterIPs: []netip.Addr{clusterIP}, Ports: ports}
	}
	httpPort := model.Port{Name: "http", Protocol: "TCP", Port: 80}
	dnsPort := model.Port{Name: "dns", Protocol: "UDP", Port: 53}

	runSteps(t, rec, []step{{
		name: "create a ClusterIP service",
		write: func(ctx context.Context) error {
			svc, err := svcs.Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: "web", Annotations: map[string]string{"note": "not kept"}},
				Spec: corev1.ServiceSpec{
					Selector: map[string]string{"app": "web"},
					Ports:    []corev1.ServicePort{{Name: "http", Port: 80}},
				},
			}, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			clusterIP, err = netip.ParseAddr(svc.Spec.ClusterIP)
			return err
		},
		want: func(s *model.Snapshot) error { return expect("service web", getWeb, web(httpPort))(s) },
	}, {
		name: "add a port",
		write: func(ctx context.Context) error {
			return updateService(ctx, kube, ns, "web", func(svc *corev1.Service) {
				svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
			})
		},
		want: func(s *model.Snapshot) error { return expect("service web", getWeb, web(httpPort, dnsPort))(s) },
	}, {
		name: "create an ExternalName service",
		write: func(ctx context.Context) error {
			_, err := svcs.Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: "ext"},
				Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "db.example.com."},
			}, metav1.CreateOptions{})
			return err
		},
		want: expect("service ext", getExt, &model.Service{Namespace: ns, Name: "ext", ExternalName: "db.example.com"}),
	}, {
		name: "delete the ClusterIP service",
		write: func(ctx context.Context) error {
			return svcs.Delete(ctx, "web", metav1.DeleteOptions{})
		},
		want: func(s *model.Snapshot) error {
			if err := expect("service web", getWeb, nil)(s); err != nil {
				return err
			}
			return expect("service ext", getExt, &model.Service{Namespace: ns, Name: "ext", ExternalName: "db.example.com"})(s)
		},
	}})
}

func testHeadless(t *testing.T, kube kubernetes.Interface, rec *recorder) {
	ns := createNamespace(t, kube, "headless")
	getSvc := func(s *model.Snapshot) *model.Service { return find(s.Services, serviceKey, ns, "db") }
	getSlice := func(s *model.Snapshot) *model.EndpointSlice { return find(s.EndpointSlices, sliceKey, ns, "db-abcde") }
	ready, notReady := true, false
	hostname := "db-0"
	pg := "pg"
	port := int32(5432)
	slice := func(secondReady bool) *model.EndpointSlice {
		return &model.EndpointSlice{
			Namespace: ns, Name: "db-abcde", ServiceName: "db",
			Endpoints: []model.Endpoint{
				{Addresses: []netip.Addr{netip.MustParseAddr("203.0.113.1")}, Hostname: "db-0", Ready: true},
				{Addresses: []netip.Addr{netip.MustParseAddr("203.0.113.2")}, Ready: secondReady},
			},
			Ports: []model.Port{{Name: "pg", Protocol: "TCP", Port: 5432}},
		}
	}

	runSteps(t, rec, []step{{
		name: "create a headless service",
		write: func(ctx context.Context) error {
			_, err := kube.CoreV1().Services(ns).Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: "db"},
				Spec: corev1.ServiceSpec{
					ClusterIP:                corev1.ClusterIPNone,
					PublishNotReadyAddresses: true,
					Selector:                 map[string]string{"app": "db"},
					Ports:                    []corev1.ServicePort{{Name: "pg", Port: 5432}},
				},
			}, metav1.CreateOptions{})
			return err
		},
		want: expect("service db", getSvc, &model.Service{Namespace: ns, Name: "db", Headless: true, PublishNotReady: true,
			Ports: []model.Port{{Name: "pg", Protocol: "TCP", Port: 5432}}}),
	}, {
		// No controller manager runs: write the slice as its controller would.
		name: "create its EndpointSlice",
		write: func(ctx context.Context) error {
			_, err := kube.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
				ObjectMeta:  metav1.ObjectMeta{Name: "db-abcde", Labels: map[string]string{discoveryv1.LabelServiceName: "db"}},
				AddressType: discoveryv1.AddressTypeIPv4,
				Endpoints: []discoveryv1.Endpoint{
					{Addresses: []string{"203.0.113.1"}, Hostname: &hostname, Conditions: discoveryv1.EndpointConditions{Ready: &ready}},
					{Addresses: []string{"203.0.113.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &notReady}},
				},
				Ports: []discoveryv1.EndpointPort{{Name: &pg, Port: &port}},
			}, metav1.CreateOptions{})
			return err
		},
		want: expect("endpointslice", getSlice, slice(false)),
	}, {
		name: "second endpoint turns ready",
		write: func(ctx context.Context) error {
			es, err := kube.DiscoveryV1().EndpointSlices(ns).Get(ctx, "db-abcde", metav1.GetOptions{})
			if err != nil {
				return err
			}
			es.Endpoints[1].Conditions.Ready = &ready
			_, err = kube.DiscoveryV1().EndpointSlices(ns).Update(ctx, es, metav1.UpdateOptions{})
			return err
		},
		want: expect("endpointslice", getSlice, slice(true)),
	}, {
		name: "delete the EndpointSlice",
		write: func(ctx context.Context) error {
			return kube.DiscoveryV1().EndpointSlices(ns).Delete(ctx, "db-abcde", metav1.DeleteOptions{})
		},
		want: expect("endpointslice", getSlice, nil),
	}})
}

func testServiceEntries(t *testing.T, kube kubernetes.Interface, istio istioclient.Interface, rec *recorder) {
	ns := createNamespace(t, kube, "serviceentries")
	ses := istio.NetworkingV1().ServiceEntries(ns)
	getAuto := func(s *model.Snapshot) *model.ServiceEntry {
		return find(s.ServiceEntries, serviceEntryKey, ns, "auto")
	}
	getStatic := func(s *model.Snapshot) *model.ServiceEntry {
		return find(s.ServiceEntries, serviceEntryKey, ns, "static")
	}
	var created time.Time
	auto := func(optedOut bool, status ...model.HostAddress) *model.ServiceEntry {
		return &model.ServiceEntry{
			Namespace: ns, Name: "auto", Created: created,
			Hosts:           []string{"Auto.Example.COM"}, // kept as written: istiod keys its VIPs by the spelling
			Folded:          1,
			Resolution:      model.ResolutionDNS,
			AutoAllocate:    !optedOut,
			StatusAddresses: status,
			Ports:           []model.Port{{Name: "tcp", Protocol: "TCP", Port: 9000}},
		}
	}
	allocated := []model.HostAddress{
		{Host: "Auto.Example.COM", Address: netip.MustParseAddr("240.240.0.7")},
		{Host: "Auto.Example.COM", Address: netip.MustParseAddr("2001:2::7")},
	}

	runSteps(t, rec, []step{{
		name: "create a ServiceEntry without addresses",
		write: func(ctx context.Context) error {
			se := &istionetworkingv1.ServiceEntry{ObjectMeta: metav1.ObjectMeta{Name: "auto"}}
			se.Spec.Hosts = []string{"Auto.Example.COM"}
			se.Spec.Resolution = networkingv1alpha3.ServiceEntry_DNS
			se.Spec.Ports = []*networkingv1alpha3.ServicePort{{Number: 9000, Name: "tcp", Protocol: "tcp"}}
			se, err := ses.Create(ctx, se, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			created = se.CreationTimestamp.Time
			return nil
		},
		want: func(s *model.Snapshot) error { return expect("serviceentry auto", getAuto, auto(false))(s) },
	}, {
		// The test plays istiod's IP auto-allocation controller.
		name: "istiod writes status.addresses",
		write: func(ctx context.Context) error {
			se, err := ses.Get(ctx, "auto", metav1.GetOptions{})
			if err != nil {
				return err
			}
			se.Status.Addresses = []*networkingv1alpha3.ServiceEntryAddress{
				{Value: "240.240.0.7", Host: "Auto.Example.COM"}, // as istiod writes it: the spec's spelling
				{Value: "2001:2::7", Host: "Auto.Example.COM"},
			}
			_, err = ses.UpdateStatus(ctx, se, metav1.UpdateOptions{})
			return err
		},
		want: func(s *model.Snapshot) error {
			return expect("serviceentry auto", getAuto, auto(false, allocated...))(s)
		},
	}, {
		name: "opt out of auto-allocation by label",
		write: func(ctx context.Context) error {
			se, err := ses.Get(ctx, "auto", metav1.GetOptions{})
			if err != nil {
				return err
			}
			se.Labels = map[string]string{model.LabelEnableAutoallocate: "false"}
			_, err = ses.Update(ctx, se, metav1.UpdateOptions{})
			return err
		},
		want: func(s *model.Snapshot) error {
			return expect("serviceentry auto", getAuto, auto(true, allocated...))(s)
		},
	}, {
		name: "create a ServiceEntry with addresses and exportTo",
		write: func(ctx context.Context) error {
			se := &istionetworkingv1.ServiceEntry{ObjectMeta: metav1.ObjectMeta{Name: "static"}}
			se.Spec.Hosts = []string{"address.internal"}
			se.Spec.Addresses = []string{"198.51.100.1", "198.51.100.128/25"}
			se.Spec.ExportTo = []string{"."}
			se.Spec.Resolution = networkingv1alpha3.ServiceEntry_STATIC
			se.Spec.Ports = []*networkingv1alpha3.ServicePort{{Number: 80, Name: "http", Protocol: "HTTP"}}
			_, err := ses.Create(ctx, se, metav1.CreateOptions{})
			return err
		},
		want: func(s *model.Snapshot) error {
			got := getStatic(s)
			if got == nil {
				return fmt.Errorf("serviceentry static missing")
			}
			want := &model.ServiceEntry{
				Namespace: ns, Name: "static", Created: got.Created,
				Hosts:            []string{"address.internal"},
				Addresses:        []netip.Addr{netip.MustParseAddr("198.51.100.1")},
				CIDRs:            []netip.Prefix{netip.MustParsePrefix("198.51.100.128/25")},
				HasSpecAddresses: true,
				Resolution:       model.ResolutionStatic,
				ExportTo:         []string{"."},
				AutoAllocate:     true,
				Ports:            []model.Port{{Name: "http", Protocol: "HTTP", Port: 80}},
			}
			return expect("serviceentry static", getStatic, want)(s)
		},
	}, {
		name: "delete the ServiceEntry",
		write: func(ctx context.Context) error {
			return ses.Delete(ctx, "auto", metav1.DeleteOptions{})
		},
		want: func(s *model.Snapshot) error {
			if err := expect("serviceentry auto", getAuto, nil)(s); err != nil {
				return err
			}
			if getStatic(s) == nil {
				return fmt.Errorf("serviceentry static missing")
			}
			return nil
		},
	}})
}

func testPods(t *testing.T, kube kubernetes.Interface, rec *recorder) {
	ns := createNamespace(t, kube, "pods")
	pods := kube.CoreV1().Pods(ns)
	get := func(s *model.Snapshot) *model.Pod { return find(s.Pods, podKey, ns, "client") }
	var uid string
	pod := func(ips ...string) *model.Pod {
		p := &model.Pod{
			Namespace: ns, Name: "client", UID: uid, NodeName: "node-a",
			Labels:         map[string]string{model.LabelDataplaneMode: "ambient"},
			Annotations:    map[string]string{model.AnnotationDNSCapture: "false"},
			HasSidecar:     true,
			DNSPolicy:      model.DNSClusterFirst,
			DNSSearches:    []string{"corp.example"},
			DNSNameservers: []netip.Addr{netip.MustParseAddr("198.51.100.53")},
		}
		for _, ip := range ips {
			p.IPs = append(p.IPs, netip.MustParseAddr(ip))
		}
		return p
	}

	runSteps(t, rec, []step{{
		name: "create a pod",
		write: func(ctx context.Context) error {
			p, err := pods.Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{
					Name:        "client",
					Labels:      map[string]string{model.LabelDataplaneMode: "ambient", "app": "client"},
					Annotations: map[string]string{model.AnnotationDNSCapture: "false", "other": "dropped"},
				},
				Spec: corev1.PodSpec{
					NodeName: "node-a",
					Containers: []corev1.Container{
						{Name: "app", Image: "example.invalid/app"},
						{Name: model.SidecarContainer, Image: "example.invalid/proxy"},
					},
					DNSConfig: &corev1.PodDNSConfig{Searches: []string{"corp.example"}, Nameservers: []string{"198.51.100.53"}},
				},
			}, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			uid = string(p.UID)
			return nil
		},
		want: func(s *model.Snapshot) error { return expect("pod", get, pod())(s) },
	}, {
		// No kubelet runs: report the pod's IPs as it would.
		name: "kubelet reports the pod's IPs",
		write: func(ctx context.Context) error {
			p, err := pods.Get(ctx, "client", metav1.GetOptions{})
			if err != nil {
				return err
			}
			p.Status.PodIP = "203.0.113.20"
			p.Status.PodIPs = []corev1.PodIP{{IP: "203.0.113.20"}, {IP: "2001:db8::20"}}
			_, err = pods.UpdateStatus(ctx, p, metav1.UpdateOptions{})
			return err
		},
		want: func(s *model.Snapshot) error { return expect("pod", get, pod("203.0.113.20", "2001:db8::20"))(s) },
	}, {
		// A finished pod (a Job's) keeps its object and status.podIPs, but
		// its IPs may be a new pod's already.
		name: "the pod succeeds",
		write: func(ctx context.Context) error {
			p, err := pods.Get(ctx, "client", metav1.GetOptions{})
			if err != nil {
				return err
			}
			p.Status.Phase = corev1.PodSucceeded
			_, err = pods.UpdateStatus(ctx, p, metav1.UpdateOptions{})
			return err
		},
		want: expect("pod", get, nil),
	}, {
		name: "delete the pod",
		write: func(ctx context.Context) error {
			return pods.Delete(ctx, "client", metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		},
		want: expect("pod", get, nil),
	}})

	// Istio's injector annotates every pod it injects, proxyless gRPC ones
	// ("grpc-simple") too, which get no istio-proxy container: istio-cni
	// keeps such a pod out of ambient by the annotation alone.
	getGRPC := func(s *model.Snapshot) *model.Pod { return find(s.Pods, podKey, ns, "grpc") }
	runSteps(t, rec, []step{{
		name: "create a proxyless gRPC pod",
		write: func(ctx context.Context) error {
			p, err := pods.Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{
					Name:   "grpc",
					Labels: map[string]string{model.LabelDataplaneMode: "ambient"},
					Annotations: map[string]string{model.AnnotationSidecarStatus: `{"initContainers":null,"containers":null,` +
						`"volumes":["istio-xds","istio-data","istio-podinfo","istio-token","istiod-ca-cert"],"imagePullSecrets":null}`},
				},
				Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}},
			}, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			uid = string(p.UID)
			return nil
		},
		want: func(s *model.Snapshot) error {
			return expect("pod", getGRPC, &model.Pod{Namespace: ns, Name: "grpc", UID: uid, NodeName: "node-a",
				Labels: map[string]string{model.LabelDataplaneMode: "ambient"}, HasSidecar: true, DNSPolicy: model.DNSClusterFirst})(s)
		},
	}, {
		name: "delete the proxyless gRPC pod",
		write: func(ctx context.Context) error {
			return pods.Delete(ctx, "grpc", metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		},
		want: expect("pod", getGRPC, nil),
	}})
}

// testConversionFailure writes a ServiceEntry the CRD's schema accepts but
// the model cannot use (an address that is no IP): it is left out and
// reported, everything else is served, and fixing it brings it in.
func testConversionFailure(t *testing.T, kube kubernetes.Interface, istio istioclient.Interface, rec *recorder) {
	ns := createNamespace(t, kube, "broken")
	ses := istio.NetworkingV1().ServiceEntries(ns)
	newSE := func(name, address string) *istionetworkingv1.ServiceEntry {
		se := &istionetworkingv1.ServiceEntry{ObjectMeta: metav1.ObjectMeta{Name: name}}
		se.Spec.Hosts = []string{name + ".example.com"}
		se.Spec.Addresses = []string{address}
		se.Spec.Ports = []*networkingv1alpha3.ServicePort{{Number: 80, Name: "http", Protocol: "HTTP"}}
		return se
	}
	for _, se := range []*istionetworkingv1.ServiceEntry{newSE("broken", "not-an-ip"), newSE("fine", "198.51.100.2")} {
		if _, err := ses.Create(t.Context(), se, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create ServiceEntry %s: %v", se.Name, err)
		}
	}
	present := func(s *model.Snapshot, name string) bool {
		return find(s.ServiceEntries, serviceEntryKey, ns, name) != nil
	}
	rec.waitFor(t, "the fine ServiceEntry", func(s *model.Snapshot) error {
		if !present(s, "fine") {
			return fmt.Errorf("serviceentry fine missing")
		}
		return nil
	})
	d, _ := rec.latest()
	if present(d.snap, "broken") {
		t.Errorf("the broken ServiceEntry is in the snapshot")
	}
	wantErr := "serviceentry " + ns + "/broken"
	if !hasError(rec.src.Errors(), wantErr) {
		t.Errorf("Errors() = %v, want one about %q", rec.src.Errors(), wantErr)
	}

	se, err := ses.Get(t.Context(), "broken", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get ServiceEntry broken: %v", err)
	}
	se.Spec.Addresses = []string{"198.51.100.3"}
	if _, err := ses.Update(t.Context(), se, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("fix ServiceEntry broken: %v", err)
	}
	rec.waitFor(t, "the fixed ServiceEntry", func(s *model.Snapshot) error {
		if !present(s, "broken") {
			return fmt.Errorf("serviceentry broken still missing")
		}
		return nil
	})
	if hasError(rec.src.Errors(), wantErr) {
		t.Errorf("Errors() = %v after the fix, want none about %q", rec.src.Errors(), wantErr)
	}
}

// testNodeSelector runs a second source for one node: it sees that node's
// pods only, while the cluster-wide source sees them all.
func testNodeSelector(t *testing.T, env *kubetest.Env, all *recorder) {
	kube := env.Client()
	ns := createNamespace(t, kube, "nodes")
	onNode := runSource(t, env.Config, WithNodeName("node-a"))
	for _, p := range []struct{ name, node string }{{"on-a", "node-a"}, {"on-b", "node-b"}, {"unscheduled", ""}} {
		_, err := kube.CoreV1().Pods(ns).Create(t.Context(), &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: p.name},
			Spec: corev1.PodSpec{
				NodeName:   p.node,
				Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create pod %s: %v", p.name, err)
		}
	}
	podNames := func(s *model.Snapshot) []string {
		var names []string
		for _, p := range s.Pods {
			if p.Namespace == ns {
				names = append(names, p.Name)
			}
		}
		return names
	}
	want := func(want ...string) func(*model.Snapshot) error {
		return func(s *model.Snapshot) error {
			if got := podNames(s); !reflect.DeepEqual(got, want) {
				return fmt.Errorf("pods %v, want %v", got, want)
			}
			return nil
		}
	}
	all.waitFor(t, "every pod in the cluster-wide source", want("on-a", "on-b", "unscheduled"))
	onNode.waitFor(t, "node-a's pod in node-a's source", want("on-a"))
	for _, d := range onNode.since(0) {
		if got := podNames(d.snap); len(got) > 1 || (len(got) == 1 && got[0] != "on-a") {
			t.Errorf("node-a's source delivered pods %v", got)
		}
	}
}

// testLeastPrivilege runs a source as a ServiceAccount that has only
// PolicyRules: it syncs and stays healthy.
func testLeastPrivilege(t *testing.T, env *kubetest.Env) {
	kube := env.Client()
	ctx := t.Context()
	const ns, account = "ztdns-system", "ztdns"
	createNamespace(t, kube, ns)
	cfg := grant(t, env, "ztdns", ns, account, PolicyRules())
	// The API server may apply the binding after the source's first list
	// of the lock: it asks again soon.
	// The lock, once seen, is checked every lockCheck: its deletion below
	// is seen at the next check.
	rec := runSource(t, cfg, WithNodeName("node-a"), withForbiddenRetry(time.Second), withLockCheck(500*time.Millisecond))
	rec.waitFor(t, "the first sync as the ServiceAccount", func(s *model.Snapshot) error {
		if find(s.Services, serviceKey, metav1.NamespaceDefault, "kubernetes") == nil {
			return fmt.Errorf("service default/kubernetes missing")
		}
		return nil
	})
	rec.waitHealth(t, "healthy with only PolicyRules", func(err error) bool { return err == nil })
	// Nothing refused either: not ServiceEntries, not their CRD (read by
	// name, which the API server authorizes through the field selector).
	rec.waitHealth(t, "refused nothing", func(error) bool {
		return !slices.ContainsFunc(rec.src.Errors(), func(err error) bool { return apierrors.IsForbidden(err) || strings.Contains(err.Error(), "forbidden") })
	})

	// istiod's VIP allocator lock, readable by name only: the snapshot
	// says istiod allocates once it exists, and no other ConfigMap is
	// readable.
	createNamespace(t, kube, DefaultIstioNamespace)
	for _, name := range []string{"other", IstiodAllocatorLock} {
		createIstiodConfigMap(t, kube, name, nil)
	}
	rec.waitFor(t, "istiod's allocator lock", func(s *model.Snapshot) error {
		if !s.IstiodAllocates {
			return fmt.Errorf("IstiodAllocates is false with %s present", IstiodAllocatorLock)
		}
		return nil
	})
	sa, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sa.CoreV1().ConfigMaps(DefaultIstioNamespace).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("listing every ConfigMap as the ServiceAccount: %v, want forbidden", err)
	}
	if err := kube.CoreV1().ConfigMaps(DefaultIstioNamespace).Delete(ctx, IstiodAllocatorLock, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "the lock gone", func(s *model.Snapshot) error {
		if s.IstiodAllocates {
			return fmt.Errorf("IstiodAllocates is still true")
		}
		return nil
	})
}

// grant gives the ServiceAccount ns/account the rules through a
// ClusterRole and ClusterRoleBinding called name, and returns a config that
// acts as that ServiceAccount.
func grant(t *testing.T, env *kubetest.Env, name, ns, account string, rules []PolicyRule) *rest.Config {
	t.Helper()
	kube := env.Client()
	if _, err := kube.RbacV1().ClusterRoles().Create(t.Context(), &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules:      rbacRules(rules),
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create ClusterRole %s: %v", name, err)
	}
	if _, err := kube.RbacV1().ClusterRoleBindings().Create(t.Context(), &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: account}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create ClusterRoleBinding %s: %v", name, err)
	}
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":" + account}
	return cfg
}

// forbiddenConfigMap is a ConfigMap the source reads by name and runs
// without while RBAC refuses it (a ClusterRole from before it was read, or
// a binding the API server has not applied yet): what testForbiddenConfigMap
// checks of it.
type forbiddenConfigMap struct {
	// what names it in the steps: "kube-dns's Corefile".
	what string
	// rule tells the rules that let the source read it.
	rule func(PolicyRule) bool
	// note starts what Errors() says while it is refused; "": nothing.
	note string
	// logged is what the log says of it, once.
	logged string
	// refused checks a snapshot while it is refused, followed one once it
	// may be read.
	refused, followed func(*model.Snapshot) error
}

// testForbiddenConfigMap runs the source as a ServiceAccount whose
// ClusterRole lacks c.rule, the ConfigMap created beforehand: it syncs
// without what the ConfigMap says, stays healthy, says so in Errors() and
// in its log; once the rule is granted, it follows the ConfigMap without a
// restart, and Errors() no longer say so, the log still once. It returns
// the recorder, for what else a test checks of the source.
func testForbiddenConfigMap(t *testing.T, env *kubetest.Env, c forbiddenConfigMap) *recorder {
	t.Helper()
	const ns, account = "ztdns-old", "ztdns"
	createNamespace(t, env.Client(), ns)
	cfg := grant(t, env, "ztdns-old", ns, account, slices.DeleteFunc(PolicyRules(), c.rule))
	logs := newLogWatcher()
	rec := runSource(t, cfg, WithNodeName("node-a"), WithLogger(slog.New(logs)), withForbiddenRetry(500*time.Millisecond))
	hasNote := func() bool {
		return slices.ContainsFunc(rec.src.Errors(), func(err error) bool { return strings.HasPrefix(err.Error(), c.note) })
	}
	rec.waitFor(t, "the first sync without "+c.what, func(s *model.Snapshot) error {
		if err := c.refused(s); err != nil {
			return err
		}
		if find(s.Services, serviceKey, metav1.NamespaceDefault, "kubernetes") == nil {
			return fmt.Errorf("service default/kubernetes missing")
		}
		return nil
	})
	rec.waitHealth(t, "healthy without "+c.what, func(err error) bool { return err == nil })
	if c.note != "" && !hasNote() {
		t.Errorf("Errors() %v lack %q", rec.src.Errors(), c.note)
	}
	logs.waitFor(t, 1, c.logged)

	grant(t, env, "ztdns-granted", ns, account, slices.DeleteFunc(PolicyRules(), func(r PolicyRule) bool { return !c.rule(r) }))
	rec.waitFor(t, c.what+" once it may be read", c.followed)
	if n := logs.count(c.logged); n != 1 {
		t.Errorf("%q logged %d times, want once", c.logged, n)
	}
	if c.note != "" && hasNote() {
		t.Errorf("Errors() %v still say %s may not be read", rec.src.Errors(), c.what)
	}
	return rec
}

// rbacRules are rules as the RBAC API takes them.
func rbacRules(rules []PolicyRule) []rbacv1.PolicyRule {
	var out []rbacv1.PolicyRule
	for _, r := range rules {
		out = append(out, rbacv1.PolicyRule{Verbs: r.Verbs, APIGroups: r.APIGroups, Resources: r.Resources, ResourceNames: r.ResourceNames})
	}
	return out
}

func createNamespace(tb testing.TB, kube kubernetes.Interface, name string) string {
	tb.Helper()
	if _, err := kube.CoreV1().Namespaces().Create(tb.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		tb.Fatalf("create namespace %s: %v", name, err)
	}
	return name
}

// createIstiodConfigMap creates ConfigMap name, with data, in istiod's
// namespace (DefaultIstioNamespace, which must exist).
func createIstiodConfigMap(tb testing.TB, kube kubernetes.Interface, name string, data map[string]string) {
	tb.Helper()
	if _, err := kube.CoreV1().ConfigMaps(DefaultIstioNamespace).Create(tb.Context(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: name}, Data: data}, metav1.CreateOptions{}); err != nil {
		tb.Fatalf("create ConfigMap %s/%s: %v", DefaultIstioNamespace, name, err)
	}
}

func updateNamespace(ctx context.Context, kube kubernetes.Interface, name string, change func(*corev1.Namespace)) error {
	ns, err := kube.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	change(ns)
	_, err = kube.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{})
	return err
}

func updateService(ctx context.Context, kube kubernetes.Interface, ns, name string, change func(*corev1.Service)) error {
	svc, err := kube.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	change(svc)
	_, err = kube.CoreV1().Services(ns).Update(ctx, svc, metav1.UpdateOptions{})
	return err
}

func hasError(errs []error, substr string) bool {
	for _, err := range errs {
		if strings.Contains(err.Error(), substr) {
			return true
		}
	}
	return false
}

// equalModel compares model objects field by field; times compare as
// instants, whatever their location. A Service wanted without a creation
// time takes any the API server stamped (it always stamps one).
func equalModel[T any](got, want *T) bool {
	g, w := *got, *want
	if gs, ok := any(&g).(*model.Service); ok {
		ws := any(&w).(*model.Service)
		if ws.Created.IsZero() && !gs.Created.IsZero() {
			ws.Created = gs.Created
		}
	}
	if ge, ok := any(&g).(*model.ServiceEntry); ok {
		we := any(&w).(*model.ServiceEntry)
		if !ge.Created.Equal(we.Created) {
			return false
		}
		ge.Created, we.Created = time.Time{}, time.Time{}
	}
	return reflect.DeepEqual(g, w)
}

// TestBadStatusAddresses: status has no schema in Istio's CRD, so the
// status subresource takes a status.addresses of any shape. A ServiceEntry
// holding one is served with its spec.addresses, and neither it nor the
// others' list and watch fail: before, decoding the list failed, so the
// first snapshot never came (a source started after the write waited
// forever) and no ServiceEntry change was seen again.
func TestBadStatusAddresses(t *testing.T) {
	env := kubetest.Start(t)
	kube, istio := env.Client(), env.IstioClient()
	ns := createNamespace(t, kube, "badstatus")
	ses := istio.NetworkingV1().ServiceEntries(ns)
	ctx := t.Context()
	create := func(name, host string, addresses ...string) {
		t.Helper()
		se := &istionetworkingv1.ServiceEntry{ObjectMeta: metav1.ObjectMeta{Name: name}}
		se.Spec.Hosts, se.Spec.Addresses = []string{host}, addresses
		se.Spec.Ports = []*networkingv1alpha3.ServicePort{{Number: 80, Name: "http", Protocol: "HTTP"}}
		if _, err := ses.Create(ctx, se, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
	}
	create("bad", "bad.example", "198.51.100.1")
	create("good", "good.example")
	for name, status := range map[string]string{
		"bad":  `{"status": {"addresses": "x"}}`,
		"good": `{"status": {"addresses": [{"value": "nope", "host": "good.example"}, {"value": "240.240.0.9", "host": "good.example"}]}}`,
	} {
		err := istio.NetworkingV1().RESTClient().Patch(types.MergePatchType).Namespace(ns).Resource("serviceentries").
			Name(name).SubResource("status").Body([]byte(status)).Do(ctx).Error()
		if err != nil {
			t.Fatalf("the API server refuses the status %s: %v", status, err)
		}
	}

	has := func(name string, addrs []netip.Addr, status []model.HostAddress) func(*model.Snapshot) error {
		return func(s *model.Snapshot) error {
			se := find(s.ServiceEntries, serviceEntryKey, ns, name)
			if se == nil {
				return fmt.Errorf("serviceentry %s missing", name)
			}
			if !reflect.DeepEqual(se.Addresses, addrs) || !reflect.DeepEqual(se.StatusAddresses, status) {
				return fmt.Errorf("serviceentry %s: addresses %v, status addresses %v; want %v, %v", name, se.Addresses, se.StatusAddresses, addrs, status)
			}
			return nil
		}
	}
	rec := runSource(t, env.Config)
	rec.waitFor(t, "the bad status's ServiceEntry with its spec.addresses", has("bad", []netip.Addr{netip.MustParseAddr("198.51.100.1")}, nil))
	rec.waitFor(t, "the other ServiceEntry with its good status address", has("good", nil,
		[]model.HostAddress{{Host: "good.example", Address: netip.MustParseAddr("240.240.0.9")}}))
	create("later", "later.example", "198.51.100.2")
	rec.waitFor(t, "a ServiceEntry created later", has("later", []netip.Addr{netip.MustParseAddr("198.51.100.2")}, nil))
	if err := rec.src.Healthy(); err != nil {
		t.Errorf("Healthy() = %v, want nil", err)
	}
}
