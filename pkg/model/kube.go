package model

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Labels and annotations ztdns reads; everything else is dropped on conversion.
const (
	LabelDataplaneMode      = "istio.io/dataplane-mode"
	LabelGatewayManaged     = "gateway.istio.io/managed"
	LabelEnableAutoallocate = "networking.istio.io/enable-autoallocate-ip"
	// AnnotationDNSCapture is ztdns's own per-pod switch, "true" or "false".
	AnnotationDNSCapture = "ztdns.io/dns-capture"
	// AnnotationIstioDNSCapture is istio-cni's per-pod switch for Istio's
	// own DNS capture; ztdns honours only its "false" (see pkg/ambient).
	AnnotationIstioDNSCapture = "ambient.istio.io/dns-capture"
	// LabelServiceName links an EndpointSlice to its Service.
	LabelServiceName = "kubernetes.io/service-name"
	// SidecarContainer is the name of Istio's injected proxy container.
	SidecarContainer = "istio-proxy"
)

var keptPodLabels = []string{LabelDataplaneMode, LabelGatewayManaged}
var keptPodAnnotations = []string{AnnotationDNSCapture, AnnotationIstioDNSCapture}

// FromService reduces a v1 Service.
func FromService(s *corev1.Service) (Service, error) {
	out := Service{
		Namespace:       namespaceOf(&s.ObjectMeta),
		Name:            s.Name,
		PublishNotReady: s.Spec.PublishNotReadyAddresses,
	}
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		out.ExternalName = strings.ToLower(strings.TrimSuffix(s.Spec.ExternalName, "."))
		if out.ExternalName == "" {
			return out, fmt.Errorf("service %s: type ExternalName without spec.externalName", out.Key())
		}
	} else {
		ips := s.Spec.ClusterIPs
		if len(ips) == 0 && s.Spec.ClusterIP != "" {
			ips = []string{s.Spec.ClusterIP}
		}
		if len(ips) > 0 && ips[0] == corev1.ClusterIPNone {
			out.Headless = true
		} else {
			var errs []error
			for _, ip := range ips {
				a, err := netip.ParseAddr(ip)
				if err != nil {
					errs = append(errs, fmt.Errorf("service %s: clusterIP %q is not an IP address", out.Key(), ip))
					continue
				}
				out.ClusterIPs = append(out.ClusterIPs, a.Unmap())
			}
			if err := errors.Join(errs...); err != nil {
				return out, err
			}
		}
	}
	for _, p := range s.Spec.Ports {
		out.Ports = append(out.Ports, Port{Name: p.Name, Protocol: protocolOf(p.Protocol), Port: uint16(p.Port)})
	}
	return out, nil
}

// FromEndpointSlice reduces a discovery.k8s.io/v1 EndpointSlice. FQDN slices
// carry no addresses DNS can answer with and reduce to no endpoints.
func FromEndpointSlice(s *discoveryv1.EndpointSlice) (EndpointSlice, error) {
	out := EndpointSlice{
		Namespace:   namespaceOf(&s.ObjectMeta),
		Name:        s.Name,
		ServiceName: s.Labels[LabelServiceName],
	}
	for _, p := range s.Ports {
		port := Port{Protocol: "TCP"}
		if p.Name != nil {
			port.Name = *p.Name
		}
		if p.Protocol != nil {
			port.Protocol = protocolOf(*p.Protocol)
		}
		if p.Port != nil {
			port.Port = uint16(*p.Port)
		}
		out.Ports = append(out.Ports, port)
	}
	if s.AddressType == discoveryv1.AddressTypeFQDN {
		return out, nil
	}
	var errs []error
	for _, e := range s.Endpoints {
		ep := Endpoint{Ready: e.Conditions.Ready == nil || *e.Conditions.Ready}
		if e.Hostname != nil {
			ep.Hostname = strings.ToLower(*e.Hostname)
		}
		for _, a := range e.Addresses {
			ip, err := netip.ParseAddr(a)
			if err != nil {
				errs = append(errs, fmt.Errorf("endpointslice %s/%s: address %q is not an IP address", out.Namespace, out.Name, a))
				continue
			}
			ep.Addresses = append(ep.Addresses, ip.Unmap())
		}
		out.Endpoints = append(out.Endpoints, ep)
	}
	return out, errors.Join(errs...)
}

// FromServiceEntry reduces a ServiceEntry of any served version (v1, v1beta1
// and v1alpha3 share the spec and status types).
func FromServiceEntry(meta *metav1.ObjectMeta, spec *networkingv1alpha3.ServiceEntry, status *networkingv1alpha3.ServiceEntryStatus) (ServiceEntry, error) {
	out := ServiceEntry{
		Namespace:        namespaceOf(meta),
		Name:             meta.Name,
		Created:          meta.CreationTimestamp.Time,
		Resolution:       spec.GetResolution().String(),
		ExportTo:         append([]string(nil), spec.GetExportTo()...),
		AutoAllocate:     !strings.EqualFold(meta.Labels[LabelEnableAutoallocate], "false"),
		HasSpecAddresses: len(spec.GetAddresses()) > 0,
	}
	var errs []error
	for _, h := range spec.GetHosts() {
		h = strings.ToLower(strings.TrimSuffix(h, "."))
		if h == "" {
			errs = append(errs, fmt.Errorf("serviceentry %s: empty host", out.Key()))
			continue
		}
		out.Hosts = append(out.Hosts, h)
	}
	if len(out.Hosts) == 0 && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("serviceentry %s: spec.hosts is empty", out.Key()))
	}
	for _, a := range spec.GetAddresses() {
		if strings.Contains(a, "/") {
			p, err := netip.ParsePrefix(a)
			if err != nil {
				errs = append(errs, fmt.Errorf("serviceentry %s: address %q is not an IP address or CIDR", out.Key(), a))
				continue
			}
			if p.IsSingleIP() { // 198.51.100.1/32 names one address
				out.Addresses = append(out.Addresses, p.Addr().Unmap())
			} else {
				out.CIDRs = append(out.CIDRs, p.Masked())
			}
			continue
		}
		ip, err := netip.ParseAddr(a)
		if err != nil {
			errs = append(errs, fmt.Errorf("serviceentry %s: address %q is not an IP address or CIDR", out.Key(), a))
			continue
		}
		out.Addresses = append(out.Addresses, ip.Unmap())
	}
	for _, a := range status.GetAddresses() {
		ip, err := netip.ParseAddr(a.GetValue())
		if err != nil {
			errs = append(errs, fmt.Errorf("serviceentry %s: status address %q is not an IP address", out.Key(), a.GetValue()))
			continue
		}
		out.StatusAddresses = append(out.StatusAddresses, HostAddress{
			Host:    strings.ToLower(strings.TrimSuffix(a.GetHost(), ".")),
			Address: ip.Unmap(),
		})
	}
	for _, p := range spec.GetPorts() {
		out.Ports = append(out.Ports, Port{Name: p.GetName(), Protocol: strings.ToUpper(p.GetProtocol()), Port: uint16(p.GetNumber())})
	}
	return out, errors.Join(errs...)
}

// FromNamespace reduces a v1 Namespace.
func FromNamespace(n *corev1.Namespace) Namespace {
	return Namespace{Name: n.Name, Labels: keep(n.Labels, []string{LabelDataplaneMode})}
}

// FromPod reduces a v1 Pod.
func FromPod(p *corev1.Pod) (Pod, error) {
	out := Pod{
		Namespace:   namespaceOf(&p.ObjectMeta),
		Name:        p.Name,
		UID:         string(p.UID),
		NodeName:    p.Spec.NodeName,
		HostNetwork: p.Spec.HostNetwork,
		Labels:      keep(p.Labels, keptPodLabels),
		Annotations: keep(p.Annotations, keptPodAnnotations),
		DNSPolicy:   string(p.Spec.DNSPolicy),
	}
	for _, c := range p.Spec.Containers {
		out.HasSidecar = out.HasSidecar || c.Name == SidecarContainer
	}
	for _, c := range p.Spec.InitContainers { // native sidecars run as init containers
		out.HasSidecar = out.HasSidecar || c.Name == SidecarContainer
	}
	ips := make([]string, 0, 2)
	for _, ip := range p.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = append(ips, p.Status.PodIP)
	}
	var errs []error
	for _, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("pod %s: podIP %q is not an IP address", out.Key(), s))
			continue
		}
		out.IPs = append(out.IPs, ip.Unmap())
	}
	if dc := p.Spec.DNSConfig; dc != nil {
		out.DNSSearches = append(out.DNSSearches, dc.Searches...)
		for _, s := range dc.Nameservers {
			ip, err := netip.ParseAddr(s)
			if err != nil {
				errs = append(errs, fmt.Errorf("pod %s: dnsConfig nameserver %q is not an IP address", out.Key(), s))
				continue
			}
			out.DNSNameservers = append(out.DNSNameservers, ip.Unmap())
		}
	}
	return out, errors.Join(errs...)
}

func namespaceOf(m *metav1.ObjectMeta) string {
	if m.Namespace == "" {
		return metav1.NamespaceDefault
	}
	return m.Namespace
}

func protocolOf(p corev1.Protocol) string {
	if p == "" {
		return string(corev1.ProtocolTCP)
	}
	return string(p)
}

func keep(m map[string]string, keys []string) map[string]string {
	var out map[string]string
	for _, k := range keys {
		if v, ok := m[k]; ok {
			if out == nil {
				out = make(map[string]string, len(keys))
			}
			out[k] = v
		}
	}
	return out
}
