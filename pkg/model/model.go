// Package model holds the stripped-down objects that ztdns keeps from Kubernetes
// and Istio: only the fields DNS answers and capture decisions need. Sources (a
// directory of manifests, a Kubernetes watch) convert API objects into these
// before storing them, so the agent's memory does not grow with fields it never
// reads (CoreDNS does the same with its object.Pod).
package model

import (
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Labels and annotations ztdns reads; everything else is dropped on conversion.
const (
	LabelDataplaneMode      = "istio.io/dataplane-mode"
	LabelGatewayManaged     = "gateway.istio.io/managed"
	LabelEnableAutoallocate = "networking.istio.io/enable-autoallocate-ip"
	// LabelIstioRev names the Istio revision whose istiod an object is for
	// (ServiceEntry.Revision).
	LabelIstioRev = "istio.io/rev"
	// AnnotationDNSCapture is ztdns's own per-pod switch, "true" or "false".
	AnnotationDNSCapture = "ztdns.io/dns-capture"
	// AnnotationIstioDNSCapture is istio-cni's per-pod switch for Istio's
	// own DNS capture; ztdns honours only its "false" (see pkg/ambient).
	AnnotationIstioDNSCapture = "ambient.istio.io/dns-capture"
	// AnnotationSidecarStatus is written by Istio's sidecar injector on
	// every pod it injects, whatever the template, including proxyless gRPC
	// ("grpc-simple"), which adds no istio-proxy container. istio-cni never
	// enrolls a pod carrying it, whatever its value, and neither does ztdns
	// (Pod.HasSidecar). Only its presence is kept.
	AnnotationSidecarStatus = "sidecar.istio.io/status"
	// AnnotationAmbientRedirection is istio-cni's record of a pod it has
	// set up for ambient (istio/istio cni/pkg/util/podutil.go): "enabled"
	// once its in-pod rules are in place and ztunnel took the pod,
	// "pending" while its rules are in place but ztunnel has not taken it
	// yet; istio-cni removes it when it takes the pod out of the mesh.
	// istiod gives a workload HBONE only with "enabled". Kept as
	// Pod.Enrollment.
	AnnotationAmbientRedirection = "ambient.istio.io/redirection"
	// LabelServiceName links an EndpointSlice to its Service.
	LabelServiceName = "kubernetes.io/service-name"
	// LabelApp is the label Istio's ztunnel chart gives its DaemonSet's
	// pods, ZtunnelApp (its selector); of a pod it is kept with that value
	// only, with the pod's AnnotationIstioRev.
	LabelApp   = "app"
	ZtunnelApp = "ztunnel"
	// AnnotationIstioRev is the revision the ztunnel chart gives its pods
	// when it has one (`revision`): the istiod that ztunnel connects to is
	// then istiod-REVISION. Kept on ztunnel pods only.
	AnnotationIstioRev = "istio.io/rev"
	// SidecarContainer is the name of Istio's injected proxy container.
	SidecarContainer = "istio-proxy"
)

// Port is a named service port, as used for SRV records.
type Port struct {
	Name     string
	Protocol string // "TCP", "UDP" or "SCTP" (upper case, as in the API)
	// Port is 1-65535: a port without a number (an EndpointSlice's "all
	// ports") or outside the range is left out of the object.
	Port uint16
}

// Service is the part of a v1 Service that DNS needs.
type Service struct {
	Namespace string
	Name      string
	// Created is metadata.creationTimestamp (zero in a manifest without
	// one). It orders a namespace's objects for its budget of names: the
	// oldest are kept.
	Created time.Time
	// ClusterIPs holds the service's virtual IPs in ipFamilies order. Empty for
	// headless and ExternalName services.
	ClusterIPs []netip.Addr
	// Headless is true for clusterIP: None; answers come from EndpointSlices.
	Headless bool
	// ExternalName is set for type ExternalName; answers are a CNAME to it.
	ExternalName string
	// PublishNotReady mirrors spec.publishNotReadyAddresses.
	PublishNotReady bool
	Ports           []Port
}

// Key returns "namespace/name".
func (s *Service) Key() string { return s.Namespace + "/" + s.Name }

// Endpoint is one endpoint of an EndpointSlice.
type Endpoint struct {
	Addresses []netip.Addr
	Hostname  string
	// Ready is conditions.ready, with nil counted as ready (the API's rule).
	Ready bool
}

// EndpointSlice is the part of a discovery.k8s.io/v1 EndpointSlice DNS needs.
type EndpointSlice struct {
	Namespace string
	Name      string
	// ServiceName is the kubernetes.io/service-name label.
	ServiceName string
	Endpoints   []Endpoint
	Ports       []Port
}

// Resolution values of a ServiceEntry (spec.resolution).
const (
	ResolutionNone          = "NONE"
	ResolutionStatic        = "STATIC"
	ResolutionDNS           = "DNS"
	ResolutionDNSRoundRobin = "DNS_ROUND_ROBIN"
	ResolutionDynamicDNS    = "DYNAMIC_DNS"
)

// HostAddress is an address istiod assigned to one host (status.addresses).
type HostAddress struct {
	// Host is as istiod wrote it: the host as spec.hosts spells it, which
	// it allocates for and ztunnel matches exactly (API.example.com and
	// api.example.com get a VIP each).
	Host    string
	Address netip.Addr
}

// ServiceEntry is the part of a networking.istio.io ServiceEntry DNS needs.
type ServiceEntry struct {
	Namespace string
	Name      string
	// Created is metadata.creationTimestamp (the manifest source gives one
	// without it the time it first read it). It orders the VIP allocator so
	// an older ServiceEntry keeps its address when a newer one collides
	// with it.
	Created time.Time
	// Hosts may start with "*.". Those written as a pod asks for them
	// (lower case, no trailing dot) come first, then the Folded written
	// otherwise, each part in the order of spec.hosts. Those are kept as
	// written: istiod gives each spelling a VIP of its own, and its
	// status.addresses name the spelling (HostAddress.Host); the name a
	// pod asks is the host lower-cased without the dot (dns.CanonicalName).
	Hosts []string
	// Folded counts the hosts at the end of Hosts that were written
	// otherwise (upper case, a trailing dot; HostFolded): istiod keeps a
	// host as written, and ztunnel matches the name asked exactly. 0 when
	// every host was written as it is, nearly always. A count rather than
	// a flag per host, so that it shares one word with the two bools
	// after it, a word their padding took anyway: the source and the
	// snapshot hold every ServiceEntry, and a []bool cost each 24 bytes.
	Folded uint32
	// HasSpecAddresses is true when spec.addresses lists anything, even
	// values that parse as neither address nor range: istiod allocates no
	// VIP then.
	HasSpecAddresses bool
	// AutoAllocate is false when the label
	// networking.istio.io/enable-autoallocate-ip is "false" (any case, as
	// istiod compares it).
	AutoAllocate bool
	// Addresses are spec.addresses that are single IPs.
	Addresses []netip.Addr
	// CIDRs are spec.addresses that are ranges: routing configuration, not
	// DNS answers, but they still mean the entry has addresses and gets no
	// VIP.
	CIDRs []netip.Prefix
	// StatusAddresses are status.addresses, written by istiod's allocator.
	StatusAddresses []HostAddress
	Resolution      string
	// ExportTo is spec.exportTo as written; empty means the mesh's default
	// (table.Options.DefaultExportTo: everywhere unless set).
	ExportTo []string
	// Revision is the label istio.io/rev, nil when absent: istiod of
	// another revision ignores the entry (see package kube).
	Revision *string
	Ports    []Port
}

// Key returns "namespace/name".
func (s *ServiceEntry) Key() string { return s.Namespace + "/" + s.Name }

// HostFolded reports whether Hosts[i] was written otherwise than a pod
// asks for it (Folded).
func (s *ServiceEntry) HostFolded(i int) bool { return i >= len(s.Hosts)-int(s.Folded) }

// Namespace is a v1 Namespace's name and labels, all of them (Istio's
// discoverySelectors select namespaces by any label).
type Namespace struct {
	Name   string
	Labels map[string]string
}

// DNS policies of a pod (spec.dnsPolicy).
const (
	DNSClusterFirst            = "ClusterFirst"
	DNSClusterFirstWithHostNet = "ClusterFirstWithHostNet"
	DNSDefault                 = "Default"
	DNSNone                    = "None"
)

// Enrollment is what a pod's AnnotationAmbientRedirection says of
// istio-cni's work on it.
type Enrollment uint8

// Enrollment states. The zero value is EnrollmentAbsent.
const (
	// EnrollmentAbsent: no annotation. istio-cni has not enrolled the pod
	// (not yet, never: not on this node pool, a failure it does not retry,
	// Istio uninstalled), or has taken it out of the mesh.
	EnrollmentAbsent Enrollment = iota
	// EnrollmentEnabled: "enabled", the pod is in the mesh.
	EnrollmentEnabled
	// EnrollmentPending: "pending", istio-cni's in-pod rules are in place
	// and ztunnel has not taken the pod yet; istio-cni retries.
	EnrollmentPending
	// EnrollmentOther: any other value, which Istio takes for not enrolled.
	EnrollmentOther
)

// Values of AnnotationAmbientRedirection that istio-cni writes.
const (
	RedirectionEnabled = "enabled"
	RedirectionPending = "pending"
)

// EnrollmentOf reads an AnnotationAmbientRedirection value; nil: absent.
func EnrollmentOf(v *string) Enrollment {
	switch {
	case v == nil:
		return EnrollmentAbsent
	case *v == RedirectionEnabled:
		return EnrollmentEnabled
	case *v == RedirectionPending:
		return EnrollmentPending
	}
	return EnrollmentOther
}

// Redirected reports whether istio-cni's in-pod rules are in place:
// enabled or pending.
func (e Enrollment) Redirected() bool { return e == EnrollmentEnabled || e == EnrollmentPending }

// String returns "absent", "enabled", "pending" or "other".
func (e Enrollment) String() string {
	switch e {
	case EnrollmentAbsent:
		return "absent"
	case EnrollmentEnabled:
		return RedirectionEnabled
	case EnrollmentPending:
		return RedirectionPending
	}
	return "other"
}

// Pod is the part of a v1 Pod that identifies a DNS client and decides
// whether its DNS is captured.
type Pod struct {
	Namespace string
	Name      string
	UID       string
	NodeName  string
	// IPs are status.podIPs (or status.podIP).
	IPs         []netip.Addr
	HostNetwork bool
	// Labels and Annotations keep only the keys ztdns reads (see kube.go).
	Labels      map[string]string
	Annotations map[string]string
	// HasSidecar is true when the pod runs an istio-proxy container or
	// carries AnnotationSidecarStatus (any value, even empty, as istio-cni
	// reads it).
	HasSidecar bool
	// Enrollment is AnnotationAmbientRedirection's state; only the state
	// is kept.
	Enrollment Enrollment
	DNSPolicy  string
	// DNSSearches and DNSNameservers are spec.dnsConfig's.
	DNSSearches    []string
	DNSNameservers []netip.Addr
}

// Key returns "namespace/name".
func (p *Pod) Key() string { return p.Namespace + "/" + p.Name }

// SearchList returns the search line kubelet writes into the pod's
// resolv.conf (pkg/kubelet/network/dns GetPodDNS), given the cluster domain
// and the node's own search domains (its resolv.conf's): for ClusterFirst
// (and ClusterFirstWithHostNet; a hostNetwork pod's ClusterFirst is
// Default) the cluster's three domains then the node's, for Default the
// node's, for None none; then spec.dnsConfig.searches. Duplicates are left
// out, and the list is cut to kubelet's limits: 32 domains, none longer
// than 253 characters, 2048 characters in all. A resolver tries the
// domains in this order, and autopath must too.
func (p *Pod) SearchList(clusterDomain string, node []string) []string {
	var search []string
	add := func(domains []string) {
		for _, d := range domains {
			if len(search) == maxSearchPaths {
				return
			}
			if !slices.Contains(search, d) {
				search = append(search, d)
			}
		}
	}
	host := make([]string, 0, len(node))
	for _, d := range node {
		host = append(host, strings.TrimSuffix(d, ".")) // as kubelet reads its resolv.conf
	}
	switch p.DNSPolicy {
	case DNSNone:
	case DNSDefault:
		add(host)
	case DNSClusterFirstWithHostNet:
		add(clusterSearch(p.Namespace, clusterDomain))
		add(host)
	default: // ClusterFirst, also for empty (the API default)
		if !p.HostNetwork {
			add(clusterSearch(p.Namespace, clusterDomain))
		}
		add(host)
	}
	add(p.DNSSearches)
	return fitSearchLimits(search)
}

// Kubelet's limits on a pod's search line (k8s.io/kubernetes
// pkg/apis/core/validation: MaxDNSSearchPaths, MaxDNSSearchListChars, and
// a domain no longer than a DNS-1123 subdomain).
const (
	maxSearchPaths     = 32
	maxSearchListChars = 2048
	maxSearchDomainLen = 253
)

// fitSearchLimits cuts search as kubelet's formDNSSearchFitsLimits does:
// past maxSearchPaths (SearchList stops there already), then the domains
// too long, then from the end until the line fits maxSearchListChars.
func fitSearchLimits(search []string) []string {
	search = slices.DeleteFunc(search, func(d string) bool { return len(d) > maxSearchDomainLen })
	line := len(search) - 1 // the spaces between
	for _, d := range search {
		line += len(d)
	}
	for len(search) > 0 && line > maxSearchListChars {
		line -= len(search[len(search)-1]) + 1
		search = search[:len(search)-1]
	}
	return search
}

func clusterSearch(ns, domain string) []string {
	if domain == "" {
		return nil // kubelet without a cluster domain gives the node's alone
	}
	return []string{ns + ".svc." + domain, "svc." + domain, domain}
}

// Snapshot is everything a source knows at one moment. The name table is
// built from a Snapshot and the pod registry is fed its Pods.
type Snapshot struct {
	Namespaces     []Namespace
	Services       []Service
	EndpointSlices []EndpointSlice
	ServiceEntries []ServiceEntry
	Pods           []Pod
	// IstiodAllocates is true when the source sees istiod's VIP allocator
	// (its leader lock): VIPs then come from status.addresses only, also
	// for entries istiod has not written yet (see vip.Source).
	IstiodAllocates bool
	// DefaultExportTo is Istio's mesh config's defaultServiceExportTo, as
	// the source last read it (the `mesh` key of istiod's `istio`
	// ConfigMap): the exportTo of a ServiceEntry that gives none. Nil when
	// the source reads no mesh config (standalone mode), or the mesh
	// config gives none or is absent: Istio's default then, every
	// namespace. An explicit table.Options.DefaultExportTo (the agent's
	// --default-service-export-to) wins over it.
	DefaultExportTo []string
	// MeshConfig names the mesh config the source follows
	// ("istio-system/istio") once it has learnt istiod's
	// defaultServiceExportTo from it: DefaultExportTo, and nil (every
	// namespace) when the ConfigMap is absent or gives none. Empty when the
	// source reads no mesh config (standalone mode) or has read none yet
	// (RBAC refusing it, or YAML that does not parse, from the start).
	MeshConfig string
	// KubeDNSTTL is the TTL kube-dns's kubernetes plugin answers the
	// cluster domain's names with, as the source read it from kube-dns's
	// Corefile (1 for its ttl 0); 0 when the source reads none. The agent
	// gives local answers this TTL unless told one (--ttl).
	KubeDNSTTL uint32
	// KubeDNSFrom names the ConfigMap KubeDNSTTL was read from
	// ("kube-system/coredns"); empty when it is 0.
	KubeDNSFrom string
	// IstiodIgnores are the ServiceEntries the source left out of
	// ServiceEntries because istiod ignores them (another revision's, or
	// of a namespace its discoverySelectors do not select), by why: their
	// hosts are forwarded. The table shows each as a warning.
	IstiodIgnores []LeftOut
	// IstiodUnselected are the namespaces istiod's discoverySelectors do
	// not select, sorted; nil when it sees every namespace (no selectors,
	// or no istiod). istiod sends ztunnel no Service of theirs: such a
	// Service answers its name only where no ServiceEntry names it.
	IstiodUnselected []string
}

// DefaultExportToFrom names the mesh config DefaultExportTo was read from
// ("istio-system/istio"): MeshConfig; empty when DefaultExportTo is nil.
func (s Snapshot) DefaultExportToFrom() string {
	if s.DefaultExportTo == nil {
		return ""
	}
	return s.MeshConfig
}

// LeftOut are objects a source left out of a snapshot for one reason.
type LeftOut struct {
	Kind string   // the objects' kind: "ServiceEntry"
	Why  string   // why, as a clause: "labelled … so istiod ignores them"
	Keys []string // the objects, "namespace/name", in order
}

// PodAddr reports whether ip is an address of a pod's own: not loopback,
// link-local, multicast or unspecified, which any pod may have the same of.
// It is the one rule: the plugin claims only such addresses, the agent's
// API drops the others from an ADD, and a network namespace's addresses as
// the agent reads them are only these.
func PodAddr(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsValid() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() && !ip.IsMulticast() && !ip.IsUnspecified()
}
