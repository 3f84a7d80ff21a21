package kube

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/ztdns/ztdns/pkg/model/kubeapi"
	"github.com/ztdns/ztdns/pkg/source"
)

// The ConfigMap that holds kube-dns's Corefile, and its key: the name
// kubeadm, kind and EKS give CoreDNS's, in kube-system. A cluster whose
// kube-dns is not CoreDNS (GKE's kube-dns, configured by a kube-dns
// ConfigMap's stubDomains) has none: the source then follows nothing, and
// says so only in its log.
const (
	KubeDNSNamespace = "kube-system"
	KubeDNSConfigMap = "coredns"
	CorefileKey      = "Corefile"
)

// kubeDNSWhere names kube-dns's ConfigMap in Errors() and Warnings().
const kubeDNSWhere = KubeDNSNamespace + "/" + KubeDNSConfigMap

// DefaultClusterDomain is the cluster domain unless WithClusterDomain
// says otherwise.
const DefaultClusterDomain = "cluster.local"

// WithClusterDomain sets the cluster's DNS domain, whose server block the
// source reads in kube-dns's Corefile (default DefaultClusterDomain).
func WithClusterDomain(domain string) Option {
	return func(s *Source) {
		if domain != "" {
			s.clusterDomain = domain
		}
	}
}

// corefile is what the source keeps of kube-dns's ConfigMap.
type corefile struct {
	namespace, name string
	// missing is true when the ConfigMap has no Corefile key.
	missing bool
	cfg     kubeDNSConfig
	invalid string
}

// corefileOf reduces kube-dns's ConfigMap to what its Corefile says of
// domain. It never fails: a Corefile that does not parse is kept as such.
func corefileOf(domain string) func(kubeapi.Object) (corefile, error) {
	return func(o kubeapi.Object) (corefile, error) {
		cm := o.(*kubeapi.ConfigMap)
		out := corefile{namespace: cm.Namespace, name: cm.Name}
		text, ok := cm.Data[CorefileKey]
		if !ok {
			out.missing = true
			return out, nil
		}
		blocks, err := parseCorefile(text)
		if err == nil {
			out.cfg, err = kubeDNSConfigOf(blocks, domain)
		}
		if err != nil {
			out.invalid = err.Error()
		}
		return out, nil
	}
}

// ownTTL is the TTL of local answers when kube-dns's is not followed, as
// the messages below say it.
const ownTTL = "the TTL of --ttl (30 s without it)"

// kubeDNSForbidden is told whether kube-dns's ConfigMap may be read.
// Refused, the source follows nothing of it, as when it is absent, and
// says so in Errors() and once in its log (at info: a chart may leave the
// permission out on purpose); it asks again every forbiddenRetry.
func (r *run) kubeDNSForbidden() func(err error, kept bool) {
	var once sync.Once
	return func(err error, _ bool) {
		was := r.kubeDNSRefused.Swap(err != nil)
		if err == nil {
			if was {
				r.changed(kindKubeDNS)
			}
			return
		}
		once.Do(func() {
			r.log.Info("cannot read kube-dns's Corefile (RBAC): local answers keep "+ownTTL+", and kube-dns's settings are not checked",
				"namespace", KubeDNSNamespace, "configMap", KubeDNSConfigMap, "err", err)
		})
		if !was {
			r.changed(kindKubeDNS)
		}
	}
}

// followKubeDNS puts kube-dns's TTL into the next snapshot (KubeDNSTTL:
// none when the Corefile is absent, refused, does not parse, or has no
// kubernetes plugin for the cluster domain), what the source cannot follow
// into Warnings(), and why it follows none of it into Errors(). Each
// change of state is logged once.
func (r *run) followKubeDNS(cms []corefile) {
	where := kubeDNSWhere
	domain := r.src.clusterDomain
	var state string
	// notes say why the Corefile is not followed (Errors), warnings what
	// of it is not (Warnings).
	var notes, warnings []string
	ttl := uint32(0)
	switch {
	case r.kubeDNSRefused.Load():
		state = "forbidden"
		notes = []string{fmt.Sprintf("kube-dns's Corefile %s not read (RBAC): its settings are not checked, and local answers have "+ownTTL+"; asking again every %v",
			where, r.src.forbiddenRetry)}
	case len(cms) == 0 || cms[0].missing:
		state = "absent"
		if r.kubeDNSState != state {
			r.log.Info("kube-dns's Corefile is absent (kube-dns is not CoreDNS, or keeps it elsewhere): local answers have "+ownTTL,
				"namespace", KubeDNSNamespace, "configMap", KubeDNSConfigMap, "key", CorefileKey)
		}
	case cms[0].invalid != "":
		state = "invalid: " + cms[0].invalid
		notes = []string{fmt.Sprintf("kube-dns's Corefile %s does not parse (%s): its settings are not checked, and local answers have "+ownTTL, where, cms[0].invalid)}
		if r.kubeDNSState != state {
			r.log.Warn("kube-dns's Corefile does not parse: its settings are not checked, and local answers have "+ownTTL,
				"namespace", KubeDNSNamespace, "configMap", KubeDNSConfigMap, "err", cms[0].invalid)
		}
	case !cms[0].cfg.served:
		state = "unserved"
		notes = []string{fmt.Sprintf("kube-dns's Corefile %s has no kubernetes plugin serving %s on port 53: is --cluster-domain the cluster's? Local answers have "+ownTTL, where, domain)}
		if r.kubeDNSState != state {
			r.log.Warn("kube-dns's Corefile has no kubernetes plugin serving the cluster domain: local answers have "+ownTTL,
				"namespace", KubeDNSNamespace, "configMap", KubeDNSConfigMap, "clusterDomain", domain)
		}
	default:
		c := cms[0].cfg
		ttl = max(c.ttl, 1)
		if c.ttl == 0 {
			warnings = append(warnings, "kubernetes ttl 0: kube-dns's answers are not to be cached; ztdns's have TTL 1 (unless --ttl is given), the smallest it gives")
		}
		warnings = append(warnings, c.unfollowed...)
		state = fmt.Sprintf("ok: ttl %d; %s", c.ttl, strings.Join(warnings, "; "))
		if r.kubeDNSState != state {
			r.log.Info("read kube-dns's Corefile", "namespace", KubeDNSNamespace, "configMap", KubeDNSConfigMap,
				"clusterDomain", domain, "ttl", c.ttl)
			for _, w := range warnings {
				r.log.Warn("kube-dns's Corefile says what ztdns does not follow for the names it answers itself",
					"namespace", KubeDNSNamespace, "configMap", KubeDNSConfigMap, "setting", w)
			}
		}
		for i, w := range warnings {
			warnings[i] = fmt.Sprintf("kube-dns's Corefile %s: %s", where, w)
		}
	}
	r.kubeDNSState = state
	r.last.KubeDNSTTL, r.last.KubeDNSFrom = ttl, ""
	if ttl != 0 {
		r.last.KubeDNSFrom = where
	}
	r.src.mu.Lock()
	r.src.kubeDNSNotes, r.src.kubeDNSWarnings = notes, warnings
	r.src.mu.Unlock()
}

var _ source.WarningReporter = (*Source)(nil)

// Warnings lists the ztunnel pods that follow another istiod than the
// source's (ztunnel.go), then what kube-dns's Corefile says for the
// cluster domain that ztdns does not follow for the names it answers
// itself, each with what ambient pods get instead; then that istiod's
// mesh config is absent, if it is (warnMeshConfigAbsent).
func (s *Source) Warnings() []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []error
	for _, w := range s.ztunnelWarnings {
		out = append(out, errors.New(w))
	}
	for _, w := range s.kubeDNSWarnings {
		out = append(out, errors.New(w))
	}
	if s.meshWarning != "" {
		out = append(out, errors.New(s.meshWarning))
	}
	return out
}
