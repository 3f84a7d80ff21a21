//go:build linux

package agent_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// A bank tenant's ServiceEntry without exportTo, one exported everywhere,
// and a Service; a pod in the bank's namespace (127.0.0.3) and one in
// another tenant's (127.0.0.4).
const exportToManifests = `apiVersion: v1
kind: Namespace
metadata: {name: bank}
---
apiVersion: v1
kind: Namespace
metadata: {name: tenant}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: login, namespace: bank}
spec:
  hosts: [login.example-bank.com]
  addresses: [192.0.2.66]
  ports: [{name: https, number: 443, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: public, namespace: bank}
spec:
  hosts: [www.example-bank.com]
  addresses: [192.0.2.67]
  exportTo: ["*"]
  ports: [{name: https, number: 443, protocol: TLS}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: bank}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: bank}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 127.0.0.3, podIPs: [{ip: 127.0.0.3}]}
---
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: tenant}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 127.0.0.4, podIPs: [{ip: 127.0.0.4}]}
`

// TestDefaultServiceExportTo: a ServiceEntry without exportTo is seen where
// --default-service-export-to (Istio's MeshConfig defaultServiceExportTo)
// says, as istiod scopes it; elsewhere its host is forwarded. A mesh that
// keeps tenants apart with ["."] keeps the bank's login.example-bank.com
// from the other tenant's pods. An explicit exportTo still wins, and
// Services are seen everywhere whatever the default. Before: the default
// was ignored, and the tenant got the bank's 192.0.2.66.
func TestDefaultServiceExportTo(t *testing.T) {
	dir, up := manifestsDir(t, exportToManifests), markerUpstream(t)
	bank, tenant := netip.MustParseAddr("127.0.0.3"), netip.MustParseAddr("127.0.0.4")

	for _, tc := range []struct {
		defaults []string
		// login from the bank's pod and the tenant's.
		loginBank, loginTenant string
	}{
		{nil, "192.0.2.66", "192.0.2.66"}, // Istio's default: "*"
		{[]string{"*"}, "192.0.2.66", "192.0.2.66"},
		{[]string{"."}, "192.0.2.66", forwarded},
		{[]string{"~"}, forwarded, forwarded},
		{[]string{"tenant"}, forwarded, "192.0.2.66"},
		{[]string{".", "tenant"}, "192.0.2.66", "192.0.2.66"},
	} {
		t.Run(strings.Join(tc.defaults, ","), func(t *testing.T) {
			a := agenttest.Start(t, agent.Config{Source: configdir.New(dir), Upstreams: []netip.AddrPort{up},
				DefaultExportTo: tc.defaults})
			for _, q := range []struct {
				from       netip.Addr
				name, want string
			}{
				{bank, "login.example-bank.com", tc.loginBank},
				{tenant, "login.example-bank.com", tc.loginTenant},
				{bank, "www.example-bank.com", "192.0.2.67"},
				{tenant, "www.example-bank.com", "192.0.2.67"},
				{tenant, "web.bank.svc.cluster.local", "10.96.0.10"},
				{tenant, "web.bank", "10.96.0.10"},
			} {
				if got := a.Addrs(t, q.from, q.name, dns.TypeA); !slices.Equal(got, []string{q.want}) {
					t.Errorf("%s from %s = %v, want %s", q.name, q.from, got, q.want)
				}
			}
		})
	}
}

// A namespace named like a top-level domain, with a Service named like a
// registrable name under it.
const tldManifests = `apiVersion: v1
kind: Namespace
metadata: {name: com}
---
apiVersion: v1
kind: Namespace
metadata: {name: tenant}
---
apiVersion: v1
kind: Service
metadata: {name: example-bank, namespace: com}
spec: {clusterIP: 10.96.0.20, ports: [{port: 443}]}
---
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: tenant}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 127.0.0.4, podIPs: [{ip: 127.0.0.4}]}
`

// TestNamespaceNamedLikeTLD pins a deliberate behaviour: ztdns answers a
// Service's short forms <svc>.<ns> and <svc>.<ns>.svc as absolute names,
// as Istio's DNS proxy does (generateAltHosts), so whoever may create a
// namespace "com" with a Service "example-bank" answers example-bank.com.
// for every pod, authoritatively, with its ClusterIP (kube-dns reaches it
// only through the search list and forwards the absolute name). Services
// are seen from every namespace whatever --default-service-export-to says.
// README: Differences from kube-dns and Istio. Change this test only with
// that text.
func TestNamespaceNamedLikeTLD(t *testing.T) {
	dir, up := manifestsDir(t, tldManifests), markerUpstream(t)
	tenant := netip.MustParseAddr("127.0.0.4")
	for _, defaults := range [][]string{nil, {"."}} {
		t.Run(strings.Join(defaults, ","), func(t *testing.T) {
			a := agenttest.Start(t, agent.Config{Source: configdir.New(dir), Upstreams: []netip.AddrPort{up},
				DefaultExportTo: defaults})
			for _, name := range []string{"example-bank.com.", "example-bank.com.svc.", "example-bank.com.svc.cluster.local."} {
				r := a.Query(t, "udp", tenant, name, dns.TypeA, false)
				if got := agenttest.RRText(r.Answer); !r.Authoritative || !slices.Equal(got, []string{name + " A 10.96.0.20"}) {
					t.Errorf("%s from tenant: authoritative %v, %q; want ztdns's answer, the Service's 10.96.0.20", name, r.Authoritative, got)
				}
			}
		})
	}
}
