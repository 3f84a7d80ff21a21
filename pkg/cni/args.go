package cni

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/ztdns/ztdns/pkg/model"
)

// podArgs is the pod's identity from CNI_ARGS.
type podArgs struct {
	namespace, name, uid string
}

// k8sArgs are the CNI_ARGS keys kubelet's runtimes pass. The field names
// are the keys, so they keep the runtime's spelling.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive,staticcheck // CNI_ARGS key
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive,staticcheck // CNI_ARGS key
	K8S_POD_UID                types.UnmarshallableString //nolint:revive,staticcheck // CNI_ARGS key
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive,staticcheck // CNI_ARGS key
}

// parsePodArgs reads the pod's namespace, name and UID from CNI_ARGS. Keys
// it does not know are ignored even without IgnoreUnknown=1 (the plugin
// only reads CNI_ARGS), unless the runtime explicitly says IgnoreUnknown=0.
// Namespace and name are required; the UID is not, since not every runtime
// passes it.
func parsePodArgs(cniArgs string) (podArgs, error) {
	a := k8sArgs{CommonArgs: types.CommonArgs{IgnoreUnknown: true}}
	if err := types.LoadArgs(cniArgs, &a); err != nil {
		return podArgs{}, types.NewError(types.ErrInvalidEnvironmentVariables, "ztdns: parse CNI_ARGS", err.Error())
	}
	pod := podArgs{namespace: string(a.K8S_POD_NAMESPACE), name: string(a.K8S_POD_NAME), uid: string(a.K8S_POD_UID)}
	var missing []string
	if pod.namespace == "" {
		missing = append(missing, "K8S_POD_NAMESPACE")
	}
	if pod.name == "" {
		missing = append(missing, "K8S_POD_NAME")
	}
	if len(missing) > 0 {
		return podArgs{}, types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("ztdns: CNI_ARGS lacks %v: ztdns serves Kubernetes pods, whose runtime passes them", missing), cniArgs)
	}
	return pod, nil
}

// podIPs returns the pod's addresses from the primary plugin's result: those
// on an interface inside the pod's sandbox, or on no interface in
// particular. Addresses on host-side interfaces (a bridge's gateway) are
// not the pod's, and neither are loopback, link-local, multicast or
// unspecified ones (a chain with the loopback plugin lists 127.0.0.1/8 and
// ::1): any pod may have the same, and the agent does not count them among
// a namespace's addresses (netns.Addrs), so it would refuse an ADD
// that claims one. IPv4 first, each once.
func podIPs(res *current.Result) []netip.Addr {
	var ips []netip.Addr
	for _, ipc := range res.IPs {
		if ipc.Interface != nil {
			i := *ipc.Interface
			if i >= 0 && i < len(res.Interfaces) && res.Interfaces[i].Sandbox == "" {
				continue
			}
		}
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && model.PodAddr(a) {
			ips = append(ips, a.Unmap())
		}
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	return slices.Compact(ips)
}
