package agent

import (
	"cmp"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// newBuilder is the table builder for cfg, whose answers for Services have
// ttl.
func newBuilder(cfg Config, ttl uint32) *table.Builder {
	return table.NewBuilder(table.Options{Domain: cfg.ClusterDomain, TTL: ttl, ServiceEntryTTL: uint32(cfg.ServiceEntryTTL / time.Second), VIPSource: cfg.VIPSource,
		DefaultExportTo:      cfg.DefaultExportTo,
		MaxNamesPerNamespace: cmp.Or(cfg.MaxNamesPerNamespace, table.DefaultMaxNamesPerNamespace)})
}

// followKubeDNSTTL gives local answers the TTL kube-dns's Corefile gives
// the cluster's names (s.KubeDNSTTL), unless Config.TTL was given; without
// one read, table.DefaultTTL. A pod then gets the same TTL for a name
// whether ztdns answers it or forwards it to kube-dns. A new TTL takes a
// new builder, whose first build is a whole one: every entry carries its
// TTL, and the builder keeps nothing else that outlives a build (VIPs are
// allocated again from the same snapshot to the same addresses). TTLs
// change rarely: an edit of kube-dns's ConfigMap.
func (a *Agent) followKubeDNSTTL(s *model.Snapshot) {
	if a.ttlGiven {
		return
	}
	ttl := cmp.Or(s.KubeDNSTTL, table.DefaultTTL)
	if ttl == a.builderTTL {
		return
	}
	a.log.Info("local answers follow kube-dns's TTL", "ttl", ttl, "from", cmp.Or(s.KubeDNSFrom, "ztdns's default"), "was", a.builderTTL)
	a.builder, a.builderTTL = newBuilder(a.cfg, ttl), ttl
}
