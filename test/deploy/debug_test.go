//go:build linux

package deploy

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// debugCommand is the one command of deploy/README.md's Debug section, and
// of the chart's NOTES, that shows a pod's view from a workstation, taken
// apart.
type debugCommand struct {
	agentNamespace, agentSelector string // kubectl -n NS get pod -l SELECTOR
	podNamespace, podName         string // kubectl -n NS get pod NAME -o jsonpath='{.spec.nodeName}'
	inContainer                   []string
}

var debugCommandRE = regexp.MustCompile(`^\s*kubectl -n (\S+) exec \$\(kubectl -n (\S+) get pod -l (\S+) --field-selector spec\.nodeName=\$\(kubectl -n (\S+) get pod (\S+) -o jsonpath='\{\.spec\.nodeName\}'\) ` +
	`--sort-by=\.metadata\.creationTimestamp -o jsonpath='\{\.items\[-1:\]\.metadata\.name\}'\) -- (.+)$`)

// wrongAgentRE is what finds another agent than the one on the node:
// `kubectl exec ds/NAME` execs in any node's pod, and `-o name` in a
// command substitution hands `kubectl exec` every agent pod on the node,
// two during a rollout, where it fails.
var wrongAgentRE = regexp.MustCompile(`exec ds/|-o name\)`)

// readDebugCommand finds the command in deploy/README.md.
func readDebugCommand(t *testing.T) debugCommand {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/README.md"))
	if err != nil {
		t.Fatal(err)
	}
	return parseDebugCommand(t, "deploy/README.md", string(b))
}

// parseDebugCommand finds the command in text, from where.
func parseDebugCommand(t *testing.T, where, text string) debugCommand {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if m := debugCommandRE.FindStringSubmatch(line); m != nil {
			if m[1] != m[2] {
				t.Fatalf("%s: the command execs in %s into a pod it looks up in %s", where, m[1], m[2])
			}
			return debugCommand{agentNamespace: m[2], agentSelector: m[3], podNamespace: m[4], podName: m[5], inContainer: strings.Fields(m[6])}
		}
	}
	t.Fatalf("%s has no line matching %s", where, debugCommandRE)
	return debugCommand{}
}

// TestDocsExecTheNodesAgent: no command of deploy/README.md or README.md
// (their sh blocks) reaches the agent through the DaemonSet, which picks
// any node's, or through `-o name`, which fails during a rollout. The
// chart's NOTES are rendered and checked in TestChartOnAPIServer (helm
// prints them only for an install).
func TestDocsExecTheNodesAgent(t *testing.T) {
	for _, doc := range []string{"deploy/README.md", "README.md"} {
		b, err := os.ReadFile(filepath.Join(repoRoot(t), doc))
		if err != nil {
			t.Fatal(err)
		}
		blocks := shBlockRE.FindAllStringSubmatch(string(b), -1)
		if len(blocks) == 0 {
			t.Fatalf("%s has no sh block", doc)
		}
		for _, block := range blocks {
			checkExecsTheNodesAgent(t, doc, strings.Split(block[1], "\n"))
		}
	}
}

// checkExecsTheNodesAgent fails on each of lines that would find another
// agent than the node's.
func checkExecsTheNodesAgent(t *testing.T, where string, lines []string) {
	t.Helper()
	for _, line := range lines {
		if wrongAgentRE.MatchString(line) {
			t.Errorf("%s: %q finds another agent than the node's (%s): find it as the Debug command does, by the node, the newest", where, strings.TrimSpace(line), wrongAgentRE.FindString(line))
		}
	}
}

// checkNotesFindTheNodesAgent: the NOTES `helm install` prints reach the
// agent as deploy/README.md's Debug command does, and the look-up they give
// finds the node's newest agent. Called by TestChartOnAPIServer with its
// server and the NOTES rendered for it.
func checkNotesFindTheNodesAgent(t *testing.T, notes string, admin kubernetes.Interface, c *chart) {
	checkExecsTheNodesAgent(t, "NOTES.txt", commandLines(notes))
	cmd := parseDebugCommand(t, "NOTES.txt", notes)
	if cmd.podNamespace != "NS" || cmd.podName != "POD" {
		t.Fatalf("NOTES.txt: the command looks up pod %s/%s, want the placeholders NS/POD", cmd.podNamespace, cmd.podName)
	}
	cmd.podNamespace, cmd.podName = "notes-ns", "notes-pod" // what a user puts in
	checkLookup(t, "NOTES.txt", cmd, admin, c)
}

// checkDebugLookup checks deploy/README.md's command (checkLookup).
// Called by TestChartOnAPIServer with its server.
func checkDebugLookup(t *testing.T, admin kubernetes.Interface, c *chart) {
	checkLookup(t, "deploy/README.md", readDebugCommand(t), admin, c)
}

// checkLookup runs the command's two look-ups against a real API server
// where the chart's agent runs on two nodes, twice on the pod's as in a
// rollout (maxSurge): the agent found is one name, the newest on the pod's
// node. (Before: `-o name` gave both of a rollout's pods, and `kubectl
// exec` took the second for the command to run.)
func checkLookup(t *testing.T, where string, cmd debugCommand, admin kubernetes.Interface, c *chart) {
	if cmd.agentNamespace != namespace {
		t.Errorf("%s: the command looks for the agent in %s, the chart installs into %s", where, cmd.agentNamespace, namespace)
	}
	labels := c.daemonSet.Spec.Template.Labels
	terms := strings.Split(cmd.agentSelector, ",")
	if !slices.Contains(terms, selectorOf(labels, "app.kubernetes.io/name")) {
		t.Errorf("%s: the command selects %s, the chart's pods are labelled %s", where, cmd.agentSelector, selectorOf(labels, "app.kubernetes.io/name"))
	}
	for _, term := range terms {
		if k, v, _ := strings.Cut(term, "="); labels[k] != v {
			t.Errorf("%s: the command selects %s, the chart's pods are labelled %s=%s", where, term, k, labels[k])
		}
	}
	ctx := t.Context()
	const otherNode = "node-b"
	var newest string
	for range 2 { // the old agent and its surge successor
		p, err := admin.CoreV1().Pods(namespace).Create(ctx, podFor(c, otherNode), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		newest = p.Name
		time.Sleep(time.Second) // creationTimestamp has whole seconds
	}
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: cmd.podNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
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
	// kubectl -n NS get pod -l SELECTOR --field-selector spec.nodeName=NODE
	agents, err := admin.CoreV1().Pods(cmd.agentNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: cmd.agentSelector, FieldSelector: "spec.nodeName=" + p.Spec.NodeName,
	})
	if err != nil {
		t.Fatal(err)
	}
	// --sort-by=.metadata.creationTimestamp -o jsonpath='{.items[-1:].metadata.name}'
	var got []string
	for _, a := range agents.Items {
		if a.Spec.NodeName != otherNode {
			t.Errorf("%s: the look-up found %s on %s, want only pods on %s", where, a.Name, a.Spec.NodeName, otherNode)
		}
	}
	slices.SortStableFunc(agents.Items, func(a, b corev1.Pod) int { return a.CreationTimestamp.Compare(b.CreationTimestamp.Time) })
	for _, a := range agents.Items[max(len(agents.Items)-1, 0):] {
		got = append(got, a.Name)
	}
	if !slices.Equal(got, []string{newest}) {
		t.Errorf("%s: the look-up found %q, want the newest agent pod on %s alone, %s", where, got, otherNode, newest)
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

// TestDebugGuideNamesRealCommands: every `ztdns SUBCOMMAND` the Debug
// section of deploy/README.md names is one the binary has (a subcommand's
// own subcommand too: `ztdns log on`, `ztdns capture del`), so the
// symptom-to-cause guide sends an operator to commands that exist; and
// its REASON table lists every reason `ztdns pods` can give (pkg/ambient's
// and pkg/capture's Reason constants).
func TestDebugGuideNamesRealCommands(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy/README.md"))
	if err != nil {
		t.Fatal(err)
	}
	debug := string(b)
	start := strings.Index(debug, "\n## Debug\n")
	if start < 0 {
		t.Fatal("deploy/README.md has no Debug section")
	}
	debug = debug[start+1:]
	if end := strings.Index(debug, "\n## "); end >= 0 {
		debug = debug[:end]
	}
	bin := buildZtdns(t)
	// In code: a span's start, after kubectl exec's --, a line of its own.
	commandRE := regexp.MustCompile("(?m)(?:^|`|-- )ztdns((?: [a-z][a-z-]*)+)")
	checked := map[string]bool{}
	for _, m := range commandRE.FindAllStringSubmatch(debug, -1) {
		words := strings.Fields(m[1])
		key := strings.Join(words[:min(2, len(words))], " ")
		if checked[key] {
			continue
		}
		checked[key] = true
		out, err := exec.Command(bin, "help", words[0]).CombinedOutput()
		if err != nil {
			t.Errorf("the Debug section names `ztdns %s`: ztdns help %s: %v\n%s", m[1][1:], words[0], err, out)
			continue
		}
		_, subs, has := strings.Cut(string(out), "\nAvailable Commands:\n")
		if !has || len(words) < 2 {
			continue
		}
		subs, _, _ = strings.Cut(subs, "\n\n")
		if !regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(words[1]) + ` `).MatchString(subs) {
			t.Errorf("the Debug section names `ztdns %s`: ztdns %s has no subcommand %s:\n%s", m[1][1:], words[0], words[1], subs)
		}
	}
	for _, want := range []string{"status", "pods", "table", "log on"} {
		if !checked[want] {
			t.Errorf("the Debug section never names `ztdns %s`", want)
		}
	}

	// `ztdns pods` prints its yes-or-no columns as Go prints a bool
	// (cmd/ztdns/capture.go: fmt.Sprint(r.Captured)): the guide quotes
	// them as an operator sees them.
	columns := regexp.MustCompile("`(CAPTURED|MARKED|REDIRECTED|RESTORED)` `([^`]*)`").FindAllStringSubmatch(debug, -1)
	if len(columns) == 0 {
		t.Error("the Debug section quotes no value of `ztdns pods`'s CAPTURED or MARKED column")
	}
	for _, m := range columns {
		if m[2] != fmt.Sprint(true) && m[2] != fmt.Sprint(false) {
			t.Errorf("the Debug section quotes `%s` `%s`: `ztdns pods` prints %s %v or %v", m[1], m[2], m[1], true, false)
		}
	}

	listed := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z-]+)` \\| (?:yes|no) \\|").FindAllStringSubmatch(debug, -1) {
		listed[m[1]] = true
	}
	for _, reason := range reasonConstants(t, "pkg/ambient", "pkg/capture") {
		if !listed[reason] {
			t.Errorf("the Debug section's REASON table lacks %q, a reason `ztdns pods` gives", reason)
		}
	}
}

// reasonConstants returns the values of the string constants named
// Reason... in the Go files (tests aside) of the packages at dirs.
func reasonConstants(t *testing.T, dirs ...string) []string {
	t.Helper()
	var reasons []string
	constRE := regexp.MustCompile(`(?m)^\s+Reason\w+\s*=\s*"([^"]+)"`)
	for _, dir := range dirs {
		files, err := filepath.Glob(filepath.Join(repoRoot(t), dir, "*.go"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no Go files in %s: %v", dir, err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range constRE.FindAllStringSubmatch(string(b), -1) {
				reasons = append(reasons, m[1])
			}
		}
	}
	if len(reasons) < 10 {
		t.Fatalf("found only the reasons %q in %v", reasons, dirs)
	}
	return reasons
}
