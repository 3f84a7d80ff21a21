//go:build linux

package deploy

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// debugCommand is deploy/README.md's one command that shows a pod's view
// from a workstation, taken apart.
type debugCommand struct {
	agentNamespace, agentSelector string // kubectl -n NS get pod -l SELECTOR
	podNamespace, podName         string // kubectl -n NS get pod NAME -o jsonpath='{.spec.nodeName}'
	inContainer                   []string
}

var debugCommandRE = regexp.MustCompile(`^kubectl -n (\S+) exec \$\(kubectl -n (\S+) get pod -l (\S+) --field-selector spec\.nodeName=\$\(kubectl -n (\S+) get pod (\S+) -o jsonpath='\{\.spec\.nodeName\}'\) -o name\) -- (.+)$`)

// readDebugCommand finds the command in deploy/README.md.
func readDebugCommand(t *testing.T) debugCommand {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if m := debugCommandRE.FindStringSubmatch(line); m != nil {
			if m[1] != m[2] {
				t.Fatalf("the command execs in %s into a pod it looks up in %s", m[1], m[2])
			}
			return debugCommand{agentNamespace: m[2], agentSelector: m[3], podNamespace: m[4], podName: m[5], inContainer: strings.Fields(m[6])}
		}
	}
	t.Fatalf("deploy/README.md has no line matching %s", debugCommandRE)
	return debugCommand{}
}

// checkDebugLookup runs the command's two look-ups against a real API
// server where the chart's agent runs on two nodes: the agent found is the
// one on the pod's node. Called by TestChartOnAPIServer with its server.
func checkDebugLookup(t *testing.T, admin kubernetes.Interface, c *chart) {
	cmd := readDebugCommand(t)
	if cmd.agentNamespace != namespace {
		t.Errorf("the command looks for the agent in %s, the chart installs into %s", cmd.agentNamespace, namespace)
	}
	if want := selectorOf(c.daemonSet.Spec.Template.Labels, "app.kubernetes.io/name"); cmd.agentSelector != want {
		t.Errorf("the command selects %s, the chart's pods are labelled %s", cmd.agentSelector, want)
	}
	ctx := t.Context()
	const otherNode = "node-b"
	if _, err := admin.CoreV1().Pods(namespace).Create(ctx, podFor(c, otherNode), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: cmd.podNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	workload := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: cmd.podName, Namespace: cmd.podNamespace},
		Spec:       corev1.PodSpec{NodeName: otherNode, Containers: []corev1.Container{{Name: "app", Image: "example"}}},
	}
	if _, err := admin.CoreV1().Pods(cmd.podNamespace).Create(ctx, workload, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// kubectl -n NS get pod NAME -o jsonpath='{.spec.nodeName}'
	p, err := admin.CoreV1().Pods(cmd.podNamespace).Get(ctx, cmd.podName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// kubectl -n NS get pod -l SELECTOR --field-selector spec.nodeName=NODE -o name
	agents, err := admin.CoreV1().Pods(cmd.agentNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: cmd.agentSelector, FieldSelector: "spec.nodeName=" + p.Spec.NodeName,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(agents.Items) != 1 || agents.Items[0].Spec.NodeName != otherNode || !strings.HasPrefix(agents.Items[0].Name, c.daemonSet.Name+"-") {
		var got []string
		for _, a := range agents.Items {
			got = append(got, a.Name+"@"+a.Spec.NodeName)
		}
		t.Errorf("the look-up found %q, want the one agent pod on %s", got, otherNode)
	}
}

// selectorOf renders labels[key] as a selector.
func selectorOf(labels map[string]string, key string) string { return key + "=" + labels[key] }

// TestDebugCommandInTheContainer runs what the README's command runs in the
// agent's container against a running agent. It is written without
// --socket, since the chart puts the socket at the default path; the test's
// agent has its own socket, the one argument added.
func TestDebugCommandInTheContainer(t *testing.T) {
	cmd := readDebugCommand(t)
	if len(cmd.inContainer) < 2 || cmd.inContainer[0] != "ztdns" {
		t.Fatalf("the command runs %q in the container, want a ztdns subcommand", cmd.inContainer)
	}
	args := renderChart(t).daemonSet.Spec.Template.Spec.Containers[0].Args
	if !slices.Contains(args, "--socket="+control.DefaultSocket) {
		t.Errorf("the agent's arguments %q do not put the socket at the default %s: commands in the container would need --socket", args, control.DefaultSocket)
	}
	dir := t.TempDir()
	manifests := "apiVersion: v1\nkind: Namespace\nmetadata: {name: " + cmd.podNamespace + "}\n---\n" + serviceManifest(cmd.podNamespace)
	if err := os.WriteFile(filepath.Join(dir, "objects.yaml"), []byte(manifests), 0o644); err != nil {
		t.Fatal(err)
	}
	a := agenttest.Start(t, agent.Config{Source: configdir.New(dir), Upstreams: []netip.AddrPort{testenv.DeadAddr(t)}})
	run := exec.Command(buildZtdns(t), append(cmd.inContainer[1:], "--socket", a.Socket)...)
	out, err := run.CombinedOutput()
	if err != nil {
		t.Fatalf("%q: %v\n%s", cmd.inContainer, err, out)
	}
	for _, want := range []string{"web", "10.96.0.10"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("%q prints no %s:\n%s", cmd.inContainer, want, out)
		}
	}
}
