package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/ztdns/ztdns/pkg/accesslog"
	"github.com/ztdns/ztdns/pkg/agent"
	capturectl "github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/cni"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/resolvconf"
	"github.com/ztdns/ztdns/pkg/resolver"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/resolver/table"
	"github.com/ztdns/ztdns/pkg/resolver/vip"
	"github.com/ztdns/ztdns/pkg/source"
	"github.com/ztdns/ztdns/pkg/source/configdir"
	"github.com/ztdns/ztdns/pkg/source/kube"
)

// The resolver's default addresses: link-local on an interface the agent owns,
// port 53 for whoever asks them directly. Slot 0 of each family: with
// capture, the agent adds the slots on --capture-port itself.
var defaultListen = []netip.AddrPort{
	netip.AddrPortFrom(redirect.DefaultResolver4()[0].Addr(), 53),
	netip.AddrPortFrom(redirect.DefaultResolver6()[0].Addr(), 53),
}

// maxTTL bounds --ttl (RFC 2181 allows 2^31-1 s): past it, a Service's
// changed address would reach pods that late.
const maxTTL = 24 * time.Hour

// defaultGCPercent is the agent's GOGC unless the environment sets one. Its
// heap is mostly the name table and the source's objects, which live long,
// and a local answer allocates nothing: collecting when the heap has grown
// by half (not all) of what is live keeps it near 1.5 times the live heap
// instead of 2, and costs GC work only where something allocates
// (forwarding, table updates). A memory limit still applies: the agent
// gives the runtime its cgroup's, less what the runtime does not count
// (GOMEMLIMIT's when lower; pkg/agent's memoryLimiter).
const defaultGCPercent = 50

func newAgentCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent: resolver, capture and control socket",
		Long: `Run the node agent: the resolver, the eBPF capture of marked pods' DNS, the
CNI plugin's installer, and the control socket the other commands use. Names
come from the Kubernetes API server (--kubeconfig, or in-cluster) or from a
directory of YAML manifests (--config-dir).`,
		Example: `  # standalone, no capture: serve ./examples on 127.0.0.1:5353
  ztdns agent --capture=false --config-dir ./examples --listen 127.0.0.1:5353 \
              --upstream 203.0.113.53 --socket /tmp/ztdns/ztdns.sock`,
		Args: cobra.NoArgs,
	}
	fs := cmd.Flags()
	kubeconfig := fs.String("kubeconfig", "", "watch the Kubernetes API server with this kubeconfig `PATH` (in-cluster config when empty and running in a pod)")
	configDir := fs.String("config-dir", "", "read Services, ServiceEntries, Namespaces, Pods and EndpointSlices from the YAML manifests in `DIR` and watch it (standalone mode)")
	configMaxFileBytes := fs.Int64("config-max-file-bytes", configdir.DefaultMaxFileBytes, "--config-dir: skip a file larger than this many `BYTES` (0: the default)")
	configMaxObjectsPerFile := fs.Int("config-max-objects-per-file", configdir.DefaultMaxObjectsPerFile, "--config-dir: refuse a file with more objects than `N` (0: the default)")
	configMaxObjects := fs.Int("config-max-objects", configdir.DefaultMaxObjects, "--config-dir: serve at most `N` objects from the whole directory (0: the default)")
	configMaxFiles := fs.Int("config-max-files", configdir.DefaultMaxFiles, "--config-dir: read at most `N` manifest files; the rest are skipped and reported (0: the default)")
	listen := addrPortList(defaultListen, 53)
	fs.Var(listen, "listen", "resolver `ADDR`ess(es), UDP and TCP on each; repeatable or comma-separated. 10.0.0.5:53 or [2001:db8::5]:53, port 53 when left out; brackets are taken around an IPv4 address too, so [$(HOST_IP)]:53 serves nodes of either family. An IPv6 address without brackets is all address, and one whose last group could be a port (2001:db8::5:53) is refused: write [2001:db8::5]:53 or [2001:db8::5:53]")
	upstream := addrPortList(nil, 53)
	fs.Var(upstream, "upstream", "nameserver `ADDR`(s) for names the table does not know, when the pod's own is unknown; repeatable, written as --listen's (default: the nameservers in --resolv-conf)")
	resolvConf := fs.String("resolv-conf", "/etc/resolv.conf", "the node's resolv.conf: default upstreams and search domains")
	domain := fs.String("cluster-domain", "cluster.local", "the cluster's DNS domain")
	ttl := fs.Duration("ttl", 30*time.Second, "TTL of local answers: whole seconds, 1s to 24h")
	fwdTimeout := fs.Duration("forward-timeout", 2*time.Second, "bound on one forwarded query across all upstreams (0: the default)")
	maxNamesPerNS := fs.Int("max-names-per-namespace", table.DefaultMaxNamesPerNamespace, "names one namespace's Services, headless endpoints and ServiceEntries may make in the name table (0: no bound); past it the namespace's newest objects that do not fit are left out, with a table warning (see README, Limits and protections)")
	cacheSize := fs.Int("cache-size", 10000, "entries in the cache of upstream answers (0 disables it); once it is full, a pod over its share (an eighth) replaces only its own answers, and other pods' misses take back what it holds past its share")
	vipSource := fs.String("vip-source", string(vip.SourceAuto), "where auto-allocated ServiceEntry VIPs come from: auto (istiod's status.addresses when istiod allocates, else ztdns's allocator), istiod (status.addresses only), ztdns (its own allocator only) or none (no VIP: hosts without spec.addresses are forwarded, for istiod with PILOT_ENABLE_IP_AUTOALLOCATE off); see README")
	defaultExportTo := fs.String("default-service-export-to", "", "exportTo of a ServiceEntry that gives none: comma-separated, \".\" (its own namespace), \"*\" (every namespace), \"~\" (none) or namespace names; Services are seen from every namespace whatever it says. Not given: Istio's MeshConfig defaultServiceExportTo, which the agent reads from istiod's istio ConfigMap in --istio-namespace (istio-REVISION with --istio-revision) and follows as it changes (with --config-dir, or when the mesh config gives none: \"*\", Istio's default); given, it wins over the mesh config")
	istioNamespace := fs.String("istio-namespace", "istio-system", "istiod's `NAMESPACE`, where the agent reads its VIP allocator lock (--vip-source=auto) and its mesh config (--default-service-export-to)")
	istioRevision := fs.String("istio-revision", "", "istiod's `REVISION`, whose mesh config the agent follows: the ConfigMap istio-REVISION in --istio-namespace, as istiod reads it (empty or default: istio); ServiceEntries labelled istio.io/rev with another revision (empty: default), which that istiod ignores, are forwarded")
	cacheBytes := &byteSize{n: forward.DefaultCacheBytes}
	fs.Var(cacheBytes, "cache-bytes", "bytes the cache of upstream answers may hold, e.g. 4Mi; once it is full, a pod over its share (an eighth) replaces only its own answers, and other pods' misses take back what it holds past its share")
	podQPS := fs.Float64("pod-qps", resolver.DefaultPodQPS, "queries a second one pod (or one address that is no known pod) may send; over it, UDP queries are dropped and TCP ones REFUSED (0: no limit)")
	podBurst := fs.Int("pod-qps-burst", 0, "queries one pod may send at once above --pod-qps (default: twice --pod-qps)")
	podForwarding := fs.Int("pod-max-forwarding", resolver.DefaultPodForwarding, "forwarded queries one pod may have in flight; more get SERVFAIL at once (0: no limit)")
	podTCP := fs.Int("pod-max-tcp", resolver.DefaultPodTCPConns, "TCP connections one pod may have open; more are closed at once (0: no limit)")
	maxForwarding := fs.Int("max-forwarding", resolver.DefaultMaxInflight, "forwarded queries in flight from all pods together; more get SERVFAIL at once (0: the default)")
	maxTCP := fs.Int("max-tcp", resolver.DefaultTCPMaxConns, "open TCP connections from all pods together (0: the default)")
	udpSockets := fs.Int("udp-sockets", agent.DefaultSocketsPerAddr, "SO_REUSEPORT UDP sockets on each resolver address, each read by a goroutine of its own: more answer more queries a second at full speed, at more CPU per query")
	tcpIdle := fs.Duration("tcp-idle-timeout", resolver.DefaultTCPIdleTimeout, "close a TCP connection idle this long (a tenth of it with half of --max-tcp open, a hundredth with three quarters; 0: the default)")
	inflightBytes := &byteSize{n: resolver.DefaultInflightBytes}
	fs.Var(inflightBytes, "inflight-bytes", fmt.Sprintf("bytes of upstream replies held at once, read or waiting to be written, e.g. 8Mi, at least %v (one reply of the largest size); a reply that does not fit is refused: its query gets SERVFAIL, or, for a lookup of its own (a CNAME's target), an answer without it",
		&byteSize{n: resolver.MinInflightBytes}))
	podInflightBytes := &byteSize{zero: true}
	fs.Var(podInflightBytes, "pod-inflight-bytes", fmt.Sprintf("bytes of upstream replies one pod may hold at once, e.g. 512Ki, at least %v (one reply of the largest size); a reply that does not fit is refused, as for --inflight-bytes (default: a sixteenth of --inflight-bytes, and room for two of the largest replies, %v, when --inflight-bytes has it; 0: no limit of its own, only its fair share)",
		&byteSize{n: resolver.MinPodInflightBytes}, &byteSize{n: 2 * resolver.MinPodInflightBytes}))
	autopath := fs.Bool("autopath", false, "answer search-list expansions of unknown names in one round trip (see README)")
	metrics := fs.String("metrics", "", "serve /metrics, /healthz and /readyz on `ADDR`: the node's IP or 127.0.0.1 with a port, e.g. 127.0.0.1:15053 or [2001:db8::5]:15053; brackets are taken around an IPv4 address too, so [$(HOST_IP)]:15053 serves nodes of either family (without brackets, an IPv6 address ends at the last colon); empty disables")
	capture := fs.Bool("capture", true, "capture marked pods' DNS with eBPF; false only serves on --listen")
	cgroup := fs.String("cgroup", "", "cgroup v2 `DIR` the capture programs attach to (default: the cgroup2 root, every pod on the node)")
	bpffs := fs.String("bpffs", redirect.DefaultBPFFS, "`DIR` on a bpf filesystem where maps and links are pinned")
	mountBPFFS := fs.Bool("mount-bpffs", true, "mount a bpf filesystem at the parent of --bpffs when it is on none; false fails instead (in a container, where a mount of its own would vanish with it, and the pins with it)")
	procRoot := fs.String("proc-root", "/proc", "the node's proc filesystem `DIR`, where running pods' network namespaces are found: the node's /proc mounted into the agent's container (e.g. /host/proc) when it runs without hostPID")
	iface := fs.String("interface", redirect.DefaultInterface, "interface that carries the resolver's addresses")
	capturePort := fs.Uint("capture-port", redirect.DefaultPort, "`PORT` of the resolver's slot addresses, where captured queries go; not 53, so that istio-cni's in-pod DNS rules never take them (see README)")
	captureNameservers := prefixList()
	fs.Var(captureNameservers, "capture-nameservers", fmt.Sprintf("capture only queries to these nameserver `CIDR`s (a bare address is /32 or /128; a CIDR must be masked: 10.96.0.0/16, not 10.96.0.10/16), at most %d, repeatable or comma-separated: e.g. the cluster DNS Service IP and NodeLocal DNSCache's address; a pod's queries to any other nameserver are left alone, under its own NetworkPolicy (default: every destination on port 53, forwarded from the node to what the pod addressed)",
		redirect.MaxCaptureNameservers))
	socketsPerPod := fs.Int("capture-sockets-per-pod", redirect.DefaultSocketsPerPod, fmt.Sprintf("`N` sockets of one pod that may be redirected at once: each keeps a record of what it addressed (about %d bytes) in the kernel, charged to the agent's memory, until it is closed; a query on a further open socket of the pod goes to its own nameserver, around ztdns (ztdns_capture_events_total{event=\"skipped_sockets_full\"})", redirect.SocketRecordBytes))
	stale := fs.Duration("heartbeat-stale", redirect.DefaultStaleAfter, fmt.Sprintf("stop redirecting (fail open) when the agent has been silent this long; at least %s, twice its heartbeat", 2*agent.HeartbeatEvery))
	dnsCaptureDefault := fs.Bool("dns-capture-default", true, "capture every ambient pod's DNS (values.cni.ambient.dnsCapture); when false only pods annotated ztdns.io/dns-capture: \"true\" (see README)")
	excludeNamespaces := fs.StringSlice("exclude-namespaces", []string{"kube-system"}, "`NAMESPACES`, comma-separated, whose pods are never captured, whatever their labels: istio-cni's excludeNamespaces, whose pods Istio never enrolls (empty: none)")
	requireEnrollment := fs.Bool("require-istio-enrollment", true, "with --kubeconfig, capture a pod its labels put in the ambient mesh only once istio-cni has enrolled it (annotation ambient.istio.io/redirection: enabled or pending; a new pod gets "+capturectl.EnrollmentGrace.String()+" to get it), and with --cni-install none while the node's CNI chain holds no istio-cni entry; false captures it on its labels alone, for clusters without istio-cni; ignored with --config-dir, whose manifests need not carry the annotation (see README)")
	nodeName := fs.String("node-name", os.Getenv("NODE_NAME"), "this node's name: the pods the agent watches and adopts (default $NODE_NAME)")
	podUID := fs.String("pod-uid", os.Getenv("POD_UID"), "the UID of the agent's pod: a hand-over refuses the pod it took over from, whose container restarted (default $POD_UID; empty outside Kubernetes)")
	generation := fs.String("pod-template-generation", os.Getenv("POD_TEMPLATE_GENERATION"), "the pod-template-generation label of the agent's pod, `N`: a hand-over refuses an agent of a lower one, an older release's (default $POD_TEMPLATE_GENERATION; empty outside Kubernetes: no order)")
	memoryLimit := fs.String("memory-limit", os.Getenv("MEMORY_LIMIT"), "the agent's memory limit in `BYTES` (e.g. 402653184 or 384Mi) when none can be read from its cgroup: its container's limit, which the chart gives from the downward API; a resize in place does not change it (default $MEMORY_LIMIT; empty: none)")
	cniInstall := fs.Bool("cni-install", false, "install the chained CNI plugin into --cni-conf-dir and keep it there")
	cniBinDir := fs.String("cni-bin-dir", "/opt/cni/bin", "the container runtime's CNI plugin `DIR`")
	cniConfDir := fs.String("cni-conf-dir", "/etc/cni/net.d", "the container runtime's CNI configuration `DIR`")
	cniPolicy := fs.String("cni-on-agent-unreachable", cni.DefaultOnAgentUnreachable, "what the plugin does when the agent cannot be reached: allow (start the pod uncaptured) or fail")
	stateDir := fs.String("state-dir", "", "`DIR` keeping the record of captured pods across restarts, where nothing removes it while the agent is stopped (not a systemd RuntimeDirectory=; deploy/systemd/ztdns.service gives /var/lib/ztdns); default: the --socket directory")
	socket := fs.String("socket", control.DefaultSocket, "control socket `PATH` for ztdns table, pods, capture and the CNI plugin")
	socketGroup := fs.String("socket-group", "", "`GROUP` (name or gid) whose members may also connect to --socket, to read only (status, table, pods); default: root only")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	accessLog := fs.String("access-log", "", "write one line per query (--log-format) to `DEST`: stderr or a file's path; off when empty (ztdns log on|off switches it at run time, to DEST or stderr)")
	accessLogSample := fs.Int("access-log-sample", 1, "with --access-log: one query in `N` gets a line")
	maxNamespaces := fs.Int("metrics-max-namespaces", resolver.DefaultMaxNamespaceSeries, "namespaces with a series of their own in ztdns_dns_namespace_requests_total; the rest count as _other")
	maxUpstreams := fs.Int("metrics-max-upstreams", forward.DefaultMaxUpstreamSeries, "nameservers pods ask, first come (a label given back after 10 minutes unasked), with series of their own in ztdns_forward_upstream_*; the rest count as other (--upstream and single addresses of --capture-nameservers always have their own)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if _, set := os.LookupEnv("GOGC"); !set {
			debug.SetGCPercent(defaultGCPercent)
		}
		log, err := newLogger(*logLevel, *logFormat)
		if err != nil {
			return usageError{err}
		}
		// Negative bounds are refused rather than read as 0 (the default),
		// or, for --cache-size and --max-names-per-namespace, as 0 (no cache,
		// no bound).
		for _, f := range []struct {
			name string
			n    int64
		}{
			{"config-max-file-bytes", *configMaxFileBytes}, {"config-max-objects-per-file", int64(*configMaxObjectsPerFile)},
			{"config-max-objects", int64(*configMaxObjects)}, {"config-max-files", int64(*configMaxFiles)},
			{"forward-timeout", int64(*fwdTimeout)}, {"tcp-idle-timeout", int64(*tcpIdle)},
			{"max-forwarding", int64(*maxForwarding)}, {"max-tcp", int64(*maxTCP)}, {"cache-size", int64(*cacheSize)},
			{"pod-max-forwarding", int64(*podForwarding)}, {"pod-max-tcp", int64(*podTCP)}, {"pod-qps-burst", int64(*podBurst)},
			{"max-names-per-namespace", int64(*maxNamesPerNS)},
		} {
			if f.n < 0 {
				return usagef("--%s %s: want 0 or more", f.name, fs.Lookup(f.name).Value)
			}
		}
		var memLimit int64
		if *memoryLimit != "" {
			b := &byteSize{}
			if err := b.Set(*memoryLimit); err != nil {
				return usagef("--memory-limit: %v, or empty", err)
			}
			memLimit = b.n
		}
		var podGeneration uint64
		if *generation != "" {
			if podGeneration, err = strconv.ParseUint(*generation, 10, 64); err != nil || podGeneration == 0 {
				return usagef("--pod-template-generation %q: want the pod's pod-template-generation label, a number from 1, or empty", *generation)
			}
		}
		if *podQPS < 0 {
			return usagef("--pod-qps %v: want 0 or more", *podQPS)
		}
		// Nothing would sample: refused rather than ignored.
		if fs.Changed("access-log-sample") && *accessLog == "" {
			return usagef("--access-log-sample without --access-log: the log is off (ztdns log on --sample N sets it at run time)")
		}
		if *accessLogSample < 1 || *accessLogSample > accesslog.MaxSample {
			return usagef("--access-log-sample %d: want 1 to %d", *accessLogSample, accesslog.MaxSample)
		}
		if *maxNamespaces < 1 || *maxUpstreams < 1 {
			return usagef("--metrics-max-namespaces and --metrics-max-upstreams: want at least 1")
		}
		if *udpSockets < 1 || *udpSockets > agent.MaxSocketsPerAddr {
			return usagef("--udp-sockets %d: want 1 to %d", *udpSockets, agent.MaxSocketsPerAddr)
		}
		// Checked with --capture=false too: a bad value is refused where
		// it is written, not when capture is next turned on.
		if *capturePort == 0 || *capturePort > 65535 {
			return usagef("--capture-port %d: want 1-65535", *capturePort)
		}
		// istio-cni's in-pod DNS rules take port 53 before the programs see
		// it: captured queries would go to ztunnel's proxy instead.
		if *capturePort == 53 {
			return usagef("--capture-port 53: want another port, which istio-cni's in-pod DNS rules leave alone")
		}
		// The TTL goes on the wire in whole seconds; past a day, a
		// Service's new address would take that long to reach pods.
		if *ttl < time.Second || *ttl > maxTTL || *ttl%time.Second != 0 {
			return usagef("--ttl %s: want whole seconds from 1s to %s", *ttl, maxTTL)
		}
		// The agent beats every HeartbeatEvery: a bound within a beat or
		// two of it would fail pods open at every late one.
		if *stale < 2*agent.HeartbeatEvery {
			return usagef("--heartbeat-stale %s: want at least %s, twice the agent's heartbeat", *stale, 2*agent.HeartbeatEvery)
		}
		if err := redirect.ValidateCaptureNameservers(captureNameservers.vals); err != nil {
			return usagef("--capture-nameservers: %w", err)
		}
		if *socketsPerPod < 1 || *socketsPerPod > redirect.MaxSocketsPerPod {
			return usagef("--capture-sockets-per-pod %d: want 1 to %d", *socketsPerPod, redirect.MaxSocketsPerPod)
		}
		// Nothing would apply the list: refused rather than ignored, so
		// that nobody believes capture is limited to it.
		if !*capture && len(captureNameservers.vals) > 0 {
			return usagef("--capture-nameservers with --capture=false: no queries are captured, so there is nothing to limit")
		}
		// agent.Run refuses them too; here they are usage errors in the
		// flags' own terms. --inflight-bytes takes no 0 (byteSize.Set).
		if inflightBytes.n < resolver.MinInflightBytes {
			return usagef("--inflight-bytes %s: want at least %s, one reply of the largest size",
				inflightBytes, &byteSize{n: resolver.MinInflightBytes})
		}
		if n := podInflightBytes.n; n != 0 && n < resolver.MinPodInflightBytes {
			return usagef("--pod-inflight-bytes %s: want 0 (no limit of its own) or at least %s, one reply of the largest size",
				podInflightBytes, &byteSize{n: resolver.MinPodInflightBytes})
		}
		if err := control.CheckNoDotDot(*socket); err != nil {
			return usagef("--socket %w", err)
		}
		if err := control.CheckNoDotDot(*stateDir); err != nil {
			return usagef("--state-dir %w", err)
		}
		// The plugin checks its conflist entry at every ADD and fails the
		// pod when it is wrong, under "allow" too: refused here, before
		// anything is installed.
		if p := *cniPolicy; p != cni.PolicyAllow && p != cni.PolicyFail {
			return usagef("--cni-on-agent-unreachable %q: want %s or %s", p, cni.PolicyAllow, cni.PolicyFail)
		}
		cniPlugin := cni.Config{SocketPath: *socket, OnAgentUnreachable: *cniPolicy}
		if *cniInstall {
			if !filepath.IsAbs(*socket) {
				return usagef("--socket %q with --cni-install: want an absolute path, which the CNI plugin is given", *socket)
			}
			if err := cniPlugin.Validate(); err != nil {
				return usagef("--cni-install: the CNI plugin would refuse its configuration: %w", err)
			}
		}
		al, closeAccessLog, err := openAccessLog(*accessLog, *accessLogSample, *logFormat)
		if err != nil {
			return err
		}
		defer closeAccessLog()
		vips, err := vip.ParseSource(*vipSource)
		if err != nil {
			return usagef("--vip-source: %w", err)
		}
		// Not given: the source's, Istio's mesh config (or "*").
		var exportTo []string
		if fs.Changed("default-service-export-to") {
			if exportTo, err = table.ParseExportTo(*defaultExportTo); err != nil {
				return usagef("--default-service-export-to: %w", err)
			}
		}
		gid, err := groupID(*socketGroup)
		if err != nil {
			return usageError{err}
		}
		if err := checkMetricsAddr(*metrics); err != nil {
			return usagef("--metrics %q: %w", *metrics, err)
		}
		var src source.Source
		switch {
		case *configDir != "" && *kubeconfig != "":
			return usagef("give --config-dir or --kubeconfig, not both")
		case *configDir != "":
			cd := configdir.New(*configDir, configdir.WithLogger(log), configdir.WithLimits(configdir.Limits{
				FileBytes: *configMaxFileBytes, ObjectsPerFile: *configMaxObjectsPerFile, Objects: *configMaxObjects, Files: *configMaxFiles}))
			// Before anything is bound or attached: an agent that started
			// on it would have nothing to answer from. A failure, not a
			// usage error (status 2, which the systemd unit does not
			// restart): the directory may yet come (a config tool, a
			// mount), and a restart then serves it. One that goes later
			// is waited for, its last manifests served.
			if err := cd.Check(); err != nil {
				return fmt.Errorf("--config-dir %q: %w", *configDir, err)
			}
			src = cd
		default:
			rc, err := kube.RESTConfig(*kubeconfig)
			if err != nil && !fs.Changed("kubeconfig") {
				// Nothing on the command line says where names come from.
				return usagef("no source: give --config-dir, or --kubeconfig, or run in a pod: %w", err)
			}
			if err != nil {
				return fmt.Errorf("no source: give --config-dir, or --kubeconfig, or run in a pod: %w", err)
			}
			// client-go logs through klog: route it into the same structured log.
			klog.SetSlogLogger(log)
			src = kube.New(rc, kube.WithLogger(log), kube.WithNodeName(*nodeName), kube.WithIstioNamespace(*istioNamespace),
				kube.WithIstioRevision(*istioRevision))
		}
		node, err := resolvconf.ReadFile(*resolvConf)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		upstreams := upstream.vals
		if len(upstreams) == 0 {
			for _, ns := range node.Nameservers {
				upstreams = append(upstreams, netip.AddrPortFrom(ns, 53))
			}
		}
		if len(upstreams) == 0 {
			return fmt.Errorf("no upstream: give --upstream or list a nameserver in %s", *resolvConf)
		}
		var cniCfg *agent.CNIConfig
		if *cniInstall {
			cniCfg = &agent.CNIConfig{BinDir: *cniBinDir, ConfDir: *cniConfDir, Plugin: cniPlugin}
		}
		var captureCfg *agent.CaptureConfig
		if *capture {
			captureCfg = &agent.CaptureConfig{BPFFS: *bpffs, RequireBPFFS: !*mountBPFFS, Cgroup: *cgroup, Interface: *iface, StaleAfter: *stale, StateDir: *stateDir, Port: uint16(*capturePort),
				Nameservers: captureNameservers.vals, SocketsPerPod: *socketsPerPod}
		}
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		err = agent.Run(ctx, agent.Config{
			Capture:              captureCfg,
			DNSCaptureDefault:    *dnsCaptureDefault,
			ExcludeNamespaces:    namespaceList(*excludeNamespaces),
			IgnoreEnrollment:     !*requireEnrollment,
			NodeName:             *nodeName,
			PodUID:               *podUID,
			Generation:           podGeneration,
			MemoryLimit:          memLimit,
			ProcRoot:             *procRoot,
			CNI:                  cniCfg,
			Source:               src,
			Listen:               listen.vals,
			Upstreams:            upstreams,
			SocketsPerAddr:       *udpSockets,
			ClusterDomain:        *domain,
			TTL:                  *ttl,
			ForwardTimeout:       *fwdTimeout,
			CacheSize:            offFlag(*cacheSize),
			Autopath:             *autopath,
			VIPSource:            vips,
			DefaultExportTo:      exportTo,
			MaxNamesPerNamespace: offFlag(*maxNamesPerNS),
			NodeSearch:           node.Search,
			MetricsAddr:          *metrics,
			Socket:               *socket,
			SocketGroup:          gid,
			Logger:               log,
			CacheBytes:           cacheBytes.n,
			Limits: quota.Limits{
				QPS:        offFlag(*podQPS),
				Burst:      *podBurst,
				Forwarding: offFlag(*podForwarding),
				TCPConns:   offFlag(*podTCP),
			},
			MaxForwarding:    *maxForwarding,
			TCPMaxConns:      *maxTCP,
			TCPIdleTimeout:   *tcpIdle,
			InflightBytes:    inflightBytes.n,
			PodInflightBytes: podInflightBytesFlag(podInflightBytes, fs.Changed("pod-inflight-bytes")),

			AccessLog:          al,
			MaxNamespaceSeries: *maxNamespaces,
			MaxUpstreamSeries:  *maxUpstreams,
		})
		if errors.Is(err, syscall.EADDRINUSE) {
			// Another process serves where --listen or --metrics says: the
			// agent refused to serve beside it, and did nothing.
			return usageError{err}
		}
		return err
	}
	return cmd
}

// namespaceList is --exclude-namespaces without blanks and empty entries.
func namespaceList(names []string) []string {
	var out []string
	for _, n := range names {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	return out
}

// openAccessLog makes the agent's access log: on at once, writing to dest,
// when dest is given; else off, writing to stderr when `ztdns log on`
// turns it on.
func openAccessLog(dest string, sample int, format string) (*accesslog.Log, func(), error) {
	w, name, closeFile := io.Writer(os.Stderr), "stderr", func() {}
	if dest != "" && dest != "stderr" {
		f, err := os.OpenFile(dest, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return nil, nil, fmt.Errorf("--access-log: %w", err)
		}
		w, name, closeFile = f, dest, func() { f.Close() }
	}
	l, err := accesslog.New(w, name, format, 0)
	if err != nil {
		closeFile()
		return nil, nil, usageError{err}
	}
	if dest != "" {
		if err := l.Set(true, sample); err != nil {
			closeFile()
			return nil, nil, usageError{err}
		}
	}
	return l, closeFile, nil
}

// offFlag maps a bound's flag whose 0 disables it (--cache-size,
// --max-names-per-namespace, the per-pod bounds) onto agent.Config and
// quota.Limits as the agent takes them: 0 is the default there, negative
// disables.
func offFlag[T int | float64](n T) T {
	if n <= 0 {
		return -1
	}
	return n
}

// podInflightBytesFlag maps --pod-inflight-bytes onto
// agent.Config.PodInflightBytes: unset is the default (0), 0 no bound (-1).
func podInflightBytesFlag(b *byteSize, set bool) int64 {
	switch {
	case !set:
		return 0
	case b.n == 0:
		return -1
	}
	return b.n
}

// checkMetricsAddr checks --metrics as the agent will listen on it:
// HOST:PORT, an IPv6 address with or without brackets, a numeric port.
func checkMetricsAddr(s string) error {
	if s == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(agent.BracketIPv6HostPort(s))
	if err != nil {
		return errors.New("want ADDR:PORT, e.g. 127.0.0.1:15053")
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port %q: want a number up to 65535", port)
	}
	return nil
}

// groupID resolves --socket-group to a gid; empty is 0 (root only). Group 0
// is refused: its members are not root, and the socket is root's.
func groupID(group string) (int, error) {
	if group == "" {
		return 0, nil
	}
	gid, err := strconv.Atoi(group)
	if err != nil {
		g, lerr := user.LookupGroup(group)
		if lerr != nil {
			return 0, fmt.Errorf("--socket-group %q: %w", group, lerr)
		}
		if gid, err = strconv.Atoi(g.Gid); err != nil {
			return 0, fmt.Errorf("--socket-group %q: gid %q: %w", group, g.Gid, err)
		}
	}
	if gid <= 0 {
		return 0, fmt.Errorf("--socket-group %q: give a dedicated group, not root's (its members are not root)", group)
	}
	return gid, nil
}
