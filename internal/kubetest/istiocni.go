package kubetest

import (
	"context"
	"encoding/json"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ztdns/ztdns/pkg/model"
)

// SetEnrollment writes istio-cni's enrollment record on a pod as istio-cni
// does (cni/pkg/util/podutil.go): a merge patch of the annotation
// ambient.istio.io/redirection through the pod's status subresource, to
// value (model.RedirectionEnabled once istio-cni has set the pod up,
// model.RedirectionPending while ztunnel has not taken it), or removing it
// when value is "" (istio-cni taking the pod out of the mesh). No istio-cni
// runs beside the API server: tests whose ambient pods are to be captured
// with --kubeconfig enroll them with it.
func (e *Env) SetEnrollment(ctx context.Context, namespace, name, value string) {
	e.tb.Helper()
	var v any
	if value != "" {
		v = value
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{model.AnnotationAmbientRedirection: v}}})
	if err != nil {
		e.tb.Fatal(err)
	}
	if _, err := e.Client().CoreV1().Pods(namespace).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		e.tb.Fatalf("kubetest: annotating %s/%s %s=%q as istio-cni would: %v", namespace, name, model.AnnotationAmbientRedirection, value, err)
	}
}
