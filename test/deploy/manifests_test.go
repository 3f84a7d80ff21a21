//go:build linux

package deploy

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/ztdns/ztdns/internal/testenv"
)

// renderScript writes deploy/manifests/ from the chart; relative to the
// repository root.
const renderScript = "deploy/render-manifests.sh"

// TestManifestsUpToDate renders every plain manifest the way
// deploy/render-manifests.sh does and compares it with the committed file,
// so a chart change that was not rendered fails here.
func TestManifestsUpToDate(t *testing.T) {
	root := repoRoot(t)
	for _, name := range []string{"ztdns.yaml", "ztdns-cleanup.yaml"} {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command("bash", filepath.Join(root, renderScript), "--print", name)
			cmd.Env = append(os.Environ(), "HELM="+helmBinary(t))
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			want, err := cmd.Output()
			if err != nil {
				t.Fatalf("%s --print %s: %v\n%s", renderScript, name, err, stderr.String())
			}
			path := filepath.Join("deploy/manifests", name)
			got, err := os.ReadFile(filepath.Join(root, path))
			if err != nil {
				t.Fatalf("%v: run %s", err, renderScript)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s is stale: run %s\n%s", path, renderScript, firstDifference(got, want))
			}
			// The file is what a user applies: it must hold the same objects
			// as the chart.
			if c := parseChart(t, got); c.daemonSet == nil {
				t.Errorf("%s holds no DaemonSet: %q", path, c.kinds)
			}
		})
	}
}

// firstDifference describes the first line where the committed file and the
// fresh rendering part.
func firstDifference(got, want []byte) string {
	g, w := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	for i := 0; i < max(len(g), len(w)); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("first difference at line %d:\n  file:   %q\n  render: %q", i+1, gl, wl)
		}
	}
	return "the files differ"
}

// TestAgentAcceptsChartFlags checks the contract between the chart and the
// binary: every container of the chart, in every mode, runs a ztdns
// subcommand (the image holds nothing else), and every flag it passes is a
// flag of that subcommand. An agent that does not know a flag exits at
// once, on every node.
func TestAgentAcceptsChartFlags(t *testing.T) {
	variants := [][]string{
		nil,
		{"capture.enabled=false", "resolver.listen={[$(HOST_IP)]:53}"},
		{"cni.install=false"},
		{"upstreams={203.0.113.53}"},
		{"bpf.mountFS=true"},
		{"resolver.istioRevision=1-28", "resolver.ztunnelNamespace=kube-system", "resolver.istioNamespace=mesh"},
		{"mode=cleanup"},
	}
	passed := map[string]map[string]bool{} // subcommand → flags
	for _, sets := range variants {
		pod := renderChart(t, sets...).daemonSet.Spec.Template.Spec
		for _, c := range slices.Concat(pod.InitContainers, pod.Containers) {
			line := slices.Concat(c.Command, c.Args)
			if len(line) < 2 || line[0] != "ztdns" {
				t.Errorf("--set %v: container %s runs %q, want a ztdns subcommand", sets, c.Name, line)
				continue
			}
			if passed[line[1]] == nil {
				passed[line[1]] = map[string]bool{}
			}
			for _, a := range line[2:] {
				passed[line[1]][flagName(a)] = true
			}
		}
	}
	if len(passed["agent"]) == 0 {
		t.Fatalf("no container runs ztdns agent: %v", passed)
	}
	bin := buildZtdns(t)
	for sub, flags := range passed {
		known := subcommandFlags(t, bin, sub)
		var missing []string
		for name := range flags {
			if !known[name] {
				missing = append(missing, "--"+name)
			}
		}
		slices.Sort(missing)
		if len(missing) > 0 {
			t.Errorf("the chart passes flags that `ztdns %s` does not define: %s", sub, strings.Join(missing, " "))
		}
	}
}

// flagName returns the name of a "--name=value" or "--name" argument.
func flagName(arg string) string {
	name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
	return name
}

// subcommandFlags returns the flags `ztdns CMD -h` lists.
func subcommandFlags(t *testing.T, bin, cmd string) map[string]bool {
	t.Helper()
	var out bytes.Buffer
	c := exec.Command(bin, cmd, "-h")
	c.Stdout, c.Stderr = &out, &out
	if err := c.Run(); err != nil {
		t.Fatalf("ztdns %s -h: %v\n%s", cmd, err, out.String())
	}
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+(?:-[a-z0-9], )?--?([a-z0-9][a-z0-9-]*)`).FindAllStringSubmatch(out.String(), -1) {
		flags[m[1]] = true
	}
	return flags
}

// buildZtdns returns ./cmd/ztdns, built once per test binary (removed by
// TestMain).
func buildZtdns(t *testing.T) string {
	t.Helper()
	return testenv.Build(t, "github.com/ztdns/ztdns/cmd/ztdns")
}

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.RemoveBuilds()
	os.Exit(code)
}
