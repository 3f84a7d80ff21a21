package kube

// PolicyRule is one rule of a ClusterRole, with the fields of
// rbac.authorization.k8s.io/v1's PolicyRule that the source's rules use
// (the generated type is not linked into the agent for this list alone).
type PolicyRule struct {
	Verbs         []string
	APIGroups     []string
	Resources     []string
	ResourceNames []string
}

// PolicyRules are the API permissions the source needs, and all it uses:
// list and watch on what it watches; of ConfigMaps only istiod's VIP
// allocator lock and its mesh config, by name (in any namespace: istiod's
// is a flag), and kube-dns's Corefile (coredns, in kube-system); of
// CustomResourceDefinitions only Istio's ServiceEntry CRD,
// by name (the API server authorizes a list or watch with the field
// selector metadata.name=NAME as one on resourceName NAME). The Helm
// chart's ClusterRole grants exactly these. Without the CRD's rule the
// source asks the discovery API, open to every authenticated user (the
// built-in system:discovery role), every few minutes instead; without
// ServiceEntries' it runs without them; without the mesh config's it keeps
// the exportTo default it last read; without kube-dns's it follows none
// of kube-dns's settings and says so. The mesh config is that of istiod
// without a revision; PolicyRulesFor names another's.
func PolicyRules() []PolicyRule { return PolicyRulesFor("") }

// PolicyRulesFor are PolicyRules for a source that reads the mesh config of
// istiod of revision (WithIstioRevision).
func PolicyRulesFor(revision string) []PolicyRule {
	read := []string{"list", "watch"}
	return []PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"namespaces", "services", "pods"}, Verbs: read},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: read},
		{APIGroups: []string{"networking.istio.io"}, Resources: []string{"serviceentries"}, Verbs: read},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{IstiodAllocatorLock}, Verbs: read},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{MeshConfigMapName(revision)}, Verbs: read},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{KubeDNSConfigMap}, Verbs: read},
		{APIGroups: []string{"apiextensions.k8s.io"}, Resources: []string{"customresourcedefinitions"}, ResourceNames: []string{ServiceEntryCRD}, Verbs: read},
	}
}
