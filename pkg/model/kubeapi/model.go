package kubeapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unique"

	sigsjson "sigs.k8s.io/json"

	"github.com/ztdns/ztdns/pkg/model"
)

// Values of the API that the reduction reads.
const (
	serviceTypeExternalName = "ExternalName"
	serviceTypeClusterIP    = "ClusterIP"
	clusterIPNone           = "None"
	addressTypeFQDN         = "FQDN"
	protocolTCP             = "TCP"
	namespaceDefault        = "default"
)

// resolutions are the names of a ServiceEntry's resolution enum.
var resolutions = []string{model.ResolutionNone, model.ResolutionStatic, model.ResolutionDNS,
	model.ResolutionDNSRoundRobin, model.ResolutionDynamicDNS}

// Model reduces a Service.
func (s *Service) Model() (model.Service, error) {
	out := model.Service{
		Namespace:       namespaceOf(&s.ObjectMeta),
		Name:            s.Name,
		Created:         s.CreationTimestamp,
		PublishNotReady: s.Spec.PublishNotReadyAddresses,
	}
	if s.Spec.Type == serviceTypeExternalName {
		out.ExternalName = strings.ToLower(strings.TrimSuffix(s.Spec.ExternalName, "."))
		if out.ExternalName == "" {
			return out, fmt.Errorf("service %s: type ExternalName without spec.externalName", out.Key())
		}
	} else {
		ips := s.Spec.ClusterIPs
		if len(ips) == 0 && s.Spec.ClusterIP != "" {
			ips = []string{s.Spec.ClusterIP}
		}
		if len(ips) == 0 {
			// The API server always sets one (it allocates an address, or
			// keeps None); without, the name would answer nothing and, as a
			// Service, hide a ServiceEntry naming the same host.
			typ := s.Spec.Type
			if typ == "" {
				typ = serviceTypeClusterIP
			}
			return out, fmt.Errorf("service %s: type %s without spec.clusterIP: give the address its name answers with, or clusterIP: None for a headless Service", out.Key(), typ)
		}
		if ips[0] == clusterIPNone {
			out.Headless = true
		} else {
			var errs []error
			for _, ip := range ips {
				a, why := addrOf(ip)
				if !a.IsValid() {
					errs = append(errs, fmt.Errorf("service %s: clusterIP %q is not an IP address%s", out.Key(), ip, why))
					continue
				}
				out.ClusterIPs = append(out.ClusterIPs, a)
			}
			if err := errors.Join(errs...); err != nil {
				return out, err
			}
		}
	}
	for _, p := range s.Spec.Ports {
		if n, ok := portNumber(int64(p.Port)); ok {
			out.Ports = append(out.Ports, model.Port{Name: intern(p.Name), Protocol: protocolOf(p.Protocol), Port: n})
		}
	}
	out.Ports = sharedPorts(out.Ports)
	return out, nil
}

// Model reduces an EndpointSlice. FQDN slices carry no addresses DNS can
// answer with and reduce to no endpoints.
func (s *EndpointSlice) Model() (model.EndpointSlice, error) {
	out := model.EndpointSlice{
		Namespace:   namespaceOf(&s.ObjectMeta),
		Name:        s.Name,
		ServiceName: deref(s.Labels.ServiceName),
	}
	for _, p := range s.Ports {
		port := model.Port{Name: intern(deref(p.Name)), Protocol: protocolTCP}
		if p.Protocol != nil {
			port.Protocol = protocolOf(*p.Protocol)
		}
		if p.Port == nil {
			// No number: the endpoints take traffic on every port (the
			// API's "all ports"), which no SRV record can name. CoreDNS
			// leaves it out of its SRV answers too (port -1).
			continue
		}
		n, ok := portNumber(int64(*p.Port))
		if !ok {
			continue
		}
		port.Port = n
		out.Ports = append(out.Ports, port)
	}
	out.Ports = sharedPorts(out.Ports)
	if s.AddressType == addressTypeFQDN {
		return out, nil
	}
	var errs []error
	for _, e := range s.Endpoints {
		ep := model.Endpoint{Ready: e.Conditions.Ready == nil || *e.Conditions.Ready}
		if e.Hostname != nil {
			ep.Hostname = strings.ToLower(*e.Hostname)
		}
		for _, a := range e.Addresses {
			ip, why := addrOf(a)
			if !ip.IsValid() {
				errs = append(errs, fmt.Errorf("endpointslice %s/%s: address %q is not an IP address%s", out.Namespace, out.Name, a, why))
				continue
			}
			ep.Addresses = append(ep.Addresses, ip)
		}
		out.Endpoints = append(out.Endpoints, ep)
	}
	return out, errors.Join(errs...)
}

// Model reduces a ServiceEntry. What status.addresses holds that is not a
// host's address, and an address in spec.addresses with an IPv6 zone, are
// skipped; ModelSkipping also says what.
func (se *ServiceEntry) Model() (model.ServiceEntry, error) {
	out, _, err := se.ModelSkipping()
	return out, err
}

// ModelSkipping reduces a ServiceEntry, and reports in skipped (nil when
// nothing) what it left out of its addresses, naming the object. Status
// has no schema: anyone who may write the status subresource can put
// anything there, so like istiod (getHostAddressesFromServiceEntryStatus)
// a value that is no address is skipped, never a reason to leave out the
// ServiceEntry, its spec.addresses or its other status addresses. Istio's
// validation of spec.addresses (netip) accepts an IPv6 zone
// ("fe80::1%eth0"), which no answer can carry: that address is skipped
// too, the others served (manifests refuse it: package typed).
func (se *ServiceEntry) ModelSkipping() (out model.ServiceEntry, skipped, err error) {
	spec := &se.Spec
	out = model.ServiceEntry{
		Namespace:        namespaceOf(&se.ObjectMeta),
		Name:             se.Name,
		Created:          se.CreationTimestamp,
		Resolution:       spec.Resolution,
		ExportTo:         spec.ExportTo, // the decoded object is dropped after Model
		AutoAllocate:     !strings.EqualFold(deref(se.Labels.EnableAutoallocate), "false"),
		Revision:         se.Labels.IstioRev,
		HasSpecAddresses: len(spec.Addresses) > 0,
	}
	var errs []error
	var zoned []string // spec.addresses skipped
	if i := slices.Index(resolutions, out.Resolution); i >= 0 {
		out.Resolution = resolutions[i] // the constant, not the decoded copy
	} else if out.Resolution == "" {
		out.Resolution = model.ResolutionNone
	} else {
		errs = append(errs, fmt.Errorf("serviceentry %s: resolution %q is none of %s", out.Key(), out.Resolution, strings.Join(resolutions, ", ")))
	}
	var folded []string // hosts written otherwise than asked
	for _, written := range spec.Hosts {
		h := strings.ToLower(strings.TrimSuffix(written, "."))
		if h == "" {
			// Other hosts Istio's validation refuses reach the table, which
			// leaves them out with a warning; these two are no name at all.
			if written == "" {
				errs = append(errs, fmt.Errorf("serviceentry %s: empty host", out.Key()))
			} else {
				errs = append(errs, fmt.Errorf("serviceentry %s: host %q is not a valid DNS name: it is the root, no host", out.Key(), written))
			}
			continue
		}
		if h != written {
			// As written, after the others (model.ServiceEntry.Folded):
			// status.addresses name the spelling.
			folded = append(folded, written)
			continue
		}
		out.Hosts = append(out.Hosts, h)
	}
	if len(folded) > 0 {
		out.Hosts, out.Folded = append(out.Hosts, folded...), uint32(len(folded))
	}
	if len(out.Hosts) == 0 && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("serviceentry %s: spec.hosts is empty", out.Key()))
	}
	for _, a := range spec.Addresses {
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
		if ip, err := netip.ParseAddr(a); err == nil && ip.Zone() != "" {
			// Istio's validation (netip) accepts a zone; no answer can
			// carry one: the address is skipped, the others served.
			zoned = append(zoned, strconv.Quote(a))
			continue
		}
		ip, why := addrOf(a)
		if !ip.IsValid() {
			errs = append(errs, fmt.Errorf("serviceentry %s: address %q is not an IP address or CIDR%s", out.Key(), a, why))
			continue
		}
		out.Addresses = append(out.Addresses, ip)
	}
	var skips []string
	if len(zoned) > 0 {
		skips = append(skips, "skipped in spec.addresses: "+strings.Join(zoned, ", ")+" (an IPv6 zone, which no answer can carry)")
	}
	var inStatus string
	out.StatusAddresses, inStatus = statusAddresses(se.Status.Addresses)
	if inStatus != "" {
		skips = append(skips, inStatus)
	}
	if len(skips) > 0 {
		skipped = fmt.Errorf("serviceentry %s: %s", out.Key(), strings.Join(skips, "; "))
	}
	for _, p := range spec.Ports {
		if n, ok := portNumber(int64(p.Number)); ok {
			out.Ports = append(out.Ports, model.Port{Name: intern(p.Name), Protocol: intern(strings.ToUpper(p.Protocol)), Port: n})
		}
	}
	out.Ports = sharedPorts(out.Ports)
	return out, skipped, errors.Join(errs...)
}

// maxSkipsNamed bounds the values of status.addresses one warning names;
// the rest are counted.
const maxSkipsNamed = 3

// statusAddresses reads a ServiceEntry's status.addresses, raw as written,
// skipping what is not a host's address; skipped says what, "" when
// nothing was.
func statusAddresses(raw json.RawMessage) (out []model.HostAddress, skipped string) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, ""
	}
	var items []json.RawMessage
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &items); err != nil {
		return nil, "status.addresses is not a list: skipped"
	}
	var named []string
	n := 0
	skip := func(format string, args ...any) {
		if n++; n <= maxSkipsNamed {
			named = append(named, fmt.Sprintf(format, args...))
		}
	}
	for i, item := range items {
		// Case-sensitive, as the API server reads field names.
		var a ServiceEntryAddress
		if err := sigsjson.UnmarshalCaseSensitivePreserveInts(item, &a); err != nil {
			skip("[%d] is not {value, host} strings", i)
			continue
		}
		ip, why := addrOf(a.Value)
		if !ip.IsValid() {
			skip("[%d] value %q is not an IP address%s", i, a.Value, why)
			continue
		}
		// The host as istiod wrote it, the spelling of spec.hosts it
		// allocated for: matched exactly, as istiod and ztunnel match it.
		out = append(out, model.HostAddress{Host: a.Host, Address: ip})
	}
	if n == 0 {
		return out, ""
	}
	msg := strings.Join(named, ", ")
	if n > len(named) {
		msg += fmt.Sprintf(" and %d more", n-len(named))
	}
	return out, "skipped in status.addresses: " + msg
}

// Model reduces a Namespace, keeping all its labels; it never fails.
func (n *Namespace) Model() (model.Namespace, error) {
	var labels map[string]string
	if len(n.Labels) > 0 {
		labels = n.Labels // the decoded object is dropped after Model
	}
	return model.Namespace{Name: n.Name, Labels: labels}, nil
}

// Model reduces a Pod.
func (p *Pod) Model() (model.Pod, error) {
	// Istio's ztunnel keeps its app label and its revision, which says
	// which istiod it follows; no other pod does.
	var app, rev *string
	if p.Labels.App != nil && *p.Labels.App == model.ZtunnelApp {
		app, rev = p.Labels.App, p.Annotations.IstioRev
	}
	out := model.Pod{
		Namespace:   namespaceOf(&p.ObjectMeta),
		Name:        p.Name,
		UID:         p.UID,
		NodeName:    p.Spec.NodeName,
		HostNetwork: p.Spec.HostNetwork,
		Labels: keep(kv{model.LabelDataplaneMode, p.Labels.DataplaneMode},
			kv{model.LabelGatewayManaged, p.Labels.GatewayManaged}, kv{model.LabelApp, app}),
		Annotations: keep(kv{model.AnnotationDNSCapture, p.Annotations.DNSCapture},
			kv{model.AnnotationIstioDNSCapture, p.Annotations.IstioDNSCapture}, kv{model.AnnotationIstioRev, rev}),
		DNSPolicy:  p.Spec.DNSPolicy,
		HasSidecar: p.Annotations.SidecarStatus != nil,
		Enrollment: model.EnrollmentOf(p.Annotations.AmbientRedirection),
	}
	for _, c := range p.Spec.Containers {
		out.HasSidecar = out.HasSidecar || c.Name == model.SidecarContainer
	}
	for _, c := range p.Spec.InitContainers { // native sidecars run as init containers
		out.HasSidecar = out.HasSidecar || c.Name == model.SidecarContainer
	}
	if finished(p.Status.Phase) {
		// Its sandbox is gone and IPAM may have given its addresses to
		// another pod, though its status still lists them.
		return out, nil
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
		ip, why := addrOf(s)
		if !ip.IsValid() {
			errs = append(errs, fmt.Errorf("pod %s: podIP %q is not an IP address%s", out.Key(), s, why))
			continue
		}
		out.IPs = append(out.IPs, ip)
	}
	if dc := p.Spec.DNSConfig; dc != nil {
		out.DNSSearches = append(out.DNSSearches, dc.Searches...)
		for _, s := range dc.Nameservers {
			ip, why := addrOf(s)
			if !ip.IsValid() {
				errs = append(errs, fmt.Errorf("pod %s: dnsConfig nameserver %q is not an IP address%s", out.Key(), s, why))
				continue
			}
			out.DNSNameservers = append(out.DNSNameservers, ip)
		}
	}
	return out, errors.Join(errs...)
}

// FinishedPhases are those of a pod that has ended (or whose node is lost):
// it keeps its status.podIPs, which IPAM may have given a new pod already,
// so its IPs are no longer its own. CoreDNS leaves such pods out too.
var FinishedPhases = []string{"Succeeded", "Failed", "Unknown"}

func finished(phase string) bool { return slices.Contains(FinishedPhases, phase) }

// addrOf parses an address as the API server's validation reads one,
// unmapped; on failure it returns the zero Addr and what to add to "… is
// not an IP address". netip keeps an IPv6 zone ("fe80::1%eth0"), which
// the API server refuses in the objects of its own types (net.ParseIP
// does) and no answer can carry: it is refused here too, so that a
// manifest cannot serve one. A ServiceEntry's spec.addresses, which Istio
// checks with netip, skip a zoned address before (ModelSkipping).
func addrOf(s string) (netip.Addr, string) {
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return netip.Addr{}, ""
	case a.Zone() != "":
		return netip.Addr{}, ": an IPv6 zone (%" + a.Zone() + ") is not allowed"
	}
	return a.Unmap(), ""
}

// portNumber is n as a port, false when n cannot be one. The API server
// refuses a Service or ServiceEntry port outside 1-65535, but not an
// EndpointSlice's (nor a ServiceEntry's under a CRD without its CEL rules
// and no webhook): such a port is left out, the rest of the object kept,
// rather than served wrapped around (70000 as 4464) or as port 0, which no
// client can dial. Manifests refuse them (package typed).
func portNumber(n int64) (uint16, bool) {
	if n < 1 || n > 65535 {
		return 0, false
	}
	return uint16(n), true
}

func namespaceOf(m *ObjectMeta) string {
	if m.Namespace == "" {
		return namespaceDefault
	}
	return intern(m.Namespace)
}

func protocolOf(p string) string {
	if p == "" {
		return protocolTCP
	}
	return intern(p)
}

// intern returns the one copy of s that every object holding it shares:
// namespaces, protocols and port names repeat over thousands of objects,
// and each decoded copy would be an allocation of its own.
func intern(s string) string {
	if s == "" {
		return ""
	}
	return unique.Make(s).Value()
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// maxPortSets bounds portSets: ports alike across many objects are few.
const maxPortSets = 4096

// portSets holds one list for each single port seen, which every object
// with just that port shares (most Services have one, and most of those
// "http", 80): objects never change once reduced, and a list of one port
// is an allocation per object otherwise.
var portSets = struct {
	sync.Mutex
	m map[model.Port][]model.Port
}{m: map[model.Port][]model.Port{}}

// sharedPorts returns the shared list equal to ports, when there is one.
func sharedPorts(ports []model.Port) []model.Port {
	if len(ports) != 1 {
		return ports
	}
	portSets.Lock()
	defer portSets.Unlock()
	if shared, ok := portSets.m[ports[0]]; ok {
		return shared
	}
	if len(portSets.m) < maxPortSets {
		portSets.m[ports[0]] = slices.Clip(ports)
	}
	return ports
}

// kv is a label or annotation: its key and value, nil when absent.
type kv struct {
	key   string
	value *string
}

// keep makes the map of the present ones; nil when none is.
func keep(pairs ...kv) map[string]string {
	var out map[string]string
	for _, p := range pairs {
		if p.value != nil {
			if out == nil {
				out = make(map[string]string, len(pairs))
			}
			out[p.key] = *p.value
		}
	}
	return out
}
