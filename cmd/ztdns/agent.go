package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/cni"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/resolvconf"
	"github.com/ztdns/ztdns/pkg/resolver/vip"
	"github.com/ztdns/ztdns/pkg/source"
	"github.com/ztdns/ztdns/pkg/source/configdir"
	"github.com/ztdns/ztdns/pkg/source/kube"
	"k8s.io/klog/v2"
)

// The resolver's default addresses: link-local on an interface the agent owns,
// port 53 for whoever asks them directly. Slot 0 of each family: with
// capture, the agent adds the slots on --capture-port itself.
var defaultListen = []netip.AddrPort{
	netip.AddrPortFrom(redirect.DefaultResolver4()[0].Addr(), 53),
	netip.AddrPortFrom(redirect.DefaultResolver6()[0].Addr(), 53),
}

// defaultGCPercent is the agent's GOGC unless the environment sets one. Its
// heap is mostly the name table and the source's objects, which live long,
// and a local answer allocates nothing: collecting when the heap has grown
// by half (not all) of what is live keeps it near 1.5 times the live heap
// instead of 2, and costs GC work only where something allocates
// (forwarding, table updates). GOMEMLIMIT (the chart sets it from the
// memory limit) still applies.
const defaultGCPercent = 50

func runAgent(args []string) error {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(defaultGCPercent)
	}
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "watch the Kubernetes API server with this kubeconfig `PATH` (in-cluster config when empty and running in a pod)")
	configDir := fs.String("config-dir", "", "read Services, ServiceEntries, Namespaces, Pods and EndpointSlices from the YAML manifests in `DIR` and watch it (standalone mode)")
	listen := &addrPortList{addrs: defaultListen, defaultPort: 53}
	fs.Var(listen, "listen", "resolver `ADDR`ess(es), UDP and TCP on each; repeatable or comma-separated")
	upstream := &addrPortList{defaultPort: 53}
	fs.Var(upstream, "upstream", "nameserver `ADDR`(s) for names the table does not know, when the pod's own is unknown; repeatable (default: the nameservers in --resolv-conf)")
	resolvConf := fs.String("resolv-conf", "/etc/resolv.conf", "the node's resolv.conf: default upstreams and search domains")
	domain := fs.String("cluster-domain", "cluster.local", "the cluster's DNS domain")
	ttl := fs.Duration("ttl", 30*time.Second, "TTL of local answers")
	fwdTimeout := fs.Duration("forward-timeout", 2*time.Second, "bound on one forwarded query across all upstreams")
	cacheSize := fs.Int("cache-size", 10000, "entries in the cache of upstream answers (0 disables it)")
	vipSource := fs.String("vip-source", string(vip.SourceAuto), "where auto-allocated ServiceEntry VIPs come from: auto (istiod's status.addresses when istiod allocates, else ztdns's allocator), istiod (status.addresses only) or ztdns (its own allocator only); see README")
	istioNamespace := fs.String("istio-namespace", "istio-system", "istiod's `NAMESPACE`, where --vip-source=auto looks for its VIP allocator")
	autopath := fs.Bool("autopath", false, "answer search-list expansions of unknown names in one round trip (see README)")
	metrics := fs.String("metrics", "", "serve /metrics, /healthz and /readyz on `ADDR` (e.g. :15053); empty disables")
	capture := fs.Bool("capture", true, "capture marked pods' DNS with eBPF; false only serves on --listen")
	cgroup := fs.String("cgroup", "", "cgroup v2 `DIR` the capture programs attach to (default: the cgroup2 root, every pod on the node)")
	bpffs := fs.String("bpffs", redirect.DefaultBPFFS, "`DIR` on a bpf filesystem where maps and links are pinned")
	iface := fs.String("interface", redirect.DefaultInterface, "interface that carries the resolver's addresses")
	capturePort := fs.Uint("capture-port", redirect.DefaultPort, "`PORT` of the resolver's slot addresses, where captured queries go; not 53, so that istio-cni's in-pod DNS rules never take them (see README)")
	stale := fs.Duration("heartbeat-stale", redirect.DefaultStaleAfter, "stop redirecting (fail open) when the agent has been silent this long")
	dnsCaptureDefault := fs.Bool("dns-capture-default", true, "capture every ambient pod's DNS (values.cni.ambient.dnsCapture); when false only pods annotated ztdns.io/dns-capture: \"true\" (see README)")
	nodeName := fs.String("node-name", os.Getenv("NODE_NAME"), "this node's name: the pods the agent watches and adopts (default $NODE_NAME)")
	cniInstall := fs.Bool("cni-install", false, "install the chained CNI plugin into --cni-conf-dir and keep it there")
	cniBinDir := fs.String("cni-bin-dir", "/opt/cni/bin", "the container runtime's CNI plugin `DIR`")
	cniConfDir := fs.String("cni-conf-dir", "/etc/cni/net.d", "the container runtime's CNI configuration `DIR`")
	cniPolicy := fs.String("cni-on-agent-unreachable", cni.DefaultOnAgentUnreachable, "what the plugin does when the agent cannot be reached: allow (start the pod uncaptured) or fail")
	stateDir := fs.String("state-dir", "", "`DIR` keeping the record of captured pods across restarts (default: the --socket directory)")
	socket := fs.String("socket", control.DefaultSocket, "control socket `PATH` for ztdns table, pods, capture and the CNI plugin")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	log, err := newLogger(*logLevel, *logFormat)
	if err != nil {
		return err
	}
	vips, err := vip.ParseSource(*vipSource)
	if err != nil {
		return fmt.Errorf("--vip-source: %w", err)
	}
	var src source.Source
	switch {
	case *configDir != "" && *kubeconfig != "":
		return errors.New("give --config-dir or --kubeconfig, not both")
	case *configDir != "":
		src = configdir.New(*configDir, configdir.WithLogger(log))
	default:
		rc, err := kube.RESTConfig(*kubeconfig)
		if err != nil {
			return fmt.Errorf("no source: give --config-dir, or --kubeconfig, or run in a pod: %w", err)
		}
		// client-go logs through klog: route it into the same structured log.
		klog.SetSlogLogger(log)
		src = kube.New(rc, kube.WithLogger(log), kube.WithNodeName(*nodeName), kube.WithIstioNamespace(*istioNamespace))
	}
	node, err := resolvconf.ReadFile(*resolvConf)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	upstreams := upstream.addrs
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
		cniCfg = &agent.CNIConfig{BinDir: *cniBinDir, ConfDir: *cniConfDir, Plugin: cni.Config{SocketPath: *socket, OnAgentUnreachable: *cniPolicy}}
	}
	var captureCfg *agent.CaptureConfig
	if *capture {
		if *capturePort == 0 || *capturePort > 65535 {
			return fmt.Errorf("--capture-port %d: want 1-65535", *capturePort)
		}
		captureCfg = &agent.CaptureConfig{BPFFS: *bpffs, Cgroup: *cgroup, Interface: *iface, StaleAfter: *stale, StateDir: *stateDir, Port: uint16(*capturePort)}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return agent.Run(ctx, agent.Config{
		Capture:           captureCfg,
		DNSCaptureDefault: *dnsCaptureDefault,
		NodeName:          *nodeName,
		CNI:               cniCfg,
		Source:            src,
		Listen:            listen.addrs,
		Upstreams:         upstreams,
		ClusterDomain:     *domain,
		TTL:               *ttl,
		ForwardTimeout:    *fwdTimeout,
		CacheSize:         cacheSizeFlag(*cacheSize),
		Autopath:          *autopath,
		VIPSource:         vips,
		NodeSearch:        node.Search,
		MetricsAddr:       *metrics,
		Socket:            *socket,
		Logger:            log,
	})
}

// cacheSizeFlag maps --cache-size (0 disables) onto agent.Config.CacheSize
// (0 is the default, negative disables).
func cacheSizeFlag(n int) int {
	if n <= 0 {
		return -1
	}
	return n
}
