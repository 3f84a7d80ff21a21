package configdir

import (
	"testing"

	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// TestHostWrittenBothWaysOwnsItsPTR: a ServiceEntry that names a host both
// as pods ask for it and otherwise (API.example.com) owns the PTR of its
// address as the older of two ServiceEntries listing it, whatever the order
// of its spec.hosts. It used to depend on that order: with the host written
// otherwise first, the newer ServiceEntry's host was answered.
func TestHostWrittenBothWaysOwnsItsPTR(t *testing.T) {
	for _, hosts := range []string{"[API.example.com, api.example.com]", "[api.example.com, API.example.com]"} {
		t.Run(hosts, func(t *testing.T) {
			_, got, errs := loadFiles(t, map[string]string{"entries.yaml": `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {hosts: ` + hosts + `, addresses: [198.51.100.9], resolution: STATIC}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: newer, namespace: shop, creationTimestamp: "2026-02-01T00:00:00Z"}
spec: {hosts: [newer.example.com], addresses: [198.51.100.9], resolution: STATIC}
`})
			wantErrors(t, errs, nil)
			tbl, warnings := table.Build(got, table.Options{Domain: table.DefaultDomain, TTL: table.DefaultTTL})
			if len(warnings) > 0 {
				t.Errorf("table warnings %q, want none", warnings)
			}
			for _, ns := range []string{"shop", "other"} {
				if e := tbl.Resolve("9.100.51.198.in-addr.arpa.", ns).Entry; e == nil || e.Name != "api.example.com." || e.Origin().Name != "api" {
					t.Errorf("PTR of 198.51.100.9 from %s: %+v, want api.example.com. of shop/api, the older", ns, e)
				}
			}
		})
	}
}
