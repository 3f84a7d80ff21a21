//go:build linux

package deploy

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
)

// serviceManifest is the one Service the agent's --config-dir holds in
// these tests, web in namespace, at 10.96.0.10.
func serviceManifest(namespace string) string {
	return `apiVersion: v1
kind: Service
metadata: {name: web, namespace: ` + namespace + `}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
`
}

// TestCaptureOffServesOnTheNodesAddress: with capture.enabled=false the
// chart refuses the default resolver.listen and names the value to set
// instead (deploy/README.md gives the same). Rendered with that value, the
// agent container's command line, $(HOST_IP) expanded as the kubelet does
// with the node's IPv4 or IPv6 address, answers a pod's queries on port 53
// of that address, and its liveness probe on the node's address passes.
func TestCaptureOffServesOnTheNodesAddress(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.LookPath(t, "dig")
	_, err := tryHelm(t, "template", release, chartDir, "--set", "capture.enabled=false")
	m := regexp.MustCompile(`e\.g\. \{([^}]*)\}`).FindStringSubmatch(fmt.Sprint(err))
	if m == nil {
		t.Fatalf("the chart's refusal of ztdns0's address without capture names no resolver.listen to set instead: %v", err)
	}
	documented := m[1]
	readme, rerr := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "README.md"))
	if rerr != nil {
		t.Fatal(rerr)
	}
	if !strings.Contains(string(readme), "(e.g. `{"+documented+"}`") {
		t.Errorf("deploy/README.md does not give the chart's value for resolver.listen without capture, {%s}", documented)
	}
	c := renderChart(t, "capture.enabled=false", "resolver.listen={"+documented+"}")
	agent := c.daemonSet.Spec.Template.Spec.Containers[0]
	bin := buildZtdns(t)

	for _, family := range []string{"IPv4", "IPv6"} {
		t.Run(family, func(t *testing.T) {
			node := testenv.NewNode(t)
			pod := node.AddPod(t, testenv.PodConfig{})
			hostIP, service := pod.Gateway4(), "10.96.0.10"
			if family == "IPv6" {
				hostIP = pod.Gateway6()
			}
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "service.yaml"), []byte(serviceManifest("shop")), 0o644); err != nil {
				t.Fatal(err)
			}
			socket := filepath.Join(dir, "run", "ztdns.sock")
			args := containerArgs(t, agent, map[string]string{"NODE_NAME": nodeName, "HOST_IP": hostIP.String()}, map[string]string{
				"--kubeconfig":   "--config-dir=" + dir,
				"--socket":       "--socket=" + socket,
				"--bpffs":        "",
				"--cni-install":  "--cni-install=false",
				"--cni-bin-dir":  "",
				"--cni-conf-dir": "",
			})
			args = append(args, "--upstream=203.0.113.1")
			a := testenv.StartAgent(t, node, bin, args...)
			// Listening before it says so, and the Service in its table.
			a.WaitLog(t, "name table updated", 30*time.Second)

			server := netip.AddrPortFrom(hostIP, 53)
			out, err := pod.Output(t, nil, 15*time.Second, "dig", "+short", "+time=2", "+tries=1",
				"@"+server.Addr().String(), "-p", "53", "web.shop.svc.cluster.local", "A")
			if err != nil || strings.TrimSpace(out) != service {
				t.Fatalf("dig @%s web.shop.svc.cluster.local: %q, %v; want %s\nargs: %q\nlog:\n%s", server, out, err, service, args, a.Log())
			}
			if ok, why := kubeletProbe(t, node, agent.LivenessProbe, hostIP.String()); !ok {
				t.Errorf("the liveness probe on %s fails: %s\nlog:\n%s", hostIP, why, a.Log())
			}
		})
	}
}
