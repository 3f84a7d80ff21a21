package kubetest

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Where kubeadm keeps kube-dns's Corefile (and package kube reads it).
const (
	kubeDNSNamespace = metav1.NamespaceSystem
	kubeDNSConfigMap = "coredns"
	corefileKey      = "Corefile"
)

// SetKubeDNSCorefile writes corefile (KubeadmCorefile) into kube-dns's
// ConfigMap, kube-system/coredns, creating it, and kube-system, when
// absent.
func (e *Env) SetKubeDNSCorefile(ctx context.Context, corefile string) {
	e.tb.Helper()
	kc := e.Client()
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: kubeDNSNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		e.tb.Fatalf("kubetest: creating namespace %s: %v", kubeDNSNamespace, err)
	}
	cms := kc.CoreV1().ConfigMaps(kubeDNSNamespace)
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: kubeDNSConfigMap, Namespace: kubeDNSNamespace},
		Data: map[string]string{corefileKey: corefile}}
	_, err := cms.Update(ctx, cm, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
	}
	if err != nil {
		e.tb.Fatalf("kubetest: writing kube-dns's Corefile %s/%s: %v", kubeDNSNamespace, kubeDNSConfigMap, err)
	}
}
