package kubeapi

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"

	"github.com/ztdns/ztdns/pkg/model"
)

// decode decodes an object the way a REST client built on AddToScheme does.
func decode(t *testing.T, doc string) runtime.Object {
	t.Helper()
	s := runtime.NewScheme()
	if err := AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	obj, err := runtime.Decode(serializer.NewCodecFactory(s).UniversalDeserializer(), []byte(doc))
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	return obj
}

// managed is metadata real objects carry and ztdns never reads.
const managed = `"managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}],
	"ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "x", "uid": "1"}]`

// TestDecodeAndReduce decodes objects as the API server serves them (with
// fields and labels ztdns does not read) and reduces them: each field comes
// from its JSON name, labels and annotations from their exact key.
func TestDecodeAndReduce(t *testing.T) {
	created := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		doc  string
		want any
	}{{
		name: "Service",
		doc: `{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7",
			"labels": {"app": "web", "Istio.io/dataplane-mode": "ambient"},
			"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"huge\": true}"}, ` + managed + `},
			"spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "2001:db8::a"], "ipFamilies": ["IPv4", "IPv6"],
			"selector": {"app": "web"}, "publishNotReadyAddresses": true,
			"ports": [{"name": "http", "port": 80, "targetPort": 8080}, {"name": "dns", "protocol": "UDP", "port": 53}]},
			"status": {"loadBalancer": {}}}`,
		want: model.Service{Namespace: "shop", Name: "web", PublishNotReady: true,
			ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("2001:db8::a")},
			Ports:      []model.Port{{Name: "http", Protocol: "TCP", Port: 80}, {Name: "dns", Protocol: "UDP", Port: 53}}},
	}, {
		name: "ExternalName Service",
		doc: `{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext", "namespace": "shop"},
			"spec": {"type": "ExternalName", "externalName": "DB.Example.COM."}}`,
		want: model.Service{Namespace: "shop", Name: "ext", ExternalName: "db.example.com"},
	}, {
		name: "EndpointSlice",
		doc: `{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "db-x1", "namespace": "shop",
			"labels": {"kubernetes.io/service-name": "db", "service.kubernetes.io/headless": "", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
			"addressType": "IPv4",
			"endpoints": [{"addresses": ["10.1.0.1"], "conditions": {"ready": true, "serving": true}, "hostname": "DB-0", "nodeName": "n1",
			  "targetRef": {"kind": "Pod", "name": "db-0"}},
			  {"addresses": ["10.1.0.2"], "conditions": {"ready": false}},
			  {"addresses": ["10.1.0.3"], "conditions": {}}],
			"ports": [{"name": "pg", "protocol": "TCP", "port": 5432}, {"port": 9000}, {"name": "any", "protocol": "TCP"}]}`,
		want: model.EndpointSlice{Namespace: "shop", Name: "db-x1", ServiceName: "db",
			Endpoints: []model.Endpoint{
				{Addresses: []netip.Addr{netip.MustParseAddr("10.1.0.1")}, Hostname: "db-0", Ready: true},
				{Addresses: []netip.Addr{netip.MustParseAddr("10.1.0.2")}},
				{Addresses: []netip.Addr{netip.MustParseAddr("10.1.0.3")}, Ready: true},
			},
			Ports: []model.Port{{Name: "pg", Protocol: "TCP", Port: 5432}, {Protocol: "TCP", Port: 9000}}},
	}, {
		name: "Namespace",
		doc: `{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop",
			"labels": {"istio.io/dataplane-mode": "ambient", "kubernetes.io/metadata.name": "shop"}}, "spec": {"finalizers": ["kubernetes"]}}`,
		want: model.Namespace{Name: "shop", Labels: map[string]string{model.LabelDataplaneMode: "ambient", "kubernetes.io/metadata.name": "shop"}},
	}, {
		name: "Pod",
		doc: `{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": "shop", "uid": "u-1",
			"labels": {"istio.io/dataplane-mode": "ambient", "gateway.istio.io/managed": "istio.io-mesh-controller", "app": "client",
			  "Istio.io/Dataplane-Mode": "none"},
			"annotations": {"ztdns.io/dns-capture": "true", "ambient.istio.io/dns-capture": "false", "other": "x"}, ` + managed + `},
			"spec": {"nodeName": "node-a", "dnsPolicy": "ClusterFirst",
			  "dnsConfig": {"nameservers": ["198.51.100.53"], "searches": ["corp.example"], "options": [{"name": "ndots", "value": "2"}]},
			  "initContainers": [{"name": "istio-proxy", "image": "proxy", "restartPolicy": "Always"}],
			  "containers": [{"name": "app", "image": "app", "env": [{"name": "A", "value": "b"}], "resources": {"limits": {"cpu": "1"}}}]},
			"status": {"phase": "Running", "podIP": "203.0.113.20", "podIPs": [{"ip": "203.0.113.20"}, {"ip": "2001:db8::20"}],
			  "conditions": [{"type": "Ready", "status": "True"}]}}`,
		want: model.Pod{Namespace: "shop", Name: "client", UID: "u-1", NodeName: "node-a", DNSPolicy: "ClusterFirst", HasSidecar: true,
			Labels:         map[string]string{model.LabelDataplaneMode: "ambient", model.LabelGatewayManaged: "istio.io-mesh-controller"},
			Annotations:    map[string]string{model.AnnotationDNSCapture: "true", model.AnnotationIstioDNSCapture: "false"},
			IPs:            []netip.Addr{netip.MustParseAddr("203.0.113.20"), netip.MustParseAddr("2001:db8::20")},
			DNSSearches:    []string{"corp.example"},
			DNSNameservers: []netip.Addr{netip.MustParseAddr("198.51.100.53")}},
	}, {
		// Istio's injector annotates a proxyless gRPC pod (template
		// grpc-simple) but adds no istio-proxy container.
		name: "Pod injected without a proxy",
		doc: `{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "grpc", "namespace": "shop",
			"annotations": {"sidecar.istio.io/status": "{\"initContainers\":null,\"containers\":null,\"volumes\":[\"istio-xds\"],\"imagePullSecrets\":null}"}},
			"spec": {"containers": [{"name": "app", "image": "app"}]}}`,
		want: model.Pod{Namespace: "shop", Name: "grpc", HasSidecar: true},
	}, {
		name: "Pod with an empty sidecar status",
		doc: `{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "grpc", "namespace": "shop",
			"annotations": {"sidecar.istio.io/status": ""}}, "spec": {"containers": [{"name": "app"}]}}`,
		want: model.Pod{Namespace: "shop", Name: "grpc", HasSidecar: true},
	}, {
		// istio-cni's record of its work on the pod: only the state is kept.
		name: "Pod istio-cni enrolled",
		doc: `{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop",
			"annotations": {"ambient.istio.io/redirection": "enabled"}}, "spec": {"containers": [{"name": "app"}]}}`,
		want: model.Pod{Namespace: "shop", Name: "web", Enrollment: model.EnrollmentEnabled},
	}, {
		name: "Pod istio-cni enrolled partly",
		doc: `{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop",
			"annotations": {"ambient.istio.io/redirection": "pending"}}, "spec": {"containers": [{"name": "app"}]}}`,
		want: model.Pod{Namespace: "shop", Name: "web", Enrollment: model.EnrollmentPending},
	}, {
		// Istio's ztunnel chart with a revision: the label app and the
		// revision are kept on its pods, and on no other pod.
		name: "Pod of ztunnel",
		doc: `{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ztunnel-x7k2p", "namespace": "istio-system",
			"labels": {"app": "ztunnel", "istio.io/dataplane-mode": "none"}, "annotations": {"istio.io/rev": "1-28"}},
			"spec": {"containers": [{"name": "istio-proxy"}]}}`,
		want: model.Pod{Namespace: "istio-system", Name: "ztunnel-x7k2p", HasSidecar: true,
			Labels:      map[string]string{model.LabelDataplaneMode: "none", model.LabelApp: model.ZtunnelApp},
			Annotations: map[string]string{model.AnnotationIstioRev: "1-28"}},
	}, {
		name: "Pod of another app with a revision",
		doc: `{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop",
			"labels": {"app": "web"}, "annotations": {"istio.io/rev": "1-28"}}, "spec": {"containers": [{"name": "app"}]}}`,
		want: model.Pod{Namespace: "shop", Name: "web"},
	}, {
		name: "Pod with another enrollment value",
		doc: `{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop",
			"annotations": {"ambient.istio.io/redirection": "Enabled"}}, "spec": {"containers": [{"name": "app"}]}}`,
		want: model.Pod{Namespace: "shop", Name: "web", Enrollment: model.EnrollmentOther},
	}, {
		name: "ServiceEntry",
		doc: `{"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "ext", "namespace": "mesh",
			"creationTimestamp": "2025-03-01T12:00:00Z", "labels": {"networking.istio.io/enable-autoallocate-ip": "False", "istio.io/rev": "canary"}},
			"spec": {"hosts": ["API.Example.COM.", "*.wild.example"], "addresses": ["198.51.100.1", "198.51.100.2/32", "10.0.0.0/8"],
			  "ports": [{"number": 443, "protocol": "https", "name": "tls", "targetPort": 8443}],
			  "location": "MESH_EXTERNAL", "resolution": "DNS_ROUND_ROBIN", "exportTo": ["."], "endpoints": [{"address": "203.0.113.1"}]},
			"status": {"addresses": [{"value": "240.240.0.1", "host": "Api.Example.com"}], "conditions": [{"type": "Reconciled", "status": "True"}]}}`,
		want: model.ServiceEntry{Namespace: "mesh", Name: "ext", Created: created,
			Hosts:            []string{"*.wild.example", "API.Example.COM."},
			Folded:           1, // written otherwise than a pod asks for it: last, as written
			Addresses:        []netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")},
			CIDRs:            []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
			HasSpecAddresses: true,
			StatusAddresses:  []model.HostAddress{{Host: "Api.Example.com", Address: netip.MustParseAddr("240.240.0.1")}}, // as istiod wrote it
			Resolution:       model.ResolutionDNSRoundRobin,
			ExportTo:         []string{"."},
			Revision:         new("canary"),
			Ports:            []model.Port{{Name: "tls", Protocol: "HTTPS", Port: 443}}},
	}, {
		name: "ServiceEntry without resolution",
		doc: `{"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "plain", "namespace": "mesh"},
			"spec": {"hosts": ["plain.example"]}}`,
		want: model.ServiceEntry{Namespace: "mesh", Name: "plain", Hosts: []string{"plain.example"}, Resolution: model.ResolutionNone, AutoAllocate: true},
	}, {
		name: "ServiceEntry with hosts written both ways",
		doc: `{"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "mixed", "namespace": "mesh"},
			"spec": {"hosts": ["B.example", "a.example", "c.example.", "b.example", "*.Wild.example"]}}`,
		want: model.ServiceEntry{Namespace: "mesh", Name: "mixed", Hosts: []string{"a.example", "b.example", "B.example", "c.example.", "*.Wild.example"},
			Folded: 3, Resolution: model.ResolutionNone, AutoAllocate: true},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obj := decode(t, tt.doc)
			var got any
			var err error
			switch o := obj.(type) {
			case *Service:
				got, err = o.Model()
			case *EndpointSlice:
				got, err = o.Model()
			case *Namespace:
				got, err = o.Model()
			case *Pod:
				got, err = o.Model()
			case *ServiceEntry:
				got, err = o.Model()
			default:
				t.Fatalf("decoded a %T", obj)
			}
			if err != nil {
				t.Fatalf("Model: %v", err)
			}
			if se, ok := got.(model.ServiceEntry); ok { // compare instants
				want := tt.want.(model.ServiceEntry)
				if !se.Created.Equal(want.Created) {
					t.Errorf("Created = %v, want %v", se.Created, want.Created)
				}
				se.Created, want.Created = time.Time{}, time.Time{}
				got, tt.want = se, want
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestReduceErrors(t *testing.T) {
	tests := []struct {
		name, doc, want string
	}{
		{name: "Service without externalName",
			doc:  `{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "n"}, "spec": {"type": "ExternalName"}}`,
			want: "service n/x: type ExternalName without spec.externalName"},
		// An API server always sets a clusterIP (an address, or None); a
		// manifest without one would serve a Service that answers nothing.
		{name: "Service without clusterIP",
			doc:  `{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "n"}, "spec": {"ports": [{"port": 80}]}}`,
			want: "service n/x: type ClusterIP without spec.clusterIP: give the address its name answers with, or clusterIP: None for a headless Service"},
		{name: "LoadBalancer Service with empty clusterIPs",
			doc:  `{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "n"}, "spec": {"type": "LoadBalancer", "clusterIP": "", "clusterIPs": []}}`,
			want: "service n/x: type LoadBalancer without spec.clusterIP: give the address its name answers with, or clusterIP: None for a headless Service"},
		{name: "EndpointSlice address",
			doc:  `{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "s", "namespace": "n"}, "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0"]}]}`,
			want: `endpointslice n/s: address "10.0.0" is not an IP address`},
		{name: "ServiceEntry resolution",
			doc:  `{"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "se", "namespace": "n"}, "spec": {"hosts": ["a.example"], "resolution": "MAGIC"}}`,
			want: `serviceentry n/se: resolution "MAGIC" is none of NONE, STATIC, DNS, DNS_ROUND_ROBIN, DYNAMIC_DNS`},
		{name: "Pod IP",
			doc:  `{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "n"}, "spec": {"containers": []}, "status": {"podIP": "x"}}`,
			want: `pod n/p: podIP "x" is not an IP address`},
		// netip keeps an IPv6 zone; the API server refuses one, and no
		// answer can carry it (a ServiceEntry's is skipped: see
		// TestZonedServiceEntryAddressIsSkipped).
		{name: "Service clusterIP with a zone",
			doc:  `{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "n"}, "spec": {"clusterIP": "fe80::1%eth0"}}`,
			want: `service n/x: clusterIP "fe80::1%eth0" is not an IP address: an IPv6 zone (%eth0) is not allowed`},
		{name: "Pod nameserver with a zone",
			doc:  `{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "n"}, "spec": {"containers": [], "dnsConfig": {"nameservers": ["fe80::53%eth0"]}}}`,
			want: `pod n/p: dnsConfig nameserver "fe80::53%eth0" is not an IP address: an IPv6 zone (%eth0) is not allowed`},
		{name: "ServiceEntry host that is the root",
			doc:  `{"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "se", "namespace": "n"}, "spec": {"hosts": ["a.example", "."]}}`,
			want: `serviceentry n/se: host "." is not a valid DNS name: it is the root, no host`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			switch o := decode(t, tt.doc).(type) {
			case *Service:
				_, err = o.Model()
			case *EndpointSlice:
				_, err = o.Model()
			case *ServiceEntry:
				_, err = o.Model()
			case *Pod:
				_, err = o.Model()
			}
			if err == nil || err.Error() != tt.want {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestPortsPastTheRangeAreLeftOut: a port number outside 1-65535 (the API
// server does not check an EndpointSlice's, nor a ServiceEntry's under a
// CRD without its rules and no webhook) is left out of a watched object,
// the rest of it kept: before, it was served wrapped around (70000 as 4464,
// -1 as 65535), or as 0. So is an EndpointSlice port without a number
// (every port): it was an SRV record of port 0.
func TestPortsPastTheRangeAreLeftOut(t *testing.T) {
	http := model.Port{Name: "http", Protocol: "TCP", Port: 80}
	tests := []struct {
		name, doc string
	}{
		{name: "Service",
			doc: `{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "n"}, "spec": {"clusterIP": "10.96.0.1",
				"ports": [{"name": "big", "port": 70000}, {"name": "http", "port": 80}, {"name": "neg", "port": -1}]}}`},
		{name: "EndpointSlice",
			doc: `{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "s", "namespace": "n"}, "addressType": "IPv4",
				"ports": [{"name": "big", "port": 70000}, {"name": "http", "port": 80}, {"name": "neg", "port": -1}, {"name": "zero", "port": 0}, {"name": "any"}]}`},
		{name: "ServiceEntry",
			doc: `{"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "se", "namespace": "n"}, "spec": {"hosts": ["a.example"],
				"ports": [{"name": "big", "number": 70000, "protocol": "TCP"}, {"name": "http", "number": 80, "protocol": "tcp"}, {"name": "zero", "number": 0, "protocol": "TCP"}]}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []model.Port
			var err error
			switch o := decode(t, tt.doc).(type) {
			case *Service:
				m, e := o.Model()
				got, err = m.Ports, e
			case *EndpointSlice:
				m, e := o.Model()
				got, err = m.Ports, e
			case *ServiceEntry:
				m, e := o.Model()
				got, err = m.Ports, e
			}
			if err != nil {
				t.Fatalf("err = %v: the object must be kept", err)
			}
			if !slices.Equal(got, []model.Port{http}) {
				t.Errorf("ports %+v, want only %+v", got, http)
			}
		})
	}
}

// TestStatusAddressesAreSkipped: status has no schema, so anyone who may
// write the status subresource can put anything in status.addresses. What
// is not a host's address is skipped, like istiod does, and named in one
// warning; the ServiceEntry keeps its spec.addresses and the rest of its
// status. A list holding an entry with a status.addresses of another
// shape still decodes: before, it failed, and with it every ServiceEntry.
func TestStatusAddressesAreSkipped(t *testing.T) {
	const head = `{"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "se", "namespace": "n"}, "spec": {"hosts": ["a.example"], "addresses": ["198.51.100.1"]}, `
	good := model.HostAddress{Host: "a.example", Address: netip.MustParseAddr("240.240.0.1")}
	tests := []struct {
		name, status string
		want         []model.HostAddress
		skipped      string
	}{
		{name: "values",
			status:  `{"addresses": [{"value": "nope", "host": "a.example"}, {"value": "240.240.0.1", "host": "a.example"}, {"value": ""}]}`,
			want:    []model.HostAddress{good},
			skipped: `serviceentry n/se: skipped in status.addresses: [0] value "nope" is not an IP address, [2] value "" is not an IP address`},
		{name: "entries of other shapes",
			status:  `{"addresses": ["240.240.0.2", {"value": 7}, null, [1], {"value": "240.240.0.1", "host": "a.example"}, {"Value": "240.240.0.3"}]}`,
			want:    []model.HostAddress{good},
			skipped: `serviceentry n/se: skipped in status.addresses: [0] is not {value, host} strings, [1] is not {value, host} strings, [2] value "" is not an IP address and 2 more`},
		{name: "a string", status: `{"addresses": "x"}`, skipped: "serviceentry n/se: status.addresses is not a list: skipped"},
		{name: "an object", status: `{"addresses": {"value": "240.240.0.1"}}`, skipped: "serviceentry n/se: status.addresses is not a list: skipped"},
		{name: "null", status: `{"addresses": null}`},
		{name: "none", status: `{"conditions": []}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := head + `"status": ` + tt.status + `}`
			se := decode(t, doc).(*ServiceEntry)
			got, skipped, err := se.ModelSkipping()
			if err != nil {
				t.Fatalf("err = %v: status must never fail the ServiceEntry", err)
			}
			if !slices.Equal(got.Addresses, []netip.Addr{netip.MustParseAddr("198.51.100.1")}) {
				t.Errorf("addresses %v, want spec.addresses", got.Addresses)
			}
			if !slices.Equal(got.StatusAddresses, tt.want) {
				t.Errorf("status addresses %v, want %v", got.StatusAddresses, tt.want)
			}
			if g := fmt.Sprint(skipped); (skipped == nil) != (tt.skipped == "") || (skipped != nil && g != tt.skipped) {
				t.Errorf("skipped = %v, want %q", skipped, tt.skipped)
			}
			if m, err := se.Model(); err != nil || !reflect.DeepEqual(m, got) {
				t.Errorf("Model() = %+v, %v; want ModelSkipping's, nil", m, err)
			}
			list := decode(t, `{"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntryList", "metadata": {}, "items": [`+doc+`]}`).(*ServiceEntryList)
			if len(list.Items) != 1 {
				t.Errorf("the list decoded into %d items, want 1", len(list.Items))
			}
			// A copy (which compacts the raw status) reduces the same.
			if m, sk, err := se.DeepCopyObject().(*ServiceEntry).ModelSkipping(); err != nil || !reflect.DeepEqual(m, got) || fmt.Sprint(sk) != fmt.Sprint(skipped) {
				t.Errorf("the copy reduces to %+v, %v, %v", m, sk, err)
			}
		})
	}
}

// TestZonedServiceEntryAddressIsSkipped: Istio's validation of
// spec.addresses (netip.ParseAddr, a CRD without a pattern) accepts an
// IPv6 zone, which no answer can carry. That address is skipped and named
// in the warning; the ServiceEntry is served with its other addresses.
// (Before, it was an error, and a watch left out the whole ServiceEntry.)
func TestZonedServiceEntryAddressIsSkipped(t *testing.T) {
	se := decode(t, `{"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "se", "namespace": "n"},
		"spec": {"hosts": ["a.example"], "addresses": ["fe80::1%eth0", "2001:db8::1"]},
		"status": {"addresses": [{"value": "nope"}]}}`).(*ServiceEntry)
	got, skipped, err := se.ModelSkipping()
	if err != nil {
		t.Fatalf("err = %v: the ServiceEntry must be served", err)
	}
	if !slices.Equal(got.Hosts, []string{"a.example"}) || !slices.Equal(got.Addresses, []netip.Addr{netip.MustParseAddr("2001:db8::1")}) {
		t.Errorf("hosts %v, addresses %v; want a.example with 2001:db8::1", got.Hosts, got.Addresses)
	}
	want := `serviceentry n/se: skipped in spec.addresses: "fe80::1%eth0" (an IPv6 zone, which no answer can carry); ` +
		`skipped in status.addresses: [0] value "nope" is not an IP address`
	if fmt.Sprint(skipped) != want {
		t.Errorf("skipped = %v, want %q", skipped, want)
	}
	if m, err := se.Model(); err != nil || !reflect.DeepEqual(m, got) {
		t.Errorf("Model() = %+v, %v; want ModelSkipping's, nil", m, err)
	}
}

// TestClientGoReadsMetadata checks what client-go's reflector reads of an
// object (meta.Accessor) and of a list (meta.ListAccessor, ExtractList),
// including the bookmark that ends a watch's initial events.
func TestClientGoReadsMetadata(t *testing.T) {
	bookmark := decode(t, `{"apiVersion": "v1", "kind": "Service", "metadata": {"resourceVersion": "42",
		"annotations": {"k8s.io/initial-events-end": "true"}}}`)
	m, err := meta.Accessor(bookmark)
	if err != nil {
		t.Fatal(err)
	}
	if m.GetResourceVersion() != "42" || m.GetAnnotations()[metav1.InitialEventsAnnotationKey] != "true" {
		t.Errorf("bookmark reads as resourceVersion %q, annotations %v", m.GetResourceVersion(), m.GetAnnotations())
	}

	list := decode(t, `{"apiVersion": "v1", "kind": "ServiceList", "metadata": {"resourceVersion": "9", "continue": "next"},
		"items": [{"metadata": {"name": "a", "namespace": "n", "resourceVersion": "8"}}, {"metadata": {"name": "b", "namespace": "n"}}]}`)
	lm, err := meta.ListAccessor(list)
	if err != nil {
		t.Fatal(err)
	}
	items, err := meta.ExtractListWithAlloc(list)
	if err != nil {
		t.Fatal(err)
	}
	if lm.GetResourceVersion() != "9" || lm.GetContinue() != "next" || len(items) != 2 {
		t.Fatalf("list reads as resourceVersion %q, continue %q, %d items", lm.GetResourceVersion(), lm.GetContinue(), len(items))
	}
	a, err := meta.Accessor(items[0])
	if err != nil || a.GetNamespace() != "n" || a.GetName() != "a" || a.GetResourceVersion() != "8" {
		t.Errorf("first item reads as %v/%v@%v (%v)", a.GetNamespace(), a.GetName(), a.GetResourceVersion(), err)
	}
	if c := items[1].DeepCopyObject(); !reflect.DeepEqual(c, items[1]) || c == items[1] {
		t.Errorf("DeepCopyObject = %+v, want an equal copy of %+v", c, items[1])
	}
	if strings.Contains(reflect.TypeOf(items[0]).String(), "Unstructured") {
		t.Errorf("items decode as %T", items[0])
	}
}

// TestMetaOfMaps checks that LabelsOf and AnnotationsOf, which the manifest
// source uses, pick what a watch decodes from the same metadata: every key
// the fields name, exactly, and no other.
func TestMetaOfMaps(t *testing.T) {
	keys := func(v any) (exact, other map[string]string) {
		exact, other = map[string]string{"unread": "x"}, map[string]string{"unread": "x"}
		typ := reflect.TypeOf(v)
		for i := range typ.NumField() {
			key, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
			exact[key] = "v-" + key
			other[strings.ToUpper(key)] = "v-" + key
		}
		return exact, other
	}
	labels, otherLabels := keys(Labels{})
	annotations, otherAnnotations := keys(Annotations{})
	for _, tt := range []struct {
		name                string
		labels, annotations map[string]string
		wantAll             bool
	}{
		{name: "exact keys", labels: labels, annotations: annotations, wantAll: true},
		{name: "keys in another case", labels: otherLabels, annotations: otherAnnotations},
	} {
		t.Run(tt.name, func(t *testing.T) {
			doc, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Pod",
				"metadata": map[string]any{"name": "p", "labels": tt.labels, "annotations": tt.annotations}})
			if err != nil {
				t.Fatal(err)
			}
			watched := decode(t, string(doc)).(*Pod)
			got := ObjectMeta{Name: "p", Labels: LabelsOf(tt.labels), Annotations: AnnotationsOf(tt.annotations)}
			if !reflect.DeepEqual(got, watched.ObjectMeta) {
				g, _ := json.Marshal(got) // shows the values, not the pointers
				w, _ := json.Marshal(watched.ObjectMeta)
				t.Errorf("from maps %s\nwatched   %s", g, w)
			}
			for _, v := range []any{got.Labels, got.Annotations} {
				s := reflect.ValueOf(v)
				for i := range s.NumField() {
					if set := !s.Field(i).IsNil(); set != tt.wantAll {
						t.Errorf("%s.%s set = %v, want %v", s.Type().Name(), s.Type().Field(i).Name, set, tt.wantAll)
					}
				}
			}
		})
	}
}

// TestTagsAreTheModelsKeys: the JSON tags that decode labels and
// annotations are the keys package model names, so the two cannot drift
// apart (the one key that is the API's own excepted).
func TestTagsAreTheModelsKeys(t *testing.T) {
	tags := func(v any) []string {
		var keys []string
		typ := reflect.TypeOf(v)
		for i := range typ.NumField() {
			key, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
			if key != "k8s.io/initial-events-end" {
				keys = append(keys, key)
			}
		}
		slices.Sort(keys)
		return keys
	}
	want := func(keys ...string) []string { slices.Sort(keys); return keys }
	if got, w := tags(Labels{}), want(model.LabelDataplaneMode, model.LabelGatewayManaged, model.LabelEnableAutoallocate, model.LabelIstioRev, model.LabelServiceName, model.LabelApp); !slices.Equal(got, w) {
		t.Errorf("label tags %q, model's keys %q", got, w)
	}
	if got, w := tags(Annotations{}), want(model.AnnotationDNSCapture, model.AnnotationIstioDNSCapture, model.AnnotationSidecarStatus,
		model.AnnotationAmbientRedirection, model.AnnotationIstioRev); !slices.Equal(got, w) {
		t.Errorf("annotation tags %q, model's keys %q", got, w)
	}
}
