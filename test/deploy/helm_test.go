//go:build linux

// Package deploy tests the Helm chart under deploy/charts/ztdns by running the
// real helm CLI on it and reading what it renders as Kubernetes API objects:
// the agent's flags, privileges, mounts, RBAC, rollout and probes; that the
// plain manifests under deploy/manifests are what the chart renders; and,
// against a real API server, that the objects are accepted and that the
// agent's ServiceAccount can read what it watches and change nothing, and
// that the upgrade and uninstall commands the chart's NOTES and
// deploy/README.md give work on a release of an older chart. As
// root, it runs the real agent as the chart's pod runs it (its command line,
// PID and mount namespaces, the node's /proc, the chart's capabilities
// alone) and probes it as the kubelet would; and it builds the image
// (`make image`) and reads it back.
package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/ztdns/ztdns/internal/testenv"
)

const (
	// helmScript builds and caches helm; relative to the repository root.
	helmScript = "scripts/build-helm.sh"
	chartDir   = "deploy/charts/ztdns"
	// release and namespace are what the plain manifests are rendered with
	// and what deploy/README.md installs.
	release   = "ztdns"
	namespace = "kube-system"
)

// helmOnce builds (or finds cached) helm once per test binary.
var helmOnce struct {
	sync.Once
	path string
	err  error
}

// helmBinary returns the helm CLI built by scripts/build-helm.sh (a no-op
// when it is cached). A machine that cannot build it fails the test in CI
// and skips it elsewhere.
func helmBinary(tb testing.TB) string {
	tb.Helper()
	helmOnce.Do(func() { helmOnce.path, helmOnce.err = buildHelm(tb) })
	if helmOnce.err != nil {
		testenv.Unavailable(tb, "helm: %v", helmOnce.err)
	}
	return helmOnce.path
}

func buildHelm(tb testing.TB) (string, error) {
	root := repoRoot(tb)
	script := filepath.Join(root, helmScript)
	var stderr bytes.Buffer
	check := exec.Command("bash", script, "--check")
	check.Stderr = &stderr
	out, err := check.Output()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr) && exitErr.ExitCode() == 3:
		tb.Logf("helm is not cached: running %s (about 3 minutes)", helmScript)
		build := exec.Command("bash", script)
		stderr.Reset()
		build.Stderr = &stderr
		if out, err = build.Output(); err != nil {
			return "", fmt.Errorf("%s: %w\n%s", helmScript, err, stderr.String())
		}
	default:
		return "", fmt.Errorf("%s --check: %w\n%s", helmScript, err, stderr.String())
	}
	helm := filepath.Join(strings.TrimSpace(string(out)), "helm")
	if _, err := os.Stat(helm); err != nil {
		return "", fmt.Errorf("%s printed a directory without helm: %w", helmScript, err)
	}
	return helm, nil
}

// repoRoot walks up from the package directory to the one holding the chart.
func repoRoot(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, chartDir, "Chart.yaml")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			tb.Fatalf("no %s above %s", chartDir, dir)
		}
	}
}

// runHelm runs helm in the repository root and returns its stdout; a failure
// fails the test with helm's stderr.
func runHelm(tb testing.TB, args ...string) []byte {
	tb.Helper()
	out, err := tryHelm(tb, args...)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// tryHelm is runHelm that returns helm's failure, stderr included.
func tryHelm(tb testing.TB, args ...string) ([]byte, error) {
	tb.Helper()
	cmd := exec.Command(helmBinary(tb), args...)
	cmd.Dir = repoRoot(tb)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

// setArgs turns "key=value" settings into helm --set flags.
func setArgs(sets []string) []string {
	var args []string
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	return args
}

// chart is what `helm template` rendered, decoded into API types.
type chart struct {
	// kinds lists every object as "Kind/name", in rendering order.
	kinds []string

	daemonSet          *appsv1.DaemonSet
	serviceAccount     *corev1.ServiceAccount
	clusterRole        *rbacv1.ClusterRole
	clusterRoleBinding *rbacv1.ClusterRoleBinding
	service            *corev1.Service
	resourceQuota      *corev1.ResourceQuota
	// serviceMonitor has no Go type in this module: a generic object.
	serviceMonitor map[string]any
	// dashboard is the Grafana dashboard's ConfigMap; prometheusRule, like
	// serviceMonitor, a generic object.
	dashboard      *corev1.ConfigMap
	prometheusRule map[string]any
}

// renderChart runs `helm template` on the chart with the given --set values,
// as release "ztdns" in kube-system.
func renderChart(tb testing.TB, sets ...string) *chart {
	tb.Helper()
	args := append([]string{"template", release, chartDir, "--namespace", namespace}, setArgs(sets)...)
	return parseChart(tb, runHelm(tb, args...))
}

// parseChart decodes a multi-document YAML stream. Every document is decoded
// strictly: a field the API type does not have (a misspelt
// mountPropagation, say) fails the test instead of vanishing.
func parseChart(tb testing.TB, stream []byte) *chart {
	tb.Helper()
	c := &chart{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(stream)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			tb.Fatalf("reading the rendered chart: %v", err)
		}
		var meta struct {
			metav1.TypeMeta `json:",inline"`
			Metadata        metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			tb.Fatalf("rendered document is not YAML: %v\n%s", err, doc)
		}
		if meta.Kind == "" {
			continue // a document holding only comments
		}
		c.kinds = append(c.kinds, meta.Kind+"/"+meta.Metadata.Name)
		var target any
		switch meta.Kind {
		case "DaemonSet":
			target = &c.daemonSet
		case "ServiceAccount":
			target = &c.serviceAccount
		case "ClusterRole":
			target = &c.clusterRole
		case "ClusterRoleBinding":
			target = &c.clusterRoleBinding
		case "Service":
			target = &c.service
		case "ResourceQuota":
			target = &c.resourceQuota
		case "ServiceMonitor":
			target = &c.serviceMonitor
		case "ConfigMap":
			target = &c.dashboard
		case "PrometheusRule":
			target = &c.prometheusRule
		default:
			tb.Fatalf("the chart rendered an unexpected %s %q", meta.Kind, meta.Metadata.Name)
		}
		if err := yaml.UnmarshalStrict(doc, target); err != nil {
			tb.Fatalf("decoding %s %q: %v\n%s", meta.Kind, meta.Metadata.Name, err, doc)
		}
	}
	return c
}
