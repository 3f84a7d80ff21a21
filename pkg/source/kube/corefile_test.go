package kube

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/pkg/model"
)

// kubeadmCorefile is the Corefile kubeadm writes, as kind has it too.
var kubeadmCorefile = kubetest.KubeadmCorefile("ttl 30")

// eksCorefile is EKS's: no ttl line, CoreDNS's 5.
const eksCorefile = `.:53 {
    errors
    health {
        lameduck 5s
      }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
      pods insecure
      fallthrough in-addr.arpa ip6.arpa
    }
    prometheus :9153
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
}
`

// TestKubeDNSConfigOf reads what matters of Corefiles: the TTL of the
// kubernetes plugin serving the cluster domain, and the settings ztdns
// does not follow.
func TestKubeDNSConfigOf(t *testing.T) {
	for _, tc := range []struct {
		name, corefile, domain string
		served                 bool
		ttl                    uint32
		unfollowed             []string // each note's start
		err                    string
	}{
		{name: "kubeadm", corefile: kubeadmCorefile, served: true, ttl: 30},
		{name: "EKS, no ttl line", corefile: eksCorefile, served: true, ttl: 5},
		{name: "ttl 0", corefile: kubetest.KubeadmCorefile("ttl 0"), served: true, ttl: 0},
		{name: "ttl out of range", corefile: kubetest.KubeadmCorefile("ttl 3601"), err: `kubernetes: ttl "3601": want 0 to 3600`},
		{name: "another domain", corefile: kubeadmCorefile, domain: "corp.example", served: false, ttl: 5},
		{
			name: "options ztdns does not follow",
			corefile: `# a comment
.:53 {
    rewrite name regex (.*)\.cluster\.local {1}.svc.cluster.local
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       endpoint_pod_names
       ignore empty_service
       namespaces default team-a
       pods verified
       ttl 10 # seconds
    }
    template IN A example.org {
       answer "{{ .Name }} 60 IN A 127.0.0.1"
    }
    forward . 10.0.0.10
}`,
			served: true, ttl: 10,
			unfollowed: []string{"rewrite:", "kubernetes endpoint_pod_names:", "kubernetes ignore empty_service:", "kubernetes namespaces default team-a:"},
		},
		{
			name: "the cluster domain's own server block wins over .",
			corefile: `(snip) {
    log
}
cluster.local:53 {
    kubernetes {
        ttl 7
    }
}
.:53 {
    kubernetes cluster.local {
        ttl 60
    }
    template ANY ANY
}
.:5353 {
    kubernetes cluster.local
}`,
			served: true, ttl: 7,
		},
		{name: "unclosed", corefile: ".:53 {\n kubernetes cluster.local {\n ttl 5\n}\n", err: "a block is not closed: } missing"},
		{name: "unterminated quote", corefile: ".:53 {\n template IN A \"x\n}\n", err: "line 2: unterminated quote"},
		{name: "too large", corefile: strings.Repeat("#", maxCorefileBytes+1), err: "Corefile of 65537 bytes: ztdns reads at most 65536"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			blocks, err := parseCorefile(tc.corefile)
			var c kubeDNSConfig
			if err == nil {
				c, err = kubeDNSConfigOf(blocks, cmp.Or(tc.domain, "cluster.local"))
			}
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.served != tc.served || c.ttl != tc.ttl {
				t.Errorf("served %v, ttl %d; want %v, %d", c.served, c.ttl, tc.served, tc.ttl)
			}
			if len(c.unfollowed) != len(tc.unfollowed) || !slices.EqualFunc(c.unfollowed, tc.unfollowed, strings.HasPrefix) {
				t.Errorf("unfollowed:\n %s\nwant notes starting\n %s", strings.Join(c.unfollowed, "\n "), strings.Join(tc.unfollowed, "\n "))
			}
		})
	}
}

// TestKubeDNSCorefileForbidden: a ClusterRole without the rule for
// kube-dns's ConfigMap (a chart from before it) is no failure: the source
// syncs, stays healthy, delivers no kube-dns TTL, says "not read" in
// Errors() and once in its log (at info), and follows the Corefile once
// the rule is there.
func TestKubeDNSCorefileForbidden(t *testing.T) {
	env := kubetest.Start(t)
	env.SetKubeDNSCorefile(t.Context(), kubetest.KubeadmCorefile("ttl 5", "ignore empty_service"))
	rec := testForbiddenConfigMap(t, env, forbiddenConfigMap{
		what:   "kube-dns's Corefile",
		rule:   func(r PolicyRule) bool { return slices.Contains(r.ResourceNames, KubeDNSConfigMap) },
		note:   "kube-dns's Corefile kube-system/coredns not read (RBAC)",
		logged: "cannot read kube-dns's Corefile (RBAC): local answers keep the TTL of --ttl (30 s without it), and kube-dns's settings are not checked",
		refused: func(s *model.Snapshot) error {
			if s.KubeDNSTTL != 0 || s.KubeDNSFrom != "" {
				return fmt.Errorf("kube-dns TTL %d from %q, but the Corefile cannot be read", s.KubeDNSTTL, s.KubeDNSFrom)
			}
			return nil
		},
		followed: func(s *model.Snapshot) error {
			if s.KubeDNSTTL != 5 || s.KubeDNSFrom != "kube-system/coredns" {
				return fmt.Errorf("kube-dns TTL %d from %q, want 5 from kube-system/coredns", s.KubeDNSTTL, s.KubeDNSFrom)
			}
			return nil
		},
	})
	// The cluster has no istiod's mesh config, which Warnings() says too.
	var w []string
	for _, e := range rec.src.Warnings() {
		if strings.HasPrefix(e.Error(), "kube-dns's") {
			w = append(w, e.Error())
		}
	}
	if len(w) != 1 || !strings.HasPrefix(w[0], "kube-dns's Corefile kube-system/coredns: kubernetes ignore empty_service: ") {
		t.Errorf("Warnings() about kube-dns = %q, want ignore empty_service named", w)
	}
}
