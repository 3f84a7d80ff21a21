package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
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
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/klog/v2"

	"github.com/ztdns/ztdns/internal/rootowned"
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
	f := addAgentFlags(fs)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if _, set := os.LookupEnv("GOGC"); !set {
			debug.SetGCPercent(defaultGCPercent)
		}
		log, err := newLogger(f.logLevel, f.logFormat)
		if err != nil {
			return usageError{err}
		}
		if err := f.check(fs); err != nil {
			return err
		}
		al, closeAccessLog, err := openAccessLog(f.accessLog, f.accessLogSample, f.logFormat)
		if err != nil {
			return err
		}
		defer closeAccessLog()
		src, err := f.source(fs, log)
		if err != nil {
			return err
		}
		node, upstreams, err := f.nameservers()
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		err = agent.Run(ctx, f.config(src, node, upstreams, al, log))
		if errors.Is(err, syscall.EADDRINUSE) {
			// Another process serves where --listen or --metrics says: the
			// agent refused to serve beside it, and did nothing.
			return usageError{err}
		}
		return err
	}
	return cmd
}

// agentFlags are `ztdns agent`'s flags (addAgentFlags), and what check
// makes of those that need parsing.
type agentFlags struct {
	kubeconfig              string
	configDir               string
	configMaxFileBytes      int64
	configMaxObjectsPerFile int
	configMaxObjects        int
	configMaxFiles          int
	listen                  *listFlag[netip.AddrPort]
	upstream                *listFlag[netip.AddrPort]
	resolvConf              string
	domain                  string
	ttl                     time.Duration // 0: not given, kube-dns's (agent.Config.TTL)
	serviceEntryTTL         time.Duration
	fwdTimeout              time.Duration
	maxNamesPerNS           int
	cacheSize               int
	vipSource               string
	defaultExportTo         string
	istioNamespace          string
	ztunnelNamespace        string
	istioRevision           string
	cacheBytes              *byteSize
	podQPS                  float64
	podBurst                int
	podForwarding           int
	podTCP                  int
	maxForwarding           int
	maxTCP                  int
	udpSockets              int
	tcpIdle                 time.Duration
	inflightBytes           *byteSize
	podInflightBytes        *byteSize
	autopath                bool
	metrics                 string
	capture                 bool
	cgroup                  string
	bpffs                   string
	mountBPFFS              bool
	procRoot                string
	iface                   string
	capturePort             uint
	captureNameservers      *listFlag[netip.Prefix]
	socketsPerPod           int
	stale                   time.Duration
	dnsCaptureDefault       bool
	excludeNamespaces       []string
	requireEnrollment       bool
	nodeName                string
	podUID                  string
	generation              string
	memoryLimit             string
	cniInstall              bool
	cniBinDir               string
	cniConfDir              string
	cniPolicy               string
	stateDir                string
	socket                  string
	socketGroup             string
	logLevel                string
	logFormat               string
	accessLog               string
	accessLogSample         int
	maxNamespaces           int
	maxUpstreams            int

	// Set by check.
	memLimit      int64
	podGeneration uint64
	podInflight   int64 // agent.Config.PodInflightBytes
	vips          vip.Source
	exportTo      []string // nil: the source's, Istio's mesh config (or "*")
	socketGID     int
	cniPlugin     cni.Config
}

// addAgentFlags declares `ztdns agent`'s flags on fs, their values in the
// agentFlags it returns.
func addAgentFlags(fs *pflag.FlagSet) *agentFlags {
	f := &agentFlags{}
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "watch the Kubernetes API server with this kubeconfig `PATH` (in-cluster config when empty and running in a pod)")
	fs.StringVar(&f.configDir, "config-dir", "", "read Services, ServiceEntries, Namespaces, Pods and EndpointSlices from the YAML manifests in `DIR` and watch it (standalone mode)")
	fs.Int64Var(&f.configMaxFileBytes, "config-max-file-bytes", configdir.DefaultMaxFileBytes, "--config-dir: skip a file larger than this many `BYTES` (0: the default)")
	fs.IntVar(&f.configMaxObjectsPerFile, "config-max-objects-per-file", configdir.DefaultMaxObjectsPerFile, "--config-dir: refuse a file with more objects than `N` (0: the default)")
	fs.IntVar(&f.configMaxObjects, "config-max-objects", configdir.DefaultMaxObjects, "--config-dir: serve at most `N` objects from the whole directory (0: the default)")
	fs.IntVar(&f.configMaxFiles, "config-max-files", configdir.DefaultMaxFiles, "--config-dir: read at most `N` manifest files; the rest are skipped and reported (0: the default)")
	f.listen = addrPortList(defaultListen, 53)
	fs.Var(f.listen, "listen", "resolver `ADDR`ess(es), UDP and TCP on each; repeatable or comma-separated. 10.0.0.5:53 or [2001:db8::5]:53, port 53 when left out; brackets are taken around an IPv4 address too, so [$(HOST_IP)]:53 serves nodes of either family. An IPv6 address without brackets is all address, and one whose last group could be a port (2001:db8::5:53) is refused: write [2001:db8::5]:53 or [2001:db8::5:53]")
	f.upstream = addrPortList(nil, 53)
	fs.Var(f.upstream, "upstream", "nameserver `ADDR`(s) for names the table does not know, when the pod's own is unknown; repeatable, written as --listen's (default: the nameservers in --resolv-conf)")
	fs.StringVar(&f.resolvConf, "resolv-conf", "/etc/resolv.conf", "the node's resolv.conf: default upstreams and search domains")
	fs.StringVar(&f.domain, "cluster-domain", "cluster.local", "the cluster's DNS domain: lower-case RFC 1123 labels, a trailing dot dropped")
	// No default: without the flag the TTL is kube-dns's, which the help
	// says, not a value of the flag's.
	fs.DurationVar(&f.serviceEntryTTL, "service-entry-ttl", table.DefaultServiceEntryTTL*time.Second, "TTL of the answers for ServiceEntry hosts (and of their NODATA's SOA): whole seconds, 1s to 24h; Istio's DNS proxies, ztunnel and the sidecar's, give 30s, and kube-dns does not answer these names")
	fs.DurationVar(&f.ttl, "ttl", 0, "TTL of the answers for Services (cluster names; ServiceEntry hosts: --service-entry-ttl): whole seconds, 1s to 24h. Not given: kube-dns's, the ttl of the kubernetes plugin in its Corefile (ConfigMap coredns in kube-system; 5s without a ttl line, 1s for ttl 0), followed as it changes; 30s without one")
	fs.DurationVar(&f.fwdTimeout, "forward-timeout", 2*time.Second, "bound on one forwarded query across all upstreams (0: the default)")
	fs.IntVar(&f.maxNamesPerNS, "max-names-per-namespace", table.DefaultMaxNamesPerNamespace, "names one namespace's Services, headless endpoints and ServiceEntries may make in the name table (0: no bound); past it the namespace's newest objects that do not fit are left out, with a table warning (see README, Limits and protections)")
	fs.IntVar(&f.cacheSize, "cache-size", 10000, "entries in the cache of upstream answers (0 disables it); once it is full, a pod over its share (an eighth) replaces only its own answers, and other pods' misses take back what it holds past its share")
	fs.StringVar(&f.vipSource, "vip-source", string(vip.SourceAuto), "where auto-allocated ServiceEntry VIPs come from: auto (istiod's status.addresses when istiod allocates, else ztdns's allocator), istiod (status.addresses only), ztdns (its own allocator only) or none (no VIP: hosts without spec.addresses are forwarded, for istiod with PILOT_ENABLE_IP_AUTOALLOCATE off); see README")
	fs.StringVar(&f.defaultExportTo, "default-service-export-to", "", "exportTo of a ServiceEntry that gives none: comma-separated, \".\" (its own namespace), \"*\" (every namespace), \"~\" (none) or namespace names; Services are seen from every namespace whatever it says. Not given: Istio's MeshConfig defaultServiceExportTo, which the agent reads from istiod's istio ConfigMap in --istio-namespace (istio-REVISION with --istio-revision) and follows as it changes (with --config-dir, or when the mesh config gives none: \"*\", Istio's default); given, it wins over the mesh config")
	fs.StringVar(&f.istioNamespace, "istio-namespace", "istio-system", "istiod's `NAMESPACE`, where the agent reads its VIP allocator lock (--vip-source=auto) and its mesh config (--default-service-export-to)")
	fs.StringVar(&f.ztunnelNamespace, "ztunnel-namespace", "", "Istio's ztunnel's `NAMESPACE`, where the agent looks for the node's ztunnel pod (label app=ztunnel) to compare its revision with --istio-revision (default: --istio-namespace, as Istio's trustedZtunnelNamespace; kube-system for Istio on OpenShift)")
	fs.StringVar(&f.istioRevision, "istio-revision", "", "the Istio `REVISION` of the node's ztunnel: that of the istiod it connects to, whose mesh config the agent follows (the ConfigMap istio-REVISION in --istio-namespace, as istiod reads it; empty or default: istio), and whose ServiceEntries it answers: those labelled istio.io/rev with another revision (empty: default), which that istiod ignores and ztunnel does not route, are forwarded. It must move with ztunnel in an upgrade; ztdns status warns while the node's ztunnel runs another (its pod's istio.io/rev annotation, default without one)")
	f.cacheBytes = &byteSize{n: forward.DefaultCacheBytes}
	fs.Var(f.cacheBytes, "cache-bytes", "bytes the cache of upstream answers may hold, e.g. 4Mi; once it is full, a pod over its share (an eighth) replaces only its own answers, and other pods' misses take back what it holds past its share")
	fs.Float64Var(&f.podQPS, "pod-qps", resolver.DefaultPodQPS, "queries a second one pod (or one address that is no known pod) may send; over it, UDP queries are dropped and TCP ones REFUSED (0: no limit)")
	fs.IntVar(&f.podBurst, "pod-qps-burst", 0, "queries one pod may send at once above --pod-qps (default: twice --pod-qps)")
	fs.IntVar(&f.podForwarding, "pod-max-forwarding", resolver.DefaultPodForwarding, "forwarded queries one pod may have in flight; more get SERVFAIL at once (0: no limit)")
	fs.IntVar(&f.podTCP, "pod-max-tcp", resolver.DefaultPodTCPConns, "TCP connections one pod may have open; more are closed at once (0: no limit)")
	fs.IntVar(&f.maxForwarding, "max-forwarding", resolver.DefaultMaxInflight, "forwarded queries in flight from all pods together; more get SERVFAIL at once (0: the default)")
	fs.IntVar(&f.maxTCP, "max-tcp", resolver.DefaultTCPMaxConns, "open TCP connections from all pods together (0: the default)")
	fs.IntVar(&f.udpSockets, "udp-sockets", agent.DefaultSocketsPerAddr, "SO_REUSEPORT UDP sockets on each resolver address, each read by a goroutine of its own: more answer more queries a second at full speed, at more CPU per query")
	fs.DurationVar(&f.tcpIdle, "tcp-idle-timeout", resolver.DefaultTCPIdleTimeout, "close a TCP connection idle this long (a tenth of it with half of --max-tcp open, a hundredth with three quarters; 0: the default)")
	f.inflightBytes = &byteSize{n: resolver.DefaultInflightBytes}
	fs.Var(f.inflightBytes, "inflight-bytes", fmt.Sprintf("bytes of upstream replies held at once, read or waiting to be written, e.g. 8Mi, at least %v (one reply of the largest size); a reply that does not fit is refused: its query gets SERVFAIL, or, for a lookup of its own (a CNAME's target), an answer without it",
		&byteSize{n: resolver.MinInflightBytes}))
	f.podInflightBytes = &byteSize{zero: true}
	fs.Var(f.podInflightBytes, "pod-inflight-bytes", fmt.Sprintf("bytes of upstream replies one pod may hold at once, e.g. 512Ki, at least %v (one reply of the largest size); a reply that does not fit is refused, as for --inflight-bytes (default: a sixteenth of --inflight-bytes, and room for two of the largest replies, %v, when --inflight-bytes has it; 0: no limit of its own, only its fair share)",
		&byteSize{n: resolver.MinPodInflightBytes}, &byteSize{n: 2 * resolver.MinPodInflightBytes}))
	fs.BoolVar(&f.autopath, "autopath", false, "answer search-list expansions of unknown names in one round trip (see README)")
	fs.StringVar(&f.metrics, "metrics", "", "serve /metrics, /healthz and /readyz on `ADDR`: the node's IP or 127.0.0.1 with a port, e.g. 127.0.0.1:15053 or [2001:db8::5]:15053; brackets are taken around an IPv4 address too, so [$(HOST_IP)]:15053 serves nodes of either family (without brackets, an IPv6 address ends at the last colon); empty disables")
	fs.BoolVar(&f.capture, "capture", true, "capture marked pods' DNS with eBPF; false only serves on --listen")
	fs.StringVar(&f.cgroup, "cgroup", "", "cgroup v2 `DIR` the capture programs attach to (default: the pods' cgroup, kubepods.slice or kubepods under the cgroup2 root, so they run before Cilium's socket LB there; else the cgroup2 root)")
	fs.StringVar(&f.bpffs, "bpffs", redirect.DefaultBPFFS, "`DIR` on a bpf filesystem where maps and links are pinned")
	fs.BoolVar(&f.mountBPFFS, "mount-bpffs", true, "mount a bpf filesystem at the parent of --bpffs when it is on none; false fails instead (in a container, where a mount of its own would vanish with it, and the pins with it)")
	fs.StringVar(&f.procRoot, "proc-root", "/proc", "the node's proc filesystem `DIR`, where running pods' network namespaces are found: the node's /proc mounted into the agent's container (e.g. /host/proc) when it runs without hostPID")
	fs.StringVar(&f.iface, "interface", redirect.DefaultInterface, "interface that carries the resolver's addresses")
	fs.UintVar(&f.capturePort, "capture-port", redirect.DefaultPort, "`PORT` of the resolver's slot addresses, where captured queries go; not 53, so that istio-cni's in-pod DNS rules never take them (see README)")
	f.captureNameservers = prefixList()
	fs.Var(f.captureNameservers, "capture-nameservers", fmt.Sprintf("capture only queries to these nameserver `CIDR`s (a bare address is /32 or /128; a CIDR must be masked: 10.96.0.0/16, not 10.96.0.10/16), at most %d, repeatable or comma-separated: e.g. the cluster DNS Service IP and NodeLocal DNSCache's address; a pod's queries to any other nameserver are left alone, under its own NetworkPolicy (default: every destination on port 53, forwarded from the node to what the pod addressed)",
		redirect.MaxCaptureNameservers))
	fs.IntVar(&f.socketsPerPod, "capture-sockets-per-pod", redirect.DefaultSocketsPerPod, fmt.Sprintf("`N` sockets of one pod that may be redirected at once: each keeps a record of what it addressed (about %d bytes) in the kernel, charged to the agent's memory, until it is closed; a query on a further open socket of the pod goes to its own nameserver, around ztdns (ztdns_capture_events_total{event=\"skipped_sockets_full\"})", redirect.SocketRecordBytes))
	fs.DurationVar(&f.stale, "heartbeat-stale", redirect.DefaultStaleAfter, fmt.Sprintf("stop redirecting (fail open) when the agent has been silent this long; at least %s, twice its heartbeat", 2*agent.HeartbeatEvery))
	fs.BoolVar(&f.dnsCaptureDefault, "dns-capture-default", true, "capture every ambient pod's DNS (values.cni.ambient.dnsCapture); when false only pods annotated ztdns.io/dns-capture: \"true\" (see README)")
	fs.StringSliceVar(&f.excludeNamespaces, "exclude-namespaces", []string{"kube-system"}, "`NAMESPACES`, comma-separated, whose pods are never captured, whatever their labels: istio-cni's excludeNamespaces, whose pods Istio never enrolls (empty: none)")
	fs.BoolVar(&f.requireEnrollment, "require-istio-enrollment", true, "with --kubeconfig, capture a pod its labels put in the ambient mesh only once istio-cni has enrolled it (annotation ambient.istio.io/redirection: enabled or pending; a new pod gets "+capturectl.EnrollmentGrace.String()+" to get it), and with --cni-install none whose sandbox is made while the node's CNI chain holds no istio-cni entry; false captures it on its labels alone, for clusters without istio-cni; ignored with --config-dir, whose manifests need not carry the annotation (see README)")
	fs.StringVar(&f.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name: the pods the agent watches and adopts (default $NODE_NAME)")
	fs.StringVar(&f.podUID, "pod-uid", os.Getenv("POD_UID"), "the UID of the agent's pod: a hand-over refuses the pod it took over from, whose container restarted (default $POD_UID; empty outside Kubernetes)")
	fs.StringVar(&f.generation, "pod-template-generation", os.Getenv("POD_TEMPLATE_GENERATION"), "the pod-template-generation label of the agent's pod, `N`: a hand-over refuses an agent of a lower one, an older release's (default $POD_TEMPLATE_GENERATION; empty outside Kubernetes: no order)")
	fs.StringVar(&f.memoryLimit, "memory-limit", os.Getenv("MEMORY_LIMIT"), "the agent's memory limit in `BYTES` (e.g. 402653184 or 384Mi) when none can be read from its cgroup: its container's limit, which the chart gives from the downward API; a resize in place does not change it (default $MEMORY_LIMIT; empty: none)")
	fs.BoolVar(&f.cniInstall, "cni-install", false, "install the chained CNI plugin into --cni-conf-dir and keep it there")
	fs.StringVar(&f.cniBinDir, "cni-bin-dir", "/opt/cni/bin", "the container runtime's CNI plugin `DIR`")
	fs.StringVar(&f.cniConfDir, "cni-conf-dir", "/etc/cni/net.d", "the container runtime's CNI configuration `DIR`")
	fs.StringVar(&f.cniPolicy, "cni-on-agent-unreachable", cni.DefaultOnAgentUnreachable, "what the plugin does when the agent cannot be reached: allow (start the pod uncaptured) or fail")
	fs.StringVar(&f.stateDir, "state-dir", "", "`DIR` keeping the record of captured pods across restarts, where nothing removes it while the agent is stopped (not a systemd RuntimeDirectory=; deploy/systemd/ztdns.service gives /var/lib/ztdns); default: the --socket directory")
	fs.StringVar(&f.socket, "socket", control.DefaultSocket, "control socket `PATH` for ztdns table, pods, capture and the CNI plugin")
	fs.StringVar(&f.socketGroup, "socket-group", "", "`GROUP` (name or gid) whose members may also connect to --socket, to read only (status, table, pods); default: root only")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "text or json")
	fs.StringVar(&f.accessLog, "access-log", "", "write one line per query (--log-format) to `DEST`: stderr or a file's path; off when empty (ztdns log on|off switches it at run time, to DEST or stderr)")
	fs.IntVar(&f.accessLogSample, "access-log-sample", 1, "with --access-log: one query in `N` gets a line")
	fs.IntVar(&f.maxNamespaces, "metrics-max-namespaces", resolver.DefaultMaxNamespaceSeries, "namespaces with a series of their own in ztdns_dns_namespace_requests_total; the rest count as _other")
	fs.IntVar(&f.maxUpstreams, "metrics-max-upstreams", forward.DefaultMaxUpstreamSeries, "nameservers pods ask, first come (a label given back after 10 minutes unasked), with series of their own in ztdns_forward_upstream_*; the rest count as other (--upstream and single addresses of --capture-nameservers always have their own)")
	return f
}

// check refuses flags that are wrong in themselves or together, as usage
// errors, before anything is opened, and parses those that need it.
func (f *agentFlags) check(fs *pflag.FlagSet) error {
	var err error
	// Negative bounds are refused rather than read as 0 (the default),
	// or, for --cache-size and --max-names-per-namespace, as 0 (no cache,
	// no bound).
	for _, b := range []struct {
		name string
		n    int64
	}{
		{"config-max-file-bytes", f.configMaxFileBytes}, {"config-max-objects-per-file", int64(f.configMaxObjectsPerFile)},
		{"config-max-objects", int64(f.configMaxObjects)}, {"config-max-files", int64(f.configMaxFiles)},
		{"forward-timeout", int64(f.fwdTimeout)}, {"tcp-idle-timeout", int64(f.tcpIdle)},
		{"max-forwarding", int64(f.maxForwarding)}, {"max-tcp", int64(f.maxTCP)}, {"cache-size", int64(f.cacheSize)},
		{"pod-max-forwarding", int64(f.podForwarding)}, {"pod-max-tcp", int64(f.podTCP)}, {"pod-qps-burst", int64(f.podBurst)},
		{"max-names-per-namespace", int64(f.maxNamesPerNS)},
	} {
		if b.n < 0 {
			return usagef("--%s %s: want 0 or more", b.name, fs.Lookup(b.name).Value)
		}
	}
	if f.memoryLimit != "" {
		b := &byteSize{}
		if err := b.Set(f.memoryLimit); err != nil {
			return usagef("--memory-limit: %v, or empty", err)
		}
		f.memLimit = b.n
	}
	if f.generation != "" {
		if f.podGeneration, err = strconv.ParseUint(f.generation, 10, 64); err != nil || f.podGeneration == 0 {
			return usagef("--pod-template-generation %q: want the pod's pod-template-generation label, a number from 1, or empty", f.generation)
		}
	}
	if f.podQPS < 0 {
		return usagef("--pod-qps %v: want 0 or more", f.podQPS)
	}
	// A domain no Service name can be made under would leave every
	// Service out of the table, each with a warning, while the agent
	// reports ready: refused here instead.
	domain, err := checkClusterDomain(f.domain)
	if err != nil {
		return usagef("--cluster-domain %q: %w", f.domain, err)
	}
	f.domain = domain
	// Nothing would sample: refused rather than ignored.
	if fs.Changed("access-log-sample") && f.accessLog == "" {
		return usagef("--access-log-sample without --access-log: the log is off (ztdns log on --sample N sets it at run time)")
	}
	if f.accessLogSample < 1 || f.accessLogSample > accesslog.MaxSample {
		return usagef("--access-log-sample %d: want 1 to %d", f.accessLogSample, accesslog.MaxSample)
	}
	if f.maxNamespaces < 1 || f.maxUpstreams < 1 {
		return usagef("--metrics-max-namespaces and --metrics-max-upstreams: want at least 1")
	}
	if f.udpSockets < 1 || f.udpSockets > agent.MaxSocketsPerAddr {
		return usagef("--udp-sockets %d: want 1 to %d", f.udpSockets, agent.MaxSocketsPerAddr)
	}
	// Checked with --capture=false too: a bad value is refused where
	// it is written, not when capture is next turned on.
	if f.capturePort == 0 || f.capturePort > 65535 {
		return usagef("--capture-port %d: want 1-65535", f.capturePort)
	}
	// istio-cni's in-pod DNS rules take port 53 before the programs see
	// it: captured queries would go to ztunnel's proxy instead.
	if f.capturePort == 53 {
		return usagef("--capture-port 53: want another port, which istio-cni's in-pod DNS rules leave alone")
	}
	// The TTL goes on the wire in whole seconds; past a day, a
	// Service's new address would take that long to reach pods.
	if fs.Changed("ttl") && (f.ttl < time.Second || f.ttl > maxTTL || f.ttl%time.Second != 0) {
		return usagef("--ttl %s: want whole seconds from 1s to %s", f.ttl, maxTTL)
	}
	if f.serviceEntryTTL < time.Second || f.serviceEntryTTL > maxTTL || f.serviceEntryTTL%time.Second != 0 {
		return usagef("--service-entry-ttl %s: want whole seconds from 1s to %s", f.serviceEntryTTL, maxTTL)
	}
	// The agent beats every HeartbeatEvery: a bound within a beat or
	// two of it would fail pods open at every late one.
	if f.stale < 2*agent.HeartbeatEvery {
		return usagef("--heartbeat-stale %s: want at least %s, twice the agent's heartbeat", f.stale, 2*agent.HeartbeatEvery)
	}
	if err := redirect.ValidateCaptureNameservers(f.captureNameservers.vals); err != nil {
		return usagef("--capture-nameservers: %w", err)
	}
	if f.socketsPerPod < 1 || f.socketsPerPod > redirect.MaxSocketsPerPod {
		return usagef("--capture-sockets-per-pod %d: want 1 to %d", f.socketsPerPod, redirect.MaxSocketsPerPod)
	}
	// Nothing would apply the list: refused rather than ignored, so
	// that nobody believes capture is limited to it.
	if !f.capture && len(f.captureNameservers.vals) > 0 {
		return usagef("--capture-nameservers with --capture=false: no queries are captured, so there is nothing to limit")
	}
	// agent.Run refuses them too; here they are usage errors in the
	// flags' own terms. --inflight-bytes takes no 0 (byteSize.Set).
	if f.inflightBytes.n < resolver.MinInflightBytes {
		return usagef("--inflight-bytes %s: want at least %s, one reply of the largest size",
			f.inflightBytes, &byteSize{n: resolver.MinInflightBytes})
	}
	if n := f.podInflightBytes.n; n != 0 && n < resolver.MinPodInflightBytes {
		return usagef("--pod-inflight-bytes %s: want 0 (no limit of its own) or at least %s, one reply of the largest size",
			f.podInflightBytes, &byteSize{n: resolver.MinPodInflightBytes})
	}
	if err := rootowned.CheckNoDotDot(f.socket); err != nil {
		return usagef("--socket %w", err)
	}
	if err := rootowned.CheckNoDotDot(f.stateDir); err != nil {
		return usagef("--state-dir %w", err)
	}
	// The plugin checks its conflist entry at every ADD and fails the
	// pod when it is wrong, under "allow" too: refused here, before
	// anything is installed.
	if p := f.cniPolicy; p != cni.PolicyAllow && p != cni.PolicyFail {
		return usagef("--cni-on-agent-unreachable %q: want %s or %s", p, cni.PolicyAllow, cni.PolicyFail)
	}
	f.cniPlugin = cni.Config{SocketPath: f.socket, OnAgentUnreachable: f.cniPolicy}
	if f.cniInstall {
		if !filepath.IsAbs(f.socket) {
			return usagef("--socket %q with --cni-install: want an absolute path, which the CNI plugin is given", f.socket)
		}
		if err := f.cniPlugin.Validate(); err != nil {
			return usagef("--cni-install: the CNI plugin would refuse its configuration: %w", err)
		}
	}
	// A name no namespace can have finds no istiod or ztunnel, which
	// would show only as an absent mesh config, or not at all.
	if err := checkNamespace(f.istioNamespace); err != nil {
		return usagef("--istio-namespace %q: %w", f.istioNamespace, err)
	}
	if err := checkNamespace(f.ztunnelNamespace); err != nil {
		return usagef("--ztunnel-namespace %q: %w", f.ztunnelNamespace, err)
	}
	// A misspelt entry excludes nothing: the pods of the namespace meant
	// would be captured although Istio never enrolls them.
	for _, n := range namespaceList(f.excludeNamespaces) {
		if err := checkNamespace(n); err != nil {
			return usagef("--exclude-namespaces %q: %w", n, err)
		}
	}
	// Nothing would compare ztunnel's revision: refused rather than
	// ignored.
	if f.istioNamespace == "" && f.ztunnelNamespace != "" {
		return usagef("--ztunnel-namespace with --istio-namespace empty: without istiod there is no revision to compare ztunnel's with")
	}
	if f.vips, err = vip.ParseSource(f.vipSource); err != nil {
		return usagef("--vip-source: %w", err)
	}
	// Not given: the source's, Istio's mesh config (or "*").
	if fs.Changed("default-service-export-to") {
		if f.exportTo, err = table.ParseExportTo(f.defaultExportTo); err != nil {
			return usagef("--default-service-export-to: %w", err)
		}
	}
	if f.socketGID, err = groupID(f.socketGroup); err != nil {
		return usageError{err}
	}
	if err := checkMetricsAddr(f.metrics); err != nil {
		return usagef("--metrics %q: %w", f.metrics, err)
	}
	f.podInflight = podInflightBytesFlag(f.podInflightBytes, fs.Changed("pod-inflight-bytes"))
	return nil
}

// source is where names come from: the manifests in --config-dir, checked
// now, or the Kubernetes API server.
func (f *agentFlags) source(fs *pflag.FlagSet, log *slog.Logger) (source.Source, error) {
	switch {
	case f.configDir != "" && f.kubeconfig != "":
		return nil, usagef("give --config-dir or --kubeconfig, not both")
	case f.configDir != "":
		cd := configdir.New(f.configDir, configdir.WithLogger(log), configdir.WithLimits(configdir.Limits{
			FileBytes: f.configMaxFileBytes, ObjectsPerFile: f.configMaxObjectsPerFile, Objects: f.configMaxObjects, Files: f.configMaxFiles}))
		// Before anything is bound or attached: an agent that started
		// on it would have nothing to answer from. A failure, not a
		// usage error (status 2, which the systemd unit does not
		// restart): the directory may yet come (a config tool, a
		// mount), and a restart then serves it. One that goes later
		// is waited for, its last manifests served.
		if err := cd.Check(); err != nil {
			return nil, fmt.Errorf("--config-dir %q: %w", f.configDir, err)
		}
		return cd, nil
	default:
		rc, err := kube.RESTConfig(f.kubeconfig)
		if err != nil && !fs.Changed("kubeconfig") {
			// Nothing on the command line says where names come from.
			return nil, usagef("no source: give --config-dir, or --kubeconfig, or run in a pod: %w", err)
		}
		if err != nil {
			return nil, fmt.Errorf("no source: give --config-dir, or --kubeconfig, or run in a pod: %w", err)
		}
		// client-go logs through klog: route it into the same structured log.
		klog.SetSlogLogger(log)
		return kube.New(rc, kube.WithLogger(log), kube.WithNodeName(f.nodeName), kube.WithIstioNamespace(f.istioNamespace),
			kube.WithZtunnelNamespace(f.ztunnelNamespace), kube.WithIstioRevision(f.istioRevision), kube.WithClusterDomain(f.domain)), nil
	}
}

// nameservers reads --resolv-conf (none is no error) and the upstreams:
// --upstream, else its nameservers.
func (f *agentFlags) nameservers() (node resolvconf.Config, upstreams []netip.AddrPort, err error) {
	node, err = resolvconf.ReadFile(f.resolvConf)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return resolvconf.Config{}, nil, err
	}
	upstreams = f.upstream.vals
	if len(upstreams) == 0 {
		for _, ns := range node.Nameservers {
			upstreams = append(upstreams, netip.AddrPortFrom(ns, 53))
		}
	}
	if len(upstreams) == 0 {
		return resolvconf.Config{}, nil, fmt.Errorf("no upstream: give --upstream or list a nameserver in %s", f.resolvConf)
	}
	return node, upstreams, nil
}

// config is the agent's configuration: the flags checked (check), with
// src, the node's resolv.conf, upstreams and the access log.
func (f *agentFlags) config(src source.Source, node resolvconf.Config, upstreams []netip.AddrPort, al *accesslog.Log, log *slog.Logger) agent.Config {
	var cniCfg *agent.CNIConfig
	if f.cniInstall {
		cniCfg = &agent.CNIConfig{BinDir: f.cniBinDir, ConfDir: f.cniConfDir, Plugin: f.cniPlugin}
	}
	var captureCfg *agent.CaptureConfig
	if f.capture {
		captureCfg = &agent.CaptureConfig{BPFFS: f.bpffs, RequireBPFFS: !f.mountBPFFS, Cgroup: f.cgroup, Interface: f.iface, StaleAfter: f.stale, StateDir: f.stateDir, Port: uint16(f.capturePort),
			Nameservers: f.captureNameservers.vals, SocketsPerPod: f.socketsPerPod}
	}
	return agent.Config{
		Capture:              captureCfg,
		DNSCaptureDefault:    f.dnsCaptureDefault,
		ExcludeNamespaces:    namespaceList(f.excludeNamespaces),
		IgnoreEnrollment:     !f.requireEnrollment,
		NodeName:             f.nodeName,
		PodUID:               f.podUID,
		Generation:           f.podGeneration,
		MemoryLimit:          f.memLimit,
		ProcRoot:             f.procRoot,
		CNI:                  cniCfg,
		Source:               src,
		Listen:               f.listen.vals,
		Upstreams:            upstreams,
		SocketsPerAddr:       f.udpSockets,
		ClusterDomain:        f.domain,
		TTL:                  f.ttl,
		ServiceEntryTTL:      f.serviceEntryTTL,
		ForwardTimeout:       f.fwdTimeout,
		CacheSize:            offFlag(f.cacheSize),
		Autopath:             f.autopath,
		VIPSource:            f.vips,
		DefaultExportTo:      f.exportTo,
		MaxNamesPerNamespace: offFlag(f.maxNamesPerNS),
		NodeSearch:           node.Search,
		MetricsAddr:          f.metrics,
		Socket:               f.socket,
		SocketGroup:          f.socketGID,
		Logger:               log,
		CacheBytes:           f.cacheBytes.n,
		Limits: quota.Limits{
			QPS:        offFlag(f.podQPS),
			Burst:      f.podBurst,
			Forwarding: offFlag(f.podForwarding),
			TCPConns:   offFlag(f.podTCP),
		},
		MaxForwarding:    f.maxForwarding,
		TCPMaxConns:      f.maxTCP,
		TCPIdleTimeout:   f.tcpIdle,
		InflightBytes:    f.inflightBytes.n,
		PodInflightBytes: f.podInflight,

		AccessLog:          al,
		MaxNamespaceSeries: f.maxNamespaces,
		MaxUpstreamSeries:  f.maxUpstreams,
	}
}

// checkNamespace refuses a name no namespace can have; empty is the
// flag's "none" or "default", and passes.
func checkNamespace(name string) error {
	if name == "" {
		return nil
	}
	if msgs := validation.IsDNS1123Label(name); len(msgs) > 0 {
		return fmt.Errorf("not a namespace name: %s", strings.Join(msgs, "; "))
	}
	return nil
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

// checkClusterDomain checks --cluster-domain as kube-dns checks its
// --domain: DNS labels of lower-case letters, digits and '-' (RFC 1123, as
// Kubernetes names are), a trailing dot allowed; a single label (local)
// is one. It returns the domain without the trailing dot.
func checkClusterDomain(domain string) (string, error) {
	d := strings.TrimSuffix(domain, ".")
	if d == "" {
		return "", errors.New("want the cluster's DNS domain, e.g. cluster.local")
	}
	for label := range strings.SplitSeq(d, ".") {
		switch {
		case label == "":
			return "", errors.New("an empty label: two dots in a row, or a dot first")
		case len(validation.IsDNS1123Label(label)) > 0:
			return "", fmt.Errorf("label %q: want lower-case letters, digits and '-', a letter or digit first and last, at most %d characters (RFC 1123, as kube-dns takes its --domain)",
				label, validation.DNS1123LabelMaxLength)
		}
	}
	return d, nil
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
