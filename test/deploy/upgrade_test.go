//go:build linux

package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ztdns/ztdns/internal/kubetest"
)

// TestDocumentedUpgradeAndUninstall runs, against a real API server, the
// upgrade and uninstall commands that the chart's NOTES and
// deploy/README.md give, on a release installed from an older chart: one
// from before updateStrategy.minReadySeconds, with the 256 MiB memory limit
// of the time. Each command succeeds and leaves the new chart's defaults
// in place (with --reuse-values the cleanup failed, "missing property
// 'minReadySeconds'", and an upgrade kept 256 MiB). The uninstall waits
// with `kubectl rollout status` before `helm uninstall`: Helm's --wait
// returns at once in cleanup mode (maxUnavailable 100%: no pod need be
// ready), before any node is clean. No controller runs here, so the
// commands' waits are not exercised, only their order.
func TestDocumentedUpgradeAndUninstall(t *testing.T) {
	env := kubetest.Start(t)
	admin := env.Client()
	ensureNamespace(t, admin)
	kubeconfig := []string{"--kubeconfig", env.Kubeconfig}

	notes := renderNotes(t, kubeconfig)
	_, uninstallNotes, ok := strings.Cut(notes, "To uninstall")
	if !ok {
		t.Fatalf("the chart's NOTES say nothing of uninstalling:\n%s", notes)
	}
	readme, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	steps := map[string][]string{
		"NOTES.txt":                   commandLines(uninstallNotes),
		"deploy/README.md, Uninstall": commandLines(shBlock(t, string(readme), "## Uninstall")),
		"deploy/README.md, Upgrade":   commandLines(shBlock(t, string(readme), "## Upgrade")),
	}
	for _, where := range []string{"NOTES.txt", "deploy/README.md, Uninstall"} {
		checkUninstallOrder(t, where, steps[where])
	}

	want := renderChart(t).daemonSet
	wantLimit := want.Spec.Template.Spec.Containers[0].Resources.Limits[corev1.ResourceMemory]
	beforeBoth := olderChart(t, beforeMinReadySeconds, before320Mi)
	for _, run := range []struct{ where, old string }{
		{"NOTES.txt", beforeBoth},
		{"deploy/README.md, Uninstall", beforeBoth},
		{"deploy/README.md, Upgrade", beforeBoth},
		// With minReadySeconds, where --reuse-values passes the schema
		// and kept the old limit.
		{"deploy/README.md, Upgrade", olderChart(t, before320Mi)},
	} {
		where, old := run.where, run.old
		t.Run(where, func(t *testing.T) {
			upgrade := helmUpgradeCommand(t, where, steps[where])
			runHelm(t, append([]string{"install", release, old, "-n", namespace}, kubeconfig...)...)
			t.Cleanup(func() {
				if _, err := tryHelm(t, append([]string{"uninstall", release, "-n", namespace}, kubeconfig...)...); err != nil {
					t.Error(err)
				}
			})
			if _, err := tryHelm(t, append(upgrade, kubeconfig...)...); err != nil {
				t.Fatalf("%s's command fails on a release of an older chart: %v", where, err)
			}
			ds, err := admin.AppsV1().DaemonSets(namespace).Get(t.Context(), want.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if slices.Contains(upgrade, "mode=cleanup") {
				if got := ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable.String(); got != "100%" || !hasInitContainer(ds.Spec.Template.Spec, "uninstall") {
					t.Errorf("after %s's cleanup: maxUnavailable %s, init containers %v; want cleanup mode", where, got, ds.Spec.Template.Spec.InitContainers)
				}
				return
			}
			if ds.Spec.MinReadySeconds != want.Spec.MinReadySeconds {
				t.Errorf("after %s's upgrade: minReadySeconds %d, want the chart's %d", where, ds.Spec.MinReadySeconds, want.Spec.MinReadySeconds)
			}
			got := ds.Spec.Template.Spec.Containers[0].Resources.Limits[corev1.ResourceMemory]
			if got.Cmp(wantLimit) != 0 {
				t.Errorf("after %s's upgrade: memory limit %s, want the chart's %s (the older chart's default kept)", where, got.String(), wantLimit.String())
			}
		})
	}
}

// renderNotes returns the NOTES a `helm install` of the chart prints.
func renderNotes(t *testing.T, kubeconfig []string) string {
	t.Helper()
	out := string(runHelm(t, append([]string{"install", release, chartDir, "-n", namespace, "--dry-run=client"}, kubeconfig...)...))
	_, notes, ok := strings.Cut(out, "\nNOTES:\n")
	if !ok {
		t.Fatalf("helm install printed no NOTES:\n%s", out)
	}
	return notes
}

// commandLines returns the helm and kubectl commands in text, one a line.
func commandLines(text string) []string {
	var cmds []string
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "helm ") || strings.HasPrefix(line, "kubectl ") {
			cmds = append(cmds, line)
		}
	}
	return cmds
}

// shBlockRE is a ```sh block of markdown; its one group, the commands.
var shBlockRE = regexp.MustCompile("(?s)```sh\n(.*?)```")

// shBlock returns the first ```sh block after heading in markdown.
func shBlock(t *testing.T, markdown, heading string) string {
	t.Helper()
	_, rest, ok := strings.Cut(markdown, "\n"+heading+"\n")
	if !ok {
		t.Fatalf("deploy/README.md has no %q", heading)
	}
	m := shBlockRE.FindStringSubmatch(rest)
	if m == nil {
		t.Fatalf("deploy/README.md has no sh block under %q", heading)
	}
	return m[1]
}

// checkUninstallOrder: the cleanup upgrade, then `kubectl rollout status`
// of the chart's DaemonSet, then `helm uninstall`.
func checkUninstallOrder(t *testing.T, where string, cmds []string) {
	t.Helper()
	cleanup := slices.IndexFunc(cmds, func(c string) bool {
		return strings.HasPrefix(c, "helm upgrade ") && strings.Contains(c, "mode=cleanup")
	})
	rollout := slices.IndexFunc(cmds, func(c string) bool {
		return strings.HasPrefix(c, "kubectl ") && strings.Contains(c, " rollout status ds/"+release) &&
			strings.Contains(c, "-n "+namespace)
	})
	uninstall := slices.IndexFunc(cmds, func(c string) bool { return strings.HasPrefix(c, "helm uninstall ") })
	if cleanup < 0 || uninstall < 0 || !(cleanup < rollout && rollout < uninstall) {
		t.Errorf("%s: want the cleanup upgrade, then `kubectl -n %s rollout status ds/%s` (Helm's --wait returns at once in cleanup mode), then `helm uninstall`; it gives:\n%s",
			where, namespace, release, strings.Join(cmds, "\n"))
	}
}

// helmUpgradeCommand returns the arguments of the `helm upgrade` among
// cmds, for the chart in this repository. Helm's --wait and --atomic are
// left out: no controller runs here to make pods ready.
func helmUpgradeCommand(t *testing.T, where string, cmds []string) []string {
	t.Helper()
	i := slices.IndexFunc(cmds, func(c string) bool { return strings.HasPrefix(c, "helm upgrade ") })
	if i < 0 {
		t.Fatalf("%s gives no helm upgrade: %v", where, cmds)
	}
	args := strings.Fields(cmds[i])[1:]
	for j, a := range args {
		if a == "<chart>" {
			args[j] = chartDir
		}
	}
	return slices.DeleteFunc(args, func(a string) bool { return a == "--wait" || a == "--atomic" })
}

// chartEdit is one change that makes the chart an older one: old becomes
// new in file.
type chartEdit struct{ file, old, new string }

// The chart before updateStrategy.minReadySeconds, and before its memory
// limit went from 256 MiB to 320 MiB (and since to 384 MiB).
var (
	beforeMinReadySeconds = []chartEdit{
		{"values.yaml", "\n  minReadySeconds: 40\n", "\n"},
		{"values.schema.json", `"required": ["maxSurge", "minReadySeconds"]`, `"required": ["maxSurge"]`},
		{"templates/daemonset.yaml", "\n  minReadySeconds: {{ .Values.updateStrategy.minReadySeconds }}\n", "\n"},
	}
	before320Mi = []chartEdit{
		{"values.yaml", "\n  limits:\n    memory: 384Mi\n", "\n  limits:\n    memory: 256Mi\n"},
	}
)

// olderChart returns a copy of the chart with edits made: a release of it
// holds that older chart's values.
func olderChart(t *testing.T, edits ...[]chartEdit) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ztdns")
	if err := os.CopyFS(dir, os.DirFS(filepath.Join(repoRoot(t), chartDir))); err != nil {
		t.Fatal(err)
	}
	for _, e := range slices.Concat(edits...) {
		path := filepath.Join(dir, e.file)
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(string(data), e.old) != 1 {
			t.Fatalf("the chart's %s no longer holds %q once: update olderChart", e.file, e.old)
		}
		if err := os.WriteFile(path, []byte(strings.Replace(string(data), e.old, e.new, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func hasInitContainer(pod corev1.PodSpec, name string) bool {
	return slices.ContainsFunc(pod.InitContainers, func(c corev1.Container) bool { return c.Name == name })
}

// ensureNamespace makes the release's namespace, unless the API server has
// made it already (it makes kube-system shortly after it starts).
func ensureNamespace(t *testing.T, admin kubernetes.Interface) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if _, err := admin.CoreV1().Namespaces().Create(t.Context(), ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}
