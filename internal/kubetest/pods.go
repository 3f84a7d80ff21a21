package kubetest

import (
	"context"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RunningPod creates pod ns/name on node and reports it running with ips
// (the first is its PodIP), as the kubelet would: no kubelet runs beside
// the API server.
func (e *Env) RunningPod(ctx context.Context, ns, name, node string, ips ...netip.Addr) *corev1.Pod {
	e.tb.Helper()
	p, err := e.Client().CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "example"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		e.tb.Fatalf("kubetest: creating pod %s/%s: %v", ns, name, err)
	}
	return e.SetRunning(ctx, p, ips...)
}

// SetRunning writes pod's status as the kubelet does once its sandbox has
// ips: running, the first of ips its PodIP.
func (e *Env) SetRunning(ctx context.Context, pod *corev1.Pod, ips ...netip.Addr) *corev1.Pod {
	e.tb.Helper()
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ips[0].String()}
	for _, a := range ips {
		pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: a.String()})
	}
	p, err := e.Client().CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	if err != nil {
		e.tb.Fatalf("kubetest: reporting pod %s/%s running: %v", pod.Namespace, pod.Name, err)
	}
	return p
}
