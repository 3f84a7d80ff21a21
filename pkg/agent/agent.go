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
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztdns/ztdns/internal/ratelog"
	"github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/handoff"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/resolver"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/resolver/table"
	"github.com/ztdns/ztdns/pkg/source"
	"github.com/ztdns/ztdns/pkg/version"
)

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

	ready      atomic.Bool   // the first table is served: set once, never cleared
	firstTable chan struct{} // closed when ready is set
	handedOver atomic.Bool
	// stopping: shutdown has begun. The source may still deliver a
	// snapshot meanwhile: /readyz says not ready from here on whatever
	// it brings.
	stopping atomic.Bool
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
	udp       []*net.UDPConn
	tcp       []*net.TCPListener
	metrics   *net.TCPListener
	controlLn net.Listener // the control socket's
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
	// clusterDNS are the cluster DNS Service's addresses made known
	// upstreams (knowClusterDNS); apply's alone.
	clusterDNS   []netip.AddrPort
	slot4, slot6 [redirect.Slots]netip.AddrPort
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
	dataplane  *dataplane // nil without capture
	istioRules istioRules // istio-cni's DNS rules in captured pods
	// links finds the pod behind a link-local client's interface.
	links *linkOwners
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
	if err := cfg.check(); err != nil {
		return nil, err
	}
	// Metrics nobody can read (no --metrics, no registry of the caller's)
	// are not counted.
	noMetrics := cfg.MetricsAddr == "" && cfg.Registry == nil
	// Not given: kube-dns's, as the source reads it (followKubeDNSTTL).
	ttlGiven := cfg.TTL > 0
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	// Without capture nothing is captured that the host-namespace guard
	// would keep the node's namespace from: a cookie it cannot read (PID
	// 1's, run unprivileged) is no warning then.
	cookiesLevel := slog.LevelWarn
	if cfg.Capture == nil {
		cookiesLevel = slog.LevelDebug
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, reg: cfg.Registry, pods: podcache.New(), firstTable: make(chan struct{}), id: handoff.Identity(cfg.PodUID),
		builder: newBuilder(cfg, uint32(cfg.TTL/time.Second)), builderTTL: uint32(cfg.TTL / time.Second), ttlGiven: ttlGiven,
		addrs: slices.Clone(cfg.Listen), hostCookies: nodeCookies(cfg.ProcRoot, cfg.Logger, cookiesLevel), tableUpdates: ratelog.Limiter{Interval: tableLogEvery}}
	if cfg.Capture != nil {
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
	a.links = newLinkOwners(a.pods, capture.ProcNamespaces{Root: cfg.ProcRoot}, cfg.Logger)
	a.server = resolver.New(resolver.Options{
		Pods:        a.pods,
		Forwarder:   a.fwd,
		Upstreams:   a.upstreamsFor,
		CaptureSlot: a.captureSlot,
		Links:       a.links,
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

	access := control.Access{Group: a.cfg.SocketGroup, Logger: a.log}
	in, err := a.takeOverRunning(access)
	if err != nil {
		a.server.Close()
		a.fwd.Close()
		return err
	}
	if in != nil {
		// Held open while this agent runs, for its predecessor to watch
		// (see package handoff); the process's end closes it too.
		defer in.Conn.Close()
	}
	// abort undoes a start that failed half-way.
	abort := func(err error) error {
		in.Abandon()
		if a.metrics != nil {
			a.metrics.Close() // its server, if it runs, closes it too
		}
		cancel(err)
		a.closeServer()
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
		defer a.dataplane.close()
	}
	// Once the addresses are settled (dropIPv6) and before the source
	// builds the first table, which then builds under the limit.
	a.memory.check()
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
	if a.dataplane != nil {
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
	// The hand-off path before the control socket: an agent that answers
	// status (ready) must also hand over when asked. Another agent starting
	// in between (a rollback in the middle of a rollout) would otherwise
	// find this one serving, no hand-off listener, and, binding fresh
	// sockets, be refused. The path is this agent's to take: a predecessor
	// closed its listener there before "released".
	hs, err := handoff.Listen(a.cfg.Socket)
	if err != nil {
		return abort(err)
	}
	controlLn, err := a.listenControl(in, access)
	if err != nil {
		hs.Close()
		return abort(err)
	}
	a.controlLn = controlLn
	controlCtx, stopControl := context.WithCancel(ctx)
	defer stopControl()
	controlStopped := make(chan struct{})
	g.spawn("control socket", unlessSet(&a.handedOver, func() error {
		defer close(controlStopped)
		return control.Serve(controlCtx, controlLn, control.NewHandler(controlAPI{a}, a.log))
	}))
	g.spawn("housekeeping", func() error { a.keepHouse(ctx); return nil })
	// Opened here, in the agent's network namespace (the resolver's).
	if err := a.links.open(); err != nil {
		a.log.Warn("cannot tell which pod is behind which interface: a pod asking from its link-local address counts as a source of its own", "err", err)
	} else {
		g.spawn("link owners", func() error { a.links.run(ctx); return nil })
	}
	if a.dataplane != nil {
		g.spawn("istio rules", func() error { a.keepIstioRulesFresh(ctx); return nil })
	}
	go func() { <-ctx.Done(); hs.Close() }()
	stop := handOverStops{
		control: func() { stopControl(); <-controlStopped },
		metrics: stopMetrics,
		cni:     stopCNI,
		offer:   hs,
	}
	g.spawn("handoff", func() error {
		ids := handoff.Identities{Self: a.id, Predecessor: a.predecessor, Generation: a.cfg.Generation}
		to, err := handoff.Offer(ctx, hs, a.log, ids, a.cfg.handoffTimeouts, a.handoffSockets, a.successorAsking,
			func(takesControl bool) { a.handOver(takesControl, stop) })
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

	a.log.Info("agent started", "listen", a.addrs, "capture", a.dataplane != nil, "upstreams", a.cfg.Upstreams, "domain", a.cfg.ClusterDomain,
		"autopath", a.cfg.Autopath, "socket", a.cfg.Socket, "metrics", a.cfg.MetricsAddr,
		"version", version.Get().Version, "revision", version.Get().Revision)

	// Started: once it serves a table, done with what loading it left
	// and with the binary's pages only starting used, in that order (the
	// collection reads type data from the binary's pages).
	g.spawn("memory", func() error {
		returnMemoryAfterBursts(ctx, a.log, a.firstTable, a.memory.check, func() {
			if mapped, err := dropStartupPages(); err != nil {
				a.log.Debug("keeping the binary's pages mapped", "err", err)
			} else {
				a.log.Debug("dropped the binary's pages mapped at start", "bytes", mapped)
			}
		})
		return nil
	})

	<-ctx.Done()
	return a.shutdown(g, context.Cause(ctx))
}

// shutdown stops a started agent for cause, ctx's: with no successor
// (none took the sockets), capture fails open first and queries already
// sent here are answered; then the resolver closes and the parts get
// stopTimeout to return. A cancelled context is no failure.
func (a *Agent) shutdown(g *group, cause error) error {
	a.stopping.Store(true)
	if a.dataplane != nil && !a.handedOver.Load() {
		// Stopping with no successor: fail open first, then keep answering
		// what was already sent here before the sockets close, then let go
		// of the sockets pods connected to the resolver while captured.
		a.dataplane.stopBeating(true)
		time.Sleep(stopGrace)
		if !a.handedOver.Load() {
			a.abortKeptSockets()
		}
	}
	a.closeServer()
	a.fwd.Close()
	g.waitStopped(a.log, a.stopTimeout())
	if errors.Is(cause, context.Canceled) {
		a.log.Info("agent stopped")
		return nil
	}
	return cause
}

// closeServer closes the resolver, and then the sockets this agent gave
// it. The resolver's Close closes those it serves, but not one whose
// ServeUDP or ServeTCP had not yet begun (an agent stopped just after it
// started, on a busy machine): that one would stay bound until the
// garbage collector closed it, and an agent started on the address
// meanwhile would find it served and refuse to start.
func (a *Agent) closeServer() {
	a.server.Close()
	for _, c := range a.udp {
		c.Close()
	}
	for _, l := range a.tcp {
		l.Close()
	}
	for _, c := range a.retired {
		c.Close()
	}
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
