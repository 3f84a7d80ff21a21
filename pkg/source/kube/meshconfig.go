package kube

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
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

// WithIstioRevision sets istiod's revision: the source reads its mesh
// config (MeshConfigMapName) and leaves out the ServiceEntries it ignores,
// those labelled istio.io/rev with another revision (see ignored.go).
// Empty is "default", the revision the Istio chart gives istiod unless
// told otherwise (istio-discovery's REVISION, `.Values.revision | default
// "default"`).
func WithIstioRevision(revision string) Option {
	return func(s *Source) {
		s.meshConfigMap = MeshConfigMapName(revision)
		s.istioRevision = cmp.Or(revision, DefaultIstioRevision)
	}
}

// DefaultIstioRevision is istiod's revision when none is given.
const DefaultIstioRevision = "default"

// meshConfig is what the source keeps of the mesh config ConfigMap: its
// defaultServiceExportTo and discoverySelectors, or why its `mesh` key
// does not parse.
type meshConfig struct {
	namespace, name string
	mesh            mesh
	invalid         string
}

// mesh is what the source reads of a mesh config.
type mesh struct {
	exportTo []string
	// selectors are the discoverySelectors, nil when none: every
	// namespace. selectorsInvalid says why one does not convert; the
	// selectors are nil then.
	selectors        []labels.Selector
	selectorsInvalid string
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
	m, err := parseMesh(text)
	if err != nil {
		out.invalid = err.Error()
		return out, nil
	}
	out.mesh = m
	return out, nil
}

// parseMesh reads defaultServiceExportTo and discoverySelectors from a
// mesh config (the YAML of the `mesh` key), as istiod merges it over its
// defaults (pkg/config/mesh ApplyMeshConfig): a field that is given
// replaces the default, unknown fields are ignored, and YAML that does not
// parse, or a field of another type (defaultServiceExportTo no list of
// strings, discoverySelectors no list of label selectors), makes the whole
// mesh config invalid. exportTo is nil when it gives none, null or an
// empty list: Istio's default then, every namespace. istiod decodes an
// empty list into a nil one, which replaces its default ["*"], and
// pilot/pkg/model PushContext.initDefaultExportMaps takes nil for "*"
// (agent.TestDefaultServiceExportToFollowsMeshConfig). A field it does not
// know, such as defaultServiceEntryExportTo, which MeshConfig lacks, is
// ignored, by istiod too. Only these fields are read:
// a mesh config istiod refuses for another field's sake is not noticed
// here.
//
// A selector converts as istiod's discovery namespaces filter converts it
// (pkg/config/mesh/labelselector, Kubernetes' own rules): matchLabels and
// matchExpressions (In, NotIn, Exists, DoesNotExist) all hold; an empty
// selector selects every namespace, a null one none. One that does not
// convert (an unknown operator, an invalid label key or value) is no
// reason to refuse the mesh config: istiod logs it and keeps the selectors
// it had (selectorsChanged returns early), and so does the source
// (selectorsInvalid).
func parseMesh(text string) (mesh, error) {
	var m struct {
		DefaultServiceExportTo []string                `json:"defaultServiceExportTo"`
		DiscoverySelectors     []*metav1.LabelSelector `json:"discoverySelectors"`
	}
	if err := yaml.Unmarshal([]byte(text), &m); err != nil {
		return mesh{}, fmt.Errorf("mesh config does not parse: %w", err)
	}
	var out mesh
	if len(m.DefaultServiceExportTo) > 0 {
		out.exportTo = m.DefaultServiceExportTo
	}
	for i, ls := range m.DiscoverySelectors {
		sel, err := metav1.LabelSelectorAsSelector(ls) // nil: labels.Nothing()
		if err != nil {
			out.selectors, out.selectorsInvalid = nil, fmt.Sprintf("discoverySelectors[%d]: %v", i, err)
			break
		}
		out.selectors = append(out.selectors, sel)
	}
	return out, nil
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
// ConfigMap, or none) into the next snapshot, and its discoverySelectors
// into r.selectors, as istiod does with a single mesh config source
// (pkg/config/mesh/meshwatcher NewCollection): absent, or without a `mesh`
// key, Istio's defaults apply (no selectors: every namespace); one that
// does not parse leaves the last good values in force (the defaults, when
// none was read). Refused by RBAC, the source cannot tell: it keeps the
// last values. Each change of state is logged once; what is wrong stays in
// Errors().
func (r *run) followMeshConfig(cms []meshConfig) {
	where := r.src.meshConfigWhere()
	keeping := func() string {
		kept := `Istio's default "*"`
		if r.last.DefaultExportTo != nil {
			kept = fmt.Sprintf("%q, read before", strings.Join(r.last.DefaultExportTo, ","))
		}
		if r.selectors != nil {
			kept += fmt.Sprintf(", and discoverySelectors %s, read before", selectorsString(r.selectors))
		}
		return kept
	}
	var state, note string
	switch {
	case r.meshRefused.Load():
		state = "forbidden"
		note = fmt.Sprintf("mesh config %s may not be read (RBAC): ServiceEntries without exportTo keep %s; asking again every %v",
			where, keeping(), r.src.forbiddenRetry)
	case len(cms) == 0:
		state = "absent"
		r.last.DefaultExportTo, r.last.MeshConfig = nil, where
		r.selectors = nil
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
		m := &cms[0].mesh
		state = "ok"
		r.last.DefaultExportTo, r.last.MeshConfig = m.exportTo, where
		if m.selectorsInvalid != "" {
			state = "selectors invalid: " + m.selectorsInvalid
			kept := "none, every namespace"
			if r.selectors != nil {
				kept = selectorsString(r.selectors) + ", read before"
			}
			note = fmt.Sprintf("mesh config %s: %s; istiod keeps the discoverySelectors it had, and so does ztdns: %s", where, m.selectorsInvalid, kept)
			if r.meshState != state {
				r.log.Warn("a discoverySelector of Istio's mesh config does not convert: the last ones read stay in force, as istiod keeps them",
					"namespace", r.src.istioNamespace, "configMap", r.src.meshConfigMap, "keeping", kept, "err", m.selectorsInvalid)
			}
		} else {
			r.selectors = m.selectors
		}
		if r.meshState != state {
			r.log.Info("following Istio's mesh config", "namespace", r.src.istioNamespace, "configMap", r.src.meshConfigMap,
				"defaultServiceExportTo", m.exportTo, "discoverySelectors", selectorsString(r.selectors))
		}
	}
	r.meshState = state
	r.src.mu.Lock()
	r.src.meshNote = note
	r.src.mu.Unlock()
}

// selectorsString shows discoverySelectors: each selector in Kubernetes'
// syntax, quoted; "none" when there are none.
func selectorsString(sels []labels.Selector) string {
	if sels == nil {
		return "none"
	}
	out := make([]string, len(sels))
	for i, s := range sels {
		out[i] = strconv.Quote(s.String())
	}
	return strings.Join(out, " or ")
}
