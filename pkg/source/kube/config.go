package kube

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/ztdns/ztdns/pkg/model/kubeapi"
)

// userAgent names ztdns in the API server's logs and audit events.
const userAgent = "ztdns"

// RESTConfig returns the client configuration for `ztdns agent
// --kubeconfig PATH`: the kubeconfig file at path, or the in-cluster
// configuration (the pod's ServiceAccount token and the API server from the
// KUBERNETES_SERVICE_* variables) when path is empty.
func RESTConfig(path string) (*rest.Config, error) {
	if path == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster Kubernetes config (give --kubeconfig when not running in a pod): %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}

// clients are the API clients of one Run: a REST client per API group,
// decoding into package kubeapi's objects (JSON: they have no protobuf
// form), over one HTTP client and one client-side rate limit. No generated
// clientset is linked: their schemes register hundreds of types ztdns never
// reads.
type clients struct {
	core, discovery, istio, apiextensions *rest.RESTClient
	params                                runtime.ParameterCodec
}

func newClients(cfg *rest.Config) (*clients, error) {
	base := rest.CopyConfig(cfg)
	if base.UserAgent == "" {
		base.UserAgent = userAgent
	}
	if base.RateLimiter == nil && base.QPS >= 0 {
		qps, burst := base.QPS, base.Burst
		if qps == 0 {
			qps, burst = rest.DefaultQPS, rest.DefaultBurst
		}
		base.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(qps, burst)
	}
	scheme := runtime.NewScheme()
	if err := kubeapi.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	codecs := serializer.NewCodecFactory(scheme)
	httpClient, err := rest.HTTPClientFor(base)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	client := func(apiPath string, gv schema.GroupVersion) (*rest.RESTClient, error) {
		c := rest.CopyConfig(base)
		c.APIPath, c.GroupVersion = apiPath, &gv
		c.NegotiatedSerializer = codecs.WithoutConversion()
		c.ContentType, c.AcceptContentTypes = runtime.ContentTypeJSON, runtime.ContentTypeJSON
		rc, err := rest.RESTClientForConfigAndClient(c, httpClient)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client for %s: %w", gv, err)
		}
		return rc, nil
	}
	c := &clients{params: runtime.NewParameterCodec(scheme)}
	if c.core, err = client("/api", kubeapi.CoreV1); err != nil {
		return nil, err
	}
	if c.discovery, err = client("/apis", kubeapi.DiscoveryV1); err != nil {
		return nil, err
	}
	if c.istio, err = client("/apis", kubeapi.IstioNetworkV1); err != nil {
		return nil, err
	}
	if c.apiextensions, err = client("/apis", kubeapi.APIExtensionsV1); err != nil {
		return nil, err
	}
	return c, nil
}

// endpoint is where one kind of object is listed and watched.
type endpoint struct {
	client    *rest.RESTClient
	namespace string // empty: all namespaces
	resource  string // plural, as in the URL
	// labelSelector and fieldSelector narrow what is listed and watched.
	labelSelector, fieldSelector string
	// example is an object of the kind; newList makes the list a list call
	// decodes into.
	example runtime.Object
	newList func() runtime.Object
}

// list makes one list call (a page, when o.Limit is set).
func (c *clients) list(ctx context.Context, e endpoint, o metav1.ListOptions) (runtime.Object, error) {
	e.narrow(&o)
	out := e.newList()
	err := e.client.Get().Namespace(e.namespace).Resource(e.resource).VersionedParams(&o, c.params).
		Timeout(timeoutOf(o)).Do(ctx).Into(out)
	return out, err
}

// watch opens a watch.
func (c *clients) watch(ctx context.Context, e endpoint, o metav1.ListOptions) (watch.Interface, error) {
	e.narrow(&o)
	o.Watch = true
	return e.client.Get().Namespace(e.namespace).Resource(e.resource).VersionedParams(&o, c.params).
		Timeout(timeoutOf(o)).Watch(ctx)
}

func (e endpoint) narrow(o *metav1.ListOptions) {
	o.LabelSelector, o.FieldSelector = e.labelSelector, e.fieldSelector
}

// timeoutOf is the client-side timeout matching the server-side one the
// reflector asks for (none when it asks for none).
func timeoutOf(o metav1.ListOptions) time.Duration {
	if o.TimeoutSeconds == nil {
		return 0
	}
	return time.Duration(*o.TimeoutSeconds) * time.Second
}
