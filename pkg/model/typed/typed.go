// Package typed reduces objects of k8s.io/api's and Istio's generated Go
// types to pkg/model, through the same rules as the objects a watch decodes
// (package kubeapi): the manifest source decodes into the generated types,
// which know every field and so can name the ones a manifest misspells.
package typed

import (
	"encoding/json"
	"fmt"

	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/model/kubeapi"
)

// FromService reduces a v1 Service.
func FromService(s *corev1.Service) (model.Service, error) {
	out := kubeapi.Service{ObjectMeta: meta(&s.ObjectMeta), Spec: kubeapi.ServiceSpec{
		Type:                     string(s.Spec.Type),
		ClusterIP:                s.Spec.ClusterIP,
		ClusterIPs:               s.Spec.ClusterIPs,
		ExternalName:             s.Spec.ExternalName,
		PublishNotReadyAddresses: s.Spec.PublishNotReadyAddresses,
	}}
	for _, p := range s.Spec.Ports {
		out.Spec.Ports = append(out.Spec.Ports, kubeapi.ServicePort{Name: p.Name, Protocol: string(p.Protocol), Port: p.Port})
	}
	return out.Model()
}

// FromEndpointSlice reduces a discovery.k8s.io/v1 EndpointSlice.
func FromEndpointSlice(s *discoveryv1.EndpointSlice) (model.EndpointSlice, error) {
	out := kubeapi.EndpointSlice{ObjectMeta: meta(&s.ObjectMeta), AddressType: string(s.AddressType)}
	for _, p := range s.Ports {
		out.Ports = append(out.Ports, kubeapi.EndpointPort{Name: p.Name, Protocol: (*string)(p.Protocol), Port: p.Port})
	}
	for _, e := range s.Endpoints {
		ep := kubeapi.Endpoint{Addresses: e.Addresses, Hostname: e.Hostname}
		ep.Conditions.Ready = e.Conditions.Ready
		out.Endpoints = append(out.Endpoints, ep)
	}
	return out.Model()
}

// FromServiceEntry reduces a ServiceEntry of any served version (v1,
// v1beta1 and v1alpha3 share the spec type). status is the status as
// written (nil when absent): it has no schema, and what in it is not a
// host's address is skipped, reported in skipped (see
// kubeapi.ServiceEntry.ModelSkipping).
func FromServiceEntry(m *metav1.ObjectMeta, spec *networkingv1alpha3.ServiceEntry, status json.RawMessage) (se model.ServiceEntry, skipped, err error) {
	out := kubeapi.ServiceEntry{ObjectMeta: meta(m), Spec: kubeapi.ServiceEntrySpec{
		Hosts:      spec.GetHosts(),
		Addresses:  spec.GetAddresses(),
		Resolution: spec.GetResolution().String(),
		ExportTo:   spec.GetExportTo(),
	}}
	for _, p := range spec.GetPorts() {
		out.Spec.Ports = append(out.Spec.Ports, kubeapi.ServiceEntryPort{Number: p.GetNumber(), Protocol: p.GetProtocol(), Name: p.GetName()})
	}
	notObject := false
	if len(status) > 0 && string(status) != "null" {
		// Case-sensitive, as the API server reads field names.
		notObject = sigsjson.UnmarshalCaseSensitivePreserveInts(status, &out.Status) != nil
	}
	se, skipped, err = out.ModelSkipping()
	if notObject {
		skipped = fmt.Errorf("serviceentry %s: status is not an object: skipped", se.Key())
	}
	return se, skipped, err
}

// FromNamespace reduces a v1 Namespace.
func FromNamespace(n *corev1.Namespace) model.Namespace {
	out, _ := (&kubeapi.Namespace{ObjectMeta: meta(&n.ObjectMeta)}).Model() // never fails
	return out
}

// FromPod reduces a v1 Pod.
func FromPod(p *corev1.Pod) (model.Pod, error) {
	out := kubeapi.Pod{ObjectMeta: meta(&p.ObjectMeta),
		Spec: kubeapi.PodSpec{
			NodeName:    p.Spec.NodeName,
			HostNetwork: p.Spec.HostNetwork,
			DNSPolicy:   string(p.Spec.DNSPolicy),
		},
		Status: kubeapi.PodStatus{Phase: string(p.Status.Phase), PodIP: p.Status.PodIP},
	}
	for _, c := range p.Spec.Containers {
		out.Spec.Containers = append(out.Spec.Containers, kubeapi.Container{Name: c.Name})
	}
	for _, c := range p.Spec.InitContainers {
		out.Spec.InitContainers = append(out.Spec.InitContainers, kubeapi.Container{Name: c.Name})
	}
	if dc := p.Spec.DNSConfig; dc != nil {
		out.Spec.DNSConfig = &kubeapi.PodDNSConfig{Nameservers: dc.Nameservers, Searches: dc.Searches}
	}
	for _, ip := range p.Status.PodIPs {
		out.Status.PodIPs = append(out.Status.PodIPs, kubeapi.PodIP{IP: ip.IP})
	}
	return out.Model()
}

// meta keeps what kubeapi.ObjectMeta holds.
func meta(m *metav1.ObjectMeta) kubeapi.ObjectMeta {
	return kubeapi.ObjectMeta{
		Name:              m.Name,
		Namespace:         m.Namespace,
		UID:               string(m.UID),
		ResourceVersion:   m.ResourceVersion,
		CreationTimestamp: m.CreationTimestamp.Time,
		Labels:            kubeapi.LabelsOf(m.Labels),
		Annotations:       kubeapi.AnnotationsOf(m.Annotations),
	}
}
