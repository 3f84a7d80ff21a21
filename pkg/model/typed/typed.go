// Package typed reduces objects of k8s.io/api's and Istio's generated Go
// types to pkg/model, through the same rules as the objects a watch decodes
// (package kubeapi): the manifest source decodes into the generated types,
// which know every field and so can name the ones a manifest misspells.
package typed

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"

	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsjson "sigs.k8s.io/json"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/model/kubeapi"
)

// FromService reduces a v1 Service, refusing (as checkMeta, checkPort) what
// the API server refuses and the reduction would serve wrong.
func FromService(s *corev1.Service) (model.Service, error) {
	what := objectName("service", &s.ObjectMeta)
	errs := checkMeta(what, &s.ObjectMeta, serviceName, true)
	out := kubeapi.Service{ObjectMeta: meta(&s.ObjectMeta), Spec: kubeapi.ServiceSpec{
		Type:                     string(s.Spec.Type),
		ClusterIP:                s.Spec.ClusterIP,
		ClusterIPs:               s.Spec.ClusterIPs,
		ExternalName:             s.Spec.ExternalName,
		PublishNotReadyAddresses: s.Spec.PublishNotReadyAddresses,
	}}
	for _, p := range s.Spec.Ports {
		if err := checkPort(what, "port", int64(p.Port)); err != nil {
			errs = append(errs, err)
		}
		out.Spec.Ports = append(out.Spec.Ports, kubeapi.ServicePort{Name: p.Name, Protocol: string(p.Protocol), Port: p.Port})
	}
	svc, err := out.Model()
	return svc, errors.Join(append(errs, err)...)
}

// FromEndpointSlice reduces a discovery.k8s.io/v1 EndpointSlice. A port
// outside 1-65535 is refused: the API server does not check them, but no
// controller writes one, and it could not be served.
func FromEndpointSlice(s *discoveryv1.EndpointSlice) (model.EndpointSlice, error) {
	what := objectName("endpointslice", &s.ObjectMeta)
	errs := checkMeta(what, &s.ObjectMeta, subdomainName, true)
	out := kubeapi.EndpointSlice{ObjectMeta: meta(&s.ObjectMeta), AddressType: string(s.AddressType)}
	for _, p := range s.Ports {
		if p.Port != nil {
			if err := checkPort(what, "port", int64(*p.Port)); err != nil {
				errs = append(errs, err)
			}
		}
		out.Ports = append(out.Ports, kubeapi.EndpointPort{Name: p.Name, Protocol: (*string)(p.Protocol), Port: p.Port})
	}
	for _, e := range s.Endpoints {
		ep := kubeapi.Endpoint{Addresses: e.Addresses, Hostname: e.Hostname}
		ep.Conditions.Ready = e.Conditions.Ready
		out.Endpoints = append(out.Endpoints, ep)
	}
	es, err := out.Model()
	return es, errors.Join(append(errs, err)...)
}

// FromServiceEntry reduces a ServiceEntry of any served version (v1,
// v1beta1 and v1alpha3 share the spec type). status is the status as
// written (nil when absent): it has no schema, and what in it is not a
// host's address is skipped, reported in skipped (see
// kubeapi.ServiceEntry.ModelSkipping).
func FromServiceEntry(m *metav1.ObjectMeta, spec *networkingv1alpha3.ServiceEntry, status json.RawMessage) (se model.ServiceEntry, skipped, err error) {
	what := objectName("serviceentry", m)
	errs := checkMeta(what, m, subdomainName, true)
	for _, h := range spec.GetHosts() {
		if err := checkHost(what, h); err != nil {
			errs = append(errs, err)
		}
	}
	for _, a := range spec.GetAddresses() {
		if err := checkAddress(what, a); err != nil {
			errs = append(errs, err)
		}
	}
	out := kubeapi.ServiceEntry{ObjectMeta: meta(m), Spec: kubeapi.ServiceEntrySpec{
		Hosts:      spec.GetHosts(),
		Addresses:  spec.GetAddresses(),
		Resolution: spec.GetResolution().String(),
		ExportTo:   spec.GetExportTo(),
	}}
	for _, p := range spec.GetPorts() {
		if err := checkPort(what, "number", int64(p.GetNumber())); err != nil {
			errs = append(errs, err)
		}
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
	return se, skipped, errors.Join(append(errs, err)...)
}

// FromNamespace reduces a v1 Namespace, refusing a name the API server
// refuses.
func FromNamespace(n *corev1.Namespace) (model.Namespace, error) {
	out, _ := (&kubeapi.Namespace{NamespaceMeta: kubeapi.NamespaceMeta{ObjectMeta: meta(&n.ObjectMeta), Labels: maps.Clone(n.Labels)}}).Model() // never fails
	return out, errors.Join(checkMeta("namespace "+n.Name, &n.ObjectMeta, namespaceName, false)...)
}

// FromPod reduces a v1 Pod, refusing a name or namespace the API server
// refuses.
func FromPod(p *corev1.Pod) (model.Pod, error) {
	errs := checkMeta(objectName("pod", &p.ObjectMeta), &p.ObjectMeta, subdomainName, true)
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
	pod, err := out.Model()
	return pod, errors.Join(append(errs, err)...)
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
