//go:build linux

package deploy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/control"
)

// capNumbers are the capabilities the chart may name, by their Kubernetes
// spelling.
var capNumbers = map[string]int{
	"NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE, "NET_ADMIN": unix.CAP_NET_ADMIN, "NET_RAW": unix.CAP_NET_RAW,
	"SYS_PTRACE": unix.CAP_SYS_PTRACE, "SYS_ADMIN": unix.CAP_SYS_ADMIN, "SYS_RESOURCE": unix.CAP_SYS_RESOURCE,
	"DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE, "BPF": unix.CAP_BPF, "PERFMON": unix.CAP_PERFMON,
}

// The pod the agent must adopt: it runs, as the chart's agent starts, in a
// namespace labelled ambient, with no CNI event ever announcing it.
var runningPodManifests = `apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
` + serviceManifest("shop") + `---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, uid: 6b1e3c2a-0000-4000-8000-000000000001}
spec: {nodeName: %s, containers: [{name: c, image: x}]}
status: {podIP: %s, podIPs: [{ip: %s}, {ip: %s}]}
`

// nowhere is the pod's nameserver: an address that exists nowhere, so an
// answer proves the query was captured.
const nowhere = "203.0.113.53"

// TestAgentRunsWithTheChartsPrivileges runs the real agent the way the
// chart's pod runs it, as far as that goes without a kubelet: with the
// container's command line (the kubelet's $(VAR) expansion done), in a PID
// namespace of its own (no hostPID) with the node's /proc bound read-only
// where the chart mounts it, and with the chart's capabilities alone as its
// bounding, permitted and effective sets. A pod that was running before the
// agent, as user 65534 like a pause container, is adopted and its DNS
// captured. Without each of those capabilities, or without the node's /proc,
// it is not: every capability the chart adds is needed.
func TestAgentRunsWithTheChartsPrivileges(t *testing.T) {
	testenv.LookPath(t, "dig")
	agent, procMountPath := chartAgent(t)
	chartCaps := sorted(caps(agent.SecurityContext.Capabilities.Add))
	bin := buildZtdns(t)

	t.Run("with them", func(t *testing.T) {
		r := runAsTheChart(t, bin, agent, procMountPath, chartCaps, true)
		r.agent.WaitReady(t, r.socket, 30*time.Second)
		if got, want := effectiveCaps(t, r.agent.Pid()), capMask(t, chartCaps); got != want {
			t.Errorf("the agent's effective capabilities are %#x, want the chart's %v (%#x)", got, chartCaps, want)
		}
		row := r.podRow(t)
		if row == nil || !row.Captured || !strings.HasPrefix(row.ContainerID, capture.AdoptedPrefix) || !row.Marked {
			t.Fatalf("the running pod was not adopted: %+v\nlog:\n%s", row, r.agent.Log())
		}
		if !strings.HasPrefix(row.NetnsPath, r.hostProc+"/") {
			t.Errorf("adopted through %s, not through the node's /proc at %s", row.NetnsPath, r.hostProc)
		}
		out, err := r.pod.Output(t, r.cg, 15*time.Second, "dig", "+short", "+time=2", "+tries=1", "@"+nowhere, "web.shop.svc.cluster.local", "A")
		if err != nil || strings.TrimSpace(out) != "10.96.0.10" {
			t.Errorf("dig in the adopted pod = %q, %v; want 10.96.0.10 from the agent", out, err)
		}
	})

	// What the agent says without each one, where it is known.
	why := map[string]string{
		"NET_ADMIN":        "resolver interface",                  // netlink: ztdns0 and its addresses
		"NET_BIND_SERVICE": "bind: permission denied",             // port 53
		"SYS_ADMIN":        "operation not permitted",             // bpf(2) (and setns)
		"SYS_PTRACE":       "namespaces of some processes cannot", // the pod's /proc/PID/ns/net
	}
	for _, drop := range chartCaps {
		t.Run("without "+drop, func(t *testing.T) {
			less := slices.DeleteFunc(slices.Clone(chartCaps), func(c string) bool { return c == drop })
			r := runAsTheChart(t, bin, agent, procMountPath, less, true)
			if r.adoptedOrExited(t) {
				t.Errorf("the agent adopted the running pod without %s: the chart adds a capability it does not need\nlog:\n%s", drop, r.agent.Log())
			}
			if w, ok := why[drop]; ok && !r.agent.LogContains(w) {
				t.Errorf("without %s the agent does not say %q:\n%s", drop, w, r.agent.Log())
			}
		})
	}

	t.Run("without the node's /proc", func(t *testing.T) {
		r := runAsTheChart(t, bin, agent, procMountPath, chartCaps, false)
		if r.adoptedOrExited(t) {
			t.Errorf("the agent adopted the pod with its own /proc alone: the PID namespace is no real one\nlog:\n%s", r.agent.Log())
		}
	})
}

// chartAgent renders the chart with its defaults and returns the agent
// container and where it mounts the node's /proc, after checking that
// runAsTheChart can run it here.
func chartAgent(t *testing.T) (corev1.Container, string) {
	t.Helper()
	testenv.RequireRoot(t)
	for _, tool := range []string{"unshare", "setpriv", "mount", "ip"} {
		testenv.LookPath(t, tool)
	}
	c := renderChart(t)
	agent := c.daemonSet.Spec.Template.Spec.Containers[0]
	return agent, hostPathMount(t, c.daemonSet.Spec.Template.Spec, agent, "/proc")
}

// chartRun is one agent started by runAsTheChart, and its surroundings.
type chartRun struct {
	agent    *testenv.Agent
	node     *testenv.Node
	socket   string
	pod      *testenv.Pod
	cg       *testenv.Cgroup
	hostProc string // where the node's /proc is bound in the agent's mount namespace
}

// runAsTheChart starts the agent container's command line in a new node
// namespace, pod and cgroup: in a mount and PID namespace of its own, with
// the node's /proc bound read-only (unless withHostProc is false, when the
// flag points at the container's own /proc), and only caps.
func runAsTheChart(t *testing.T, bin string, agent corev1.Container, procMountPath string, caps []string, withHostProc bool) *chartRun {
	t.Helper()
	node := testenv.NewNode(t)
	r := &chartRun{node: node, cg: testenv.NewCgroup(t)}
	bpffs := testenv.NewBPFFS(t)
	r.pod = node.AddPod(t, testenv.PodConfig{Nameservers: []string{nowhere}})

	// The pod's pause-like process, running before the agent.
	ctx, cancel := context.WithCancel(context.Background())
	sleeper := r.pod.Command(ctx, nil, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = sleeper.Wait() })

	dir := t.TempDir()
	manifests := fmt.Sprintf(runningPodManifests, nodeName, r.pod.IPv4, r.pod.IPv4, r.pod.IPv6)
	if err := os.WriteFile(filepath.Join(dir, "pods.yaml"), []byte(manifests), 0o644); err != nil {
		t.Fatal(err)
	}
	r.socket = filepath.Join(dir, "run", "ztdns.sock")
	r.hostProc = filepath.Join(dir, strings.TrimPrefix(procMountPath, "/"))
	if err := os.MkdirAll(r.hostProc, 0o755); err != nil {
		t.Fatal(err)
	}
	procRoot := r.hostProc
	if !withHostProc {
		procRoot = "/proc"
	}
	args := containerArgs(t, agent, map[string]string{"NODE_NAME": nodeName, "HOST_IP": "127.0.0.1"}, map[string]string{
		// The source and the host's paths are the test's.
		"--kubeconfig":   "--config-dir=" + dir,
		"--socket":       "--socket=" + r.socket,
		"--bpffs":        "--bpffs=" + filepath.Join(bpffs, "ztdns"),
		"--proc-root":    "--proc-root=" + procRoot,
		"--cni-install":  "--cni-install=false",
		"--cni-bin-dir":  "",
		"--cni-conf-dir": "",
	})
	args = append(args, "--cgroup="+r.cg.Path, "--upstream=203.0.113.1")

	// What the container runtime does: a mount and PID namespace, the
	// node's /proc bound read-only at the chart's mount path, a /proc of
	// the new PID namespace, and the container's capabilities as the
	// bounding set (root's permitted and effective sets follow it at exec).
	bounding := "-all"
	for _, c := range caps {
		bounding += ",+" + strings.ToLower(c)
	}
	script := `hostproc=$1 caps=$2; shift 2
mount --bind /proc "$hostproc"
mount -o remount,bind,ro "$hostproc"
mount -t proc proc /proc
exec setpriv --bounding-set="$caps" --inh-caps=-all -- "$@"`
	wrapper := []string{"unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation=private", "--",
		"sh", "-ec", script, "sh", r.hostProc, bounding}
	r.agent = testenv.StartAgentIn(t, node, wrapper, bin, args...)
	return r
}

// podRow returns the running pod's row in `ztdns pods`, or nil.
func (r *chartRun) podRow(t *testing.T) *control.PodRow {
	t.Helper()
	rows, err := control.NewClient(r.socket, 5*time.Second).Pods(t.Context())
	if err != nil {
		t.Fatalf("ztdns pods: %v", err)
	}
	for i := range rows {
		if rows[i].Namespace == "shop" && rows[i].Name == "client" {
			return &rows[i]
		}
	}
	return nil
}

// adoptedOrExited waits until the agent is ready or has exited, and reports
// whether it adopted the pod. The agent decides on adoption before it first
// reports ready: with its first snapshot.
func (r *chartRun) adoptedOrExited(t *testing.T) bool {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for r.agent.Running() {
		st, err := control.NewClient(r.socket, 2*time.Second).Status(t.Context())
		if err == nil && st.Ready {
			row := r.podRow(t)
			t.Logf("ready; the pod's row: %+v", row)
			return row != nil && row.Marked
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent neither exited nor became ready\nlog:\n%s", r.agent.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("the agent exited: %s", lastLine(r.agent.Log()))
	return false
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// hostPathMount returns where container c mounts the pod's hostPath volume
// of path, and checks that it is read-only.
func hostPathMount(t *testing.T, pod corev1.PodSpec, c corev1.Container, path string) string {
	t.Helper()
	for _, v := range pod.Volumes {
		if v.HostPath == nil || v.HostPath.Path != path {
			continue
		}
		for _, m := range c.VolumeMounts {
			if m.Name == v.Name {
				if !m.ReadOnly {
					t.Errorf("the node's %s is mounted writable at %s", path, m.MountPath)
				}
				return m.MountPath
			}
		}
	}
	t.Fatalf("container %s mounts no hostPath %s", c.Name, path)
	return ""
}

var kubeletVar = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// containerArgs returns c's arguments after the kubelet's $(VAR) expansion
// from env, with the flags named in replace replaced by the given argument
// ("" drops the flag). Every replaced flag must be one the chart passes.
func containerArgs(t *testing.T, c corev1.Container, env, replace map[string]string) []string {
	t.Helper()
	var out []string
	seen := map[string]bool{}
	for _, a := range c.Args {
		a = kubeletVar.ReplaceAllStringFunc(a, func(m string) string {
			name := kubeletVar.FindStringSubmatch(m)[1]
			v, ok := env[name]
			if !ok {
				t.Fatalf("the chart's argument %q uses $(%s), which the test does not set", a, name)
			}
			return v
		})
		name, _, _ := strings.Cut(a, "=")
		if r, ok := replace[name]; ok {
			seen[name] = true
			if r != "" {
				out = append(out, r)
			}
			continue
		}
		out = append(out, a)
	}
	for name := range replace {
		if !seen[name] {
			t.Fatalf("the chart no longer passes %s; the test replaces it", name)
		}
	}
	return out
}

// effectiveCaps returns CapEff of the process the wrapper with pid started.
func effectiveCaps(t *testing.T, wrapper int) uint64 {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", agentPid(t, wrapper)))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^CapEff:\s*([0-9a-f]+)$`).FindSubmatch(status)
	if m == nil {
		t.Fatalf("no CapEff in %s", status)
	}
	v, err := strconv.ParseUint(string(m[1]), 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func capMask(t *testing.T, names []string) uint64 {
	t.Helper()
	var m uint64
	for _, n := range names {
		c, ok := capNumbers[n]
		if !ok {
			t.Fatalf("unknown capability %s", n)
		}
		m |= 1 << c
	}
	return m
}

// TestChartNothingPrivilegedByDefault is what a security review reads
// first: with the defaults, and with every value but the opt-in bpffs
// mount, no pod of the chart shares the node's PIDs or IPC and no
// container is privileged or adds more than the capabilities the agent
// needs (TestAgentRunsWithTheChartsPrivileges proves each one is needed).
// bpf.mountFS=true adds exactly one privileged container, mount-bpffs.
func TestChartNothingPrivilegedByDefault(t *testing.T) {
	allowed := append(slices.Clone(captureCaps), "NET_BIND_SERVICE")
	for _, sets := range [][]string{
		nil,
		{"mode=cleanup"},
		{"capture.enabled=false", "resolver.listen={[$(HOST_IP)]:53}"},
		{"cni.install=false"},
		{"metrics.bind=loopback"},
		{"bpf.mountFS=true"},
	} {
		pod := renderChart(t, sets...).daemonSet.Spec.Template.Spec
		if pod.HostPID || pod.HostIPC {
			t.Errorf("--set %v: hostPID %v, hostIPC %v; want neither", sets, pod.HostPID, pod.HostIPC)
		}
		var privileged []string
		for _, c := range slices.Concat(pod.InitContainers, pod.Containers) {
			sc := c.SecurityContext
			if sc == nil {
				t.Errorf("--set %v: container %s has no securityContext (the runtime's defaults would apply)", sets, c.Name)
				continue
			}
			if sc.Privileged != nil && *sc.Privileged {
				privileged = append(privileged, c.Name)
				continue
			}
			if sc.Capabilities == nil || !slices.Equal(caps(sc.Capabilities.Drop), []string{"ALL"}) {
				t.Errorf("--set %v: container %s does not drop ALL capabilities", sets, c.Name)
			}
			for _, add := range caps(sc.Capabilities.Add) {
				if !slices.Contains(allowed, add) {
					t.Errorf("--set %v: container %s adds %s, beyond %v", sets, c.Name, add, allowed)
				}
			}
		}
		want := []string(nil)
		if slices.Contains(sets, "bpf.mountFS=true") {
			want = []string{"mount-bpffs"}
		}
		if !slices.Equal(privileged, want) {
			t.Errorf("--set %v: privileged containers %q, want %q", sets, privileged, want)
		}
	}
}
