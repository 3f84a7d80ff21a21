package table

import (
	"slices"
	"testing"

	"github.com/ztdns/ztdns/pkg/model"
)

// An ExternalName Service and a ServiceEntry naming it: istiod sends
// ztunnel no ExternalName Service, so ztunnel routes the ServiceEntry's
// address from every namespace, the Service's own included. A pod must get
// that address, not the CNAME that takes its traffic past the ServiceEntry.
// Alone, the ExternalName still answers its CNAME.
func TestExternalNameYieldsToServiceEntry(t *testing.T) {
	snap := &model.Snapshot{
		Services: []model.Service{
			{Namespace: "shop", Name: "foo", ExternalName: "foo.example.com"},
			{Namespace: "shop", Name: "bar", ExternalName: "bar.example.com"},
		},
		ServiceEntries: []model.ServiceEntry{
			{Namespace: "mesh", Name: "foo", Created: t0, Hosts: []string{"foo.shop.svc.cluster.local"},
				Addresses: addrs("198.51.100.70"), Resolution: "STATIC"},
		},
	}
	tbl, warnings := Build(snap, Options{})
	if len(warnings) > 0 {
		t.Fatal(warnings)
	}
	for _, ns := range []string{"shop", "mesh", "other", ""} {
		e := tbl.Resolve("foo.shop.svc.cluster.local.", ns).Entry
		if e == nil || e.Alias != "" || !slices.Equal(e.Addrs, addrs("198.51.100.70")) {
			t.Errorf("foo from %q: %+v, want the ServiceEntry's 198.51.100.70", ns, e)
		}
		if e := tbl.Resolve("bar.shop.svc.cluster.local.", ns).Entry; e == nil || e.Alias != "bar.example.com." {
			t.Errorf("bar from %q: %+v, want the CNAME to bar.example.com.", ns, e)
		}
	}
	if e := tbl.Resolve("foo.", "shop").Entry; e == nil || !slices.Equal(e.Addrs, addrs("198.51.100.70")) {
		t.Errorf("short form foo from shop: %+v, want the ServiceEntry", e)
	}
	// A ServiceEntry the asker cannot see leaves it the CNAME.
	snap.ServiceEntries[0].ExportTo = []string{"."}
	tbl, _ = Build(snap, Options{})
	if e := tbl.Resolve("foo.shop.svc.cluster.local.", "shop").Entry; e == nil || e.Alias != "foo.example.com." {
		t.Errorf("foo from shop, ServiceEntry exported to mesh only: %+v, want the CNAME", e)
	}
}
