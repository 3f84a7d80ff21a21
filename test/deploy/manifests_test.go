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
// binary: every flag the chart passes, in every mode, is a flag of the
// ztdns subcommand it runs. An agent that does not know a flag exits at
// once, on every node.
func TestAgentAcceptsChartFlags(t *testing.T) {
	variants := [][]string{
		nil,
		{"capture.enabled=false"},
		{"cni.install=false"},
		{"upstreams={203.0.113.53}"},
	}
	passed := map[string]bool{}
	for _, sets := range variants {
		pod := renderChart(t, sets...).daemonSet.Spec.Template.Spec
		args := pod.Containers[0].Args
		if len(args) == 0 || args[0] != "agent" {
			t.Fatalf("the agent container runs %q, want ztdns agent", args)
		}
		for _, a := range args[1:] {
			passed[flagName(a)] = true
		}
	}
	bin := buildZtdns(t)
	known := subcommandFlags(t, bin, "agent")
	var missing []string
	for name := range passed {
		if !known[name] {
			missing = append(missing, "--"+name)
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("the chart passes flags that `ztdns agent` does not define: %s", strings.Join(missing, " "))
	}

	// Cleanup mode runs `ztdns uninstall` from a shell command line.
	cleanup := renderChart(t, "mode=cleanup").daemonSet.Spec.Template.Spec.InitContainers[0]
	script := strings.Join(cleanup.Command, " ")
	uninstall := subcommandFlags(t, bin, "uninstall")
	for _, m := range regexp.MustCompile(`ztdns uninstall((?:\s+--[a-z0-9-]+=\S+)+)`).FindStringSubmatch(script)[1:] {
		for _, a := range strings.Fields(m) {
			if !uninstall[flagName(a)] {
				t.Errorf("cleanup mode passes %s, which `ztdns uninstall` does not define", a)
			}
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
	if len(flags) == 0 {
		t.Fatalf("ztdns %s -h lists no flags:\n%s", cmd, out.String())
	}
	return flags
}

// buildZtdns builds ./cmd/ztdns into the test's temporary directory.
func buildZtdns(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ztdns")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/ztdns")
	cmd.Dir = repoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/ztdns: %v\n%s", err, out)
	}
	return bin
}
