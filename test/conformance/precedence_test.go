package conformance

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

// TestHostPrecedence: when several objects claim one host, a pod gets the
// addresses of the one object ztunnel, ambient mode's DNS proxy and
// dataplane, would pick for it, so the address a pod is handed is one
// ztunnel routes. istiod keeps one object per namespace for a host (a
// Kubernetes Service over ServiceEntries, else the oldest ServiceEntry) and
// marks one canonical (the Service, else the oldest ServiceEntry that
// MeshConfig's serviceEntryVisibility does not keep to its namespace; it
// reads no exportTo, which ztdns applies first, as the sidecar proxy
// does); ztunnel answers a pod with its own
// namespace's object, else the canonical one (istio/istio
// pilot/pkg/serviceregistry/ambient/services.go selectWorkloadServices;
// istio/ztunnel src/state/service.rs find_best_match). The sidecar proxy
// (pkg/dns) merges the addresses of ServiceEntries naming one host instead;
// the README's "Differences from kube-dns and Istio" says why ztdns does not.
func TestHostPrecedence(t *testing.T) {
	r := startAgent(t, agentOpts{}, "testdata/precedence")
	var (
		fromShop  = netip.MustParseAddr("127.0.0.21")
		fromMesh  = netip.MustParseAddr("127.0.0.22")
		fromExt   = netip.MustParseAddr("127.0.0.23")
		fromOther = netip.MustParseAddr("127.0.0.24")
	)
	const cart, api = "cart.shop.svc.cluster.local.", "api.example.test."
	cases := []struct {
		name  string
		from  netip.Addr
		qname string
		want  string
	}{
		{"Service beats an older ServiceEntry in its own namespace", fromShop, cart, "10.96.20.1"},
		{"a ServiceEntry in the asker's namespace beats another namespace's Service", fromMesh, cart, "198.51.100.50"},
		{"elsewhere the Service is canonical", fromOther, cart, "10.96.20.1"},
		{"the Service's short form is the Service's", fromShop, "cart.", "10.96.20.1"},
		{"the oldest ServiceEntry of the asker's namespace", fromMesh, api, "198.51.100.60"},
		{"the asker's namespace's ServiceEntry beats an older one elsewhere", fromExt, api, "198.51.100.61"},
		{"one exported to its own namespace answers there", fromOther, api, "198.51.100.63"},
		{"elsewhere the oldest visible ServiceEntry", fromShop, api, "198.51.100.60"},
	}
	for _, proto := range protocols {
		for _, c := range cases {
			t.Run(proto+"/"+c.name, func(t *testing.T) {
				m := r.query(t, proto, c.from, c.qname, dns.TypeA, false)
				want := []string{c.qname + " A " + c.want}
				if got := rrText(m.Answer); m.Rcode != dns.RcodeSuccess || !slices.Equal(got, want) {
					t.Errorf("%s A from %s: rcode %s, answer %q; want %q", c.qname, c.from,
						dns.RcodeToString[m.Rcode], got, want)
				}
			})
		}
	}
}
