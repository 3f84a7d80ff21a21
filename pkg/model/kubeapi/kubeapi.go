// Package kubeapi holds the Kubernetes and Istio API objects ztdns reads,
// cut down to the fields it reads and shaped like the API server's JSON, so
// that a watch decodes them directly (see AddToScheme), and their reduction
// to pkg/model.
//
// They stand in for k8s.io/api's and istio.io/client-go's generated types,
// whose clientsets, schemes and package initialisers are most of the
// Kubernetes source's weight in the binary: a node agent pays for every page
// of them on every node. Unknown fields are skipped while decoding, so an
// object costs only what DNS and the capture decision keep of it.
//
// Labels and annotations are not maps: each is a field of its own, named by
// its key, so that the dozens of labels and the large annotations real
// objects carry (kubectl's last-applied-configuration) are never allocated.
package kubeapi

import (
	"encoding/json"
	"reflect"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
)

// ObjectMeta is the part of metadata ztdns reads.
type ObjectMeta struct {
	Name              string      `json:"name,omitempty"`
	Namespace         string      `json:"namespace,omitempty"`
	UID               string      `json:"uid,omitempty"`
	ResourceVersion   string      `json:"resourceVersion,omitempty"`
	CreationTimestamp time.Time   `json:"creationTimestamp"`
	Labels            Labels      `json:"labels"`
	Annotations       Annotations `json:"annotations"`
}

// Labels are the labels ztdns reads (see the model.Label* constants), nil
// when absent. Every field is a *string keyed by its JSON name: LabelsOf and
// AnnotationsOf read these tags too, so a watch and a manifest read the same
// keys (TestTagsAreTheModelsKeys holds them to model's constants).
type Labels struct {
	DataplaneMode      *string `json:"istio.io/dataplane-mode,omitempty"`
	GatewayManaged     *string `json:"gateway.istio.io/managed,omitempty"`
	EnableAutoallocate *string `json:"networking.istio.io/enable-autoallocate-ip,omitempty"`
	IstioRev           *string `json:"istio.io/rev,omitempty"`
	ServiceName        *string `json:"kubernetes.io/service-name,omitempty"`
	App                *string `json:"app,omitempty"`
}

// Annotations are the annotations ztdns reads, nil when absent.
type Annotations struct {
	DNSCapture      *string `json:"ztdns.io/dns-capture,omitempty"`
	IstioDNSCapture *string `json:"ambient.istio.io/dns-capture,omitempty"`
	// SidecarStatus is Istio's injector's record of what it injected, a
	// JSON document of a few hundred bytes; only its presence counts (see
	// model.AnnotationSidecarStatus), so its value is never kept.
	SidecarStatus *Present `json:"sidecar.istio.io/status,omitempty"`
	// AmbientRedirection is istio-cni's enrollment record
	// (model.AnnotationAmbientRedirection).
	AmbientRedirection *string `json:"ambient.istio.io/redirection,omitempty"`
	// IstioRev is a pod's istio.io/rev (model.AnnotationIstioRev), read
	// on ztunnel's pods.
	IstioRev *string `json:"istio.io/rev,omitempty"`
	// InitialEventsEnd marks the bookmark that ends a watch's initial
	// events (metav1.InitialEventsAnnotationKey), which client-go's
	// reflector reads to know it has every object.
	InitialEventsEnd *string `json:"k8s.io/initial-events-end,omitempty"`
}

// Present stands for a label or annotation of which only the presence is
// read: decoding it keeps nothing of the value, and a pointer to it costs
// no allocation.
type Present struct{}

// UnmarshalJSON skips the value.
func (*Present) UnmarshalJSON([]byte) error { return nil }

// MarshalJSON writes an empty value, so that a copy still has the key.
func (Present) MarshalJSON() ([]byte, error) { return []byte(`""`), nil }

// LabelsOf picks the labels ztdns reads out of a label map, by the keys the
// fields' JSON tags name, so that sources holding maps (package typed) need
// no list of their own.
func LabelsOf(m map[string]string) Labels {
	var l Labels
	fromMap(&l, m)
	return l
}

// AnnotationsOf picks the annotations ztdns reads out of an annotation map,
// as LabelsOf does.
func AnnotationsOf(m map[string]string) Annotations {
	var a Annotations
	fromMap(&a, m)
	return a
}

// fromMap sets each *string or *Present field of the struct v points to
// from m, keyed exactly (case and all) as the watch decodes it: by the
// field's JSON name.
func fromMap(v any, m map[string]string) {
	s := reflect.ValueOf(v).Elem()
	for i := range s.NumField() {
		key, _, _ := strings.Cut(s.Type().Field(i).Tag.Get("json"), ",")
		val, ok := m[key]
		if !ok {
			continue
		}
		if f := s.Field(i); f.Type() == reflect.TypeFor[*Present]() {
			f.Set(reflect.ValueOf(&Present{}))
		} else {
			f.Set(reflect.ValueOf(&val))
		}
	}
}

// Object is an API object of this package.
type Object interface {
	runtime.Object
	metav1.ObjectMetaAccessor
	Meta() *ObjectMeta
}

// Meta returns the object's metadata.
func (m *ObjectMeta) Meta() *ObjectMeta { return m }

// GetObjectMeta lets client-go (meta.Accessor) read what its reflector
// reads: the key, the resourceVersion, and the initial-events annotation of
// a bookmark. It is made on demand, so objects carry no ObjectMeta.
func (m *ObjectMeta) GetObjectMeta() metav1.Object {
	om := &metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: types.UID(m.UID), ResourceVersion: m.ResourceVersion}
	if v := m.Annotations.InitialEventsEnd; v != nil {
		om.Annotations = map[string]string{metav1.InitialEventsAnnotationKey: *v}
	}
	return om
}

// Service is a v1 Service.
type Service struct {
	metav1.TypeMeta `json:",inline"`
	ObjectMeta      `json:"metadata"`
	Spec            ServiceSpec `json:"spec"`
}

// ServiceSpec is the part of a Service's spec DNS answers from.
type ServiceSpec struct {
	Type                     string        `json:"type,omitempty"`
	ClusterIP                string        `json:"clusterIP,omitempty"`
	ClusterIPs               []string      `json:"clusterIPs,omitempty"`
	ExternalName             string        `json:"externalName,omitempty"`
	PublishNotReadyAddresses bool          `json:"publishNotReadyAddresses,omitempty"`
	Ports                    []ServicePort `json:"ports,omitempty"`
}

// ServicePort is one of a Service's ports.
type ServicePort struct {
	Name     string `json:"name,omitempty"`
	Protocol string `json:"protocol,omitempty"`
	Port     int32  `json:"port"`
}

// EndpointSlice is a discovery.k8s.io/v1 EndpointSlice.
type EndpointSlice struct {
	metav1.TypeMeta `json:",inline"`
	ObjectMeta      `json:"metadata"`
	AddressType     string         `json:"addressType"`
	Endpoints       []Endpoint     `json:"endpoints"`
	Ports           []EndpointPort `json:"ports,omitempty"`
}

// Endpoint is one endpoint of a slice.
type Endpoint struct {
	Addresses  []string `json:"addresses"`
	Conditions struct {
		Ready *bool `json:"ready,omitempty"`
	} `json:"conditions"`
	Hostname *string `json:"hostname,omitempty"`
}

// EndpointPort is one of a slice's ports.
type EndpointPort struct {
	Name     *string `json:"name,omitempty"`
	Protocol *string `json:"protocol,omitempty"`
	Port     *int32  `json:"port,omitempty"`
}

// Namespace is a v1 Namespace: its metadata, with every label.
type Namespace struct {
	metav1.TypeMeta `json:",inline"`
	NamespaceMeta   `json:"metadata"`
}

// NamespaceMeta is a Namespace's metadata: ObjectMeta, but with every
// label, for Istio's meshConfig discoverySelectors select namespaces by any
// label. Its Labels hide ObjectMeta's (a shallower field wins, in Go and
// in the JSON decoder alike), which stay empty. A cluster has few
// namespaces, each with a few labels.
type NamespaceMeta struct {
	ObjectMeta
	Labels map[string]string `json:"labels,omitempty"`
}

// ConfigMap is a v1 ConfigMap: its metadata and data. ztdns reads two,
// by name: whether istiod's allocator lock exists, and the mesh config's
// `mesh` key.
type ConfigMap struct {
	metav1.TypeMeta `json:",inline"`
	ObjectMeta      `json:"metadata"`
	Data            map[string]string `json:"data,omitempty"`
}

// Pod is a v1 Pod.
type Pod struct {
	metav1.TypeMeta `json:",inline"`
	ObjectMeta      `json:"metadata"`
	Spec            PodSpec   `json:"spec"`
	Status          PodStatus `json:"status"`
}

// PodSpec is the part of a Pod's spec that identifies a DNS client.
type PodSpec struct {
	NodeName       string        `json:"nodeName,omitempty"`
	HostNetwork    bool          `json:"hostNetwork,omitempty"`
	DNSPolicy      string        `json:"dnsPolicy,omitempty"`
	DNSConfig      *PodDNSConfig `json:"dnsConfig,omitempty"`
	Containers     []Container   `json:"containers"`
	InitContainers []Container   `json:"initContainers,omitempty"`
}

// Container is a container's name.
type Container struct {
	Name string `json:"name"`
}

// PodDNSConfig is a Pod's spec.dnsConfig.
type PodDNSConfig struct {
	Nameservers []string `json:"nameservers,omitempty"`
	Searches    []string `json:"searches,omitempty"`
}

// PodStatus holds a Pod's addresses.
type PodStatus struct {
	Phase  string  `json:"phase,omitempty"`
	PodIP  string  `json:"podIP,omitempty"`
	PodIPs []PodIP `json:"podIPs,omitempty"`
}

// PodIP is one of a Pod's addresses.
type PodIP struct {
	IP string `json:"ip"`
}

// ServiceEntry is a networking.istio.io ServiceEntry (v1, v1beta1 and
// v1alpha3 share its spec and status).
type ServiceEntry struct {
	metav1.TypeMeta `json:",inline"`
	ObjectMeta      `json:"metadata"`
	Spec            ServiceEntrySpec   `json:"spec"`
	Status          ServiceEntryStatus `json:"status"`
}

// ServiceEntrySpec is the part of a ServiceEntry's spec DNS answers from.
type ServiceEntrySpec struct {
	Hosts     []string           `json:"hosts,omitempty"`
	Addresses []string           `json:"addresses,omitempty"`
	Ports     []ServiceEntryPort `json:"ports,omitempty"`
	// Resolution is the enum's name ("DNS"); empty means NONE.
	Resolution string   `json:"resolution,omitempty"`
	ExportTo   []string `json:"exportTo,omitempty"`
}

// ServiceEntryPort is one of a ServiceEntry's ports.
type ServiceEntryPort struct {
	Number   uint32 `json:"number"`
	Protocol string `json:"protocol,omitempty"`
	Name     string `json:"name,omitempty"`
}

// ServiceEntryStatus holds the addresses istiod allocated.
type ServiceEntryStatus struct {
	// Addresses is status.addresses as written, read by Model. The CRD gives
	// status no schema (x-kubernetes-preserve-unknown-fields): whoever may
	// write the status subresource can put anything there, and decoded as
	// a typed field, a value of another shape would fail the ServiceEntry,
	// and in a list call the whole list, so every ServiceEntry.
	Addresses json.RawMessage `json:"addresses,omitempty"`
}

// ServiceEntryAddress is one address istiod allocated to one host, as
// status.addresses holds it.
type ServiceEntryAddress struct {
	Value string `json:"value"`
	Host  string `json:"host,omitempty"`
}

// CustomResourceDefinition is an apiextensions.k8s.io/v1
// CustomResourceDefinition: which versions it serves, and whether the API
// server serves it yet (its Established condition). ztdns reads only
// Istio's ServiceEntry CRD, to know whether and how ServiceEntries are
// served.
type CustomResourceDefinition struct {
	metav1.TypeMeta `json:",inline"`
	ObjectMeta      `json:"metadata"`
	Spec            struct {
		Versions []CRDVersion `json:"versions"`
	} `json:"spec"`
	Status struct {
		Conditions []CRDCondition `json:"conditions,omitempty"`
	} `json:"status"`
}

// CRDVersion is one version of a CRD.
type CRDVersion struct {
	Name   string `json:"name"`
	Served bool   `json:"served"`
}

// CRDCondition is one of a CRD's status conditions.
type CRDCondition struct {
	Type   string `json:"type"`
	Status string `json:"status"`
}

// ServedVersions are the versions the CRD serves, once the API server has
// taken it up (Established): none before, whatever its spec says.
func (c *CustomResourceDefinition) ServedVersions() []string {
	established := false
	for _, cond := range c.Status.Conditions {
		established = established || (cond.Type == "Established" && cond.Status == "True")
	}
	if !established {
		return nil
	}
	var out []string
	for _, v := range c.Spec.Versions {
		if v.Served {
			out = append(out, v.Name)
		}
	}
	return out
}

// Terminating reports whether the CRD is being deleted (its Terminating
// condition): its objects are being deleted with it.
func (c *CustomResourceDefinition) Terminating() bool {
	for _, cond := range c.Status.Conditions {
		if cond.Type == "Terminating" && cond.Status == "True" {
			return true
		}
	}
	return false
}

// List is a list of objects of one kind, as a list call returns it.
type List[T any] struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata"`
	Items           []T `json:"items"`
}

// The lists, under the names their API kinds have (see AddToScheme).
type (
	ServiceList       = List[Service]
	EndpointSliceList = List[EndpointSlice]
	NamespaceList     = List[Namespace]
	ConfigMapList     = List[ConfigMap]
	PodList           = List[Pod]
	ServiceEntryList  = List[ServiceEntry]
	CRDList           = List[CustomResourceDefinition]
)

// The API groups and versions ztdns reads.
var (
	CoreV1          = schema.GroupVersion{Version: "v1"}
	DiscoveryV1     = schema.GroupVersion{Group: "discovery.k8s.io", Version: "v1"}
	IstioNetworkV1  = schema.GroupVersion{Group: "networking.istio.io", Version: "v1"}
	APIExtensionsV1 = schema.GroupVersion{Group: "apiextensions.k8s.io", Version: "v1"}
)

// AddToScheme registers the objects under their API kinds, with the
// metav1 types (Status, WatchEvent, ListOptions) every group needs, so that
// a REST client built on the scheme decodes lists and watch events into
// them.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(CoreV1, &Service{}, &Namespace{}, &Pod{}, &ConfigMap{})
	s.AddKnownTypes(DiscoveryV1, &EndpointSlice{})
	s.AddKnownTypes(IstioNetworkV1, &ServiceEntry{})
	s.AddKnownTypes(APIExtensionsV1, &CustomResourceDefinition{})
	// A list's kind is its item's kind and "List"; the name of an
	// instantiated List says neither, so each is registered by name.
	for gvk, list := range map[schema.GroupVersionKind]runtime.Object{
		CoreV1.WithKind("ServiceList"):                           &ServiceList{},
		CoreV1.WithKind("NamespaceList"):                         &NamespaceList{},
		CoreV1.WithKind("PodList"):                               &PodList{},
		CoreV1.WithKind("ConfigMapList"):                         &ConfigMapList{},
		DiscoveryV1.WithKind("EndpointSliceList"):                &EndpointSliceList{},
		IstioNetworkV1.WithKind("ServiceEntryList"):              &ServiceEntryList{},
		APIExtensionsV1.WithKind("CustomResourceDefinitionList"): &CRDList{},
	} {
		s.AddKnownTypeWithName(gvk, list)
	}
	for _, gv := range []schema.GroupVersion{CoreV1, DiscoveryV1, IstioNetworkV1, APIExtensionsV1} {
		metav1.AddToGroupVersion(s, gv)
	}
	return nil
}

// deepCopy copies an object through its JSON form: every field of these
// types is in it. client-go asks for copies only where it hands objects to
// several owners, which ztdns never does, so this is never on a hot path.
func deepCopy[T any](in *T) *T {
	out := new(T)
	b, err := json.Marshal(in)
	if err == nil {
		err = json.Unmarshal(b, out)
	}
	if err != nil {
		panic("kubeapi: copy of " + err.Error()) // plain structs always round-trip
	}
	return out
}

func (o *Service) DeepCopyObject() runtime.Object                  { return deepCopy(o) }
func (o *EndpointSlice) DeepCopyObject() runtime.Object            { return deepCopy(o) }
func (o *Namespace) DeepCopyObject() runtime.Object                { return deepCopy(o) }
func (o *ConfigMap) DeepCopyObject() runtime.Object                { return deepCopy(o) }
func (o *Pod) DeepCopyObject() runtime.Object                      { return deepCopy(o) }
func (o *ServiceEntry) DeepCopyObject() runtime.Object             { return deepCopy(o) }
func (o *CustomResourceDefinition) DeepCopyObject() runtime.Object { return deepCopy(o) }
func (o *List[T]) DeepCopyObject() runtime.Object                  { return deepCopy(o) }
