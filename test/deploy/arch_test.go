//go:build linux

package deploy

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestChartRunsOnTheImagesArchitectures: the DaemonSet requires a node of
// an architecture the image is built for (amd64, arm64: deploy/image), so
// an s390x node gets no pod that cannot start; affinity overrides it.
func TestChartRunsOnTheImagesArchitectures(t *testing.T) {
	t.Parallel()
	archs := func(c *chart) []string {
		na := c.daemonSet.Spec.Template.Spec.Affinity
		if na == nil || na.NodeAffinity == nil || na.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
			return nil
		}
		var got []string
		for _, term := range na.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
			for _, e := range term.MatchExpressions {
				if e.Key == "kubernetes.io/arch" && e.Operator == corev1.NodeSelectorOpIn {
					got = append(got, e.Values...)
				}
			}
		}
		return got
	}
	if got := archs(renderChart(t)); !slices.Equal(got, []string{"amd64", "arm64"}) {
		t.Errorf("the DaemonSet runs on architectures %v, want [amd64 arm64]", got)
	}
	if got := archs(renderChart(t, "affinity=null")); got != nil {
		t.Errorf("with affinity=null the DaemonSet still requires architectures %v", got)
	}
}
