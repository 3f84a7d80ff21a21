//go:build linux

package agent_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// Two pods on the host's network share the node's IP (127.0.0.2 here), in
// two namespaces; a pod of its own (127.0.0.3) is in "zeta", which has a
// Service and a ServiceEntry exported to itself only. (zeta's host-network
// pod sorts last: the registry once gave the node's IP its view.)
const hostNetworkManifests = `apiVersion: v1
kind: Namespace
metadata: {name: zeta}
---
apiVersion: v1
kind: Namespace
metadata: {name: alpha}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: zeta}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: zeta}
spec:
  hosts: [private.internal]
  addresses: [198.51.100.7]
  exportTo: ["."]
  ports: [{name: http, number: 80, protocol: HTTP}]
---
apiVersion: v1
kind: Pod
metadata: {name: node-agent, namespace: zeta}
spec: {hostNetwork: true, containers: [{name: c, image: x}]}
status: {podIP: 127.0.0.2, podIPs: [{ip: 127.0.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: exporter, namespace: alpha}
spec: {hostNetwork: true, containers: [{name: c, image: x}]}
status: {podIP: 127.0.0.2, podIPs: [{ip: 127.0.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: zeta}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 127.0.0.3, podIPs: [{ip: 127.0.0.3}]}
`

// TestHostNetworkPodsGetTheOutsideView: queries from the node's IP get the
// view of a client outside every namespace, whichever host-network pods
// claim that IP: no exportTo "." names, no short Service names. The pod with
// an IP of its own still gets its namespace's view.
func TestHostNetworkPodsGetTheOutsideView(t *testing.T) {
	a := agenttest.Start(t, agent.Config{Source: configdir.New(manifestsDir(t, hostNetworkManifests)),
		Upstreams: []netip.AddrPort{markerUpstream(t)}})

	node, app := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
	for _, tc := range []struct {
		from       netip.Addr
		name, want string
	}{
		{app, "private.internal", "198.51.100.7"},
		{app, "web", "10.96.0.10"},
		{node, "private.internal", forwarded}, // not visible: forwarded
		{node, "web", forwarded},
		{node, "web.zeta.svc.cluster.local", "10.96.0.10"}, // the full name is everyone's
	} {
		if got := a.Addrs(t, tc.from, tc.name, dns.TypeA); !slices.Equal(got, []string{tc.want}) {
			t.Errorf("%s from %s = %v, want %s", tc.name, tc.from, got, tc.want)
		}
	}
}

// manifestsDir is a --config-dir holding manifests.
func manifestsDir(t *testing.T, manifests string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "manifests.yaml"), []byte(manifests), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// forwarded is what markerUpstream answers every A query with: the
// answer to a name the agent forwards.
const forwarded = "203.0.113.99"

// markerUpstream starts an upstream that answers every query with
// forwarded (AAAA 2001:db8::99).
func markerUpstream(t *testing.T) netip.AddrPort {
	t.Helper()
	return dnstest.Start(t, "127.0.0.1:0", dnstest.Marker(netip.MustParseAddr(forwarded), netip.MustParseAddr("2001:db8::99"))).Addr
}
