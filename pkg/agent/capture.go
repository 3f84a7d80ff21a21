// Capture in the agent: the dataplane (the programs, their heartbeat, the
// resolver's slot addresses and the capture controller), started or taken
// over at start (startCapture) and reconciled once the agent serves
// (reconcileCapture).

package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/resolver"
)

// CaptureConfig turns on DNS capture with eBPF.
type CaptureConfig struct {
	// BPFFS is where maps and links are pinned (redirect.DefaultBPFFS).
	BPFFS string
	// RequireBPFFS fails the start when BPFFS is on no bpf filesystem,
	// instead of mounting one: in a container, a mount of its own would
	// vanish with it, and the pinned links with it.
	RequireBPFFS bool
	// Cgroup is the cgroup v2 directory the programs attach to; empty means
	// the pods' cgroup (kubepods.slice or kubepods under the cgroup2 root)
	// where there is one, else the cgroup2 root (redirect.Config.CgroupPath).
	Cgroup string
	// Interface carries the resolver's addresses (redirect.DefaultInterface).
	Interface string
	// StaleAfter is how old the heartbeat may get before the programs fail
	// open (redirect.DefaultStaleAfter).
	StaleAfter time.Duration
	// StateDir keeps the record of marked pods across restarts (default: the
	// control socket's directory).
	StateDir string
	// Port is where redirected queries go on the slot addresses
	// (redirect.DefaultPort). Anything but 53 keeps them clear of
	// istio-cni's in-pod DNS rules, which match destination port 53.
	Port uint16
	// Nameservers, when not empty, limits capture to queries addressed to
	// these prefixes (at most redirect.MaxCaptureNameservers): a pod's query
	// to any other nameserver is left alone and leaves the pod under its own
	// NetworkPolicy, instead of being forwarded from the node's network
	// namespace. Empty: every destination on port 53.
	Nameservers []netip.Prefix
	// SocketsPerPod is how many of a pod's sockets may be redirected at
	// once (redirect.Config.SocketsPerPod; 0: redirect.DefaultSocketsPerPod).
	SocketsPerPod int
}

// HeartbeatEvery is how often the agent proves it is alive; a third of the
// default staleness bound, so one late beat never fails pods open. A bound
// at or near it fails pods open at every late beat.
const HeartbeatEvery = time.Second

// stallAfter is how long queries may wait unread on one of the resolver's
// sockets before the agent holds its heartbeat back (holdBeat), for the
// staleness bound stale: a third of it, at most half a beat. Stalled is
// asked at each beat and sees queries waiting first, so the beat after is
// the first held back, and captured pods fail open within stale and a beat
// of queries first waiting unread. Half a beat, not a whole one: beats are
// timed by when their goroutine runs, and one that runs late followed by
// one on time are less than a beat apart (by a few ms at rest, hundreds on
// a loaded node), which a whole beat would let through, holding back only
// the beat after that. Stalled still wants no read between two beats.
func stallAfter(stale time.Duration) time.Duration {
	return min(HeartbeatEvery/2, cmp.Or(stale, redirect.DefaultStaleAfter)/3)
}

// metricResolverStalls counts the times holdBeat held the heartbeat back.
var metricResolverStalls = prometheus.NewCounter(prometheus.CounterOpts{
	Name: "ztdns_resolver_stalls_total",
	Help: "Times the resolver stopped reading one of its sockets, queries waiting there unread for a second, and the agent held its heartbeat back " +
		"until it read again: captured pods failed open to their own nameservers meanwhile.",
})

// attachmentCheckEvery is how often a beating agent checks that the
// programs are still attached and pinned as it left them, and puts back
// what was undone (keepAttached): a few dozen bpf system calls each time.
// (A variable: tests that look at what is broken before it is put back
// lengthen it.)
var attachmentCheckEvery = 5 * time.Second

// stopGrace is how long an agent that stops without a successor keeps
// answering after it failed pods open: queries redirected just before are
// already on their way to its sockets.
const stopGrace = 200 * time.Millisecond

// dataplane owns the eBPF side: the redirector, its heartbeat, the
// resolver's slot addresses, and the capture controller that marks pods in
// it (pkg/capture).
type dataplane struct {
	cfg        CaptureConfig
	log        *slog.Logger
	r          *redirect.Redirector
	controller *capture.Controller
	pods       *podcache.Cache
	// slots maps each resolver address to its slot: a query that arrived on
	// slot i is forwarded to what the pod addressed through slot i.
	slots     map[netip.AddrPort]int
	resolvers map[netip.Addr]bool
	// prefixes are the resolver addresses on cfg.Interface.
	prefixes []netip.Prefix
	// own are the agent's own addresses and nodeName its node's, which
	// a pod's nameserver must not be (forwardable); refusedNameservers
	// are those of the refusals logged, refusedLogged how many.
	own                *ownAddrs
	nodeName           string
	refusedNameservers sync.Map
	refusedLogged      atomic.Int32

	// beatMu orders startBeating and stopBeating: a start that comes
	// after the stop (the first table arriving as the agent stops) does
	// nothing, and one before it is waited for, so no beat lands after
	// the stale mark.
	beatMu               sync.Mutex
	beatStarted, stopped bool
	stopBeat             chan struct{}
	beating              sync.WaitGroup

	// attachMu orders keepAttached and fence: once fenced (the agent
	// handed over), the successor owns the links, and this agent repairs
	// none. attachProblems are the problems keepAttached logged last.
	attachMu       sync.Mutex
	fenced         bool
	attachProblems []string

	// onCheck, when set, runs at each attachment check, after
	// keepAttached: the agent reads again there whether the node takes
	// IPv6 (Agent.checkIPv6).
	onCheck func()

	// stalled is the resolver's Server.Stalled: the beat is held back
	// while it names a socket (holdBeat). stalls is what it named last,
	// for the status, under stallMu.
	stalled func(now time.Time, after time.Duration) []resolver.Stall
	stallMu sync.Mutex
	stalls  []resolver.Stall

	// hang, set by tests alone, runs first in upstream, on the
	// resolver's goroutine that read the query: blocking there hangs a
	// socket's answer path, as a deadlock would. A query that comes
	// through then goes to the fallback upstreams (which the tests run),
	// never to the pod's own nameserver, which the agent's forwarder in
	// a test would ask from the machine's own namespace.
	hang atomic.Pointer[func()]
}

// newDataplane makes the resolver's interface, loads (or takes over) the
// programs and puts a capture controller, configured by controllerCfg, on them.
// takingOver keeps the running agent's interface addresses, programs, maps
// and config (its addresses and port) until takeOverConfig.
func newDataplane(cfg CaptureConfig, controllerCfg capture.Config, namespaces capture.Namespaces, log *slog.Logger, pods *podcache.Cache, socket string,
	r4, r6 [redirect.Slots]netip.AddrPort, takingOver bool) (*dataplane, error) {
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Dir(socket) // checked with the socket's
	} else if err := control.PrepareStateDir(cfg.StateDir); err != nil {
		return nil, err
	}
	if cfg.Interface == "" {
		cfg.Interface = redirect.DefaultInterface
	}
	c := &dataplane{cfg: cfg, log: log, pods: pods, slots: map[netip.AddrPort]int{}, resolvers: map[netip.Addr]bool{}, stopBeat: make(chan struct{})}
	var prefixes []netip.Prefix
	for i := range redirect.Slots {
		for _, ap := range []netip.AddrPort{r4[i], r6[i]} {
			if ap.IsValid() {
				c.slots[ap] = i
				c.resolvers[ap.Addr()] = true
				prefixes = append(prefixes, netip.PrefixFrom(ap.Addr(), ap.Addr().BitLen()))
			}
		}
	}
	c.prefixes = prefixes
	// Before the interface: an agent that cannot attach, or would take
	// addresses another interface carries, leaves the node as it found it.
	if err := redirect.CheckAddrsFree(cfg.Interface, prefixes); err != nil {
		return nil, err
	}
	if err := redirect.CheckHost(cfg.Cgroup); err != nil {
		return nil, err
	}
	ensure := redirect.EnsureInterface
	if takingOver {
		ensure = redirect.AddInterfaceAddrs
	}
	existed, err := redirect.HasInterface(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("resolver interface: %w", err)
	}
	kind, err := ensure(log, cfg.Interface, prefixes)
	if err != nil {
		return nil, fmt.Errorf("resolver interface: %w", err)
	}
	log.Info("resolver addresses ready", "interface", cfg.Interface, "kind", kind, "addresses", prefixes)
	c.r, err = redirect.Load(redirect.Config{
		BPFFS: cfg.BPFFS, RequireBPFFS: cfg.RequireBPFFS, CgroupPath: cfg.Cgroup, Resolver4: r4, Resolver6: r6, StaleAfter: cfg.StaleAfter, Logger: log,
		CaptureNameservers: cfg.Nameservers, SocketsPerPod: cfg.SocketsPerPod, KeepConfig: takingOver,
	})
	if err != nil {
		// An interface this start made goes again: with no heartbeat
		// written by this start, no program sends pods to it. One that
		// was there (a predecessor's, or one an agent that died left)
		// stays.
		if !existed {
			err = errors.Join(err, redirect.RemoveInterface(cfg.Interface))
		}
		return nil, err
	}
	cg, why := c.r.Cgroup()
	log.Info("capture programs attach to cgroup", "cgroup", cg, "why", why)
	controllerCfg.StateDir, controllerCfg.Logger = cfg.StateDir, log
	c.controller = capture.New(controllerCfg, pods, c.r, namespaces)
	return c, nil
}

// takeOverConfig points the programs at this agent's resolver addresses and
// port, and swaps in its programs (and maps of a changed layout or
// capacity), once it serves them and the agent it took over from has
// stopped. A pods map of a changed layout is given the marks the previous
// agent recorded first: the programs read it from the moment they are
// attached, and reconcileCapture (Restore, which checks each pod's network
// namespace, a while with many pods) comes after; meanwhile every pod it
// lacked would go uncaptured. Maps of a changed capacity alone are given
// the pinned ones' entries by ApplyConfig (marks, learned nameservers,
// socket counts), and until then the resolver reads the nameservers the
// running programs learn.
func (c *dataplane) takeOverConfig() error {
	if c.r.ReplacingPods() {
		n, err := c.controller.MarkRecorded()
		if err != nil {
			c.log.Warn("could not mark every recorded pod in the new pods map before switching to it: those go uncaptured until reconciled",
				"marked", n, "err", err)
		} else {
			c.log.Info("marked the recorded pods in the new pods map before switching to it", "pods", n)
		}
	}
	return c.r.ApplyConfig()
}

// dropOtherAddrs removes the addresses this agent does not serve (the
// previous agent's) from the resolver's interface.
func (c *dataplane) dropOtherAddrs() {
	if _, err := redirect.EnsureInterface(c.log, c.cfg.Interface, c.prefixes); err != nil {
		c.log.Warn("cannot remove the previous agent's addresses from the resolver's interface", "interface", c.cfg.Interface, "err", err)
	}
}

// startBeating turns capture on: it writes the heartbeat now and every
// HeartbeatEvery until stopBeating. Only an agent that serves a table may
// call it, or pods would be sent to a resolver that cannot answer them.
func (c *dataplane) startBeating() {
	c.beatMu.Lock()
	defer c.beatMu.Unlock()
	if c.beatStarted || c.stopped {
		return
	}
	c.beatStarted = true
	if err := c.r.Heartbeat(); err != nil {
		c.log.Error("heartbeat failed: pods keep their own nameservers", "err", err)
	}
	c.beating.Add(1)
	go func() {
		defer c.beating.Done()
		t := time.NewTicker(HeartbeatEvery)
		defer t.Stop()
		check := time.NewTicker(attachmentCheckEvery)
		defer check.Stop()
		for {
			select {
			case <-c.stopBeat:
				return
			case <-t.C:
				if c.holdBeat(time.Now()) {
					continue
				}
				if err := c.r.Heartbeat(); err != nil {
					c.log.Error("heartbeat failed: pods fail open once it is stale", "err", err)
				}
			case <-check.C:
				c.keepAttached()
				c.own.refresh() // the node's addresses, behind an unspecified --listen one
				if c.onCheck != nil {
					c.onCheck()
				}
			}
		}
	}()
}

// holdBeat reports whether the beat is to be held back: the resolver has
// stopped reading one of its sockets (Server.Stalled), a deadlock in its
// answer path, say, with the process alive. Beating on, the agent would
// keep every captured pod's queries going to a resolver that never
// answers until the liveness probe restarts it (20-35 s); held back, the
// heartbeat goes stale and the pods reach their own nameservers within
// seconds. A busy socket, however flooded, is read, so a pod cannot
// switch capture off this way. It logs and counts when this starts, and
// logs when it ends, the resolver reading again.
func (c *dataplane) holdBeat(now time.Time) bool {
	if c.stalled == nil {
		return false
	}
	stalls := c.stalled(now, stallAfter(c.cfg.StaleAfter))
	c.stallMu.Lock()
	was := len(c.stalls) > 0
	c.stalls = stalls
	c.stallMu.Unlock()
	switch {
	case len(stalls) > 0 && !was:
		metricResolverStalls.Inc()
		c.log.Error("the resolver reads no more queries on some of its sockets: heartbeat held back, so captured pods fail open to their own nameservers until it reads again "+
			"(/healthz fails meanwhile, and the liveness probe restarts the agent if it stays so)", "stalled", stallNames(stalls))
	case len(stalls) == 0 && was:
		c.log.Warn("the resolver reads again: heartbeat resumed, captured pods' queries come back to it")
	}
	return len(stalls) > 0
}

// stallReason says why the beat is held back, for the status; "" when it
// is not.
func (c *dataplane) stallReason() string {
	c.stallMu.Lock()
	defer c.stallMu.Unlock()
	if len(c.stalls) == 0 {
		return ""
	}
	since := slices.MinFunc(c.stalls, func(a, b resolver.Stall) int { return a.Since.Compare(b.Since) }).Since
	return fmt.Sprintf("the resolver has read no query waiting on %s for %s: the agent holds its heartbeat back until it reads again",
		strings.Join(stallNames(c.stalls), ", "), time.Since(since).Round(time.Second))
}

// stallNames names the sockets of stalls, as "udp 169.254.20.53:53".
func stallNames(stalls []resolver.Stall) []string {
	names := make([]string, len(stalls))
	for i, st := range stalls {
		names[i] = st.Network + " " + st.Local.String()
	}
	return names
}

// keepAttached puts back what was undone behind the agent's back (a link
// detached from the cgroup, a pin removed: redirect.RepairAttachment) and
// logs it, each repair as it is made and what is left when that changes.
// It runs while the agent beats: without the heartbeat the programs
// redirect nothing anyway. A fenced agent repairs nothing: its successor
// attaches its own links next, and the two would replace each other's.
// Stopping the heartbeat would not do: a handed-over agent beats on while
// it drains, and its successor goes on without "released" when that does
// not come (the old agent stopped mid-way closes the connection; a drain
// longer than handoff.Timeouts.Step), attaching while the old one still checks:
// between its unpinning a replaced map, or a defunct link, and pinning its
// own in its place, the old agent would see the pin gone and put back its
// own: the successor's pin then fails, and its hand-over with it. (Links
// it moves from a previous cgroup leave no pin gone: redirect's finishMove
// renames the new one's pin over the old one's.)
func (c *dataplane) keepAttached() {
	c.attachMu.Lock()
	defer c.attachMu.Unlock()
	if c.fenced {
		return
	}
	left, repaired, err := c.r.RepairAttachment()
	if err != nil {
		c.log.Debug("not checking the programs' attachment", "err", err)
		return
	}
	for _, what := range repaired {
		metricCaptureRepairs.Inc()
		c.log.Warn("capture was undone behind the agent's back; put it back", "repaired", what)
	}
	if slices.Equal(left.Problems, c.attachProblems) {
		return
	}
	if len(left.Problems) > 0 {
		c.log.Error("capture is broken and the agent cannot put it back: pods may reach their own nameservers, around ztdns",
			"problems", left.Problems, "linksAttached", left.Attached, "hooks", left.Hooks)
	} else {
		c.log.Info("capture is whole again")
	}
	c.attachProblems = left.Problems
}

// fence stops keepAttached for good, waiting for one under way.
func (c *dataplane) fence() {
	c.attachMu.Lock()
	defer c.attachMu.Unlock()
	c.fenced = true
}

// stopBeating stops writing the heartbeat. With failOpen it also makes the
// heartbeat stale at once, so pods reach their own nameservers now rather
// than after StaleAfter; a handoff leaves it fresh for the successor.
func (c *dataplane) stopBeating(failOpen bool) {
	c.beatMu.Lock()
	if !c.stopped {
		c.stopped = true
		close(c.stopBeat)
	}
	c.beatMu.Unlock()
	c.beating.Wait() // no beat can land after the stale mark below
	if failOpen {
		c.r.StopHeartbeat()
	}
}

// upstream returns the nameserver the pod behind client addressed through
// the resolver address local, when the programs learned it and the
// resolver may forward to it (forwardable).
func (c *dataplane) upstream(client, local netip.AddrPort) (netip.AddrPort, bool) {
	if hang := c.hang.Load(); hang != nil {
		(*hang)()
		return netip.AddrPort{}, false
	}
	slot, ok := c.slots[local]
	if !ok {
		return netip.AddrPort{}, false
	}
	p := c.pods.Lookup(client.Addr())
	if p == nil || p.Attachment == nil || p.Attachment.NetnsCookie == 0 {
		return netip.AddrPort{}, false
	}
	ns, unconfirmed, ok := c.r.ForwardedNameserver(p.Attachment.NetnsCookie, slot)
	if !ok {
		return netip.AddrPort{}, false
	}
	if why := forwardable(ns, p, c.rules()); why != forwardOK {
		c.refused(ns, p, why)
		return netip.AddrPort{}, false
	}
	if unconfirmed {
		// A query through the slot: keep it from going to another
		// destination after SlotUnconfirmedIdle while a kept socket waits
		// for its first reply (why: Redirector.ConfirmNameserver).
		if err := c.r.ConfirmNameserver(p.Attachment.NetnsCookie, slot, ns); err != nil {
			c.log.Warn("could not confirm a nameserver slot", "err", err)
		}
	}
	return ns, true
}

// rules are what forwardable checks a learned nameserver against now.
func (c *dataplane) rules() forwardRules {
	return forwardRules{resolvers: c.resolvers, listed: c.r.CaptureNameservers(), own: c.own, pods: c.pods, nodeName: c.nodeName}
}

// podOnNode is the pod of this node (nodeName) that owns address a in
// pods, or nil: one with a sandbox recorded here (by the CNI plugin,
// `capture add`, the scan), or one the source places on this node. Pods
// on the host's network own no address in the registry.
func podOnNode(pods *podcache.Cache, nodeName string, a netip.Addr) *podcache.Pod {
	p := pods.Lookup(a)
	if p == nil || p.Attachment == nil && (p.Spec == nil || nodeName == "" || p.Spec.NodeName != nodeName) {
		return nil
	}
	return p
}

// maxRefusedLogged bounds the nameservers refused whose first refusal is
// logged: the rest are counted only.
const maxRefusedLogged = 64

// refused counts a miss of pod p not forwarded to its nameserver ns, and
// logs the first of each such nameserver, for the refusals a pod's own
// configuration explains (the agent's address, a pod of the node): the
// others are addresses the programs never redirect, or outside the
// capture list.
func (c *dataplane) refused(ns netip.AddrPort, p *podcache.Pod, why refusal) {
	reason := why.reason()
	if reason == "" {
		return
	}
	metricNameserverFallbacks.WithLabelValues(reason).Inc()
	if _, seen := c.refusedNameservers.Load(ns); seen || c.refusedLogged.Load() >= maxRefusedLogged {
		return
	}
	if _, seen := c.refusedNameservers.LoadOrStore(ns, struct{}{}); seen {
		return
	}
	c.log.Warn("a captured pod's nameserver is not forwarded to: its misses go to the configured upstreams",
		"nameserver", ns, "pod", p.Key(), "why", why.String())
	if c.refusedLogged.Add(1) == maxRefusedLogged {
		c.log.Warn("nameservers refused after this one are counted only, not logged (ztdns_capture_nameserver_fallbacks_total)", "logged", maxRefusedLogged)
	}
}

// refusal says why a nameserver a pod addressed does not take its misses.
type refusal uint8

const (
	forwardOK refusal = iota
	refusedLocal
	refusedNotListed
	refusedAgent
	refusedNodePod
)

// reason is the refusal's value of ztdns_capture_nameserver_fallbacks_total's
// reason label; "" for those not counted there.
func (r refusal) reason() string {
	switch r {
	case refusedAgent:
		return "agent"
	case refusedNodePod:
		return "node-pod"
	}
	return ""
}

func (r refusal) String() string {
	switch r {
	case forwardOK:
		return "forwardable"
	case refusedLocal:
		return "the pod's own host or link, many hosts, or the resolver itself"
	case refusedNotListed:
		return "not in --capture-nameservers"
	case refusedAgent:
		return "the agent's own address: forwarded there, the miss would come back to the agent as the node's own query, and take the node's bounds"
	case refusedNodePod:
		return "a pod of this node: forwarded from the node, the query would reach it past its ingress NetworkPolicy and Istio's (istio-cni lets the node's TCP into the pod around ztunnel)"
	}
	return "unknown"
}

// forwardRules are what forwardable checks a nameserver against.
type forwardRules struct {
	// resolvers are the slot addresses, whatever the port.
	resolvers map[netip.Addr]bool
	// listed is the capture list (Redirector.CaptureNameservers); nil: none.
	listed []netip.Prefix
	// own are the agent's own addresses; nil: none checked.
	own *ownAddrs
	// pods are the pods whose addresses are checked (podOnNode), those of
	// node nodeName; nil: none. Not a lookup function: one made for each
	// miss would be an allocation each.
	pods     *podcache.Cache
	nodeName string
}

// forwardable says whether a nameserver a pod addressed can take the pod's
// misses (forwardOK), or why not; when not, the resolver falls back to its
// configured upstreams. Not:
//   - one of the resolver's own addresses (a pod that names the resolver
//     itself): forwarding there would loop;
//   - a loopback or unspecified address (127.0.0.0/8, ::1, 0.0.0.0, ::, or
//     IPv4-mapped): it means the pod's own network namespace, but the agent
//     runs in the node's, so the query would go to the node's loopback
//     (systemd-resolved, a node-local cache) with the node as its source.
//     The programs never redirect or learn such a destination
//     (redirect.PodLocal, is_local in bpf/ztdns.c); this holds even if a
//     slot says otherwise (a map written by an older program, or by hand);
//   - an IPv6 link-local address (fe80::/10): the pod's link neighbour, on
//     a link that is none of the node's, and a slot holds no scope id to
//     dial it with. The programs leave it alone too (is_local). IPv4
//     169.254.0.0/16 is forwarded to: NodeLocal DNSCache, on the node;
//   - a multicast group (224.0.0.0/4, ff00::/8) or the limited broadcast
//     (255.255.255.255): without ztdns the pod's query stays on its own
//     link, forwarded it would leave from the node onto the node's
//     network. The programs leave these alone too (is_local). A subnet's
//     broadcast address is not known here: the forwarder's sockets have
//     SO_BROADCAST off, so the kernel refuses it and the pod gets SERVFAIL
//     at once;
//   - with a capture list (CaptureConfig.Nameservers, unmapped as
//     Redirector.CaptureNameservers gives it), one outside it: a slot
//     learned before the list was set, which a pod could keep using, must
//     not reach past its NetworkPolicy either;
//   - the agent itself (isSelf: a --listen address, such as the node's
//     $(HOST_IP):53 the chart suggests, or a node address behind 0.0.0.0:53):
//     the miss would come back in from the node's address, counted against
//     that address's bounds, which the node's processes and host-network
//     pods share: one pod within its own bound would use up theirs, and
//     hold two forwarding slots and two cache entries per miss;
//   - a pod of this node other than the asking one (podOnNode): the query
//     would reach it from the node, which most CNIs let past the pod's
//     ingress NetworkPolicy, and over TCP istio-cni's probe rule lets
//     into the pod around ztunnel (SNAT to 169.254.7.127 on the node,
//     accepted in the pod), so its STRICT mTLS and AuthorizationPolicy
//     would not hold. Also when the capture list names it: the list says
//     which queries ztdns takes, not that the node may stand in for the
//     pod; to let pods ask such a server, leave it out of the list, and
//     their queries leave the pod under its own policy. A pod asking its
//     own address is forwarded.
func forwardable(ns netip.AddrPort, client *podcache.Pod, r forwardRules) refusal {
	a := ns.Addr().Unmap()
	switch {
	case !a.IsValid() || r.resolvers[a] || redirect.PodLocal(a):
		return refusedLocal
	case !redirect.Listed(r.listed, a):
		return refusedNotListed
	case r.own != nil && r.own.has(ns):
		return refusedAgent
	}
	if r.pods != nil {
		if p := podOnNode(r.pods, r.nodeName, a); p != nil && (client == nil || p.Namespace != client.Namespace || p.Name != client.Name) {
			return refusedNodePod
		}
	}
	return forwardOK
}

// close releases this process's hold on the programs; the pins and marks
// stay.
func (c *dataplane) close() error {
	c.controller.Close()
	return c.r.Close()
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
	// Before anything is made: the node's cookies keep it from being
	// captured, and a kernel that cannot read them is named.
	if len(a.hostCookies) == 0 {
		if err := redirect.CheckNetnsCookie(); err != nil {
			return err
		}
		return errors.New("cannot read the node's own network namespace cookie (SO_NETNS_COOKIE)")
	}
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
	podsWatched := a.cfg.watchesPods()
	controllerCfg := capture.Config{NodeName: a.cfg.NodeName, DNSCaptureDefault: a.cfg.DNSCaptureDefault,
		ExcludeNamespaces: a.cfg.ExcludeNamespaces, PodsWatched: podsWatched, RequireEnrollment: podsWatched && !a.cfg.IgnoreEnrollment,
		HostCookies: a.hostCookies}
	c, err := newDataplane(*a.cfg.Capture, controllerCfg, capture.ProcNamespaces{Root: a.cfg.ProcRoot}, a.log, a.pods, a.cfg.Socket, a.slot4, a.slot6,
		predecessor)
	if err != nil {
		return err
	}
	if !predecessor {
		c.r.StopHeartbeat()
	}
	c.onCheck = a.checkIPv6
	c.stalled = a.server.Stalled
	c.own, c.nodeName = newOwnAddrs(a.addrs, localAddrs), a.cfg.NodeName
	a.dataplane = c
	return nil
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
				a.dataplane.startBeating()
			case <-ctx.Done():
			}
		}()
	}
	if tookOver {
		beat()
	}
	if err := a.dataplane.controller.Restore(); err != nil {
		a.log.Error("reconciling marked pods failed", "err", err)
	}
	a.replayPending()
	a.dataplane.controller.Redecide()
	a.readdressByHand() // given an address while no agent ran
	if !tookOver {
		beat()
	}
}
