package kubetest

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/testenv"
)

// corednsScript builds and caches CoreDNS.
const corednsScript = "scripts/build-coredns.sh"

// corednsBuildBudget is the test time a cold build of CoreDNS needs (about
// 2 minutes on 2 cores), with a margin.
const corednsBuildBudget = 6 * time.Minute

// ClusterDomain is the cluster domain CoreDNS serves (the agent's default).
const ClusterDomain = "cluster.local"

// KubeadmCorefile is the kube-dns Corefile kubeadm writes (cmd/kubeadm/
// app/phases/addons/dns/manifests.go), as kind has it too, with the
// kubernetes plugin told options (kubeadm's own: "ttl 30").
func KubeadmCorefile(options ...string) string {
	return `.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ` + strings.Join(options, "\n       ") + `
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    loop
    reload
    loadbalance
}
`
}

// CoreDNSTTL is the TTL CoreDNS answers with: the agent's default, so that
// answers compare record for record.
const CoreDNSTTL = 30

// CoreDNSBinary returns the CoreDNS binary scripts/build-coredns.sh
// caches; when it is missing it is built first if the test's deadline
// leaves time, otherwise the test fails under CI=true and is skipped
// outside CI.
func CoreDNSBinary(tb testing.TB) string {
	tb.Helper()
	dir, err := cachedBuild(tb, corednsScript, "coredns", "about 2 minutes", corednsBuildBudget)
	requireBuilt(tb, err)
	return filepath.Join(dir, "coredns")
}

// StartCoreDNS runs CoreDNS, whose kubernetes plugin is the reference
// implementation of the Kubernetes DNS specification, against the Env's API
// server, as a cluster's kube-dns: it serves the cluster domain and the
// reverse zones (pods disabled, TTL CoreDNSTTL) and forwards every other
// name to upstream. It returns once CoreDNS answers from a synced view, on
// a free loopback port (UDP and TCP), and stops it when the test ends.
//
// The binary comes from scripts/build-coredns.sh; when it is missing it is
// built first if the test's deadline leaves time, otherwise the test fails
// under CI=true and is skipped outside CI.
func (e *Env) StartCoreDNS(upstream netip.AddrPort) netip.AddrPort {
	e.tb.Helper()
	return e.StartCoreDNSWith(upstream, fmt.Sprintf("pods disabled\n\t\tttl %d", CoreDNSTTL))
}

// StartCoreDNSWith is StartCoreDNS with the kubernetes plugin told
// options (lines of its block, the kubeconfig aside), as a cluster's
// kube-dns Corefile may tell it.
func (e *Env) StartCoreDNSWith(upstream netip.AddrPort, options string) netip.AddrPort {
	e.tb.Helper()
	bin := CoreDNSBinary(e.tb)
	// CoreDNS binds the port for UDP and TCP: both must be free.
	addr := testenv.FreePort(e.tb)
	corefile := filepath.Join(e.dir, fmt.Sprintf("Corefile-%d", addr.Port()))
	config := fmt.Sprintf(`.:%d {
	bind 127.0.0.1
	errors
	kubernetes %s in-addr.arpa ip6.arpa {
		kubeconfig %s
		%s
	}
	forward . %s
}
`, addr.Port(), ClusterDomain, e.Kubeconfig, options, upstream)
	if err := os.WriteFile(corefile, []byte(config), 0o644); err != nil {
		e.tb.Fatalf("kubetest: write Corefile: %v", err)
	}
	p, err := startProcess("coredns", bin, []string{"-conf", corefile}, filepath.Join(e.dir, fmt.Sprintf("coredns-%d.log", addr.Port())))
	if err != nil {
		e.tb.Fatalf("kubetest: %v", err)
	}
	e.tb.Cleanup(func() {
		if err := p.kill(); err != nil {
			e.tb.Errorf("kubetest: stop coredns: %v", err)
		}
	})
	// Synced: the API server's own Service answers (before that, names in
	// the zone get SERVFAIL).
	client := &dns.Client{Timeout: time.Second}
	q := new(dns.Msg)
	q.SetQuestion("kubernetes.default.svc."+ClusterDomain+".", dns.TypeA)
	err = waitReady(p, func(context.Context) bool {
		resp, _, err := client.Exchange(q, addr.String())
		return err == nil && resp.Rcode == dns.RcodeSuccess && len(resp.Answer) > 0
	})
	if err != nil {
		e.tb.Fatalf("kubetest: %v", err)
	}
	e.tb.Logf("kubetest: coredns serving on %s", addr)
	return addr
}
