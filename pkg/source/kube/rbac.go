package kube

import rbacv1 "k8s.io/api/rbac/v1"

// PolicyRules are the API permissions the source needs, and all it uses:
// list and watch on what it watches; of ConfigMaps only istiod's VIP
// allocator lock, by name (in any namespace: istiod's is a flag). Discovery
// of the ServiceEntry API is
// open to every authenticated user (the built-in system:discovery role). The
// Helm chart's ClusterRole grants exactly these.
func PolicyRules() []rbacv1.PolicyRule {
	read := []string{"list", "watch"}
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"namespaces", "services", "pods"}, Verbs: read},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: read},
		{APIGroups: []string{"networking.istio.io"}, Resources: []string{"serviceentries"}, Verbs: read},
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{IstiodAllocatorLock}, Verbs: read},
	}
}
