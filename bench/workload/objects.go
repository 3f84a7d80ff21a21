package workload

import (
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	istionetworkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ztdns/ztdns/pkg/model"
)

// Objects are a snapshot's objects as the Kubernetes and Istio APIs spell
// them: what a user would apply.
type Objects struct {
	Namespaces     []*corev1.Namespace
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	ServiceEntries []*istionetworkingv1.ServiceEntry
}

// APIObjects converts a generated snapshot back into API objects.
func APIObjects(s *model.Snapshot) *Objects {
	o := &Objects{}
	for _, ns := range s.Namespaces {
		o.Namespaces = append(o.Namespaces, &corev1.Namespace{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
			ObjectMeta: metav1.ObjectMeta{Name: ns.Name},
		})
	}
	for i := range s.Services {
		o.Services = append(o.Services, apiService(&s.Services[i]))
	}
	headless := map[string]bool{}
	for _, svc := range s.Services {
		headless[svc.Key()] = svc.Headless
	}
	for i := range s.EndpointSlices {
		es := &s.EndpointSlices[i]
		o.EndpointSlices = append(o.EndpointSlices, apiEndpointSlice(es, headless[es.Namespace+"/"+es.ServiceName]))
	}
	for i := range s.ServiceEntries {
		o.ServiceEntries = append(o.ServiceEntries, apiServiceEntry(&s.ServiceEntries[i]))
	}
	return o
}

func apiService(s *model.Service) *corev1.Service {
	svc := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: map[string]string{"app": s.Name},
		},
	}
	for _, p := range s.Ports {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: p.Name, Port: int32(p.Port), Protocol: corev1.Protocol(p.Protocol)})
	}
	if s.Headless {
		svc.Spec.ClusterIP = corev1.ClusterIPNone
		svc.Spec.ClusterIPs = []string{corev1.ClusterIPNone}
		return svc
	}
	for _, ip := range s.ClusterIPs {
		svc.Spec.ClusterIPs = append(svc.Spec.ClusterIPs, ip.String())
		family := corev1.IPv4Protocol
		if ip.Is6() {
			family = corev1.IPv6Protocol
		}
		svc.Spec.IPFamilies = append(svc.Spec.IPFamilies, family)
	}
	svc.Spec.ClusterIP = svc.Spec.ClusterIPs[0]
	policy := corev1.IPFamilyPolicySingleStack
	if len(s.ClusterIPs) > 1 {
		policy = corev1.IPFamilyPolicyPreferDualStack
	}
	svc.Spec.IPFamilyPolicy = &policy
	return svc
}

// apiEndpointSlice labels the slice as the EndpointSlice controller does,
// service.kubernetes.io/headless included (kube-proxy leaves those out).
func apiEndpointSlice(es *model.EndpointSlice, headless bool) *discoveryv1.EndpointSlice {
	out := &discoveryv1.EndpointSlice{
		TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
		ObjectMeta: metav1.ObjectMeta{Name: es.Name, Namespace: es.Namespace, Labels: map[string]string{
			discoveryv1.LabelServiceName: es.ServiceName,
			discoveryv1.LabelManagedBy:   "endpointslice-controller.k8s.io",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	if headless {
		out.Labels[corev1.IsHeadlessService] = ""
	}
	for _, ep := range es.Endpoints {
		e := discoveryv1.Endpoint{Conditions: discoveryv1.EndpointConditions{Ready: &ep.Ready}}
		for _, a := range ep.Addresses {
			e.Addresses = append(e.Addresses, a.String())
		}
		if ep.Hostname != "" {
			e.Hostname = &ep.Hostname
		}
		out.Endpoints = append(out.Endpoints, e)
	}
	for _, p := range es.Ports {
		port, proto := int32(p.Port), corev1.Protocol(p.Protocol)
		out.Ports = append(out.Ports, discoveryv1.EndpointPort{Name: &p.Name, Port: &port, Protocol: &proto})
	}
	return out
}

func apiServiceEntry(se *model.ServiceEntry) *istionetworkingv1.ServiceEntry {
	out := &istionetworkingv1.ServiceEntry{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.istio.io/v1", Kind: "ServiceEntry"},
		ObjectMeta: metav1.ObjectMeta{Name: se.Name, Namespace: se.Namespace},
	}
	out.Spec.Hosts = se.Hosts
	for _, a := range se.Addresses {
		out.Spec.Addresses = append(out.Spec.Addresses, a.String())
	}
	for _, p := range se.Ports {
		out.Spec.Ports = append(out.Spec.Ports, &networkingv1alpha3.ServicePort{Number: uint32(p.Port), Name: p.Name, Protocol: p.Protocol})
	}
	out.Spec.Resolution = networkingv1alpha3.ServiceEntry_Resolution(networkingv1alpha3.ServiceEntry_Resolution_value[se.Resolution])
	return out
}
