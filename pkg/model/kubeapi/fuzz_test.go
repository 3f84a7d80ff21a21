package kubeapi_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/model/kubeapi"
	"github.com/ztdns/ztdns/pkg/model/typed"
)

// FuzzServiceEntryStatus feeds a ServiceEntry's status of any shape (it
// has no schema: whoever may write the status subresource, or a manifest,
// puts anything there) to both readers of it: a watch's or list's decoding
// (kubeapi), for a status that is a JSON object as the API server keeps
// it, and the manifest source's typed.FromServiceEntry, for any bytes. The
// status never fails the ServiceEntry nor the list that holds it, the
// spec's addresses stay, only valid, unmapped IP addresses come out of it,
// and both readers agree on what they take and skip.
func FuzzServiceEntryStatus(f *testing.F) {
	for _, seed := range []string{
		// TestStatusAddressesAreSkipped's and TestFromServiceEntry's cases,
		// the kube source's TestBadStatusAddresses, and statuses that are
		// not objects.
		`{"addresses": [{"value": "nope", "host": "a.example"}, {"value": "240.240.0.1", "host": "a.example"}, {"value": ""}]}`,
		`{"addresses": ["240.240.0.2", {"value": 7}, null, [1], {"value": "240.240.0.1", "host": "a.example"}, {"Value": "240.240.0.3"}]}`,
		`{"addresses": "x"}`,
		`{"addresses": {"value": "240.240.0.1"}}`,
		`{"addresses": null}`,
		`{"conditions": []}`,
		`{"addresses": [{"value": "240.240.0.1", "host": "Api.Example.com"}], "conditions": [{"type": "Reconciled", "status": "True"}]}`,
		`{"addresses": [{"host": "auto.internal", "value": "240.240.0.1"}], "conditions": []}`,
		`{"addresses": [{"value": "nope", "host": "good.example"}, {"value": "240.240.0.9", "host": "good.example"}]}`,
		`{"addresses": [{"value": "::ffff:240.240.0.1", "host": "a.example."}, {"value": "2001:2::1", "host": "a.example"}, {"value": "fe80::1%eth0"}]}`,
		`"x"`,
		`[]`,
		`null`,
		``,
	} {
		f.Add([]byte(seed))
	}
	s := runtime.NewScheme()
	if err := kubeapi.AddToScheme(s); err != nil {
		f.Fatal(err)
	}
	decoder := serializer.NewCodecFactory(s).UniversalDeserializer()
	const (
		head = `{"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "se", "namespace": "n"}, "spec": {"hosts": ["a.example"], "addresses": ["198.51.100.1"]}, "status": `
		good = `{"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "good", "namespace": "n"}, "spec": {"hosts": ["b.example"]}}`
	)
	specAddrs := []netip.Addr{netip.MustParseAddr("198.51.100.1")}
	meta := metav1.ObjectMeta{Name: "se", Namespace: "n"}
	spec := &networkingv1alpha3.ServiceEntry{Hosts: []string{"a.example"}, Addresses: []string{"198.51.100.1"}}

	check := func(t *testing.T, path string, se model.ServiceEntry, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: err = %v: the status must never fail the ServiceEntry", path, err)
		}
		if !slices.Equal(se.Addresses, specAddrs) {
			t.Fatalf("%s: addresses %v, want spec.addresses %v", path, se.Addresses, specAddrs)
		}
		for _, a := range se.StatusAddresses {
			if !a.Address.IsValid() || a.Address.Is4In6() {
				t.Fatalf("%s: status address %#v of host %q is no valid, unmapped IP address", path, a.Address, a.Host)
			}
		}
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		fromManifest, skipped, err := typed.FromServiceEntry(&meta, spec, data)
		check(t, "manifest", fromManifest, err)

		var object map[string]json.RawMessage
		if json.Unmarshal(data, &object) != nil || object == nil {
			return // the API server keeps only an object as the status
		}
		doc := head + string(data) + "}"
		obj, _, err := decoder.Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("decoding a ServiceEntry with the status: %v", err)
		}
		fromWatch, skippedWatch, err := obj.(*kubeapi.ServiceEntry).ModelSkipping()
		check(t, "watch", fromWatch, err)
		if !slices.Equal(fromWatch.StatusAddresses, fromManifest.StatusAddresses) || fmt.Sprint(skippedWatch) != fmt.Sprint(skipped) {
			t.Fatalf("the watch takes %v (skipped: %v), the manifest source %v (skipped: %v)",
				fromWatch.StatusAddresses, skippedWatch, fromManifest.StatusAddresses, skipped)
		}
		list, _, err := decoder.Decode([]byte(`{"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntryList", "metadata": {}, "items": [`+doc+`, `+good+`]}`), nil, nil)
		if err != nil {
			t.Fatalf("decoding a list holding the ServiceEntry: %v", err)
		}
		if n := len(list.(*kubeapi.ServiceEntryList).Items); n != 2 {
			t.Fatalf("the list decoded into %d items, want 2", n)
		}
	})
}
