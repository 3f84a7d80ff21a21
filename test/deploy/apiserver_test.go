//go:build linux

package deploy

import (
	"context"
	"fmt"
	"slices"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	istioclient "istio.io/client-go/pkg/clientset/versioned"

	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/pkg/source/kube"
)

// nodeName is the node the test plays the DaemonSet controller for.
const nodeName = "node-a"

// TestChartOnAPIServer applies the rendered chart to a real API server
// (RBAC authorization, admission, validation and defaulting as in a
// cluster) and then acts as the agent's ServiceAccount: it can list and watch
// everything its source watches, and it can change nothing.
func TestChartOnAPIServer(t *testing.T) {
	c := renderChart(t) // before the API server: no helm, no reason to start it
	env := kubetest.Start(t)
	ctx := t.Context()
	admin := env.Client()
	// Before the chart's objects are there: helm would refuse to install
	// over them, even in a dry run.
	notes := renderNotes(t, []string{"--kubeconfig", env.Kubeconfig})
	applyChart(t, ctx, admin, c)

	// What the DaemonSet controller would create on a node: admission
	// (priority class, pod security) and pod validation must accept it.
	pod := podFor(c, nodeName)
	created, err := admin.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("the API server rejects the agent's pod: %v", err)
	}
	if created.Spec.Priority == nil || *created.Spec.Priority < 2_000_000_000 {
		t.Errorf("pod priority %v: want the system-node-critical class's value", created.Spec.Priority)
	}
	// Defaulting turns a hostNetwork pod's containerPorts into hostPorts,
	// which would keep the surge pod of a rolling update off the node.
	for _, ctr := range slices.Concat(created.Spec.InitContainers, created.Spec.Containers) {
		for _, p := range ctr.Ports {
			if p.HostPort != 0 {
				t.Errorf("container %s has hostPort %d after defaulting: a surge pod cannot schedule beside the old one", ctr.Name, p.HostPort)
			}
		}
	}

	t.Run("every variant validates", func(t *testing.T) {
		for _, sets := range [][]string{
			{"mode=cleanup"},
			{"capture.enabled=false", "resolver.listen={[$(HOST_IP)]:53}"},
			{"bpf.mountFS=true"},
			{"seLinuxOptions.type=spc_t", "logFormat=json", "cni.netnsDir=/run/netns"},
			{"cni.install=false", "cni.ambient.dnsCapture=false"},
			{"updateStrategy.maxSurge=10%"},
		} {
			ds := renderChart(t, sets...).daemonSet
			cur, err := admin.AppsV1().DaemonSets(namespace).Get(ctx, ds.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			ds.ResourceVersion = cur.ResourceVersion
			dryRun := metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}}
			if _, err := admin.AppsV1().DaemonSets(namespace).Update(ctx, ds, dryRun); err != nil {
				t.Errorf("--set %v: the API server rejects the DaemonSet: %v", sets, err)
			}
			// The cleanup pod runs privileged containers nowhere, and
			// the others' pods must pass admission too.
			p := podFor(&chart{daemonSet: ds}, nodeName)
			if _, err := admin.CoreV1().Pods(namespace).Create(ctx, p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
				t.Errorf("--set %v: the API server rejects the pod: %v", sets, err)
			}
		}
	})

	t.Run("finds the agent on a pod's node", func(t *testing.T) { checkDebugLookup(t, admin, c) })
	t.Run("NOTES find the agent on a pod's node", func(t *testing.T) { checkNotesFindTheNodesAgent(t, notes, admin, c) })

	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: fmt.Sprintf("system:serviceaccount:%s:%s", namespace, c.serviceAccount.Name),
	}
	agent, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	agentIstio, err := istioclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	agentDynamic, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("reads what it watches", func(t *testing.T) {
		reads := []struct {
			name  string
			list  func(metav1.ListOptions) (int, error)
			watch func(metav1.ListOptions) (watch.Interface, error)
		}{
			{"namespaces",
				func(o metav1.ListOptions) (int, error) {
					l, err := agent.CoreV1().Namespaces().List(ctx, o)
					return lenOf(l, err, func() int { return len(l.Items) })
				},
				func(o metav1.ListOptions) (watch.Interface, error) { return agent.CoreV1().Namespaces().Watch(ctx, o) }},
			{"services",
				func(o metav1.ListOptions) (int, error) {
					l, err := agent.CoreV1().Services("").List(ctx, o)
					return lenOf(l, err, func() int { return len(l.Items) })
				},
				func(o metav1.ListOptions) (watch.Interface, error) { return agent.CoreV1().Services("").Watch(ctx, o) }},
			{"pods on this node",
				func(o metav1.ListOptions) (int, error) {
					o.FieldSelector = "spec.nodeName=" + nodeName
					l, err := agent.CoreV1().Pods("").List(ctx, o)
					return lenOf(l, err, func() int { return len(l.Items) })
				},
				func(o metav1.ListOptions) (watch.Interface, error) {
					o.FieldSelector = "spec.nodeName=" + nodeName
					return agent.CoreV1().Pods("").Watch(ctx, o)
				}},
			{"endpointslices",
				func(o metav1.ListOptions) (int, error) {
					l, err := agent.DiscoveryV1().EndpointSlices("").List(ctx, o)
					return lenOf(l, err, func() int { return len(l.Items) })
				},
				func(o metav1.ListOptions) (watch.Interface, error) {
					return agent.DiscoveryV1().EndpointSlices("").Watch(ctx, o)
				}},
			{"serviceentries",
				func(o metav1.ListOptions) (int, error) {
					l, err := agentIstio.NetworkingV1().ServiceEntries("").List(ctx, o)
					return lenOf(l, err, func() int { return len(l.Items) })
				},
				func(o metav1.ListOptions) (watch.Interface, error) {
					return agentIstio.NetworkingV1().ServiceEntries("").Watch(ctx, o)
				}},
		}
		for _, r := range reads {
			t.Run(r.name, func(t *testing.T) {
				n, err := r.list(metav1.ListOptions{})
				if err != nil {
					t.Fatalf("list: %v", err)
				}
				if r.name == "pods on this node" && n != 1 {
					t.Errorf("listed %d pods on %s, want the agent's own", n, nodeName)
				}
				w, err := r.watch(metav1.ListOptions{})
				if err != nil {
					t.Fatalf("watch: %v", err)
				}
				w.Stop()
			})
		}
		// The ServiceEntry CRD, by name (a field selector the API server
		// authorizes as the rule's resourceName), and no other CRD.
		crds := agentDynamic.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
		byName := func(name string) metav1.ListOptions {
			return metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()}
		}
		l, err := crds.List(ctx, byName(kube.ServiceEntryCRD))
		if err != nil || len(l.Items) != 1 {
			t.Errorf("list of the ServiceEntry CRD by name: %v, want it", err)
		}
		w, err := crds.Watch(ctx, byName(kube.ServiceEntryCRD))
		if err != nil {
			t.Errorf("watch of the ServiceEntry CRD by name: %v", err)
		} else {
			w.Stop()
		}
		if _, err := crds.List(ctx, byName("gateways.networking.istio.io")); !apierrors.IsForbidden(err) {
			t.Errorf("list of another CRD by name: %v, want Forbidden", err)
		}
		// istiod's ConfigMaps, by name: its VIP allocator lock and its mesh
		// config, and no other.
		cms := agent.CoreV1().ConfigMaps(kube.DefaultIstioNamespace)
		for _, name := range []string{kube.IstiodAllocatorLock, kube.MeshConfigMap} {
			if _, err := cms.List(ctx, byName(name)); err != nil {
				t.Errorf("list of ConfigMap %s by name: %v", name, err)
			}
			if w, err := cms.Watch(ctx, byName(name)); err != nil {
				t.Errorf("watch of ConfigMap %s by name: %v", name, err)
			} else {
				w.Stop()
			}
		}
		if _, err := cms.List(ctx, byName("istio-sidecar-injector")); !apierrors.IsForbidden(err) {
			t.Errorf("list of another ConfigMap by name: %v, want Forbidden", err)
		}
		// Where the CRD may not be read (a ClusterRole from before its
		// rule), the source asks discovery, which every authenticated user
		// may.
		if _, err := agent.Discovery().ServerResourcesForGroupVersion("networking.istio.io/v1"); err != nil {
			t.Errorf("discovery of networking.istio.io/v1: %v", err)
		}
	})

	t.Run("changes nothing", func(t *testing.T) {
		type res struct{ group, resource string }
		watched := []res{
			{"", "namespaces"}, {"", "services"}, {"", "pods"},
			{"discovery.k8s.io", "endpointslices"}, {"networking.istio.io", "serviceentries"},
		}
		var denied []authorizationv1.ResourceAttributes
		for _, r := range watched {
			for _, verb := range []string{"get", "create", "update", "patch", "delete", "deletecollection"} {
				denied = append(denied, authorizationv1.ResourceAttributes{Verb: verb, Group: r.group, Resource: r.resource, Namespace: "default"})
			}
		}
		for _, r := range []res{{"", "secrets"}, {"", "configmaps"}, {"", "nodes"}, {"apps", "daemonsets"}, {"apiextensions.k8s.io", "customresourcedefinitions"}} {
			denied = append(denied, authorizationv1.ResourceAttributes{Verb: "list", Group: r.group, Resource: r.resource})
		}
		denied = append(denied,
			authorizationv1.ResourceAttributes{Verb: "create", Resource: "pods", Subresource: "exec", Namespace: namespace},
			authorizationv1.ResourceAttributes{Verb: "create", Resource: "serviceaccounts", Subresource: "token", Namespace: namespace},
			authorizationv1.ResourceAttributes{Verb: "impersonate", Resource: "users"},
		)
		for _, attrs := range denied {
			if allowed(t, ctx, agent, attrs) {
				t.Errorf("the agent may %s %s/%s %s", attrs.Verb, attrs.Group, attrs.Resource, attrs.Subresource)
			}
		}
		for _, r := range watched {
			for _, verb := range []string{"list", "watch"} {
				attrs := authorizationv1.ResourceAttributes{Verb: verb, Group: r.group, Resource: r.resource}
				if !allowed(t, ctx, agent, attrs) {
					t.Errorf("the agent may not %s %s/%s", verb, r.group, r.resource)
				}
			}
		}
		// And for real: a write is refused.
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "written-by-agent"},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 53}}},
		}
		if _, err := agent.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("the agent creating a Service: %v, want Forbidden", err)
		}
	})
}

// applyChart creates the rendered objects as the admin, as kubectl apply
// would on an empty cluster.
func applyChart(t *testing.T, ctx context.Context, admin kubernetes.Interface, c *chart) {
	t.Helper()
	if _, err := admin.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		// The API server makes kube-system itself shortly after it starts.
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
		if _, err := admin.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	steps := []struct {
		what   string
		create func() error
	}{
		{"ServiceAccount", func() error {
			_, err := admin.CoreV1().ServiceAccounts(namespace).Create(ctx, c.serviceAccount, metav1.CreateOptions{})
			return err
		}},
		{"ClusterRole", func() error {
			_, err := admin.RbacV1().ClusterRoles().Create(ctx, c.clusterRole, metav1.CreateOptions{})
			return err
		}},
		{"ClusterRoleBinding", func() error {
			_, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, c.clusterRoleBinding, metav1.CreateOptions{})
			return err
		}},
		{"Service", func() error {
			_, err := admin.CoreV1().Services(namespace).Create(ctx, c.service, metav1.CreateOptions{})
			return err
		}},
		{"DaemonSet", func() error {
			_, err := admin.AppsV1().DaemonSets(namespace).Create(ctx, c.daemonSet, metav1.CreateOptions{})
			return err
		}},
	}
	for _, s := range steps {
		if err := s.create(); err != nil {
			t.Fatalf("the API server rejects the chart's %s: %v", s.what, err)
		}
	}
}

// podFor returns the pod the DaemonSet controller would create on node.
func podFor(c *chart, node string) *corev1.Pod {
	tmpl := c.daemonSet.Spec.Template
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: c.daemonSet.Name + "-",
			Namespace:    namespace,
			Labels:       tmpl.Labels,
			Annotations:  tmpl.Annotations,
		},
		Spec: *tmpl.Spec.DeepCopy(),
	}
	pod.Spec.NodeName = node
	return pod
}

// allowed asks the API server whether the client's user may do attrs.
func allowed(t *testing.T, ctx context.Context, c kubernetes.Interface, attrs authorizationv1.ResourceAttributes) bool {
	t.Helper()
	review := &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &attrs},
	}
	got, err := c.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("access review %+v: %v", attrs, err)
	}
	return got.Status.Allowed
}

// lenOf returns n() unless err is set.
func lenOf[T any](_ T, err error, n func() int) (int, error) {
	if err != nil {
		return 0, err
	}
	return n(), nil
}
