package kube

import (
	"fmt"
	"strings"
	"sync"

	"sigs.k8s.io/yaml"

	"github.com/ztdns/ztdns/pkg/model/kubeapi"
)

// The ConfigMap istiod reads its mesh config from, in its namespace, and
// the key that holds it (pilot/pkg/bootstrap getMeshConfigMapName and
// pkg/config/mesh/kubemesh): MeshConfigMap, or MeshConfigMap-REVISION for
// istiod of a revision (MeshConfigMapName). The Istio chart's
// istio-discovery writes it, and istiod also mounts it as its mesh config
// file.
const (
	MeshConfigMap = "istio"
	MeshConfigKey = "mesh"
)

// MeshConfigMapName is the mesh config ConfigMap of istiod of revision:
// MeshConfigMap for none or "default", else MeshConfigMap-revision, as
// istiod names it.
func MeshConfigMapName(revision string) string {
	if revision == "" || revision == "default" {
		return MeshConfigMap
	}
	return MeshConfigMap + "-" + revision
}

// WithIstioRevision sets istiod's revision, whose mesh config
// (MeshConfigMapName) the source reads; default none, "istio".
func WithIstioRevision(revision string) Option {
	return func(s *Source) { s.meshConfigMap = MeshConfigMapName(revision) }
}

// meshConfig is what the source keeps of the mesh config ConfigMap: its
// defaultServiceExportTo, or why its `mesh` key does not parse.
type meshConfig struct {
	namespace, name string
	exportTo        []string
	invalid         string
}

// meshConfigOf reduces the mesh config ConfigMap. It never fails: a mesh
// config that does not parse is kept as such, and the last one that did
// stays in force (followMeshConfig).
func meshConfigOf(o kubeapi.Object) (meshConfig, error) {
	cm := o.(*kubeapi.ConfigMap)
	out := meshConfig{namespace: cm.Namespace, name: cm.Name}
	text, ok := cm.Data[MeshConfigKey]
	if !ok {
		return out, nil // istiod: no data, its defaults
	}
	exportTo, err := parseMeshExportTo(text)
	if err != nil {
		out.invalid = err.Error()
		return out, nil
	}
	out.exportTo = exportTo
	return out, nil
}

// parseMeshExportTo reads defaultServiceExportTo from a mesh config (the
// YAML of the `mesh` key), as istiod merges it over its defaults
// (pkg/config/mesh ApplyMeshConfig): a field that is given replaces the
// default, unknown fields are ignored, and YAML that does not parse, or a
// defaultServiceExportTo that is not a list of strings, makes the whole
// mesh config invalid. Nil when it gives none, or an empty list: Istio's
// default then, every namespace. Only this field is read: a mesh config
// istiod refuses for another field's sake is not noticed here.
func parseMeshExportTo(text string) ([]string, error) {
	var m struct {
		DefaultServiceExportTo []string `json:"defaultServiceExportTo"`
	}
	if err := yaml.Unmarshal([]byte(text), &m); err != nil {
		return nil, fmt.Errorf("mesh config does not parse: %w", err)
	}
	if len(m.DefaultServiceExportTo) == 0 {
		return nil, nil
	}
	return m.DefaultServiceExportTo, nil
}

// meshConfigWhere names the mesh config ConfigMap, namespace/name.
func (s *Source) meshConfigWhere() string { return s.istioNamespace + "/" + s.meshConfigMap }

// meshConfigForbidden is told whether the mesh config may be read. Without
// that permission (a chart from before it was needed, or a binding the API
// server has not applied yet) the snapshots keep the last value read, or
// none, the source says so once and in Errors(), and asks again every
// forbiddenRetry (see tolerateForbidden). Permission granted again, it
// reads the mesh config afresh, also when it is absent.
func (r *run) meshConfigForbidden() func(error) {
	var once sync.Once
	return func(err error) {
		was := r.meshRefused.Swap(err != nil)
		if err == nil {
			if was {
				r.changed(kindMeshConfig)
			}
			return
		}
		once.Do(func() {
			r.log.Warn("cannot read Istio's mesh config: its defaultServiceExportTo is not followed; "+
				"ServiceEntries without exportTo keep the last value read, or Istio's default \"*\" (every namespace); "+
				"give --default-service-export-to, or let the agent read the ConfigMap",
				"namespace", r.src.istioNamespace, "configMap", r.src.meshConfigMap, "err", err)
		})
		if !was {
			r.changed(kindMeshConfig)
		}
	}
}

// followMeshConfig puts what the source read of the mesh config (cms: the
// ConfigMap, or none) into the next snapshot, as istiod does with a single
// mesh config source (pkg/config/mesh/meshwatcher NewCollection): absent,
// or without a `mesh` key, Istio's defaults apply; one that does not parse
// leaves the last good value in force (the default, when none was read).
// Refused by RBAC, the source cannot tell: it keeps the last value. Each
// change of state is logged once; what is wrong stays in Errors().
func (r *run) followMeshConfig(cms []meshConfig) {
	where := r.src.meshConfigWhere()
	keeping := func() string {
		if r.last.DefaultExportTo == nil {
			return `Istio's default "*"`
		}
		return fmt.Sprintf("%q, read before", strings.Join(r.last.DefaultExportTo, ","))
	}
	var state, note string
	switch {
	case r.meshRefused.Load():
		state = "forbidden"
		note = fmt.Sprintf("mesh config %s may not be read (RBAC): ServiceEntries without exportTo keep %s; asking again every %v",
			where, keeping(), r.src.forbiddenRetry)
	case len(cms) == 0:
		state = "absent"
		r.last.DefaultExportTo, r.last.DefaultExportToFrom = nil, ""
		if r.meshState != state {
			r.log.Warn("Istio's mesh config is absent: ServiceEntries without exportTo are seen from every namespace, Istio's default, as istiod has it; "+
				"istiod of a revision reads istio-REVISION: give --istio-revision",
				"namespace", r.src.istioNamespace, "configMap", r.src.meshConfigMap)
		}
	case cms[0].invalid != "":
		state = "invalid: " + cms[0].invalid
		note = fmt.Sprintf("mesh config %s: %s; ServiceEntries without exportTo keep %s", where, cms[0].invalid, keeping())
		if r.meshState != state {
			r.log.Warn("Istio's mesh config does not parse: ServiceEntries without exportTo keep the last value read, as istiod does",
				"namespace", r.src.istioNamespace, "configMap", r.src.meshConfigMap, "keeping", keeping(), "err", cms[0].invalid)
		}
	default:
		state = "ok"
		r.last.DefaultExportTo, r.last.DefaultExportToFrom = cms[0].exportTo, ""
		if cms[0].exportTo != nil {
			r.last.DefaultExportToFrom = where
		}
		if r.meshState != state {
			r.log.Info("following Istio's mesh config", "namespace", r.src.istioNamespace, "configMap", r.src.meshConfigMap,
				"defaultServiceExportTo", cms[0].exportTo)
		}
	}
	r.meshState = state
	r.src.mu.Lock()
	r.src.meshNote = note
	r.src.mu.Unlock()
}
