// Package cni is the chained CNI plugin that hands each new pod to the ztdns
// node agent, the wire protocol the two share, and the installer that puts
// the plugin into the node's CNI configuration.
//
// The plugin is thin (the istio-cni and containernetworking meta-plugin
// pattern): it runs after the primary network plugin, reads what the agent
// needs from the runtime (the pod's IPs from prevResult, its identity from
// CNI_ARGS, its network-namespace cookie from inside CNI_NETNS), sends one
// request over the agent's control socket and prints prevResult through
// unchanged. The agent decides whether the pod is captured and marks it.
package cni

import "net/netip"

// Paths on the agent's control socket (pkg/control), JSON over HTTP.
const (
	// AddPath takes a POST of an AddRequest and answers 200 with an
	// AddResponse. Any other status fails the pod's ADD with the agent's
	// error message: the agent answers non-2xx only when the pod must not
	// start (it cannot honour a capture decision it made); a pod it does
	// not capture is a 200 with Captured false.
	AddPath = "/v1/cni/add"
	// DelPath takes a POST of a DelRequest and answers 200 with no body. It
	// is idempotent: a container the agent does not know is not an error.
	DelPath = "/v1/cni/del"
)

// AddRequest is what the plugin knows about a pod on CNI ADD. Every field is
// validated by the plugin before it is sent: the agent receives either a
// complete request or none.
type AddRequest struct {
	// ContainerID is CNI_CONTAINERID, the pod sandbox's ID: the key the
	// registry files the pod under, so a later DEL finds it even after the
	// network namespace is gone.
	ContainerID string
	// Netns is CNI_NETNS, the path of the pod's network namespace (e.g.
	// /var/run/netns/cni-…), which exists for the pod's whole life.
	Netns string
	// IfName is CNI_IFNAME, the pod's interface the primary plugin set up.
	IfName string
	// PodNamespace, PodName and PodUID come from CNI_ARGS (K8S_POD_NAMESPACE,
	// K8S_POD_NAME, K8S_POD_UID). Namespace and name are always set; the UID
	// is empty when the runtime does not pass it.
	PodNamespace string
	PodName      string
	PodUID       string
	// IPs are the pod's addresses from the primary plugin's result (those on
	// interfaces inside the pod, or on no named interface), IPv4 first.
	// Empty when the primary plugin assigned none.
	IPs []netip.Addr
	// NetnsCookie is the cookie of the network namespace at Netns, read
	// inside it (SO_NETNS_COOKIE): the key of the BPF `pods` map.
	NetnsCookie uint64
}

// AddResponse is the agent's answer to an AddRequest.
type AddResponse struct {
	// Captured is true when the pod's DNS is now redirected.
	Captured bool
	// Reason is the decision's reason (pkg/ambient's Reason… strings), or
	// what went wrong when the agent chose not to capture.
	Reason string
}

// DelRequest is what the plugin knows about a pod on CNI DEL.
type DelRequest struct {
	// ContainerID is CNI_CONTAINERID, the key the pod was added under.
	ContainerID string
	// Netns is CNI_NETNS; empty when the runtime has already removed the
	// namespace (the spec allows it), and then the ContainerID alone
	// identifies the pod.
	Netns string
}
