// Package agent wires ztdns together: a source of Services and
// ServiceEntries feeds the name table and the pod registry, the resolver
// serves from them, and the control socket and metrics endpoint let
// operators look inside.
package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztdns/ztdns/internal/ratelog"
	"github.com/ztdns/ztdns/pkg/accesslog"
	"github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/handoff"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/resolver"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/resolver/table"
	"github.com/ztdns/ztdns/pkg/resolver/vip"
	"github.com/ztdns/ztdns/pkg/source"
	"github.com/ztdns/ztdns/pkg/version"
)

// Config is everything `ztdns agent` is told on its command line.
type Config struct {
	// Source of Services, ServiceEntries, Namespaces and Pods.
	Source source.Source
	// Listen are the resolver's addresses (UDP and TCP on each).
	Listen []netip.AddrPort
	// Upstreams get the misses when the pod's own nameserver is not known.
	Upstreams     []netip.AddrPort
	ClusterDomain string
	// TTL is that of local answers. 0: the one kube-dns gives, as the
	// source reads it from kube-dns's Corefile (model.Snapshot.KubeDNSTTL),
	// followed as it changes; table.DefaultTTL without one.
	TTL time.Duration
	// ForwardTimeout bounds one forwarded query.
	ForwardTimeout time.Duration
	// CacheSize bounds the cache of upstream answers (entries): 0 means the
	// default, a negative size disables the cache.
	CacheSize int
	Autopath  bool
	// VIPSource says where auto-allocated VIPs come from (default auto).
	VIPSource vip.Source
	// DefaultExportTo is the exportTo of a ServiceEntry that gives none
	// (--default-service-export-to, as Istio's MeshConfig
	// defaultServiceExportTo). Nil: the source's (Istio's mesh config, as
	// the Kubernetes source reads it), else every namespace. When both are
	// given this one wins, and the agent says once that the mesh config's
	// differs.
	DefaultExportTo []string
	// MaxNamesPerNamespace bounds the names one namespace's objects make
	// in the table (table.Options): 0 means the default, a negative one
	// no bound.
	MaxNamesPerNamespace int
	// NodeSearch are the node's search domains (autopath only).
	NodeSearch []string
	// MetricsAddr serves /metrics, /healthz and /readyz; empty disables.
	MetricsAddr string
	// Socket is the control socket's path.
	Socket string
	// SocketGroup is a gid whose members may connect to the control socket
	// and read (status, table, pods); 0: root only.
	SocketGroup int
	// Capture turns on DNS capture with eBPF; nil only serves on Listen.
	Capture *CaptureConfig
	// DNSCaptureDefault is the node-wide switch for ambient pods
	// (values.cni.ambient.dnsCapture): with it off, only pods annotated
	// ztdns.io/dns-capture: "true" are captured.
	DNSCaptureDefault bool
	// ExcludeNamespaces are never captured, whatever their labels say:
	// istio-cni's excludeNamespaces, whose pods Istio never enrolls
	// (--exclude-namespaces; empty excludes none).
	ExcludeNamespaces []string
	// IgnoreEnrollment captures a pod the labels put in the ambient
	// mesh whether or not istio-cni enrolled it (--require-istio-enrollment
	// =false), for clusters where no istio-cni runs. Otherwise, with a
	// source that watches the node's pods, such a pod is released after
	// capture.EnrollmentGrace while it lacks ambient.istio.io/redirection
	// "enabled" or "pending" (ambient.ReasonNotEnrolled). A source of
	// manifests never requires it.
	IgnoreEnrollment bool
	// NodeName scopes the pods this agent adopts from /proc; empty in
	// standalone mode.
	NodeName string
	// PodUID is the UID of the agent's pod (the chart's POD_UID, from the
	// downward API): what a hand-over knows the agent by. A container
	// restarted in the same pod keeps it and a new pod has another, so an
	// agent can refuse to hand its sockets back to the pod it took them
	// from (see package handoff). Empty outside Kubernetes: an identity of this
	// process, so a restarted agent is not refused.
	PodUID string
	// Generation is the pod-template-generation label of the agent's pod
	// (the chart's POD_TEMPLATE_GENERATION, from the downward API): the
	// DaemonSet controller raises it with every change of the pod
	// template, a `helm rollback` included. An agent refuses to hand over
	// to one of a lower generation: an older release's pod, its container
	// restarted (see package handoff). 0 outside Kubernetes: no order, as
	// before.
	Generation uint64
	// MemoryLimit is the agent's container's memory limit in bytes, from
	// the downward API (the chart's MEMORY_LIMIT, resourceFieldRef
	// limits.memory): the agent's memory limit when none can be read from
	// its cgroup (cgroup.go), which a resize in place does not change. 0:
	// none.
	MemoryLimit int64
	// ProcRoot is the node's proc filesystem (default /proc): where the
	// agent finds running pods' network namespaces and the node's own
	// (PID 1's). In a pod without hostPID, the node's /proc mounted
	// read-only, e.g. at /host/proc.
	ProcRoot string
	// CNI installs the chained plugin into the node's CNI configuration.
	CNI *CNIConfig
	// SocketsPerAddr is how many SO_REUSEPORT UDP sockets each address gets
	// (default: 1, see DefaultSocketsPerAddr; at most MaxSocketsPerAddr).
	SocketsPerAddr int
	Logger         *slog.Logger
	// Registry receives the metrics (default: a fresh registry).
	Registry *prometheus.Registry

	// Bounds on what pods may take of the resolver; README "Limits and
	// protections".

	// CacheBytes bounds the bytes the cache of upstream answers holds (0:
	// the default).
	CacheBytes int64
	// Limits bound each source of queries: a pod, or an address that is no
	// known pod. A zero field takes the default, a negative one disables it
	// (resolver.Options.Limits).
	Limits quota.Limits
	// MaxForwarding bounds forwarded queries in flight from all sources,
	// TCPMaxConns open TCP connections, TCPIdleTimeout how long one may be
	// idle (shorter under pressure); 0 takes the default.
	MaxForwarding  int
	TCPMaxConns    int
	TCPIdleTimeout time.Duration
	// InflightBytes bounds the bytes of upstream replies held at once, read
	// or waiting to be written (0: the default); PodInflightBytes those one
	// source holds (0: resolver.DefaultPodInflightBytes, a sixteenth of
	// InflightBytes and room for two of the largest replies; negative: no
	// bound of its own, only its fair share). Either bound below
	// resolver.MinInflightBytes (resolver.MinPodInflightBytes) would refuse
	// every reply of the largest size: Run refuses it, and a negative
	// InflightBytes (no bound at all).
	InflightBytes    int64
	PodInflightBytes int64

	// AccessLog gets one line per sampled query while on (`ztdns log
	// on|off`); nil: an access log to stderr, off.
	AccessLog *accesslog.Log
	// MaxNamespaceSeries and MaxUpstreamSeries bound the namespaces and the
	// upstreams with metrics series of their own (0: the defaults).
	MaxNamespaceSeries int
	MaxUpstreamSeries  int

	// handoffTimeouts bound the waits of a hand-over (zero: the defaults;
	// tests shorten them).
	handoffTimeouts handoff.Timeouts
}

// Agent is a running ztdns agent.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	pods   *podcache.Cache
	fwd    *forward.Forwarder
	server *resolver.Server
	reg    *prometheus.Registry
	// builder turns snapshots into tables incrementally; only apply uses it.
	builder *table.Builder
	// builderTTL is the builder's TTL; ttlGiven says it was given
	// (Config.TTL), not followed from kube-dns (followKubeDNSTTL).
	builderTTL uint32
	ttlGiven   bool

	ready      atomic.Bool
	firstTable chan struct{} // closed when the first table is served
	handedOver atomic.Bool
	// id is this agent's identity in a hand-over (handoff.Identity), and
	// predecessor that of the agent it took over from, to which it never
	// hands over (empty: none, or one from before identities).
	id, predecessor string
	// successor is set while a newer agent that asked for the sockets has
	// not yet taken over: this one still serves, but is not ready.
	successor atomic.Bool
	// cniMu serialises CNI events (the plugin's and the recorded ones
	// replayed) and capture add|del.
	cniMu sync.Mutex
	// waitingAdds holds the CNI ADDs waiting for cniMu, for the DELs
	// carried out meanwhile to flag (see cniAdd).
	waitingAdds waitingAdds
	// failedAdds spaces the log lines of failed CNI ADDs (cniAddLocked).
	failedAdds ratelog.Limiter
	// cniInstall is how the CNI installer's last look went (installCNI).
	cniInstall cniInstallState
	// unknownSince is since when the pods of records have been unknown to
	// the source, without capture (dropOrphanedRecords); housekeeping's
	// alone.
	unknownSince capture.UnknownSince
	// now is the clock of dropOrphanedRecords; nil: time.Now (tests move it).
	now func() time.Time
	// istioChain follows istio-cni in the node's CNI chain, when that
	// applies (watchIstioChain).
	istioChain istioChain
	// tableUpdates spaces the INFO lines of table builds
	// (logTableUpdate); apply's to use.
	tableUpdates ratelog.Limiter
	mu           sync.Mutex
	warnings     []string // from the last table build, at most control.MaxStoredWarnings
	// warningsOmitted counts the last build's warnings beyond those kept.
	warningsOmitted int
	vipsFrom        string // where the last table's VIPs came from
	// exportToFrom is the last table's default exportTo and where it
	// came from (exportToStatus).
	exportToFrom string
	// meshIgnored is set once the agent has said that
	// --default-service-export-to overrides a mesh config that differs.
	meshIgnored bool
	// The resolver's sockets, kept to hand them to a successor.
	udp     []*net.UDPConn
	tcp     []*net.TCPListener
	metrics *net.TCPListener
	ctl     net.Listener // the control socket's
	// retired are the sockets taken over on addresses this agent does not
	// listen on (a changed --listen or --capture-port): served until the
	// programs point at this agent's own (finishTakeover), then closed.
	retired     []io.Closer
	retiredDone atomic.Bool
	// addrs is cfg.Listen plus, with capture, every slot address.
	addrs []netip.AddrPort
	// selfUpstreams are the upstreams given that are addrs (withoutSelf),
	// left out of cfg.Upstreams.
	selfUpstreams []netip.AddrPort
	slot4, slot6  [redirect.Slots]netip.AddrPort
	// ipv6 is what capture started with, for checkIPv6, and what the
	// status warning (ipv6Warning) of a node that refuses IPv6 says: that
	// capture serves IPv4 only (dropIPv6), or that the node's IPv6 setting
	// changed since.
	ipv6 struct {
		// netns is the cookie of the network namespace read then; 0 if
		// none was (the resolver had no IPv6 address to serve on, or the
		// cookie could not be read): nothing to check.
		netns   uint64
		atStart string   // why IPv6 was off then (redirect.IPv6Off), "" if on
		now     string   // why it was off at the last check; under mu
		dropped []string // the IPv6 addresses dropIPv6 left out
		kept    []string // or those it served on
	}
	capture    *dataplane // nil without capture
	istioRules istioRules // istio-cni's DNS rules in captured pods
	// hostCookies are the node's own netns cookies (the agent's and PID
	// 1's): never marked.
	hostCookies []uint64
	// limits are where the agent's own limits are read: its cgroup, found
	// at start.
	limits agentLimits
	// memory keeps the Go runtime's memory limit under the cgroup's.
	memory *memoryLimiter
	// nofile warns of an open-file limit below the descriptors the
	// configured bounds may take (nofileWarning); set at start.
	nofile string
	// programsSwitched, when set (tests), runs once finishTakeover has
	// attached this agent's programs, before the agent goes on.
	programsSwitched func()
}

// Run starts the agent and blocks until ctx is done or a part fails.
func Run(ctx context.Context, cfg Config) error {
	a, err := newAgent(cfg)
	if err != nil {
		return err
	}
	return a.run(ctx)
}

func newAgent(cfg Config) (*Agent, error) {
	if cfg.Source == nil {
		return nil, errors.New("no source: give --config-dir or --kubeconfig")
	}
	if len(cfg.Listen) == 0 {
		return nil, errors.New("no --listen address")
	}
	if n := cfg.InflightBytes; n != 0 && n < resolver.MinInflightBytes { // negative too: it would be no bound at all
		return nil, fmt.Errorf("InflightBytes %d: want 0 (the default) or at least %d, one reply of the largest size",
			n, resolver.MinInflightBytes)
	}
	if err := handoff.ValidPodUID(cfg.PodUID); err != nil {
		return nil, err
	}
	if n := cfg.PodInflightBytes; n > 0 && n < resolver.MinPodInflightBytes {
		return nil, fmt.Errorf("PodInflightBytes %d: want 0 (the default), negative (no bound of its own) or at least %d, one reply of the largest size",
			n, resolver.MinPodInflightBytes)
	}
	// Load checks it too, but only after the resolver's interface is set up.
	if c := cfg.Capture; c != nil {
		if err := redirect.ValidateCaptureNameservers(c.Nameservers); err != nil {
			return nil, fmt.Errorf("capture nameservers: %w", err)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ClusterDomain == "" {
		cfg.ClusterDomain = table.DefaultDomain
	}
	// Not given: kube-dns's, as the source reads it (followKubeDNSTTL).
	ttlGiven := cfg.TTL > 0
	if !ttlGiven {
		cfg.TTL = table.DefaultTTL * time.Second
	}
	if cfg.SocketsPerAddr <= 0 {
		cfg.SocketsPerAddr = DefaultSocketsPerAddr
	}
	cfg.SocketsPerAddr = min(cfg.SocketsPerAddr, MaxSocketsPerAddr)
	// Metrics nobody can read (no --metrics, no registry of the caller's)
	// are not counted.
	noMetrics := cfg.MetricsAddr == "" && cfg.Registry == nil
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.VIPSource == "" {
		cfg.VIPSource = vip.SourceAuto
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.AccessLog == nil {
		var err error
		if cfg.AccessLog, err = accesslog.New(os.Stderr, "stderr", "text", 0); err != nil {
			return nil, err
		}
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, reg: cfg.Registry, pods: podcache.New(cfg.ClusterDomain), firstTable: make(chan struct{}), id: handoff.Identity(cfg.PodUID),
		builder: newBuilder(cfg, uint32(cfg.TTL/time.Second)), builderTTL: uint32(cfg.TTL / time.Second), ttlGiven: ttlGiven,
		addrs: slices.Clone(cfg.Listen), hostCookies: nodeCookies(cfg.ProcRoot, cfg.Logger), tableUpdates: ratelog.Limiter{Interval: tableLogEvery}}
	if cfg.Capture != nil {
		var err error
		port := cfg.Capture.Port
		if port == 0 {
			port = redirect.DefaultPort
		}
		if a.slot4, a.slot6, err = redirect.ResolverSlots(cfg.Listen, port); err != nil {
			return nil, err
		}
		for _, s := range append(a.slot4[:], a.slot6[:]...) {
			if s.IsValid() && !slices.Contains(a.addrs, s) {
				a.addrs = append(a.addrs, s)
			}
		}
	}
	kept, self := withoutSelf(cfg.Upstreams, a.addrs, localAddrs)
	if len(self) > 0 {
		if len(kept) == 0 {
			return nil, fmt.Errorf("no upstream: %s %s the agent's own address, where it would forward its misses to itself: "+
				"give --upstream other nameservers (the node's resolv.conf, whose nameservers are the default, names the agent)",
				joinAddrs(self), pluralIs(len(self)))
		}
		a.cfg.Upstreams = kept
		a.selfUpstreams = self
		a.log.Warn("upstreams left out: they are the agent's own addresses, where it would forward its misses to itself",
			"left", self, "upstreams", kept)
	}
	limit, ok := nofileLimit()
	a.nofile = nofileWarning(limit, ok, a.descriptorBudget())
	fwdOpts := []forward.Option{forward.WithLogger(cfg.Logger)}
	if cfg.CacheSize != 0 {
		fwdOpts = append(fwdOpts, forward.WithCacheSize(max(cfg.CacheSize, 0)))
	}
	if cfg.ForwardTimeout > 0 {
		fwdOpts = append(fwdOpts, forward.WithTimeout(cfg.ForwardTimeout))
	}
	inflight := cmp.Or(cfg.InflightBytes, resolver.DefaultInflightBytes)
	budget := quota.NewBudget(inflight, resolver.PodInflightBytes(cfg.PodInflightBytes, inflight))
	fwdOpts = append(fwdOpts, forward.WithCacheBytes(cfg.CacheBytes), forward.WithBudget(budget), forward.WithMaxUpstreamSeries(cfg.MaxUpstreamSeries),
		forward.WithKnownUpstreams(knownUpstreams(a.cfg)...))
	a.fwd = forward.New(fwdOpts...)
	a.server = resolver.New(resolver.Options{
		Pods:        a.pods,
		Forwarder:   a.fwd,
		Upstreams:   a.upstreamsFor,
		CaptureSlot: a.captureSlot,
		Autopath:    cfg.Autopath,
		NodeSearch:  cfg.NodeSearch,
		Logger:      cfg.Logger,

		Limits:         cfg.Limits,
		MaxInflight:    cfg.MaxForwarding,
		TCPMaxConns:    cfg.TCPMaxConns,
		TCPIdleTimeout: cfg.TCPIdleTimeout,
		Budget:         budget,
		KernelRate:     true,

		AccessLog:          cfg.AccessLog,
		MaxNamespaceSeries: cfg.MaxNamespaceSeries,
		NoRequestMetrics:   noMetrics,
	})
	a.limits = agentLimits{cgroup: findSelfCgroup("/proc/self", os.Getpid(), cfg.PodUID), downward: cfg.MemoryLimit}
	a.memory = newMemoryLimiter(a)
	if err := a.registerMetrics(); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *Agent) run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	g := &group{cancel: cancel}
	if a.nofile != "" {
		a.log.Warn(a.nofile)
	}

	// The socket directory is checked before anything in it is trusted: the
	// hand-off socket a predecessor offers lives there too.
	access := control.Access{Group: a.cfg.SocketGroup, Logger: a.log}
	if err := control.PrepareDir(a.cfg.Socket, access); err != nil {
		a.server.Close()
		a.fwd.Close()
		return err
	}
	// At every start: the CNI plugin records what this agent misses while
	// it restarts only when it finds the marker, which only an uninstall
	// removes.
	if err := control.MarkInstalled(a.cfg.Socket); err != nil {
		a.server.Close()
		a.fwd.Close()
		return err
	}
	// Take over a running agent's sockets, if there is one, before binding:
	// a restart then loses no query (see package handoff).
	in, err := handoff.TakeOver(a.cfg.Socket, a.id, a.cfg.Generation, a.cfg.handoffTimeouts, a.log)
	if errors.Is(err, handoff.ErrRefusedOlder) {
		// An older release's pod, its container restarted after the newer
		// one's agent started (with or without a hand-over): taking the
		// node would leave the newer agent idle, and the node without a
		// resolver once the rollout deleted this pod.
		a.server.Close()
		a.fwd.Close()
		return fmt.Errorf("the agent serving the node (at %s) is of a later pod template generation, a newer release's, and keeps serving: "+
			"this agent, an older release's, serves nothing and exits; the rollout deletes its pod: %w", handoff.Path(a.cfg.Socket), err)
	}
	if errors.Is(err, handoff.ErrRefusedRestart) {
		// This agent's pod handed the node over, and its container was
		// restarted (OOM-killed, its liveness probe) before the pod was
		// deleted: serving, or starting capture afresh, would take the node
		// from the new agent, or fail its pods open.
		a.server.Close()
		a.fwd.Close()
		return fmt.Errorf("this agent's pod handed the node over, and the agent that took it (at %s) keeps serving: "+
			"this agent, its container restarted since, serves nothing and exits; the rollout deletes its pod: %w", handoff.Path(a.cfg.Socket), err)
	}
	if err != nil && !errors.Is(err, handoff.ErrPeerNotRoot) {
		// It serves on: a second agent with fresh sockets beside it would
		// split the queries between two tables, and both mark and beat.
		a.server.Close()
		a.fwd.Close()
		return fmt.Errorf("a running agent answered at %s, but taking its sockets over failed; stop it or retry: %w",
			handoff.Path(a.cfg.Socket), err)
	}
	if err != nil {
		a.log.Warn("could not take over the running agent's sockets; binding fresh ones", "err", err)
	}
	if in != nil {
		a.predecessor = in.From
		// Held open while this agent runs, for its predecessor to watch
		// (see package handoff); the process's end closes it too.
		defer in.Conn.Close()
	} else if a.cfg.PodUID != "" {
		// Restarted in a pod whose agent took over before: it refuses the
		// same agent (see package handoff).
		a.predecessor = handoff.RecordedPredecessor(a.cfg.Socket, a.id, a.log)
	}
	// abort undoes a start that failed half-way.
	abort := func(err error) error {
		in.Abandon()
		if a.metrics != nil {
			a.metrics.Close() // its server, if it runs, closes it too
		}
		cancel(err)
		a.server.Close()
		a.fwd.Close()
		g.waitStopped(a.log, a.stopTimeout())
		return err
	}
	// Before anything is bound or attached: an agent beside another
	// resolver would take part of its queries, and with capture would
	// point the node's programs at itself.
	if err := a.checkNotServed(in); err != nil {
		return abort(err)
	}
	// Bound, or adopted, here, and served once this agent takes over: a
	// --metrics address another process serves is refused before capture.
	if a.cfg.MetricsAddr != "" {
		if err := a.listenMetrics(in); err != nil {
			return abort(err)
		}
	}
	if a.cfg.Capture != nil {
		if err := a.startCapture(in != nil); err != nil {
			return abort(fmt.Errorf("capture: %w", err))
		}
		defer a.capture.close()
	}
	// Once the addresses are settled (dropIPv6) and before the source
	// builds the first table, which then builds under the limit.
	a.memory.check()
	g.spawn("memory", func() error { returnMemoryAfterBursts(ctx, a.log, a.memory.check); return nil })
	g.spawn("access log", func() error { a.cfg.AccessLog.Run(ctx); return nil })
	g.spawn("source", func() error {
		err := a.cfg.Source.Run(ctx, a.apply)
		if err == nil && ctx.Err() == nil {
			err = errors.New("stopped")
		}
		return err
	})
	if in != nil {
		// The predecessor keeps serving until this agent has a table: a
		// fresh agent would forward every name until its first sync. The
		// wait ends at in.SyncBy, counted from the takeover, not from
		// here: starting capture may have taken a while, and the
		// predecessor's patience runs from when it sent the sockets.
		select {
		case <-a.firstTable:
		case <-time.After(time.Until(in.SyncBy)):
			// Taking over without a table would answer names from an
			// empty one and never beat (capture fails open on the whole
			// node), with the predecessor drained for good: it serves on
			// instead, ready again, and this agent exits to be restarted.
			return abort(a.noTableInTime())
		case <-ctx.Done():
			// Stopped (or failed) before taking over: the predecessor must
			// keep serving, or nothing would.
			a.log.Info("stopped before taking over; the previous agent keeps serving")
			if err := abort(context.Cause(ctx)); !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		}
	}
	metricsCtx, stopMetrics := context.WithCancel(ctx)
	defer stopMetrics()
	if a.metrics != nil {
		g.spawn("metrics", unlessSet(&a.handedOver, func() error { return control.Serve(metricsCtx, a.metrics, a.httpHandler()) }))
	}
	if err := a.listen(g.spawn, in); err != nil {
		return abort(err)
	}
	if in != nil {
		// Before "serving": from then on the predecessor is idle, and a
		// restart of this agent must still refuse it.
		if a.cfg.PodUID != "" {
			if err := handoff.RecordPredecessor(a.cfg.Socket, a.id, in.From); err != nil {
				a.log.Warn("could not record whom this agent takes over from: restarted, it would not refuse that agent", "err", err)
			}
		}
		if err := in.Release(); err != nil {
			a.log.Warn("the previous agent did not confirm the handoff", "err", err)
		} else {
			a.log.Info("took over the resolver's sockets from the previous agent")
		}
		if err := a.finishTakeover(); err != nil {
			return abort(err)
		}
	}
	if a.capture != nil {
		a.watchIstioChain() // before deciding anything
		a.reconcileCapture(ctx, in != nil)
	}
	// A handed-over agent leaves the plugin to its successor, which installs
	// its own: two installers would rewrite the binary and the conflist
	// entry in turn until the old pod is deleted. stopCNI returns once the
	// installer has.
	stopCNI := func() {}
	if a.cfg.CNI != nil {
		cniCtx, cancelCNI := context.WithCancel(ctx)
		installing := make(chan struct{})
		g.spawn("cni install", func() error { defer close(installing); return a.installCNI(cniCtx) })
		stopCNI = func() { cancelCNI(); <-installing }
	}
	ctl, err := a.listenControl(in, access)
	if err != nil {
		return abort(err)
	}
	a.ctl = ctl
	ctlCtx, stopControl := context.WithCancel(ctx)
	defer stopControl()
	controlStopped := make(chan struct{})
	g.spawn("control socket", unlessSet(&a.handedOver, func() error {
		defer close(controlStopped)
		return control.Serve(ctlCtx, ctl, control.NewHandler(controlAPI{a}, a.log))
	}))
	g.spawn("housekeeping", func() error { a.keepHouse(ctx); return nil })
	if a.capture != nil {
		g.spawn("istio rules", func() error { a.keepIstioRulesFresh(ctx); return nil })
	}
	hs, err := handoff.Listen(a.cfg.Socket)
	if err != nil {
		ctl.Close()
		return abort(err)
	}
	go func() { <-ctx.Done(); hs.Close() }()
	g.spawn("handoff", func() error {
		ids := handoff.Identities{Self: a.id, Predecessor: a.predecessor, Generation: a.cfg.Generation}
		to, err := handoff.Offer(ctx, hs, a.log, ids, a.cfg.handoffTimeouts, a.handoffSockets, a.successorAsking, func(takesControl bool) {
			a.log.Info("handing the resolver's sockets to a new agent; this one stops serving")
			// The control socket first, while this agent still acts on
			// what it is asked: it stops accepting, and answers a request
			// on every connection it took, however late the request
			// comes (a CNI ADD is carried out, not answered "handed
			// over"), for 2 s at most; one that comes later is left
			// unread, which its caller sees reset and sends again (see
			// control.Serve). A successor that took the socket accepts
			// what waits in its backlog, and what comes next, once it
			// serves; one that did not binds the path after "released".
			if takesControl {
				control.KeepPathOnClose(ctl)
			}
			stopControl()
			<-controlStopped
			a.handedOver.Store(true)
			a.ready.Store(false)
			a.fenceCapture() // before "released": the successor marks pods next
			stopMetrics()    // the successor answers probes and scrapes on the same socket
			stopCNI()        // the successor installs its plugin from "released" on
			a.server.Drain()
			// Beating on while draining: the successor starts only after
			// "released", and a drain as long as the staleness bound would
			// fail every pod open in between. Fenced, this agent marks
			// nothing meanwhile.
			if a.capture != nil {
				a.capture.stopBeating(false) // the successor beats now
			}
			// Before "released" too: a successor that dies before it
			// listens at the hand-off path leaves this listener there,
			// which would take the next agent's request and never answer
			// it. Closed, it refuses, and that agent starts afresh on
			// sockets nobody else holds.
			a.closeHandedOver()
			hs.Close()
		})
		switch {
		case to != nil && to.Held():
			// Idle from here until this pod is deleted, unless the
			// successor goes first (a rollback deletes its pod).
			return handoff.WatchSuccessor(ctx, to, a.cfg.Socket, a.log)
		case to != nil, ctx.Err() != nil:
			return nil
		}
		return err
	})

	a.log.Info("agent started", "listen", a.addrs, "capture", a.capture != nil, "upstreams", a.cfg.Upstreams, "domain", a.cfg.ClusterDomain,
		"autopath", a.cfg.Autopath, "socket", a.cfg.Socket, "metrics", a.cfg.MetricsAddr,
		"version", version.Get().Version, "revision", version.Get().Revision)

	// Started, and once it serves a table, done with the binary's pages
	// only starting used.
	g.spawn("start pages", func() error {
		select {
		case <-a.firstTable:
		case <-ctx.Done():
			return nil
		}
		if mapped, err := dropStartupPages(); err != nil {
			a.log.Debug("keeping the binary's pages mapped", "err", err)
		} else {
			a.log.Debug("dropped the binary's pages mapped at start", "bytes", mapped)
		}
		return nil
	})

	<-ctx.Done()
	a.ready.Store(false)
	err = context.Cause(ctx)
	if a.capture != nil && !a.handedOver.Load() {
		// Stopping with no successor: fail open first, then keep answering
		// what was already sent here before the sockets close.
		a.capture.stopBeating(true)
		time.Sleep(stopGrace)
	}
	a.server.Close()
	a.fwd.Close()
	g.waitStopped(a.log, a.stopTimeout())
	if errors.Is(err, context.Canceled) {
		a.log.Info("agent stopped")
		return nil
	}
	return err
}

// noTableInTime is the error of a successor that gives the hand-over up
// for want of a table: on one line, what its source reports, so that the
// log of the restarted pod says what to fix.
func (a *Agent) noTableInTime() error {
	why := "it has delivered nothing"
	if h, ok := a.cfg.Source.(source.HealthReporter); ok {
		if err := h.Healthy(); err != nil {
			why = strings.ReplaceAll(err.Error(), "\n", "; ")
		}
	}
	return fmt.Errorf("no name table %s after asking the running agent for its sockets: it keeps serving, and this agent gives the hand-over up; "+
		"check the source (access to the API server; RBAC: list and watch on every resource it watches): %s", a.cfg.handoffTimeouts.OrDefaults().SyncWait, why)
}

// successorAsking is told when a successor asks for the sockets and when
// its exchange ends without a handoff. In a rolling update both pods share
// the probe port, and until the successor has its first table only this
// agent accepts on it: answering ready then would make the new pod ready,
// and get this one deleted (and fail pods open) before the handoff. So it
// is not ready meanwhile, and ready again if the successor dies or gives
// up.
func (a *Agent) successorAsking(asking bool) {
	if asking {
		a.log.Info("a new agent asked for the resolver's sockets; serving, but not ready, until it has its table")
	} else {
		a.log.Warn("the new agent did not take the resolver's sockets over; ready again")
	}
	a.successor.Store(asking)
}

// stopTimeout bounds how long a stopping agent waits for its parts: a
// source stuck in a read (a manifest on a hung file system) must not keep
// the agent from exiting, and the kubelet's SIGKILL would come anyway. A
// forward in flight gets its whole --forward-timeout, when that is longer.
const stopTimeout = 3 * time.Second

func (a *Agent) stopTimeout() time.Duration {
	return max(stopTimeout, a.cfg.ForwardTimeout+time.Second)
}

// group runs the agent's parts; the first to fail stops the agent.
type group struct {
	wg      sync.WaitGroup
	cancel  context.CancelCauseFunc
	mu      sync.Mutex
	running map[string]int // parts still running, by name
}

func (g *group) spawn(part string, f func() error) {
	g.wg.Add(1)
	g.mu.Lock()
	if g.running == nil {
		g.running = map[string]int{}
	}
	g.running[part]++
	g.mu.Unlock()
	go func() {
		defer g.wg.Done()
		defer func() {
			g.mu.Lock()
			if g.running[part]--; g.running[part] == 0 {
				delete(g.running, part)
			}
			g.mu.Unlock()
		}()
		if err := f(); err != nil {
			g.cancel(fmt.Errorf("%s: %w", part, err))
		}
	}()
}

// waitStopped waits up to within for every part to return, and names those
// that did not: the agent then exits without them.
func (g *group) waitStopped(log *slog.Logger, within time.Duration) {
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(within):
		g.mu.Lock()
		parts := slices.Sorted(maps.Keys(g.running))
		g.mu.Unlock()
		log.Warn("parts of the agent did not stop in time; exiting without them", "parts", parts, "waited", within)
	}
}

// unlessSet wraps a server whose end is no failure once done is set: the
// successor took its socket (handedOver), or it served a retired one
// (retiredDone).
func unlessSet(done *atomic.Bool, serve func() error) func() error {
	return func() error {
		err := serve()
		if done.Load() {
			return nil
		}
		return err
	}
}

// startCapture loads (or takes over) the programs: link.Update swaps them in
// place, so capture never pauses across a restart. Without a predecessor
// nobody serves yet (a first start, or the last agent died with its
// heartbeat still fresh): pods then use their own nameservers until this
// agent serves its first table.
//
// With a predecessor, its programs stay attached, with its maps and config,
// and the interface keeps its addresses, until finishTakeover: pods are sent
// where it serves until this agent serves too, and a start that fails or
// stops before the hand-over leaves the predecessor marking pods in the maps
// its programs read, even when this agent's maps have another layout.
func (a *Agent) startCapture(predecessor bool) error {
	if a.slot6[0].IsValid() {
		a.ipv6.netns, _ = ownNetnsCookie()
		if why := redirect.IPv6Off(a.resolverInterface()); why != "" {
			if err := a.dropIPv6(why); err != nil {
				return err
			}
		} else {
			for _, ap := range a.addrs {
				if ap.Addr().Is6() {
					a.ipv6.kept = append(a.ipv6.kept, ap.String())
				}
			}
		}
	}
	_, podsWatched := a.cfg.Source.(source.PodWatcher)
	ctl := capture.Config{NodeName: a.cfg.NodeName, DNSCaptureDefault: a.cfg.DNSCaptureDefault,
		ExcludeNamespaces: a.cfg.ExcludeNamespaces, PodsWatched: podsWatched, RequireEnrollment: podsWatched && !a.cfg.IgnoreEnrollment,
		HostCookies: a.hostCookies}
	c, err := newDataplane(*a.cfg.Capture, ctl, capture.ProcNamespaces{Root: a.cfg.ProcRoot}, a.log, a.pods, a.cfg.Socket, a.slot4, a.slot6,
		predecessor)
	if err != nil {
		return err
	}
	if !predecessor {
		c.r.StopHeartbeat()
	}
	c.onCheck = a.checkIPv6
	if len(a.hostCookies) == 0 {
		c.close()
		return errors.New("cannot read the node's own network namespace cookie (SO_NETNS_COOKIE)")
	}
	a.capture = c
	return nil
}

// dropIPv6 leaves every IPv6 address out of the resolver's (the slots' and
// any other --listen one), on a node whose kernel refuses IPv6 (why): they
// could be put neither on the resolver's interface nor bound, and the
// chart's default listen has one of each family, for every node of a
// cluster. An IPv4-mapped one goes too: it is bound with an IPv6 socket.
// The programs then redirect no IPv6 destination (a family with no
// resolver is left alone), so pods asking an IPv6 nameserver reach it
// themselves. With no IPv4 address to serve on, capture cannot start.
func (a *Agent) dropIPv6(why string) error {
	if !a.slot4[0].IsValid() {
		return fmt.Errorf("IPv6 is off on this node (%s), and the resolver has no IPv4 --listen address", why)
	}
	var dropped []string
	a.addrs = slices.DeleteFunc(a.addrs, func(ap netip.AddrPort) bool {
		if ap.Addr().Is6() {
			dropped = append(dropped, ap.String())
			return true
		}
		return false
	})
	a.slot6 = [redirect.Slots]netip.AddrPort{}
	a.mu.Lock()
	a.ipv6.atStart, a.ipv6.now, a.ipv6.dropped = why, why, dropped
	a.mu.Unlock()
	a.log.Warn("IPv6 is off on this node: serving on IPv4 only, without any IPv6 address; queries to IPv6 nameservers are not captured",
		"reason", why, "dropped", dropped)
	return nil
}

// resolverInterface is the interface capture puts the resolver's addresses
// on.
func (a *Agent) resolverInterface() string {
	return cmp.Or(a.cfg.Capture.Interface, redirect.DefaultInterface)
}

// checkIPv6 reads again, at each attachment check, whether the node takes
// IPv6, and when that changed since the last check, says so in the log and
// turns the status warning to what holds now. The addresses stay as
// capture started: IPv6 turned on after the start is served and captured
// from the next start on; turned off, the IPv6 addresses kept may no
// longer answer (from the node itself they do not, so /healthz fails and
// the liveness probe restarts the agent, which then leaves them out).
//
// The settings are those of the calling thread's network namespace
// (/proc/sys/net is the opener's): a check from another one than capture
// started in (a test starts the agent in a node's namespace, and runs its
// other goroutines in its own) reads nothing.
func (a *Agent) checkIPv6() {
	if a.ipv6.netns == 0 {
		return
	}
	if c, err := ownNetnsCookie(); err != nil || c != a.ipv6.netns {
		return
	}
	why := redirect.IPv6Off(a.resolverInterface())
	a.mu.Lock()
	if why == a.ipv6.now {
		a.mu.Unlock()
		return
	}
	a.ipv6.now = why
	a.mu.Unlock()
	switch {
	case why == "" && a.ipv6.atStart != "":
		a.log.Warn("IPv6 is on again on this node: the resolver still serves on IPv4 only until the agent restarts",
			"offAtStart", a.ipv6.atStart, "dropped", a.ipv6.dropped)
	case why == "":
		a.log.Info("IPv6 is on again on this node, as when the agent started")
	case a.ipv6.atStart != "":
		a.log.Warn("IPv6 is still off on this node, for another reason", "reason", why, "offAtStart", a.ipv6.atStart)
	default:
		a.log.Warn("IPv6 was turned off on this node after the agent started: its IPv6 addresses may no longer answer until it restarts and leaves them out",
			"reason", why, "addresses", a.ipv6.kept)
	}
}

// ipv6Warning is the status warning for what capture started with and the
// node's IPv6 setting now (a.ipv6.now), "" when IPv6 is on as at the start;
// under mu.
func (a *Agent) ipv6Warning() string {
	now, atStart := a.ipv6.now, a.ipv6.atStart
	switch {
	case now != "" && atStart != "":
		return fmt.Sprintf("IPv6 is off on this node (%s): the resolver serves on IPv4 only, without its IPv6 addresses %s; queries to IPv6 nameservers are not captured",
			now, strings.Join(a.ipv6.dropped, ", "))
	case atStart != "":
		return fmt.Sprintf("IPv6 is on again on this node, but was off when the agent started (%s): the resolver serves on IPv4 only, without its IPv6 addresses %s, and queries to IPv6 nameservers are not captured until the agent restarts",
			atStart, strings.Join(a.ipv6.dropped, ", "))
	case now != "":
		return fmt.Sprintf("IPv6 was turned off on this node after the agent started (%s): its IPv6 addresses %s may no longer answer (from the node itself they do not: /healthz fails) until the agent restarts and serves on IPv4 only",
			now, strings.Join(a.ipv6.kept, ", "))
	}
	return ""
}

// reconcileCapture makes the marks right once this agent serves (and, after
// a handoff, its predecessor has written its last record), and turns capture
// on as soon as a table is served. After a takeover (tookOver) the beat
// starts first: the predecessor stopped beating when it released the
// sockets, and the marks it left are right until reconciled, whereas
// reconciling (a scan of /proc) could outlast the staleness bound and fail
// every pod open mid-upgrade. A fresh start reconciles first: marks left
// by a dead agent may be stale.
func (a *Agent) reconcileCapture(ctx context.Context, tookOver bool) {
	beat := func() {
		go func() {
			select {
			case <-a.firstTable:
				a.capture.startBeating()
			case <-ctx.Done():
			}
		}()
	}
	if tookOver {
		beat()
	}
	if err := a.capture.ctl.Restore(); err != nil {
		a.log.Error("reconciling marked pods failed", "err", err)
	}
	a.replayPending()
	a.capture.ctl.Redecide()
	a.readdressByHand() // given an address while no agent ran
	if !tookOver {
		beat()
	}
}

// listen opens the resolver's sockets, SocketsPerAddr UDP sockets and one
// TCP listener on every address, reusing those a predecessor handed over.
func (a *Agent) listen(spawn func(string, func() error), in *handoff.Inherited) error {
	if in == nil {
		in = &handoff.Inherited{}
	}
	for _, addr := range a.addrs {
		udp := in.UDP[addr]
		delete(in.UDP, addr)
		for len(udp) < a.cfg.SocketsPerAddr {
			c, err := resolver.ListenUDP(addr)
			if err != nil {
				return fmt.Errorf("listening on udp %s: %w", addr, err)
			}
			udp = append(udp, c)
		}
		for _, c := range udp {
			a.udp = append(a.udp, c)
			spawn("udp "+addr.String(), func() error { return a.server.ServeUDP(c) })
		}
		ln := in.TCP[addr]
		delete(in.TCP, addr)
		if ln == nil {
			var err error
			if ln, err = resolver.ListenTCP(addr); err != nil {
				return fmt.Errorf("listening on tcp %s: %w", addr, err)
			}
		}
		a.tcp = append(a.tcp, ln)
		spawn("tcp "+addr.String(), func() error { return a.server.ServeTCP(ln) })
	}
	if a.capture != nil {
		// Addresses this agent no longer listens on: the programs send pods
		// there until finishTakeover, and the predecessor stops reading
		// when it drains.
		for addr, cs := range in.UDP {
			for _, c := range cs {
				a.retired = append(a.retired, c)
				spawn("udp "+addr.String()+" (previous)", unlessSet(&a.retiredDone, func() error { return a.server.ServeUDP(c) }))
			}
		}
		for addr, ln := range in.TCP {
			a.retired = append(a.retired, ln)
			spawn("tcp "+addr.String()+" (previous)", unlessSet(&a.retiredDone, func() error { return a.server.ServeTCP(ln) }))
		}
		in.UDP, in.TCP = nil, nil
	}
	in.CloseSockets() // addresses this agent no longer listens on
	return nil
}

// checkNotServed refuses to start where another process already serves
// a resolver address, whose SO_REUSEPORT sockets the kernel would let this
// agent bind beside the other's, taking about half of its queries (see
// resolver.CheckNotServed); listenMetrics refuses the --metrics address.
// The sockets of a predecessor that hands them over are not another's: it
// serves there until this agent takes over, and a new UDP socket (a larger
// --udp-sockets) joins theirs. The error wraps EADDRINUSE.
func (a *Agent) checkNotServed(in *handoff.Inherited) error {
	for _, addr := range a.addrs {
		if in.Covers(addr) {
			continue
		}
		if err := resolver.CheckNotServed(addr); err != nil {
			return fmt.Errorf("%w; not serving beside it: stop that one, or give this agent another --listen address", err)
		}
	}
	return nil
}

// finishTakeover, once the predecessor has stopped serving, points the
// programs at this agent's addresses and port, and then lets go of those
// it served for the predecessor.
func (a *Agent) finishTakeover() error {
	if a.capture == nil {
		return nil
	}
	if err := a.capture.takeOverConfig(); err != nil {
		return fmt.Errorf("capture: pointing the programs at this agent's addresses: %w", err)
	}
	if a.programsSwitched != nil {
		a.programsSwitched()
	}
	if len(a.retired) > 0 {
		time.Sleep(stopGrace) // queries redirected just before are on their way
		a.retiredDone.Store(true)
		for _, c := range a.retired {
			c.Close()
		}
		a.retired = nil
	}
	a.capture.dropOtherAddrs()
	return nil
}

// listenControl serves the control socket on the listener the predecessor
// handed over, if it did: connections made since it stopped accepting wait
// in that socket's backlog, at the path that never went missing. Else, or
// if that listener cannot be served (it is no longer at the path), it binds
// the path.
func (a *Agent) listenControl(in *handoff.Inherited, access control.Access) (net.Listener, error) {
	if in != nil && in.Control != nil {
		ln := in.Control
		in.Control = nil
		ctl, err := control.Adopt(a.cfg.Socket, ln, access)
		if err == nil {
			return ctl, nil
		}
		a.log.Warn("not serving the control socket the previous agent handed over; binding its path afresh", "err", err)
		ln.Close() // this agent's copy, the last: the path is free to bind
	}
	return control.Listen(a.cfg.Socket, access)
}

// listenMetrics opens the HTTP listener, or adopts the predecessor's when
// it is bound where this agent's --metrics says: one on another address
// (the port changed in an upgrade) would answer this pod's probes on the
// old port only, and its liveness probe would restart it, taking the old
// listener again each time.
func (a *Agent) listenMetrics(in *handoff.Inherited) error {
	addr := BracketIPv6HostPort(a.cfg.MetricsAddr)
	if in != nil && in.Metrics != nil {
		if sameTCPAddr(in.Metrics.Addr(), addr) {
			a.metrics, in.Metrics = in.Metrics, nil
			return nil
		}
		a.log.Info("not adopting the previous agent's metrics listener: its address differs", "previous", in.Metrics.Addr(), "metrics", addr)
		in.Metrics.Close() // this agent's copy; the predecessor keeps its own
		in.Metrics = nil
	}
	ln, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		_, port, _ := net.SplitHostPort(addr)
		return fmt.Errorf("--metrics %s: another process already serves on this address (a second ztdns agent?): find it with ss -ltnp 'sport = :%s'; "+
			"not serving beside it: stop that one, or give this agent another --metrics address: %w", addr, port, err)
	}
	if err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}
	if host, _, _ := net.SplitHostPort(addr); host == "" || net.ParseIP(host).IsUnspecified() {
		a.log.Warn("metrics, health and readiness are served on every interface of the node; give --metrics the node's IP or 127.0.0.1", "metrics", addr)
	}
	a.metrics = ln.(*net.TCPListener)
	return nil
}

// sameTCPAddr reports whether the listener address got is the one addr
// (host:port, as given to net.Listen) binds: unspecified hosts of either
// family are the same wildcard.
func sameTCPAddr(got net.Addr, addr string) bool {
	g, ok := got.(*net.TCPAddr)
	if !ok {
		return false
	}
	want, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil || want.Port != g.Port {
		return false
	}
	if want.IP == nil || want.IP.IsUnspecified() {
		return g.IP == nil || g.IP.IsUnspecified()
	}
	return want.IP.Equal(g.IP)
}

// BracketIPv6HostPort puts brackets around an IPv6 address written without
// them before its port, reading the last colon as the port's: the metrics
// address "$(HOST_IP):15053" on an IPv6 node (earlier charts passed it so;
// now "[$(HOST_IP)]:15053", which net.SplitHostPort takes for both
// families), and the DNS flags' way of telling an address with a port from
// one without. Anything else comes back as it was.
func BracketIPv6HostPort(s string) string {
	if _, _, err := net.SplitHostPort(s); err == nil {
		return s
	}
	if i := strings.LastIndexByte(s, ':'); i > 0 {
		if ip, err := netip.ParseAddr(s[:i]); err == nil && ip.Is6() {
			return net.JoinHostPort(ip.String(), s[i+1:])
		}
	}
	return s
}

// handoffSockets lists this agent's sockets for a successor.
func (a *Agent) handoffSockets() ([]handoff.SocketDesc, []*os.File, error) {
	var descs []handoff.SocketDesc
	var files []*os.File
	add := func(network string, c syscall.Conn, addr net.Addr) error {
		f, err := handoff.FileOf(c)
		if err != nil {
			return err
		}
		descs = append(descs, handoff.SocketDesc{Network: network, Addr: addrPortString(addr)})
		files = append(files, f)
		return nil
	}
	for _, c := range a.udp {
		if err := add("udp", c, c.LocalAddr()); err != nil {
			handoff.CloseAll(files)
			return nil, nil, err
		}
	}
	for _, l := range a.tcp {
		if err := add("tcp", l, l.Addr()); err != nil {
			handoff.CloseAll(files)
			return nil, nil, err
		}
	}
	if a.metrics != nil {
		if err := add("metrics", a.metrics, a.metrics.Addr()); err != nil {
			handoff.CloseAll(files)
			return nil, nil, err
		}
	}
	if a.ctl != nil {
		f, err := control.ListenerFile(a.ctl)
		if err != nil {
			handoff.CloseAll(files)
			return nil, nil, err
		}
		descs = append(descs, handoff.SocketDesc{Network: "control", Addr: a.cfg.Socket})
		files = append(files, f)
	}
	return descs, files, nil
}

// closeHandedOver closes this agent's copies of the sockets it handed over,
// once drained: the successor holds its own. A copy kept unread would stay
// in its address's SO_REUSEPORT group, and should the successor die, the
// kernel would hand it part of the queries to the agent bound next.
func (a *Agent) closeHandedOver() {
	for _, c := range a.udp {
		c.Close()
	}
	for _, l := range a.tcp {
		l.Close()
	}
	if a.metrics != nil {
		a.metrics.Close() // its server's shutdown closes it too, soon
	}
}

func addrPortString(a net.Addr) string {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().String()
	case *net.TCPAddr:
		return a.AddrPort().String()
	}
	return a.String()
}

// apply takes a snapshot from the source: a new table for the resolver and
// the source's pods for the registry.
func (a *Agent) apply(s *model.Snapshot) {
	start := time.Now()
	a.followKubeDNSTTL(s)
	tbl, warnings := a.builder.Build(s)
	a.server.SetTable(tbl)
	a.pods.SetSourcePods(s.Pods)
	if a.capture != nil && !a.handedOver.Load() { // else the successor's to do
		a.capture.ctl.SetNamespaces(s.Namespaces)
		a.capture.ctl.Redecide() // labels and annotations may have changed
	}
	took := time.Since(start)
	metricTableBuild.Observe(took.Seconds())
	metricTableNames.Set(float64(tbl.Len()))
	metricTableWarnings.Set(float64(len(warnings)))
	for reason, n := range tbl.HostsWithoutVIP() {
		metricTableHostsWithoutVIP.WithLabelValues(reason).Set(float64(n))
	}
	metricTableAllocatedIPv4VIPs.Set(float64(tbl.AllocatedIPv4VIPs()))
	overNamespaces, overObjects := a.builder.OverBudget()
	metricTableNamespacesOverBudget.Set(float64(overNamespaces))
	metricTableObjectsOverBudget.Set(float64(overObjects))
	// A directory of broken objects must not make the agent keep (or log)
	// an unbounded list: the first ones say what is wrong.
	kept := warnings[:min(len(warnings), control.MaxStoredWarnings)]
	msgs := make([]string, 0, len(kept))
	for _, w := range kept {
		msgs = append(msgs, w.Error())
	}
	omitted := len(warnings) - len(kept)
	a.noteMeshExportTo(s)
	a.mu.Lock()
	lastMsgs, lastOmitted := a.warnings, a.warningsOmitted
	a.warnings, a.warningsOmitted = msgs, omitted
	a.exportToFrom = exportToStatus(a.builder.DefaultExportTo(), a.cfg.DefaultExportTo != nil, s.DefaultExportToFrom)
	switch a.builder.VIPsFrom() {
	case vip.FromStatus:
		a.vipsFrom = "istiod's status.addresses"
	case vip.FromNowhere:
		a.vipsFrom = "none, hosts without spec.addresses forwarded"
	default:
		a.vipsFrom = "ztdns's allocator"
	}
	a.mu.Unlock()
	a.logWarnings(lastMsgs, lastOmitted, msgs, omitted, warnings)
	a.logTableUpdate("names", tbl.Len(), "services", len(s.Services), "serviceEntries", len(s.ServiceEntries),
		"pods", len(s.Pods), "took", took)
	if !a.ready.Swap(true) {
		close(a.firstTable)
		// The first build replaces a lot of transient parsing garbage; hand
		// it back to the OS now rather than whenever the scavenger gets to it.
		debug.FreeOSMemory()
	}
}

// tableLogEvery is the least time between two INFO lines of routine table
// updates (tableUpdates).
const tableLogEvery = time.Minute

// logTableUpdate logs a table build at INFO, the first at once, the later
// ones, which follow every change anywhere in the cluster (up to 20 a
// second from Kubernetes, on every node), at most once per tableLogEvery,
// saying how many went unlogged since the last (unloggedBefore); those
// are logged at DEBUG. What warns is logged apart, each time
// (logWarnings).
func (a *Agent) logTableUpdate(args ...any) {
	a.tableUpdates.InfoElseDebug(a.log, "name table updated", args...)
}

// logWarnings logs how the table's warnings changed since the last build
// (last and lastOmitted, as kept then): each one listed now that was not
// listed then, the count of those not listed when it changes, and how many
// listed then are gone. A build repeats every warning that still holds,
// and a snapshot follows any change in the cluster: logging them all on
// every build would let whoever may write one bad ServiceEntry fill every
// node's log. ztdns status lists those kept, ztdns_table_warnings counts
// them all.
func (a *Agent) logWarnings(last []string, lastOmitted int, kept []string, omitted int, all []error) {
	listed := make(map[string]bool, len(last))
	for _, m := range last {
		listed[m] = true
	}
	for _, m := range kept {
		if !listed[m] {
			// Not every warning leaves something out ("every namespace
			// sees it"): the warning says what it did.
			a.log.Warn("name table warning", "err", m)
		}
	}
	if omitted > 0 && omitted != lastOmitted {
		a.log.Warn("more name table warnings; not listing them", "more", omitted)
	}
	if len(last) == 0 {
		return
	}
	// Those listed then and gone now; one still there but no longer among
	// the first kept is not cleared.
	for _, m := range kept {
		delete(listed, m)
	}
	for _, w := range all[len(kept):] {
		if len(listed) == 0 {
			break
		}
		delete(listed, w.Error())
	}
	if cleared := len(listed); cleared > 0 {
		a.log.Info("table warnings cleared", "cleared", cleared, "remaining", len(all))
	}
}

// upstreamsFor is the resolver's UpstreamFunc: the nameserver the pod
// addressed when capture learned it (own), the configured upstreams
// otherwise.
func (a *Agent) upstreamsFor(client, local netip.AddrPort) ([]netip.AddrPort, bool) {
	if a.capture != nil {
		if ns, ok := a.capture.upstream(client, local); ok {
			return []netip.AddrPort{ns}, true
		}
	}
	return a.cfg.Upstreams, false
}

// withoutSelf splits upstreams into those kept and those that are the
// agent itself: one of its addresses (addrs, with the same port), or, for
// an unspecified one (0.0.0.0, ::), any address of its family local
// returns (the node's own) or loopback of its family: the resolver binds
// [::] for IPv6 alone. A node whose resolv.conf names the agent (so that node
// processes use it) would otherwise have it forward its misses to itself:
// identical-query sharing ends the loop, but every such query waits for
// the timeout and fails. IPv4-mapped addresses count as IPv4.
func withoutSelf(upstreams, addrs []netip.AddrPort, local func() []netip.Addr) (kept, self []netip.AddrPort) {
	var own []netip.Addr // the node's addresses, read once if needed
	read := false
	isSelf := func(u netip.AddrPort) bool {
		ua := u.Addr().Unmap().WithZone("")
		for _, l := range addrs {
			la := l.Addr().Unmap().WithZone("")
			if l.Port() != u.Port() {
				continue
			}
			if la == ua {
				return true
			}
			if !la.IsUnspecified() || la.Is4() != ua.Is4() {
				continue // [::] binds IPv6 alone (IPV6_V6ONLY), 0.0.0.0 IPv4
			}
			if ua.IsLoopback() {
				return true
			}
			if !read {
				own, read = local(), true
			}
			if slices.Contains(own, ua) {
				return true
			}
		}
		return false
	}
	for _, u := range upstreams {
		if isSelf(u) {
			self = append(self, u)
		} else {
			kept = append(kept, u)
		}
	}
	return kept, self
}

// localAddrs are the addresses of the network namespace's interfaces, the
// node's, IPv4-mapped ones unmapped; none when they cannot be read.
func localAddrs() []netip.Addr {
	ifas, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, ifa := range ifas {
		if p, err := netip.ParsePrefix(ifa.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out
}

// selfUpstreamsWarning is status's warning about upstreams left out
// because they are the agent itself; "" if none were.
func (a *Agent) selfUpstreamsWarning() string {
	if len(a.selfUpstreams) == 0 {
		return ""
	}
	return fmt.Sprintf("upstream %s left out: the agent's own address, where it would forward its misses to itself (the node's resolv.conf names the agent?); misses that are not a captured pod's go to %s",
		joinAddrs(a.selfUpstreams), joinAddrs(a.cfg.Upstreams))
}

// joinAddrs lists addresses for a message.
func joinAddrs(as []netip.AddrPort) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

func pluralIs(n int) string {
	if n == 1 {
		return "is"
	}
	return "are"
}

// captureSlot is the resolver's CaptureSlot: whether local is a resolver
// slot the programs send pods' queries to.
func (a *Agent) captureSlot(local netip.AddrPort) bool {
	if a.capture == nil {
		return false
	}
	_, ok := a.capture.slots[local]
	return ok
}

// knownUpstreams are the nameservers the operator named: the configured
// upstreams and each single address of the capture list (the cluster DNS,
// typically), asked on port 53 as pods ask it. Their metrics keep their own
// label whatever addresses pods ask first.
func knownUpstreams(cfg Config) []netip.AddrPort {
	known := slices.Clone(cfg.Upstreams)
	if cfg.Capture != nil {
		for _, p := range cfg.Capture.Nameservers {
			if p.IsSingleIP() {
				known = append(known, netip.AddrPortFrom(p.Addr(), 53))
			}
		}
	}
	return known
}

// exportToStatus says what the default exportTo of ServiceEntries is
// (exportTo, nil for every namespace) and where it comes from: the flag
// when given, else the mesh config named meshFrom, else Istio's default.
func exportToStatus(exportTo []string, flag bool, meshFrom string) string {
	value := `"*"`
	if exportTo != nil {
		value = strconv.Quote(strings.Join(exportTo, ","))
	}
	switch {
	case flag:
		return value + " (--default-service-export-to)"
	case meshFrom != "":
		return value + " (mesh config " + meshFrom + ")"
	}
	return value + " (Istio's default)"
}

// noteMeshExportTo says once that --default-service-export-to overrides
// Istio's mesh config, the first time the source delivers a snapshot whose
// mesh config differs: the two then scope ServiceEntries apart, istiod by
// the mesh config, ztdns by the flag. A mesh config that is absent or gives
// no defaultServiceExportTo is Istio's default "*" to istiod, and differs
// from any other flag value.
func (a *Agent) noteMeshExportTo(s *model.Snapshot) {
	if a.meshIgnored || a.cfg.DefaultExportTo == nil || s.MeshConfig == "" {
		return
	}
	mesh := s.DefaultExportTo
	if mesh == nil {
		mesh = []string{"*"} // Istio's default, as istiod has it
	}
	if slices.Equal(a.cfg.DefaultExportTo, mesh) {
		return
	}
	a.meshIgnored = true
	a.log.Warn("--default-service-export-to differs from Istio's mesh config and wins: istiod scopes ServiceEntries without exportTo by the mesh config "+
		`(Istio's default "*" when it gives none), ztdns by the flag; `+
		"leave the flag out (chart: resolver.defaultServiceExportTo empty) to follow the mesh config",
		"flag", a.cfg.DefaultExportTo, "meshConfig", s.MeshConfig, "defaultServiceExportTo", mesh)
}
