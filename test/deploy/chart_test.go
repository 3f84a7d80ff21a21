//go:build linux

package deploy

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/source/kube"
)

const (
	metricsPort = 15053
	// socketDir must be the same path in the container and on the host: the
	// agent writes the socket's path into the CNI configuration, and the
	// plugin runs on the host.
	socketDir = "/var/run/ztdns"
	// targetRSS is the agent's memory target with 20,000 names; the memory
	// limit must leave room above it.
	targetRSS = 40 << 20
)

// defaultArgs is the agent's command line with the chart's default values,
// flag by flag as the lead specified it for a cluster.
func defaultArgs() argList {
	return argList{
		"agent",
		"--kubeconfig=",
		"--node-name=$(NODE_NAME)",
		"--listen=169.254.20.53:53,[fd00:7a74:646e::53]:53",
		"--cluster-domain=cluster.local",
		"--metrics=[$(HOST_IP)]:15053", // the node's IP, never every interface
		"--socket=/var/run/ztdns/ztdns.sock",
		"--bpffs=/sys/fs/bpf/ztdns",
		"--capture=true",
		"--capture-port=10053",
		"--capture-sockets-per-pod=1024",
		"--mount-bpffs=false", // bpffs is the node's: a mount of its own would die with the container
		"--proc-root=/host/proc",
		"--vip-source=auto",
		"--max-names-per-namespace=100000",
		"--dns-capture-default=true",
		"--require-istio-enrollment=true",
		"--exclude-namespaces=kube-system", // istio-cni's excludeNamespaces default
		"--cni-install=true",
		"--cni-bin-dir=/host/opt/cni/bin",
		"--cni-conf-dir=/host/etc/cni/net.d",
		"--log-level=info",
		"--log-format=text",
	}
}

// captureOnlyFlags are the agent flags the chart passes with capture alone.
var captureOnlyFlags = []string{"--capture-port", "--capture-sockets-per-pod", "--mount-bpffs", "--proc-root"}

// argList is a command line whose flags are "--name=value".
type argList []string

// with returns a copy where the flag of each "--name=value" is replaced, or
// appended when absent.
func (a argList) with(flags ...string) argList {
	out := slices.Clone(a)
	for _, f := range flags {
		name, _, _ := strings.Cut(f, "=")
		i := slices.IndexFunc(out, func(s string) bool { return strings.HasPrefix(s, name+"=") })
		if i < 0 {
			out = append(out, f)
		} else {
			out[i] = f
		}
	}
	return out
}

// without returns a copy without the named flags.
func (a argList) without(names ...string) argList {
	return slices.DeleteFunc(slices.Clone(a), func(s string) bool {
		name, _, _ := strings.Cut(s, "=")
		return slices.Contains(names, name)
	})
}

// mount is one volume mount of the agent container and the host path behind it.
type mount struct {
	volume      string
	hostPath    string
	propagation corev1.MountPropagationMode // "" for none
	readOnly    bool
}

var (
	socketMount = mount{volume: "socket-dir", hostPath: socketDir}
	bpffsMount  = mount{volume: "bpffs", hostPath: "/sys/fs/bpf", propagation: corev1.MountPropagationHostToContainer}
	// Over the container's own cgroup mount: the agent attaches at the
	// first cgroup2 mount in /proc/mounts, which must be the node's root.
	cgroupMount = mount{volume: "cgroup", hostPath: "/sys/fs/cgroup", readOnly: true}
	netnsMount  = mount{volume: "netns-dir", hostPath: "/var/run/netns", propagation: corev1.MountPropagationHostToContainer, readOnly: true}
	// The node's /proc, read-only, instead of hostPID.
	procMount   = mount{volume: "host-proc", hostPath: "/proc", readOnly: true}
	cniBinMount = mount{volume: "cni-bin-dir", hostPath: "/opt/cni/bin"}
	cniConfMnt  = mount{volume: "cni-conf-dir", hostPath: "/etc/cni/net.d"}
)

// captureCaps are the capabilities of a container that loads, attaches or
// removes the capture path (deploy/README.md says why each is needed;
// TestAgentRunsWithTheChartsPrivileges runs the agent with these alone).
var captureCaps = []string{"NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}

// podWant is what the agent's pod template must hold.
type podWant struct {
	args argList
	// caps are the capabilities added to the agent container, sorted.
	caps    []string
	hostPID bool
	// initContainers by name; mount-bpffs, opt-in, is the one privileged
	// container; remove-capture, with capture off, runs `ztdns uninstall`.
	initContainers []string
	// removeCNI: remove-capture removes the CNI entry too.
	removeCNI bool
	// mounts of the agent container by mount path.
	mounts map[string]mount
	// apparmorUnconfined: the capture path reads other processes'
	// /proc/PID/ns/net, which container AppArmor profiles forbid.
	apparmorUnconfined bool
	// probeHost is where the kubelet probes the agent: "" (the pod's IP,
	// which is the node's) or 127.0.0.1 with metrics on loopback.
	probeHost string
	// scrapeAnnotations: prometheus.io/scrape and friends on the pod,
	// opt-in (metrics.scrapeAnnotations): with the ServiceMonitor too,
	// each agent would be scraped twice and the dashboard's sums doubled.
	scrapeAnnotations bool
	// seLinux is the agent container's seLinuxOptions.
	seLinux *corev1.SELinuxOptions
}

func defaultPod() podWant {
	return podWant{
		args: defaultArgs(),
		caps: sorted(append(slices.Clone(captureCaps), "NET_BIND_SERVICE")),
		mounts: map[string]mount{
			socketDir:             socketMount,
			"/sys/fs/bpf":         bpffsMount,
			"/sys/fs/cgroup":      cgroupMount,
			"/var/run/netns":      netnsMount,
			"/host/proc":          procMount,
			"/host/opt/cni/bin":   cniBinMount,
			"/host/etc/cni/net.d": cniConfMnt,
		},
		apparmorUnconfined: true,
	}
}

// captureOffPod is the agent's pod with capture.enabled=false and these
// flags: it serves with no privileges but the port, and its init container
// removes what an agent with capture left on the node (the programs, the
// pins, ztdns0), the CNI entry too when none is installed.
func captureOffPod(flags ...string) podWant {
	return podWant{
		args:           defaultArgs().with(append([]string{"--capture=false"}, flags...)...).without(captureOnlyFlags...),
		caps:           []string{"NET_BIND_SERVICE"},
		initContainers: []string{"remove-capture"},
		mounts: map[string]mount{
			socketDir:             socketMount,
			"/host/opt/cni/bin":   cniBinMount,
			"/host/etc/cni/net.d": cniConfMnt,
		},
	}
}

// change returns a copy of want changed by f.
func (w podWant) change(f func(*podWant)) podWant {
	w.mounts = maps.Clone(w.mounts)
	f(&w)
	return w
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

var defaultKinds = []string{
	"ServiceAccount/ztdns", "ClusterRole/ztdns", "ClusterRoleBinding/ztdns",
	"Service/ztdns-metrics", "DaemonSet/ztdns",
}

// TestChartAgent renders the chart in agent mode with its defaults and with
// the variants an operator sets, and checks the whole pod every time.
func TestChartAgent(t *testing.T) {
	tests := []struct {
		name  string
		sets  []string
		kinds []string
		pod   podWant
	}{
		{
			name:  "defaults",
			kinds: defaultKinds,
			pod:   defaultPod(),
		},
		{
			name:  "global DNS capture switch off",
			sets:  []string{"cni.ambient.dnsCapture=false"},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				w.args = w.args.with("--dns-capture-default=false")
			}),
		},
		{
			name:  "ambient pods captured without istio-cni's enrollment",
			sets:  []string{"cni.ambient.requireEnrollment=false"},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				w.args = w.args.with("--require-istio-enrollment=false")
			}),
		},
		{
			// An upgrade with --reuse-values from a chart without the value.
			name:  "enrollment requirement absent: the agent's default",
			sets:  []string{"cni.ambient.requireEnrollment=null"},
			kinds: defaultKinds,
			pod:   defaultPod(),
		},
		{
			name:  "namespaces excluded as istio-cni's excludeNamespaces",
			sets:  []string{"cni.excludeNamespaces={kube-system,monitoring}"},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				w.args = w.args.with("--exclude-namespaces=kube-system,monitoring")
			}),
		},
		{
			name:  "no namespace excluded",
			sets:  []string{"cni.excludeNamespaces={}"},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				w.args = w.args.with("--exclude-namespaces=")
			}),
		},
		{
			// An upgrade with --reuse-values from a chart without the value.
			name:  "exclude namespaces absent: istio-cni's default",
			sets:  []string{"cni.excludeNamespaces=null"},
			kinds: defaultKinds,
			pod:   defaultPod(),
		},
		{
			name:  "capture only the listed nameservers",
			sets:  []string{"capture.nameservers={10.96.0.10,169.254.20.10,fd00:10:96::/112}"},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				i := slices.Index(w.args, "--capture-port=10053")
				w.args = slices.Insert(slices.Clone(w.args), i+1, "--capture-nameservers=10.96.0.10,169.254.20.10,fd00:10:96::/112")
			}),
		},
		{
			name:  "capture nameservers absent: every destination",
			sets:  []string{"capture.nameservers=null"},
			kinds: defaultKinds,
			pod:   defaultPod(),
		},
		{
			name:  "sockets per pod",
			sets:  []string{"capture.socketsPerPod=256"},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				w.args = w.args.with("--capture-sockets-per-pod=256")
			}),
		},
		{
			// An upgrade with --reuse-values from a chart without the
			// value: the agent's default.
			name:  "sockets per pod absent: the agent's default",
			sets:  []string{"capture.socketsPerPod=null"},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				w.args = w.args.without("--capture-sockets-per-pod")
			}),
		},
		{
			// The agent serves with no privileges but the port; what an
			// agent with capture left on the node goes first (turned off
			// with an upgrade, the programs stayed attached, the pins and
			// ztdns0 in place), the CNI entry too when none is installed.
			name:  "capture disabled: the capture path removed, only serving, with no privileges but the port",
			sets:  []string{"capture.enabled=false", "resolver.listen={[$(HOST_IP)]:53}"},
			kinds: defaultKinds,
			pod:   captureOffPod("--listen=[$(HOST_IP)]:53"),
		},
		{
			name:  "capture disabled and CNI install off: the CNI entry removed too",
			sets:  []string{"capture.enabled=false", "resolver.listen={[$(HOST_IP)]:53}", "cni.install=false"},
			kinds: defaultKinds,
			pod: captureOffPod("--listen=[$(HOST_IP)]:53", "--cni-install=false").change(func(w *podWant) {
				w.args = w.args.without("--cni-bin-dir", "--cni-conf-dir")
				w.removeCNI = true
				delete(w.mounts, "/host/opt/cni/bin")
				delete(w.mounts, "/host/etc/cni/net.d")
			}),
		},
		{
			name:  "CNI install off",
			sets:  []string{"cni.install=false"},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				w.args = w.args.with("--cni-install=false").without("--cni-bin-dir", "--cni-conf-dir")
				delete(w.mounts, "/host/opt/cni/bin")
				delete(w.mounts, "/host/etc/cni/net.d")
			}),
		},
		{
			name:  "bpffs mounted by the chart: the one privileged container, opt-in",
			sets:  []string{"bpf.mountFS=true"},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				w.initContainers = []string{"mount-bpffs"}
			}),
		},
		{
			name: "capture port, VIP source, log format, netns dir and SELinux",
			sets: []string{
				"capture.port=5353",
				"resolver.vipSource=istiod",
				"logFormat=json",
				"cni.netnsDir=/run/containerd/netns",
				"seLinuxOptions.type=spc_t",
			},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				w.args = w.args.with("--capture-port=5353", "--vip-source=istiod", "--log-format=json")
				delete(w.mounts, "/var/run/netns")
				w.mounts["/run/containerd/netns"] = mount{volume: "netns-dir", hostPath: "/run/containerd/netns",
					propagation: corev1.MountPropagationHostToContainer, readOnly: true}
				w.seLinux = &corev1.SELinuxOptions{Type: "spc_t"}
			}),
		},
		{
			// Set, it wins over Istio's meshConfig.defaultServiceExportTo,
			// which the agent follows otherwise.
			name:  "ServiceEntries without exportTo seen in their own namespace only",
			sets:  []string{"resolver.defaultServiceExportTo={.,shared}"},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				w.args = w.args.with("--default-service-export-to=.,shared")
			}),
		},
		{
			// As Istio's `revision`: the agent follows istio-1-24's mesh config.
			name:  "istiod of a revision",
			sets:  []string{"resolver.istioRevision=1-24"},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				w.args = w.args.with("--istio-revision=1-24")
			}),
		},
		{
			// Istio's charts installed into another namespace: the agent
			// reads the mesh config and the VIP allocator there.
			name:  "istiod outside istio-system",
			sets:  []string{"resolver.istioNamespace=mesh"},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				w.args = w.args.with("--istio-namespace=mesh")
			}),
		},
		{
			// An upgrade with --reuse-values from a chart without the
			// value: istio-system, the agent's default.
			name:  "istiod namespace absent: istio-system",
			sets:  []string{"resolver.istioNamespace=null"},
			kinds: defaultKinds,
			pod:   defaultPod(),
		},
		{
			// As Istio's trustedZtunnelNamespace, which its OpenShift
			// profile sets: the agent looks for the node's ztunnel there.
			name:  "ztunnel in kube-system, istiod in istio-system",
			sets:  []string{"resolver.ztunnelNamespace=kube-system"},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				w.args = w.args.with("--ztunnel-namespace=kube-system")
			}),
		},
		{
			// An upgrade with --reuse-values from a chart without the
			// value: istiod's namespace, the agent's default.
			name:  "ztunnel namespace absent: istiod's",
			sets:  []string{"resolver.ztunnelNamespace=null"},
			kinds: defaultKinds,
			pod:   defaultPod(),
		},
		{
			// For istiod with PILOT_ENABLE_IP_AUTOALLOCATE=false.
			name:  "no VIPs",
			sets:  []string{"resolver.vipSource=none"},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				w.args = w.args.with("--vip-source=none")
			}),
		},
		{
			name:  "no budget of names per namespace",
			sets:  []string{"resolver.maxNamesPerNamespace=0"},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				w.args = w.args.with("--max-names-per-namespace=0")
			}),
		},
		{
			// An upgrade with --reuse-values from a chart without the
			// value: the agent's default.
			name:  "budget of names per namespace absent: the agent's default",
			sets:  []string{"resolver.maxNamesPerNamespace=null"},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				w.args = w.args.without("--max-names-per-namespace")
			}),
		},
		{
			name: "metrics on loopback: probed there, nothing to scrape",
			sets: []string{"metrics.bind=loopback"},
			kinds: []string{
				"ServiceAccount/ztdns", "ClusterRole/ztdns", "ClusterRoleBinding/ztdns", "DaemonSet/ztdns",
			},
			pod: defaultPod().change(func(w *podWant) {
				w.args = w.args.with("--metrics=127.0.0.1:15053")
				w.probeHost = "127.0.0.1"
			}),
		},
		{
			name:  "scrape annotations on, for a Prometheus that scrapes annotated pods",
			sets:  []string{"metrics.scrapeAnnotations=true"},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				w.scrapeAnnotations = true
			}),
		},
		{
			name: "ServiceMonitor on",
			sets: []string{"metrics.serviceMonitor.enabled=true"},
			kinds: []string{
				"ServiceAccount/ztdns", "ClusterRole/ztdns", "ClusterRoleBinding/ztdns",
				"Service/ztdns-metrics", "DaemonSet/ztdns", "ServiceMonitor/ztdns",
			},
			pod: defaultPod(),
		},
		{
			name: "resolver, domain, upstreams, log level and extra flags",
			sets: []string{
				"resolver.listen={169.254.20.53:53}",
				"clusterDomain=corp.example",
				"upstreams={203.0.113.53,198.51.100.53:5353}",
				"logLevel=debug",
				"extraArgs={--autopath,--ttl=10s}",
			},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				w.args = w.args.with(
					"--listen=169.254.20.53:53",
					"--cluster-domain=corp.example",
					"--log-level=debug",
					"--upstream=203.0.113.53,198.51.100.53:5353",
					"--autopath",
					"--ttl=10s",
				)
			}),
		},
		{
			// Only the first IPv4 and IPv6 address go on ztdns0; others
			// are served as they are.
			name:  "capture on with the node's address after the slots' bases",
			sets:  []string{"resolver.listen={169.254.20.53:53,[FD00:7a74:646e::53]:53,[$(HOST_IP)]:53}"},
			kinds: defaultKinds,
			pod: defaultPod().change(func(w *podWant) {
				w.args = w.args.with("--listen=169.254.20.53:53,[FD00:7a74:646e::53]:53,[$(HOST_IP)]:53")
			}),
		},
		{
			name:  "capture off on a link-local address outside ztdns0's range",
			sets:  []string{"capture.enabled=false", "resolver.listen={169.254.21.53:53}"},
			kinds: defaultKinds,
			pod:   captureOffPod("--listen=169.254.21.53:53"),
		},
		{
			name: "ResourceQuota for system-node-critical outside kube-system",
			sets: []string{"resourceQuota.enabled=true"},
			kinds: []string{
				"ResourceQuota/ztdns-critical-pods", "ServiceAccount/ztdns", "ClusterRole/ztdns",
				"ClusterRoleBinding/ztdns", "Service/ztdns-metrics", "DaemonSet/ztdns",
			},
			pod: defaultPod(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := renderChart(t, tt.sets...)
			if !slices.Equal(c.kinds, tt.kinds) {
				t.Fatalf("rendered objects:\n got %q\nwant %q", c.kinds, tt.kinds)
			}
			checkAgentDaemonSet(t, c, tt.pod)
		})
	}
}

// checkAgentDaemonSet checks every part of the agent's DaemonSet that
// matters to a node: placement, rollout, privileges, mounts, flags, probes
// and resources.
func checkAgentDaemonSet(t *testing.T, c *chart, want podWant) {
	t.Helper()
	ds := c.daemonSet
	if ds == nil {
		t.Fatal("no DaemonSet rendered")
	}
	if ds.Namespace != namespace {
		t.Errorf("DaemonSet namespace %q, want %q", ds.Namespace, namespace)
	}

	// A rolling update overlaps the old and the new agent on each node, so
	// the old one can hand over its DNS sockets.
	st := ds.Spec.UpdateStrategy
	if st.Type != "RollingUpdate" || st.RollingUpdate == nil {
		t.Fatalf("update strategy %+v, want RollingUpdate", st)
	}
	if got := st.RollingUpdate.MaxSurge; got == nil || *got != intstr.FromInt32(1) {
		t.Errorf("maxSurge %v, want 1", got)
	}
	if got := st.RollingUpdate.MaxUnavailable; got == nil || *got != intstr.FromInt32(0) {
		t.Errorf("maxUnavailable %v, want 0", got)
	}
	// The old pod is deleted only once the new one has been ready longer
	// than its agent waits to take over (pkg/agent: handoffSyncWait, 30 s,
	// plus handoffTimeout, 10 s): a new pod made ready by an old agent that
	// does not report not ready during the hand-over (an older version)
	// must not get the old pod deleted before it.
	if got := ds.Spec.MinReadySeconds; got < 40 {
		t.Errorf("minReadySeconds %d, want at least 40", got)
	}

	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork {
		t.Error("hostNetwork is false: the resolver and the capture hooks live in the node's network namespace")
	}
	if pod.DNSPolicy != corev1.DNSDefault {
		t.Errorf("dnsPolicy %q, want Default: the node's resolvers, not the cluster DNS ztdns stands in front of", pod.DNSPolicy)
	}
	if pod.HostPID != want.hostPID {
		t.Errorf("hostPID %v, want %v", pod.HostPID, want.hostPID)
	}
	if pod.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q, want system-node-critical", pod.PriorityClassName)
	}
	if c.serviceAccount == nil || pod.ServiceAccountName != c.serviceAccount.Name {
		t.Errorf("serviceAccountName %q is not the rendered ServiceAccount", pod.ServiceAccountName)
	}
	if want := []corev1.Toleration{{Operator: corev1.TolerationOpExists}}; !slices.Equal(pod.Tolerations, want) {
		t.Errorf("tolerations %+v, want %+v (every taint, so every node gets node DNS)", pod.Tolerations, want)
	}
	if want := map[string]string{"kubernetes.io/os": "linux"}; !maps.Equal(pod.NodeSelector, want) {
		t.Errorf("nodeSelector %v, want %v", pod.NodeSelector, want)
	}
	if got := pod.TerminationGracePeriodSeconds; got == nil || *got < 5 || *got > 30 {
		t.Errorf("terminationGracePeriodSeconds %v, want 5..30: long enough for in-flight forwards, short for node drains", got)
	}

	checkInitContainers(t, pod, want)
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want the agent alone", len(pod.Containers))
	}
	agent := pod.Containers[0]
	if !slices.Equal(agent.Command, []string{"ztdns"}) {
		t.Errorf("command %q, want [ztdns]", agent.Command)
	}
	if !slices.Equal(agent.Args, []string(want.args)) {
		t.Errorf("agent args:\n got %q\nwant %q", agent.Args, []string(want.args))
	}
	if len(agent.Ports) != 0 {
		t.Errorf("the agent declares ports %+v: in a hostNetwork pod they become hostPorts, and the scheduler keeps the surge pod of a rolling update off the node", agent.Ports)
	}
	checkEnv(t, agent)
	checkSecurity(t, agent, want)
	checkMounts(t, pod, agent.VolumeMounts, want.mounts)
	checkProbes(t, agent, want.probeHost)
	checkResources(t, agent)
	annotations := ds.Spec.Template.Annotations
	wantAnnotations := map[string]string{}
	if want.scrapeAnnotations {
		wantAnnotations = map[string]string{
			"prometheus.io/scrape": "true",
			"prometheus.io/port":   strconv.Itoa(metricsPort),
			"prometheus.io/path":   "/metrics",
		}
	}
	if got := annotations; !maps.Equal(got, wantAnnotations) {
		t.Errorf("pod annotations %v, want %v", got, wantAnnotations)
	}
}

func checkInitContainers(t *testing.T, pod corev1.PodSpec, want podWant) {
	t.Helper()
	var names []string
	for _, c := range pod.InitContainers {
		names = append(names, c.Name)
	}
	if !slices.Equal(names, want.initContainers) {
		t.Fatalf("init containers %q, want %q", names, want.initContainers)
	}
	for _, c := range pod.InitContainers {
		if c.Name == "remove-capture" {
			checkUninstallContainer(t, pod, c, want.removeCNI)
			continue
		}
		// mount-bpffs is the only privileged container, because a mount
		// propagates back to the host (Bidirectional) only from one.
		sc := c.SecurityContext
		if sc == nil || sc.Privileged == nil || !*sc.Privileged {
			t.Errorf("init container %s is not privileged: the API server rejects its Bidirectional mount", c.Name)
		}
		want := []corev1.VolumeMount{{Name: "bpffs", MountPath: "/sys/fs/bpf", MountPropagation: ptr(corev1.MountPropagationBidirectional)}}
		if !slices.EqualFunc(c.VolumeMounts, want, mountEqual) {
			t.Errorf("init container %s mounts %+v, want only the host's /sys/fs/bpf, Bidirectional", c.Name, c.VolumeMounts)
		}
	}
}

// checkUninstallContainer checks a container that runs `ztdns uninstall`:
// programs, pins and ztdns0, and with cni the CNI entry, with the
// capabilities and mounts that takes.
func checkUninstallContainer(t *testing.T, pod corev1.PodSpec, c corev1.Container, cni bool) {
	t.Helper()
	// The node's /proc: the marked pods' namespaces, whose sockets kept
	// connected to the resolver it aborts.
	want := []string{"ztdns", "uninstall", "--bpffs=/sys/fs/bpf/ztdns", "--proc-root=/host/proc"}
	mounts := map[string]mount{"/sys/fs/bpf": bpffsMount, "/sys/fs/cgroup": cgroupMount, "/host/proc": procMount}
	if cni {
		want = append(want, "--cni-bin-dir=/host/opt/cni/bin", "--cni-conf-dir=/host/etc/cni/net.d")
		mounts["/host/opt/cni/bin"] = cniBinMount
		mounts["/host/etc/cni/net.d"] = cniConfMnt
	}
	if !slices.Equal(c.Command, want) {
		t.Errorf("%s command %q, want %q", c.Name, c.Command, want)
	}
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.Capabilities == nil {
		t.Fatalf("%s security context %+v, want unprivileged with capabilities", c.Name, sc)
	}
	if got := sorted(caps(sc.Capabilities.Add)); !slices.Equal(got, captureCaps) {
		t.Errorf("%s capabilities %q, want %q", c.Name, got, captureCaps)
	}
	checkMounts(t, pod, c.VolumeMounts, mounts)
}

func checkEnv(t *testing.T, agent corev1.Container) {
	t.Helper()
	env := map[string]string{}
	for _, e := range agent.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			env[e.Name] = "field:" + e.ValueFrom.FieldRef.FieldPath
		case e.ValueFrom != nil && e.ValueFrom.ResourceFieldRef != nil:
			env[e.Name] = "resource:" + e.ValueFrom.ResourceFieldRef.Resource
		default:
			env[e.Name] = e.Value
		}
	}
	// No GOMEMLIMIT: the agent takes the Go runtime's limit from its
	// cgroup's, and follows a resize, which a fixed figure would not; its
	// container's limit from the downward API only where it cannot find
	// its cgroup.
	want := map[string]string{
		"NODE_NAME": "field:spec.nodeName", // --node-name=$(NODE_NAME)
		"POD_UID":   "field:metadata.uid",  // --pod-uid's default: whom a hand-over refuses
		// --pod-template-generation's default: a hand-over refuses a lower one
		"POD_TEMPLATE_GENERATION": "field:metadata.labels['pod-template-generation']",
		"HOST_IP":                 "field:status.hostIP",
		// --memory-limit's default: the agent's limit where its cgroup's
		// cannot be read (README, "The GC's limit follows the cgroup's")
		"MEMORY_LIMIT": "resource:limits.memory",
	}
	if !maps.Equal(env, want) {
		t.Errorf("env %v, want %v", env, want)
	}
}

func checkSecurity(t *testing.T, agent corev1.Container, want podWant) {
	t.Helper()
	sc := agent.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("the agent has no securityContext with capabilities")
	}
	if sc.Privileged == nil || *sc.Privileged {
		t.Error("the agent must set privileged: false; it runs with the capabilities it needs")
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Errorf("runAsUser %v, want 0: the host directories it writes are root's", sc.RunAsUser)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem is not true: the agent writes only to its host mounts")
	}
	if got := caps(sc.Capabilities.Drop); !slices.Equal(got, []string{"ALL"}) {
		t.Errorf("drops %q, want [ALL]", got)
	}
	if got := sorted(caps(sc.Capabilities.Add)); !slices.Equal(got, want.caps) {
		t.Errorf("adds capabilities %q, want %q", got, want.caps)
	}
	unconfined := sc.AppArmorProfile != nil && sc.AppArmorProfile.Type == corev1.AppArmorProfileTypeUnconfined
	if unconfined != want.apparmorUnconfined {
		t.Errorf("AppArmor profile %+v, want unconfined %v", sc.AppArmorProfile, want.apparmorUnconfined)
	}
	if !reflect.DeepEqual(sc.SELinuxOptions, want.seLinux) {
		t.Errorf("seLinuxOptions %+v, want %+v", sc.SELinuxOptions, want.seLinux)
	}
}

func caps(cs []corev1.Capability) []string {
	var out []string
	for _, c := range cs {
		out = append(out, string(c))
	}
	return out
}

// checkMounts checks the agent's mounts one by one against the host paths
// of the pod's volumes.
func checkMounts(t *testing.T, pod corev1.PodSpec, mounts []corev1.VolumeMount, want map[string]mount) {
	t.Helper()
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	got := map[string]mount{}
	for _, m := range mounts {
		v, ok := volumes[m.Name]
		if !ok || v.HostPath == nil {
			t.Errorf("mount %s uses volume %q, which is no hostPath volume of the pod", m.MountPath, m.Name)
			continue
		}
		var prop corev1.MountPropagationMode
		if m.MountPropagation != nil {
			prop = *m.MountPropagation
		}
		got[m.MountPath] = mount{volume: m.Name, hostPath: v.HostPath.Path, propagation: prop, readOnly: m.ReadOnly}
	}
	if !maps.Equal(got, want) {
		t.Errorf("agent mounts:\n got %+v\nwant %+v", got, want)
	}
	// Init containers use the same volumes; no volume is left unused.
	used := map[string]bool{}
	for _, c := range slices.Concat(pod.InitContainers, pod.Containers) {
		for _, m := range c.VolumeMounts {
			used[m.Name] = true
		}
	}
	for name := range volumes {
		if !used[name] {
			t.Errorf("volume %s is mounted by no container", name)
		}
	}
}

func checkProbes(t *testing.T, agent corev1.Container, host string) {
	t.Helper()
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{
		{"startup", agent.StartupProbe, "/healthz"},
		{"liveness", agent.LivenessProbe, "/healthz"},
		{"readiness", agent.ReadinessProbe, "/readyz"},
	} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("no %s probe over HTTP", p.name)
			continue
		}
		g := p.probe.HTTPGet
		if g.Path != p.path || g.Port != intstr.FromInt32(metricsPort) || g.Host != host {
			t.Errorf("%s probe GET %s on host %q port %s, want %s on host %q port %d", p.name, g.Path, g.Host, g.Port.String(), p.path, host, metricsPort)
		}
	}
}

func checkResources(t *testing.T, agent corev1.Container) {
	t.Helper()
	r := agent.Resources
	limit, ok := r.Limits[corev1.ResourceMemory]
	if !ok {
		t.Fatal("no memory limit")
	}
	request := r.Requests[corev1.ResourceMemory]
	if limit.Cmp(*resource.NewQuantity(2*targetRSS, resource.BinarySI)) < 0 {
		t.Errorf("memory limit %s leaves no headroom over the %d MiB target", limit.String(), targetRSS>>20)
	}
	if request.Cmp(*resource.NewQuantity(targetRSS, resource.BinarySI)) < 0 || request.Cmp(limit) > 0 {
		t.Errorf("memory request %s, want between the %d MiB target and the limit %s", request.String(), targetRSS>>20, limit.String())
	}
	if _, ok := r.Requests[corev1.ResourceCPU]; !ok {
		t.Error("no CPU request")
	}
	if cpu, ok := r.Limits[corev1.ResourceCPU]; ok {
		t.Errorf("CPU limit %s: throttling a resolver shows as DNS latency", cpu.String())
	}
}

// TestChartRBAC checks that the agent's ClusterRole grants exactly what its
// Kubernetes source uses, read-only, and is bound to the pod's account: of
// istiod's ConfigMaps, the VIP allocator lock and the mesh config of
// istiod's revision (resolver.istioRevision), by name.
func TestChartRBAC(t *testing.T) {
	for _, rev := range []string{"", "default", "1-24"} {
		t.Run("revision "+rev, func(t *testing.T) {
			c := renderChart(t, "resolver.istioRevision="+rev)
			checkRBAC(t, c, kube.PolicyRulesFor(rev))
			mesh := kube.MeshConfigMapName(rev)
			if !slices.ContainsFunc(c.clusterRole.Rules, func(r rbacv1.PolicyRule) bool {
				return slices.Equal(r.Resources, []string{"configmaps"}) && slices.Equal(r.ResourceNames, []string{mesh})
			}) {
				t.Errorf("the ClusterRole does not let the agent read the mesh config %s: %+v", mesh, c.clusterRole.Rules)
			}
		})
	}
}

// checkRBAC checks the chart's RBAC objects against the rules the agent's
// source needs.
func checkRBAC(t *testing.T, c *chart, rules []kube.PolicyRule) {
	t.Helper()
	if c.clusterRole == nil || c.clusterRoleBinding == nil || c.serviceAccount == nil {
		t.Fatalf("RBAC objects missing: %q", c.kinds)
	}
	readOnly := []string{"get", "list", "watch"}
	granted := map[string][]string{} // "group/resource[names]" → verbs
	for _, r := range c.clusterRole.Rules {
		if len(r.NonResourceURLs) != 0 {
			t.Errorf("rule %+v: want resource rules", r)
		}
		for _, v := range r.Verbs {
			if !slices.Contains(readOnly, v) {
				t.Errorf("rule %+v grants %q: the agent only reads", r, v)
			}
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				k := fmt.Sprintf("%s/%s%v", g, res, r.ResourceNames)
				granted[k] = sorted(append(granted[k], r.Verbs...))
			}
		}
	}
	needed := map[string][]string{}
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				k := fmt.Sprintf("%s/%s%v", g, res, r.ResourceNames)
				needed[k] = sorted(append(needed[k], r.Verbs...))
			}
		}
	}
	if !maps.EqualFunc(granted, needed, slices.Equal) {
		t.Errorf("the ClusterRole grants\n %v\nbut the agent's source (pkg/source/kube.PolicyRules) uses\n %v", granted, needed)
	}

	b := c.clusterRoleBinding
	wantRef := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: c.clusterRole.Name}
	if b.RoleRef != wantRef {
		t.Errorf("binding refers to %+v, want %+v", b.RoleRef, wantRef)
	}
	wantSubjects := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: c.serviceAccount.Name, Namespace: namespace}}
	if !slices.Equal(b.Subjects, wantSubjects) {
		t.Errorf("binding subjects %+v, want %+v", b.Subjects, wantSubjects)
	}
	if c.serviceAccount.Namespace != namespace {
		t.Errorf("ServiceAccount in %q, want %q", c.serviceAccount.Namespace, namespace)
	}
}

// TestChartMetrics checks the metrics Service and the ServiceMonitor that
// scrapes it: headless, selecting the agent's pods, port named and targeted
// by number (the pods declare no port).
func TestChartMetrics(t *testing.T) {
	c := renderChart(t, "metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prometheus")
	svc := c.service
	if svc == nil || c.daemonSet == nil || c.serviceMonitor == nil {
		t.Fatalf("missing objects: %q", c.kinds)
	}
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("metrics Service clusterIP %q, want None (one endpoint per node)", svc.Spec.ClusterIP)
	}
	podLabels := c.daemonSet.Spec.Template.Labels
	if !isSubset(svc.Spec.Selector, podLabels) || len(svc.Spec.Selector) == 0 {
		t.Errorf("Service selector %v does not select the agent's pods %v", svc.Spec.Selector, podLabels)
	}
	wantPorts := []corev1.ServicePort{{Name: "http-metrics", Port: metricsPort, TargetPort: intstr.FromInt32(metricsPort), Protocol: corev1.ProtocolTCP}}
	if !slices.Equal(svc.Spec.Ports, wantPorts) {
		t.Errorf("Service ports %+v, want %+v", svc.Spec.Ports, wantPorts)
	}

	sm := c.serviceMonitor
	if got := lookup(sm, "apiVersion"); got != "monitoring.coreos.com/v1" {
		t.Errorf("ServiceMonitor apiVersion %v", got)
	}
	if got := lookup(sm, "metadata", "labels", "release"); got != "prometheus" {
		t.Errorf("ServiceMonitor label release=%v, want the value's prometheus", got)
	}
	if got := lookup(sm, "metadata", "namespace"); got != namespace {
		t.Errorf("ServiceMonitor namespace %v, want %s", got, namespace)
	}
	selector, _ := lookup(sm, "spec", "selector", "matchLabels").(map[string]any)
	if len(selector) == 0 {
		t.Fatal("ServiceMonitor selects nothing")
	}
	for k, v := range selector {
		if svc.Labels[k] != v {
			t.Errorf("ServiceMonitor selects %s=%v, which the Service lacks (labels %v)", k, v, svc.Labels)
		}
	}
	if got := lookup(sm, "spec", "namespaceSelector", "matchNames"); !slices.Equal(toStrings(got), []string{namespace}) {
		t.Errorf("ServiceMonitor namespaces %v, want [%s]", got, namespace)
	}
	endpoints, _ := lookup(sm, "spec", "endpoints").([]any)
	if len(endpoints) != 1 {
		t.Fatalf("ServiceMonitor endpoints %v, want one", endpoints)
	}
	ep, _ := endpoints[0].(map[string]any)
	if ep["port"] != "http-metrics" || ep["path"] != "/metrics" {
		t.Errorf("ServiceMonitor endpoint %v, want port http-metrics, path /metrics", ep)
	}
}

// TestChartCleanupMode checks the DaemonSet that removes ztdns from every
// node before an uninstall: all old agents go first, then `ztdns uninstall`
// runs with the privileges and mounts it needs, and the pod idles.
func TestChartCleanupMode(t *testing.T) {
	c := renderChart(t, "mode=cleanup")
	want := []string{"ServiceAccount/ztdns", "ClusterRole/ztdns", "ClusterRoleBinding/ztdns", "DaemonSet/ztdns"}
	if !slices.Equal(c.kinds, want) {
		t.Fatalf("rendered objects %q, want %q", c.kinds, want)
	}
	ds := c.daemonSet
	ru := ds.Spec.UpdateStrategy.RollingUpdate
	if ru == nil || ru.MaxSurge == nil || *ru.MaxSurge != intstr.FromInt32(0) ||
		ru.MaxUnavailable == nil || *ru.MaxUnavailable != intstr.FromString("100%") {
		t.Errorf("cleanup rollout %+v, want maxSurge 0 and maxUnavailable 100%%: no agent may run beside the cleanup", ru)
	}
	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork {
		t.Error("cleanup needs the host network namespace to delete ztdns0")
	}
	if len(pod.InitContainers) != 2 || pod.InitContainers[0].Name != "uninstall" || pod.InitContainers[1].Name != "remove-state" {
		t.Fatalf("init containers %+v, want uninstall, then remove-state", pod.InitContainers)
	}
	u := pod.InitContainers[0]
	rs := pod.InitContainers[1]
	if want := []string{"ztdns", "remove-state", "--dir=" + socketDir}; !slices.Equal(rs.Command, want) {
		t.Errorf("remove-state command %q, want %q", rs.Command, want)
	}
	if sc := rs.SecurityContext; sc == nil || sc.Capabilities == nil || len(sc.Capabilities.Add) != 0 {
		t.Errorf("remove-state has privileges: %+v", sc)
	}
	if want := []corev1.VolumeMount{{Name: "socket-dir", MountPath: socketDir}}; !slices.EqualFunc(rs.VolumeMounts, want, mountEqual) {
		t.Errorf("remove-state mounts %+v, want the state directory alone", rs.VolumeMounts)
	}
	checkUninstallContainer(t, pod, u, true)
	if len(pod.Containers) != 1 || !slices.Equal(pod.Containers[0].Command, []string{"ztdns", "idle"}) {
		t.Errorf("containers %+v, want one idling", pod.Containers)
	}
	if idle := pod.Containers[0].SecurityContext; idle == nil || idle.Capabilities == nil || len(idle.Capabilities.Add) != 0 {
		t.Errorf("the idle container has privileges: %+v", idle)
	}
}

// TestChartRejectsBadValues checks that values.schema.json, or a template's
// fail, stops mistakes before they reach a node.
func TestChartRejectsBadValues(t *testing.T) {
	tests := []struct {
		name string
		set  string
		path string // what helm's message must name
	}{
		{"unknown log level", "logLevel=verbose", "/logLevel"},
		{"unknown mode", "mode=remove", "/mode"},
		{"no surge: the handoff needs old and new to overlap", "updateStrategy.maxSurge=0", "/updateStrategy/maxSurge"},
		{"negative minReadySeconds", "updateStrategy.minReadySeconds=-1", "/updateStrategy/minReadySeconds"},
		{"relative CNI bin dir", "cni.binDir=opt/cni/bin", "/cni/binDir"},
		{"port out of range", "metrics.port=70000", "/metrics/port"},
		{"metrics on every interface", "metrics.bind=all", "/metrics/bind"},
		{"a ServiceMonitor for metrics on loopback", "metrics.bind=loopback,metrics.serviceMonitor.enabled=true", "nothing off the node can scrape loopback"},
		{"scrape annotations for metrics on loopback", "metrics.bind=loopback,metrics.scrapeAnnotations=true", "nothing off the node can scrape loopback"},
		// Nothing would feed them: every alert would stay silent.
		{"alerts for metrics on loopback", "metrics.bind=loopback,metrics.prometheusRule.enabled=true", "metrics.prometheusRule.enabled needs metrics.bind=hostIP"},
		{"no resolver address", "resolver.listen=null", "/resolver"},
		{"misspelt value", "capture.enable=false", "/capture"},
		{"an Istio revision that names no ConfigMap", "resolver.istioRevision=Canary_1", "/resolver/istioRevision"},
		{"a ztunnel namespace no namespace can have", "resolver.ztunnelNamespace=Kube_System", "/resolver/ztunnelNamespace"},
		{"an istiod namespace no namespace can have", "resolver.istioNamespace=Istio_System", "/resolver/istioNamespace"},
		{"capture port 53: istio-cni's in-pod rules would take the queries", "capture.port=53", "/capture/port"},
		{"a capture nameserver by name: the agent takes addresses only", "capture.nameservers={kube-dns.kube-system}", "/capture/nameservers/0"},
		{"two capture nameservers in one item", `capture.nameservers[0]=10.96.0.10\,169.254.20.10`, "/capture/nameservers/0"},
		{"a capture nameserver with a space", "capture.nameservers={10.96.0.10 }", "/capture/nameservers/0"},
		{"an IPv4 capture nameserver longer than /32", "capture.nameservers={10.96.0.10/33}", "/capture/nameservers/0"},
		{"an IPv4 capture nameserver of three octets", "capture.nameservers={1.2.3}", "/capture/nameservers/0"},
		{"an IPv6 capture nameserver longer than /128", "capture.nameservers={2001:db8::/129}", "/capture/nameservers/0"},
		{"capture nameservers with capture off", "capture.enabled=false,capture.nameservers={10.96.0.10}", "capture.nameservers needs capture.enabled=true"},
		{"capture off serving on ztdns0's address, which only capture makes", "capture.enabled=false", "resolver.listen has 169.254.20.53:53"},
		{"capture off serving on ztdns0's IPv6 address", "capture.enabled=false,resolver.listen={10.0.0.1:53,[fd00:7a74:646e::53]:53}", "resolver.listen has [fd00:7a74:646e::53]:53"},
		{"capture off serving on another slot address of ztdns0", "capture.enabled=false,resolver.listen={169.254.20.55:53}", "resolver.listen has 169.254.20.55:53, an address of the ztdns0 interface"},
		{"capture off serving on another IPv6 slot address of ztdns0", "capture.enabled=false,resolver.listen={10.0.0.1:53,[FD00:7a74:646e::54]:53}", "resolver.listen has [FD00:7a74:646e::54]:53, an address of the ztdns0 interface"},
		// As `helm upgrade --reuse-values --set capture.enabled=true` keeps
		// the listen address capture off asked for: on ztdns0, the node's
		// address would take the routes to its neighbours.
		{"capture on with the node's address first", "resolver.listen={[$(HOST_IP)]:53}", "resolver.listen has [$(HOST_IP)]:53 before an IPv4 and an IPv6 address: on the node it could be the first of its family"},
		{"capture on with the node's address first unbracketed", "resolver.listen={$(HOST_IP):53}", "resolver.listen has $(HOST_IP):53 before an IPv4 and an IPv6 address"},
		// On an IPv6 node it would be the first IPv6 address.
		{"capture on with the node's address before any IPv6 one", "resolver.listen={169.254.20.53:53,[$(HOST_IP)]:53}", "resolver.listen has [$(HOST_IP)]:53 before an IPv4 and an IPv6 address"},
		{"capture on with a routable IPv4 address in brackets first", "resolver.listen={[10.0.0.1]:53,169.254.20.53:53}", "resolver.listen's first IPv4 address, [10.0.0.1]:53, is not link-local"},
		{"capture off serving on ztdns0's address in brackets", "capture.enabled=false,resolver.listen={[169.254.20.53]:53}", "resolver.listen has [169.254.20.53]:53, an address of the ztdns0 interface"},
		{"capture on with a routable IPv4 address first", "resolver.listen={10.0.0.1:53,169.254.20.53:53}", "resolver.listen's first IPv4 address, 10.0.0.1:53, is not link-local"},
		{"capture on with a non-ULA IPv6 address first", "resolver.listen={169.254.20.53:53,[2001:db8::1]:53,[fd00:7a74:646e::53]:53}", "resolver.listen's first IPv6 address, [2001:db8::1]:53, is not a ULA (fd00::/8)"},
		{"more capture nameservers than the agent takes", "capture.nameservers={10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4,10.0.0.5,10.0.0.6,10.0.0.7,10.0.0.8,10.0.0.9}", "/capture/nameservers"},
		{"unknown VIP source", "resolver.vipSource=kube", "/resolver/vipSource"},
		{"default exportTo that is no namespace", "resolver.defaultServiceExportTo={Team-A}", "/resolver/defaultServiceExportTo"},
		{"unknown log format", "logFormat=xml", "/logFormat"},
		{"relative netns dir", "cni.netnsDir=run/netns", "/cni/netnsDir"},
		{"misspelt SELinux field", "seLinuxOptions.typ=spc_t", "/seLinuxOptions"},
		// The agent refuses a domain it cannot serve names under: one
		// empty label, or a character no DNS name of a cluster has.
		{"cluster domain with an empty label", "clusterDomain=cluster..local", "/clusterDomain"},
		{"cluster domain with a leading dot", "clusterDomain=.cluster.local", "/clusterDomain"},
		{"cluster domain in upper case", "clusterDomain=Cluster.local", "/clusterDomain"},
		{"cluster domain with a label ending in a hyphen", "clusterDomain=cluster-.local", "/clusterDomain"},
		{"cluster domain with an underscore", "clusterDomain=cluster_local", "/clusterDomain"},
		{"cluster domain with a space", "clusterDomain=cluster local", "/clusterDomain"},
		{"empty cluster domain", "clusterDomain=", "/clusterDomain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tryHelm(t, "template", release, chartDir, "--set", tt.set)
			if err == nil {
				t.Fatalf("helm template --set %s succeeded; want the schema to reject it", tt.set)
			}
			if !strings.Contains(err.Error(), tt.path) {
				t.Errorf("helm's error does not name %s:\n%v", tt.path, err)
			}
		})
	}
}

// TestChartNameserverPattern: the schema takes as a capture.nameservers
// item what the agent's --capture-nameservers parses (an address or a CIDR,
// IPv4 or IPv6, no zone) and nothing else, so helm refuses what would
// crashloop the agent. Only a CIDR's mask is left to the agent.
func TestChartNameserverPattern(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), chartDir, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var schema struct {
		Properties struct {
			Capture struct {
				Properties struct {
					Nameservers struct {
						Items struct {
							AnyOf []struct{ Pattern string }
						}
					}
				}
			}
		}
	}
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatal(err)
	}
	var patterns []*regexp.Regexp
	for _, p := range schema.Properties.Capture.Properties.Nameservers.Items.AnyOf {
		patterns = append(patterns, regexp.MustCompile(p.Pattern))
	}
	if len(patterns) == 0 {
		t.Fatal("no anyOf patterns for capture.nameservers items")
	}
	taken := func(s string) bool {
		return slices.ContainsFunc(patterns, func(re *regexp.Regexp) bool { return re.MatchString(s) })
	}
	parsed := func(s string) bool {
		_, err := redirect.ParseCaptureNameserver(s)
		return err == nil
	}
	check := func(s string) {
		t.Helper()
		if got, want := taken(s), parsed(s); got != want {
			t.Errorf("schema takes %q: %v; the agent parses it: %v", s, got, want)
		}
	}
	for _, s := range []string{
		"10.96.0.10", "10.96.0.0/16", "0.0.0.0/0", "255.255.255.255/32", "10.96.0.10/33", "1.2.3", "1.2.3.4.5", "256.0.0.1",
		"010.0.0.1", "1.2.3.4/01", "1.2.3.4/", "fd00:10:96::a", "2001:db8::/128", "2001:db8::/129", "::", "::/0", ":::",
		"1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1::2::3", "12345::", "g::1",
		"::ffff:198.51.100.48/124", "::ffff:0:1.2.3.4", "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5::1.2.3.4", "1:2:3:4:5:6::1.2.3.4",
		"fe80::1%eth0", "kube-dns", "10.96.0.10 ", "",
	} {
		check(s)
	}
	// Strings of the characters addresses are made of, and address-like
	// ones: groups, one ellipsis or none, an IPv4 tail, a length.
	rng := rand.New(rand.NewPCG(1, 2))
	const chars = "0123456789abcdefABCDEF:./"
	for range 20000 {
		b := make([]byte, 1+rng.IntN(20))
		for i := range b {
			b[i] = chars[rng.IntN(len(chars))]
		}
		check(string(b))
	}
	for range 20000 {
		var groups []string
		for range rng.IntN(10) {
			groups = append(groups, strconv.FormatUint(uint64(rng.IntN(0x10000)), 16))
		}
		s := strings.Join(groups, ":")
		if j := rng.IntN(len(groups) + 1); rng.IntN(3) > 0 {
			s = strings.Join(groups[:j], ":") + "::" + strings.Join(groups[j:], ":")
		}
		if rng.IntN(3) == 0 {
			if !strings.HasSuffix(s, ":") {
				s += ":"
			}
			s += fmt.Sprintf("%d.%d.%d.%d", rng.IntN(300), rng.IntN(300), rng.IntN(300), rng.IntN(300))
		}
		if rng.IntN(2) == 0 {
			s += "/" + strconv.Itoa(rng.IntN(140))
		}
		check(s)
	}
}

// TestChartLint runs `helm lint --strict` on the chart with its defaults and
// with every variant the other tests render.
func TestChartLint(t *testing.T) {
	tests := []struct {
		name string
		sets []string
	}{
		{"defaults", nil},
		{"capture disabled", []string{"capture.enabled=false", "resolver.listen={[$(HOST_IP)]:53}"}},
		{"capture nameservers", []string{"capture.nameservers={10.96.0.10,fd00:10:96::a}"}},
		{"DNS capture switch off", []string{"cni.ambient.dnsCapture=false"}},
		{"ServiceMonitor on", []string{"metrics.serviceMonitor.enabled=true"}},
		{"cleanup mode", []string{"mode=cleanup"}},
		{"another cluster domain", []string{"clusterDomain=cluster-1.example."}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"lint", "--strict", chartDir, "--namespace", namespace}, setArgs(tt.sets)...)
			out := runHelm(t, args...)
			if !strings.Contains(string(out), "0 chart(s) failed") {
				t.Errorf("helm lint:\n%s", out)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func mountEqual(a, b corev1.VolumeMount) bool {
	pa, pb := corev1.MountPropagationMode(""), corev1.MountPropagationMode("")
	if a.MountPropagation != nil {
		pa = *a.MountPropagation
	}
	if b.MountPropagation != nil {
		pb = *b.MountPropagation
	}
	return a.Name == b.Name && a.MountPath == b.MountPath && a.ReadOnly == b.ReadOnly && pa == pb
}

func isSubset(small, big map[string]string) bool {
	for k, v := range small {
		if big[k] != v {
			return false
		}
	}
	return true
}

// lookup walks nested maps of a generic object.
func lookup(obj map[string]any, path ...string) any {
	var cur any = obj
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	return cur
}

func toStrings(v any) []string {
	list, _ := v.([]any)
	var out []string
	for _, x := range list {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}
