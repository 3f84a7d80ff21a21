package kube

import (
	"fmt"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
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

// clients are the API clients of one Run.
type clients struct {
	kube      kubernetes.Interface
	istio     istioclient.Interface
	discovery discovery.DiscoveryInterface
}

func newClients(cfg *rest.Config) (*clients, error) {
	base := rest.CopyConfig(cfg)
	if base.UserAgent == "" {
		base.UserAgent = userAgent
	}
	// Built-in types travel as protobuf: it is smaller on the wire and
	// cheaper to decode than JSON. Custom resources (ServiceEntries) exist
	// only as JSON.
	kubeCfg := rest.CopyConfig(base)
	kubeCfg.ContentType = "application/vnd.kubernetes.protobuf"
	kubeCfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"

	kube, err := kubernetes.NewForConfig(kubeCfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	istio, err := istioclient.NewForConfig(base)
	if err != nil {
		return nil, fmt.Errorf("istio client: %w", err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(base)
	if err != nil {
		return nil, fmt.Errorf("discovery client: %w", err)
	}
	return &clients{kube: kube, istio: istio, discovery: disc}, nil
}
