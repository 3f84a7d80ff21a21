package kube

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/model/kubeapi"
)

// The ConfigMap istiod reads its mesh config from, in its namespace, and
// the key that holds it (pilot/pkg/bootstrap getMeshConfigMapName and
// pkg/config/mesh/kubemesh): MeshConfigMap, or MeshConfigMap-REVISION for
// istiod of a revision (MeshConfigMapName). The Istio chart's
// istio-discovery writes it for every istiod (its value configMap, true by
// default) and mounts no mesh config file, so istiod watches the
// ConfigMap (getConfigurationSources reads a file only where one is
// mounted).
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
func (r *run) meshConfigForbidden() func(err error, kept bool) {
	var once sync.Once
	return func(err error, _ bool) { // the last values are kept either way
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
// key, Istio's defaults apply (no selectors: every namespace), also when
// the ConfigMap is deleted after it was read (istiod's kubemesh
// TestNewConfigMapWatcher: deleted, DefaultMeshConfig); one that does not
// parse leaves the last good values in force (the defaults, when none was
// read). Refused by RBAC, the source cannot tell: it keeps the last
// values. Each change of state is logged once; what is wrong stays in
// Errors(), an absent ConfigMap in Warnings() (warnMeshConfigAbsent).
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
		// Logged by warnMeshConfigAbsent, unless Istio is not installed.
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

// RevisionTagService is the Service the Istio chart (revisionTags) and
// `istioctl tag set` make for revision tag TAG in istiod's namespace,
// labelled istio.io/tag: TAG; the tag's MutatingWebhookConfiguration is
// istio-revision-tag-TAG. ztdns reads Services anyway, so it tells a tag
// by this one without further RBAC.
func RevisionTagService(tag string) string { return "istiod-revision-tag-" + tag }

// warnMeshConfigAbsent puts into Warnings() that the mesh config ConfigMap
// is absent, while it is (followMeshConfig's state "absent") and Istio is
// installed, with what ztdns follows instead and what to do, logs it when
// it starts, and sets ztdns_kube_mesh_config_absent: every istiod the
// Istio chart installs has it, so its absence almost always means that
// --istio-revision names no istiod's revision (the default's with an
// istiod of a revision only, a revision removed, or a revision tag, which
// the warning says when the tag's Service is there).
//
// Without Istio's ServiceEntry CRD (followCRD: reason not-installed) the
// cluster has no Istio, and no istiod to have a mesh config: the chart's
// --istio-namespace default names istio-system all the same, and a
// cluster without Istio does not page (as ztdns_kube_serviceentries_unavailable
// with reason not-installed does not). RBAC refusing the CRD is no such
// sign: discovery then says which versions serve ServiceEntries
// (servedVersions), not-installed only when none does. The CRD is the
// sign, not istiod's namespace: Istio's base chart installs it for every istiod, wherever
// that runs, so with the CRD there and istiod's namespace missing the
// likelier cause is an --istio-namespace that is not istiod's, which the
// warning is for. Called after followMeshConfig, whenever Services change,
// since a tag's Service may come later, and when the CRD comes or goes.
func (r *run) warnMeshConfigAbsent() {
	if r.src.istioNamespace == "" {
		return // no mesh config read, no metric
	}
	where := r.src.meshConfigWhere()
	absent := r.meshState == "absent" && !r.noIstio
	var warning string
	if absent {
		warning = meshConfigAbsentWarning(where, r.src.istioNamespace, r.src.istioRevision, r.hasService(r.src.istioNamespace, RevisionTagService(r.src.istioRevision)))
		if !r.meshWarned {
			r.log.Warn("Istio's mesh config is absent: Istio's defaults apply, as istiod has them without it "+
				"(ServiceEntries without exportTo seen from every namespace, no discoverySelectors); "+
				"every istiod the Istio chart installs has this ConfigMap: is --istio-revision istiod's revision?",
				"namespace", r.src.istioNamespace, "configMap", r.src.meshConfigMap, "revision", r.src.istioRevision)
		}
	}
	r.meshWarned = absent
	r.src.mu.Lock()
	r.src.meshWarning = warning
	r.src.mu.Unlock()
	gauge := 0.0
	if absent {
		gauge = 1
	}
	r.src.metrics.meshConfigAbsent.WithLabelValues(where).Set(gauge)
}

// meshConfigAbsentWarning says that mesh config where, of istiod of
// revision in namespace, is absent; tag, that revision is a revision tag.
func meshConfigAbsentWarning(where, namespace, revision string, tag bool) string {
	var why string
	switch {
	case tag:
		why = fmt.Sprintf("%q (--istio-revision) is a revision tag (Service %s/%s), not a revision: istiod reads the mesh config of its revision "+
			"and ignores ServiceEntries labelled istio.io/rev with a tag; give --istio-revision (chart resolver.istioRevision) the revision the tag points to, "+
			"the istio.io/rev label of that Service", revision, namespace, RevisionTagService(revision))
	case revision == DefaultIstioRevision:
		why = fmt.Sprintf("istiod without a revision reads it, and the Istio chart writes it for every istiod (istio-REVISION for a revision); "+
			"if istiod has a revision, give it: --istio-revision (chart resolver.istioRevision); the ConfigMaps istio-REVISION in %s name them", namespace)
	default:
		why = fmt.Sprintf("the Istio chart writes it for every istiod, so no istiod of revision %q (--istio-revision) seems installed (removed in an upgrade?); "+
			"give --istio-revision (chart resolver.istioRevision) the revision of the istiod that serves ztunnel: the ConfigMaps istio-REVISION in %s name them", revision, namespace)
	}
	return fmt.Sprintf("mesh config %s is absent: %s. Meanwhile ztdns follows Istio's defaults, as istiod does without it "+
		"(ServiceEntries without exportTo seen from every namespace, no discoverySelectors), and forwards ServiceEntries labelled istio.io/rev other than %q",
		where, why, revision)
}

// hasService reports whether the last snapshot's Services hold
// namespace/name.
func (r *run) hasService(namespace, name string) bool {
	_, ok := slices.BinarySearchFunc(r.last.Services, objKey{namespace, name}, func(s model.Service, k objKey) int {
		return objKey{s.Namespace, s.Name}.compare(k)
	})
	return ok
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
