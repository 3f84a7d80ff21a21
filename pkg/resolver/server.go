// Package resolver is ztdns's DNS server: it answers a pod's query from the
// name table as seen from the pod's namespace, and forwards everything else
// to the nameserver the pod addressed.
//
// Answering a known name is the hot path and allocates nothing: the query is
// parsed in place, the table lookup is a map read on an immutable table, and
// the reply is the client's own header and question followed by the answer
// records, written straight from the table's entry. UDP is read and written
// in batches (recvmmsg/sendmmsg). Everything else (forwarding, CNAME chains,
// autopath, errors that need a full message) takes the slow path, built on
// miekg/dns: what the table or the forwarder's cache answers on the
// socket's goroutine (over UDP, written in its batch), what needs an
// upstream in a goroutine of its own, so a slow upstream never stalls a
// socket.
package resolver

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/acceptretry"
	"github.com/ztdns/ztdns/internal/ratelog"
	"github.com/ztdns/ztdns/pkg/accesslog"
	"github.com/ztdns/ztdns/pkg/dnswire"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// Forwarder asks upstream nameservers (package forward).
type Forwarder interface {
	// ForwardFrom returns the reply to relay for req, with req's ID, and
	// where it came from. The reply is the caller's to change.
	ForwardFrom(ctx context.Context, req []byte, tcp bool, upstreams []netip.AddrPort) ([]byte, forward.Origin, error)
	// AppendCachedFirst appends to dst the reply ForwardFrom would give
	// req from its cache, for a query from src, when the cache holds a
	// fresh one (ok), without asking an upstream or waiting: the slow path
	// asks it first, on the goroutine that read the query. Of a reply with
	// more than n records besides its OPT record, or more than room octets
	// of them packed as small as they can be, only the first are appended,
	// up to the first past either, with the OPT and the counts set (the
	// slow path reads no more of it: firstRecords).
	AppendCachedFirst(dst, req []byte, upstreams []netip.AddrPort, src *quota.Source, n, room int) (out []byte, from forward.Origin, ok bool)
	// Knows reports whether u is a known upstream, one the node asks for
	// every pod: a SERVFAIL from it is the node's failure, not a pod's.
	Knows(u netip.AddrPort) bool
}

// DefaultPodInflightBytes is the bytes of replies in flight one source may
// hold unless told otherwise, of a budget of inflight: a PodInflightShare
// of it, but room for two of the largest replies whenever the budget has
// it, so that a pod alone on an idle node gets any reply whatever
// --inflight-bytes is.
func DefaultPodInflightBytes(inflight int64) int64 {
	return max(inflight/PodInflightShare, min(inflight, 2*MinPodInflightBytes))
}

// PodInflightBytes is the bytes of replies in flight one source may hold
// with the option v, of a budget of inflight: v itself, the default for 0,
// no bound (0) for a negative v.
func PodInflightBytes(v, inflight int64) int64 {
	return orDefault(v, DefaultPodInflightBytes(inflight))
}

// Pods finds the pod behind a source address (package podcache).
type Pods interface {
	Lookup(ip netip.Addr) *podcache.Pod
	// Owners is every address Lookup finds a pod for, with the pod; the
	// kernel's rate filter charges them to their pod.
	Owners() map[netip.Addr]*podcache.Pod
	// List is every pod, those Owners leaves out included.
	List() []*podcache.Pod
	// OnChange calls f after each change of the pods, until stop.
	OnChange(f func()) (stop func())
}

// Links finds the pods behind the server's interfaces: the one whose
// network namespace is at a link's other end (the node's end of its veth).
type Links interface {
	// Owner is the pod behind interface ifindex, nil for none.
	Owner(ifindex uint32) *podcache.Pod
	// Owners is every interface Owner finds a pod for, with the pod; the
	// kernel's rate filter charges a link-local source there to its pod.
	Owners() map[uint32]*podcache.Pod
	// OnChange calls f after each change of the interfaces' owners, until
	// stop (a change of the pods themselves is Pods.OnChange's).
	OnChange(f func()) (stop func())
}

// UpstreamFunc picks where a miss goes: the nameserver the pod addressed when
// capture knows it (own), the configured upstreams otherwise. local is the
// resolver address the query arrived on. A TCP connection keeps an own
// answer for its life; a fallback, it asks again for its next forward.
type UpstreamFunc func(client, local netip.AddrPort) (addrs []netip.AddrPort, own bool)

// Defaults. README "Limits and protections" explains each bound.
const (
	// DefaultMaxInflight bounds forwarded queries in flight, all sources.
	DefaultMaxInflight    = 1024
	DefaultTCPIdleTimeout = 10 * time.Second
	DefaultTCPMaxConns    = 1024
	// DefaultPodQPS is one source's query rate; its burst is twice that
	// unless set.
	DefaultPodQPS = 2000
	// DefaultPodForwarding bounds one source's forwarded queries in flight.
	DefaultPodForwarding = 128
	// DefaultPodTCPConns bounds one source's open TCP connections.
	DefaultPodTCPConns = 32
	// DefaultInflightBytes bounds the bytes of upstream replies held at once
	// (read, or waiting to be written to a TCP client): 128 of the largest.
	DefaultInflightBytes = 8 << 20
	// PodInflightShare: one source may hold at most this part of the
	// bytes of replies in flight unless told otherwise (512 KiB of the
	// default 8 MiB: eight of the largest replies), and no less than
	// DefaultPodInflightBytes says.
	PodInflightShare = 16
	// MinInflightBytes is the least bound of the node's bytes of replies in
	// flight that lets any reply through: one of the largest size (a TCP
	// frame's length is 16 bits), which the forwarder reads taking no more
	// than its size.
	MinInflightBytes = 64 << 10
	// MinPodInflightBytes is the least bound of a source's bytes of
	// replies in flight that lets it have any reply: one of the largest,
	// as for the node's.
	MinPodInflightBytes = MinInflightBytes
	// DefaultUnknownSources bounds the addresses, not known as pods, that
	// get limits of their own; the rest share one.
	DefaultUnknownSources = 1024
	// DefaultMaxNamespaceSeries bounds the namespaces with a series of
	// their own in ztdns_dns_namespace_requests_total.
	DefaultMaxNamespaceSeries = 100
	// slowPathTimeout bounds a query that takes the slow path; the forwarder
	// has its own, shorter bound per upstream exchange.
	slowPathTimeout = 5 * time.Second
)

// Options configure a Server.
type Options struct {
	Pods      Pods
	Forwarder Forwarder
	Upstreams UpstreamFunc
	// CaptureSlot reports whether local, an address the server listens
	// on, is one the capture programs send pods' queries to (a resolver
	// slot); nil: none is. A query that arrives there from a pod whose
	// record says it is not captured (podcache.Pod.Uncaptured: released)
	// comes from a socket it connected while it was captured, which no
	// hook sees again: it is forwarded whole to the pod's upstreams (the
	// nameserver it addressed through the slot, as Upstreams finds it),
	// never answered from the table, whose VIPs a pod out of the mesh
	// cannot reach. Asked once per socket or connection, and on the slow
	// path for such a pod's queries.
	CaptureSlot func(local netip.AddrPort) bool
	// Links finds the pod behind each of the server's interfaces. A
	// link-local client (fe80::…, its zone the interface its query came
	// in on) no pod owns by address counts against that pod's limits, in
	// the kernel's rate filter too: a pod asking from its link-local
	// address too would otherwise have a second share of every per-source
	// bound. Asked only for a zoned address; nil: none is a pod's.
	Links Links
	// Autopath answers a search-list expansion of an unknown name in one
	// round trip (CoreDNS's autopath). Off by default: see the README.
	Autopath bool
	// NodeSearch are the node's own search domains, which kubelet appends to
	// a ClusterFirst pod's search list; autopath needs them.
	NodeSearch []string
	Logger     *slog.Logger
	// MaxInflight bounds forwarded queries in flight, all sources together;
	// beyond it a query gets SERVFAIL at once instead of queueing without
	// bound. Past half of it, a source gets no more than its fair share
	// (quota.Pool); so with TCPMaxConns and the Budget.
	MaxInflight int
	// TCPIdleTimeout closes a connection that sends nothing for this long;
	// it shortens when more than half of TCPMaxConns are open.
	TCPIdleTimeout time.Duration
	TCPMaxConns    int
	// Limits bound each source: a known pod, or an address no pod owns. A
	// zero field takes the default, a negative one disables the bound.
	Limits quota.Limits
	// UnknownSources bounds the addresses that are no known pod and get
	// limits of their own; the rest share one set.
	UnknownSources int
	// Budget bounds the bytes of forwarded replies held at once (shared
	// with the Forwarder, which reads them), and those one source holds;
	// nil is unbounded.
	Budget *quota.Budget
	// Now is the clock of the rate limits (tests inject one).
	Now func() time.Time
	// KernelRate applies the rate limit to UDP in the kernel too, before
	// queries take room in a socket's queue (kernelrate_linux.go). It needs
	// CAP_BPF; without it, the resolver alone drops queries over the rate.
	KernelRate bool
	// AccessLog gets a line per sampled query while it is on; nil never.
	AccessLog *accesslog.Log
	// MaxNamespaceSeries bounds the namespaces counted under their own name
	// in ztdns_dns_namespace_requests_total (0: the default).
	MaxNamespaceSeries int
	// NoRequestMetrics keeps no per-query metrics (Collector's requests by
	// type, rcode, source and namespace, their durations, the local
	// outcome), for a server whose metrics nobody reads: their counting is
	// then not paid.
	NoRequestMetrics bool
}

// Server serves DNS on any number of UDP sockets and TCP listeners.
type Server struct {
	opts    Options
	log     *slog.Logger
	table   atomic.Pointer[table.Table]
	rate    quota.Rate
	unknown *quota.Table
	kernel  *kernelRate // nil: the rate is applied here only
	// stopPods end the kernel's filter and the namespace series
	// following the pods.
	stopPods []func()
	// attachRate puts the kernel's rate filter on a UDP socket (tests
	// make it fail).
	attachRate func(*net.UDPConn) error
	epoch      time.Time // the rate limits' clock counts from here
	// forwarding is the pool of forwarded queries in flight, tcpOpen of
	// open TCP connections, both shared fairly among sources (quota.Pool);
	// forwards the queries holding its slots (forwarding.go); tcpLevel the
	// idle-timeout level the connections set (tcpadmit.go).
	forwarding *quota.Pool
	forwards   forwardList
	tcpOpen    *quota.Pool
	tcpLevel   atomic.Int32
	// nodeProbe is the source of the node's own health probe (isNodeProbe):
	// its TCP connections and queries, held to no per-source bound.
	nodeProbe quota.Source
	metrics   requestMetrics
	// tcpCloseLog logs TCP connections closed for what their client did,
	// or with replies lost, sparingly: a client may repeat it at will.
	tcpCloseLog ratelog.Limiter
	// logs space the slow path's debug lines of what a client can make
	// happen per query, as tcpCloseLog does: the access log has each one.
	logs struct{ forwardFailed, packFailed ratelog.Limiter }

	ctx    context.Context // cancelled by Close: ends slow-path work
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// loops counts ServeUDP and ServeTCP: a loop that is stopping may
	// still answer what it read, and start slow-path work (wg).
	loops sync.WaitGroup

	mu       sync.Mutex
	closers  []func() error
	wakers   []func() // interrupt a blocked read or accept
	tcp      map[*tcpConn]struct{}
	closed   bool
	draining bool
	// progress are the serving loops' words on their progress
	// (watchLoop), under stallMu, which Stalled holds as it looks at
	// them: not mu, so that whatever holds mu never holds the heartbeat
	// up.
	stallMu  sync.Mutex
	progress map[*loopProgress]struct{}
}

// New returns a server answering from an empty table until SetTable.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxInflight <= 0 {
		opts.MaxInflight = DefaultMaxInflight
	}
	if opts.TCPIdleTimeout <= 0 {
		opts.TCPIdleTimeout = DefaultTCPIdleTimeout
	}
	if opts.TCPMaxConns <= 0 {
		opts.TCPMaxConns = DefaultTCPMaxConns
	}
	if opts.Pods == nil {
		opts.Pods = noPods{}
	}
	if opts.Links == nil {
		opts.Links = noLinks{}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	l := &opts.Limits
	l.QPS = orDefault(l.QPS, DefaultPodQPS)
	l.Burst = orDefault(l.Burst, int(2*l.QPS))
	l.Forwarding = orDefault(l.Forwarding, DefaultPodForwarding)
	l.TCPConns = orDefault(l.TCPConns, DefaultPodTCPConns)
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		opts:     opts,
		log:      opts.Logger,
		rate:     quota.NewRate(l.QPS, l.Burst),
		unknown:  quota.NewTable(orDefault(opts.UnknownSources, DefaultUnknownSources)),
		epoch:    opts.Now(),
		tcp:      map[*tcpConn]struct{}{},
		progress: map[*loopProgress]struct{}{},

		forwarding: quota.NewPool(int64(opts.MaxInflight)),
		tcpOpen:    quota.NewPool(int64(opts.TCPMaxConns)),
		ctx:        ctx,
		cancel:     cancel,
	}
	s.table.Store(&table.Table{})
	s.metrics.namespaces.init(orDefault(opts.MaxNamespaceSeries, DefaultMaxNamespaceSeries))
	if !opts.NoRequestMetrics {
		s.stopPods = append(s.stopPods, opts.Pods.OnChange(func() { s.metrics.namespaces.forget(opts.Pods.List()) }))
	}
	if opts.KernelRate && s.rate != (quota.Rate{}) {
		var err error
		if s.kernel, err = newKernelRate(s.rate, s.log); err != nil {
			s.log.Info("cannot apply the query rate in the kernel; the resolver drops queries over it itself", "err", err)
		} else {
			s.attachRate = s.kernel.attach
			follow := func() { s.kernel.followPods(opts.Pods.Owners, opts.Links.Owners) }
			s.stopPods = append(s.stopPods, opts.Pods.OnChange(follow), opts.Links.OnChange(follow))
			follow()
		}
	}
	return s
}

// orDefault maps an option's zero value to def and a negative one to zero
// (no bound).
func orDefault[T int | int64 | float64](v, def T) T {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0
	}
	return v
}

// clock is the time of the rate limits: nanoseconds since the server started.
func (s *Server) clock() int64 { return int64(s.opts.Now().Sub(s.epoch)) }

// sourceOf finds who is asking: the pod that owns ip, if any, and the quota
// the query counts against (the pod's; for a link-local ip, the pod's
// behind its interface; or ip's entry among unknown sources).
func (s *Server) sourceOf(ip netip.Addr, now int64) (*podcache.Pod, *quota.Source) {
	p := s.opts.Pods.Lookup(ip)
	if p != nil && p.Quota != nil {
		return p, p.Quota
	}
	if q := s.linkQuota(ip); q != nil {
		return p, q
	}
	return p, s.unknown.Get(ip, now)
}

// linkQuota is the quota of the pod behind a link-local client's
// interface (Options.Links), nil for an address without a zone or a
// link no pod is behind. Its zone is the interface's index, as
// parseSockaddr spells it.
func (s *Server) linkQuota(ip netip.Addr) *quota.Source {
	zone := ip.Zone()
	if zone == "" {
		return nil
	}
	ifindex, err := strconv.ParseUint(zone, 10, 32)
	if err != nil {
		return nil
	}
	if p := s.opts.Links.Owner(uint32(ifindex)); p != nil {
		return p.Quota
	}
	return nil
}

// chargeRate charges msg to its source's rate, where the resolver applies
// it (rateHere), before anything else is done with it, and finds the pod
// that asks. over reports the source past its rate; refused is then what
// to send (nil: nothing), parsed into r. The source charged is kept in sc.
func (s *Server) chargeRate(msg []byte, r *request, src netip.AddrPort, tcp bool, out []byte, sc *scratch, now int64) (pod *podcache.Pod, refused []byte, over bool) {
	if sc.conn == &s.nodeProbe || !tcp && isNodeProbe(src, sc.local) {
		sc.charged = &s.nodeProbe // never charged: pauseForRate waits for nothing
		return s.opts.Pods.Lookup(src.Addr()), nil, false
	}
	if !s.rateHere(sc) {
		return s.opts.Pods.Lookup(src.Addr()), nil, false
	}
	pod, source := s.sourceOf(src.Addr(), now)
	sc.charged = source
	if source.Allow(now, s.rate) {
		return pod, nil, false
	}
	metricQueries.rateLimited.Inc()
	// Over UDP the query is dropped: the cheapest answer, and a client that
	// waits for its timeout slows down. Over TCP the connection is real and
	// waiting on it costs the client a slot: say REFUSED.
	if !tcp || parse(msg, r, &sc.name) == verdictDrop {
		return pod, nil, true
	}
	return pod, s.answered(sc, dnswire.AppendErrorReply(out, msg, r, dnswire.RcodeRefused), len(out), r, tcp, pod, src, now, ""), true
}

// privilegedPorts: a source port below it takes CAP_NET_BIND_SERVICE
// (net.ipv4.ip_unprivileged_port_start, 1024 by default, for IPv6 too).
const privilegedPorts = 1024

// isNodeProbe reports whether a query from src to dst is the node's own
// health probe (the agent's /healthz): sent from the very address it asks,
// and from a privileged port. No per-source bound applies to it: every
// process on the node that sends to the resolver's address sends from it
// too, and one of them holding its TCP connections or flooding its rate
// would fail the liveness probe and get the agent restarted. A process on
// the node cannot send from a privileged port unless it is root, and a pod
// cannot send IPv4 from a node-local address (the node drops it as
// martian). IPv6 from one the node takes: the kernel's filter (loadRateFilter)
// also wants the datagram to come in through the loopback; the resolver
// cannot tell (see README "Limits and protections"). dst unspecified (a
// wildcard socket, which does not know where its datagram was sent) is no
// probe's.
func isNodeProbe(src netip.AddrPort, dst netip.Addr) bool {
	return src.Port() < privilegedPorts && dst.IsValid() && !dst.IsUnspecified() &&
		src.Addr().WithZone("").Unmap() == dst.WithZone("").Unmap()
}

// rateHere reports whether the resolver applies the query rate itself to
// the queries of sc's socket or connection: over TCP, and over UDP unless
// the kernel's filter (kernelRate) is on the socket and applies it, per
// pod, before the query reaches the socket.
func (s *Server) rateHere(sc *scratch) bool {
	return s.rate != (quota.Rate{}) && !sc.kernelRated
}

// PodUsage is what the pod holds of the resolver and was refused, for
// `ztdns pods`. Queries the kernel dropped count as rate-limited.
func (s *Server) PodUsage(p *podcache.Pod) quota.Usage {
	u := p.Quota.Usage()
	if s.kernel != nil {
		u.RateLimited += s.kernel.podDrops(p)
	}
	return u
}

type noPods struct{}

func (noPods) Lookup(netip.Addr) *podcache.Pod      { return nil }
func (noPods) Owners() map[netip.Addr]*podcache.Pod { return nil }
func (noPods) List() []*podcache.Pod                { return nil }
func (noPods) OnChange(func()) (stop func())        { return func() {} }

type noLinks struct{}

func (noLinks) Owner(uint32) *podcache.Pod       { return nil }
func (noLinks) Owners() map[uint32]*podcache.Pod { return nil }
func (noLinks) OnChange(func()) (stop func())    { return func() {} }

// SetTable swaps in a new table; queries already running finish on the old.
func (s *Server) SetTable(t *table.Table) { s.table.Store(t) }

// Table returns the table queries currently see.
func (s *Server) Table() *table.Table { return s.table.Load() }

// ServeUDP answers queries on conn until Close. local is the address conn is
// bound to, handed to the UpstreamFunc.
func (s *Server) ServeUDP(conn *net.UDPConn) error {
	if !s.track(conn.Close, func() { conn.SetReadDeadline(time.Now()) }) {
		return net.ErrClosed
	}
	defer s.loops.Done()
	kernelRated := false
	if s.kernel != nil {
		if err := s.attachRate(conn); err != nil {
			s.log.Warn("cannot filter a UDP socket in the kernel; the resolver applies the query rate on it itself", "addr", conn.LocalAddr(), "err", err)
		} else {
			kernelRated = true
		}
	}
	local := addrPortOf(conn.LocalAddr())
	err := s.serveUDPBatches(conn, local, kernelRated)
	if s.stopping() {
		return nil
	}
	return err
}

// ServeTCP answers queries on connections accepted from ln until Close.
func (s *Server) ServeTCP(ln *net.TCPListener) error {
	if !s.track(ln.Close, func() { ln.SetDeadline(time.Now()) }) {
		return net.ErrClosed
	}
	defer s.loops.Done()
	if err := limitBuffers(ln); err != nil {
		s.log.Warn("cannot bound the TCP connections' buffers", "listen", ln.Addr(), "err", err)
	}
	local := addrPortOf(ln.Addr())
	var progress loopProgress
	if rc, err := ln.SyscallConn(); err == nil {
		defer s.watchLoop(&progress, "tcp", local, rc)()
	}
	// Out of descriptors (past the open-file limit), say: the connections
	// wait in the backlog meanwhile, and the agent serves on.
	backoff := acceptretry.New(acceptretry.DNS)
	log := s.log.With("listen", ln.Addr())
	for {
		c, err := ln.AcceptTCP()
		progress.reads.Add(1)
		if err != nil {
			if s.stopping() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// Waiting on purpose, with connections in the backlog: not
			// stalled.
			progress.pausing.Store(true)
			retry := backoff.Wait(log, err)
			progress.pausing.Store(false)
			if retry {
				continue
			}
			return err
		}
		backoff.Accepted()
		if !s.admitConn(c, local) {
			// Over a connection bound: reset at once (no FIN exchange, no
			// TIME_WAIT kept for it); the client retries.
			c.SetLinger(0)
			c.Close()
			continue
		}
	}
}

// Drain stops reading new queries without closing the sockets, and waits
// for the queries in flight (those of the last batches read too) to be
// answered. It is how an agent hands its sockets to its successor: the
// successor holds duplicates of the same sockets and keeps reading, so no
// datagram queued in a socket is lost. Closing the sockets afterwards
// releases this process's copies.
func (s *Server) Drain() {
	s.mu.Lock()
	s.draining = true
	wakers := s.wakers
	conns := s.conns()
	s.mu.Unlock()
	for _, wake := range wakers {
		wake()
	}
	for _, c := range conns { // idle connections end now; busy ones after their answers
		c.stop()
	}
	s.loops.Wait()
	s.wg.Wait()
}

// conns lists the open TCP connections; the caller holds mu. Once closed
// or draining is set, no connection is added (trackConn).
func (s *Server) conns() []*tcpConn {
	conns := make([]*tcpConn, 0, len(s.tcp))
	for c := range s.tcp {
		conns = append(conns, c)
	}
	return conns
}

func (s *Server) trackConn(c *tcpConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.draining {
		return false
	}
	s.tcp[c] = struct{}{}
	return true
}

func (s *Server) untrackConn(c *tcpConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tcp, c)
}

// Close stops every socket, cancels slow-path work and waits for it. An
// idle TCP connection ends at once, a busy one once its query is answered
// (its slow-path work cancelled) and its replies written.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	closers := s.closers
	s.closers = nil
	conns := s.conns()
	s.mu.Unlock()
	var errs []error
	for _, c := range closers {
		if err := c(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	for _, c := range conns {
		c.stop()
	}
	s.cancel()
	s.loops.Wait()
	s.wg.Wait()
	for _, stop := range s.stopPods {
		stop()
	}
	if s.kernel != nil {
		errs = append(errs, s.kernel.Close())
	}
	return errors.Join(errs...)
}

func (s *Server) track(closer func() error, wake func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.draining {
		return false
	}
	s.closers = append(s.closers, closer)
	s.wakers = append(s.wakers, wake)
	s.loops.Add(1)
	return true
}

// stopping reports whether the server is closing or draining: a read or
// accept error is then the expected way out of a loop.
func (s *Server) stopping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed || s.draining
}

// nameBuf holds a query name in presentation form. The hot path gets one
// from its caller (one per socket or connection): a name handed to the
// table as a string would otherwise make a stack buffer escape to the heap.
type nameBuf = dnswire.NameBuf

// scratch is what the hot path keeps between queries of one socket or
// connection.
type scratch struct {
	name nameBuf
	// batch gathers the counts of a UDP batch; nil counts each answer at
	// once (TCP), or, in a server without request metrics, nothing.
	batch *batchCounts
	// kernelRated: the kernel's filter applies the query rate to this UDP
	// socket, and the resolver does not again.
	kernelRated bool
	// local is the address a UDP socket is bound to, where its queries
	// were sent (unspecified for a wildcard socket): isNodeProbe's dst.
	local netip.Addr
	// charged is the source chargeRate charged last: the one a TCP reader
	// waits on before its next query (pauseForRate).
	charged *quota.Source
	// captureSlot: the socket or connection is on a capture slot
	// (Options.CaptureSlot), where an uncaptured pod gets no table answer.
	captureSlot bool
	// conn is a TCP connection's source, which holds its large answers
	// (holdAnswer); held is the bytes the answer being written holds,
	// given back once it is (giveBack).
	conn *quota.Source
	held int
}

// captureSlot reports whether local is a capture slot (Options.CaptureSlot).
func (s *Server) captureSlot(local netip.AddrPort) bool {
	return s.opts.CaptureSlot != nil && s.opts.CaptureSlot(local)
}

// answerFast tries to answer msg from the table. It returns the reply
// (appended to out), nil with slow=false for a packet to drop, or slow=true
// when the query needs the slow path. now is the server's clock (read once
// per batch of datagrams).
func (s *Server) answerFast(msg []byte, src netip.AddrPort, tcp bool, out []byte, sc *scratch, now int64) (reply []byte, slow bool) {
	var (
		r   request
		pod *podcache.Pod
	)
	name, hdr, buf := &sc.name, len(out), out
	pod, refused, over := s.chargeRate(msg, &r, src, tcp, out, sc, now)
	if over {
		return refused, false
	}
	if sc.captureSlot && pod.Uncaptured() {
		return nil, true // released: forwarded (slowQuery.answer)
	}
	switch parse(msg, &r, name) {
	case verdictDrop:
		metricQueries.drop.Inc()
		return nil, false
	case verdictFormErr:
		metricQueries.formerr.Inc()
		return s.answered(sc, dnswire.AppendErrorReply(out, msg, &r, dnswire.RcodeFormErr), hdr, &r, tcp, pod, src, now, ""), false
	case verdictOther, verdictBadVers:
		return nil, true
	}
	// Zone transfers are refused by the slow path, which refuses those of
	// forwarded names too.
	if !r.Plain || (r.Class != dns.ClassINET && r.Class != dns.ClassANY) ||
		r.Type == dns.TypeAXFR || r.Type == dns.TypeIXFR {
		return nil, true
	}
	var ns string
	if pod != nil {
		ns = pod.Namespace
	}
	// The name bytes do not change during the lookup and Resolve keeps no
	// reference to them: no need to copy them into a string.
	res := s.table.Load().Resolve(unsafe.String(&r.Name[0], len(r.Name)), ns)
	res.Restrict(familiesOf(pod))
	if res.Entry == nil || res.Alias != "" || res.Chases(r.Type) || res.Forwards(r.Type) {
		return nil, true
	}
	var ar uint16
	if r.EDNS {
		ar = 1
	}
	out = dnswire.AppendHeader(out, &r, 0, true, 1, 0, ar)
	out = append(out, msg[dnswire.HeaderLen:r.End]...)
	// An answer that does not fit in the client's UDP buffer, or in a TCP
	// message, keeps the whole records that fit, with TC, as CoreDNS's
	// (request.Scrub) and Istio's proxy's are: a client that cannot ask
	// again over TCP (musl before 1.2.4) still gets addresses.
	room := replyRoom(&r, tcp)
	if r.EDNS {
		room -= dnswire.OPTLen
	}
	out, cut := res.AppendAnswer(out, hdr, r.Type, r.ID, room) // sets the counts; the SOA when NODATA
	if r.EDNS {
		out = dnswire.AppendOPT(out, &r, 0)
	}
	var limit string
	if tcp && cap(out) > tcpKeepBuf {
		if out, limit = s.holdAnswer(out, buf, msg, &r, sc); limit != "" {
			cut = false
		}
	}
	if cut {
		metricTruncated[protoOf(tcp)].Inc()
	}
	return s.answered(sc, out, hdr, &r, tcp, pod, src, now, limit), false
}

// familiesOf is the families of a pod's addresses, 0 for a client that is
// no known pod: which auto-allocated VIPs it gets (table.Result.Restrict).
// The pod cache works them out when it is rebuilt, as table.Families.
func familiesOf(p *podcache.Pod) table.Families { return table.Families(p.Families()) }

// answered counts a reply of the fast path (out[hdr:]), made from the table
// or an error of its own, and logs it when the access log samples it,
// with the limit that made it a SERVFAIL ("": none did).
func (s *Server) answered(sc *scratch, out []byte, hdr int, r *request, tcp bool, pod *podcache.Pod, src netip.AddrPort, now int64, limit string) []byte {
	rcode := dnswire.HeaderRcode(out[hdr:])
	from := sourceTable
	if rcode != 0 {
		from = sourceNone
	}
	if !s.opts.NoRequestMetrics {
		cell, slot := requestCell(r.Type, rcode, tcp, from), int32(slotUnknown)
		if pod != nil { // namespaceCounts.slotOf, spelt out: this one is inlined
			if slot = pod.NamespaceSlot.Load(); slot == slotUnknown {
				slot = s.metrics.namespaces.assign(pod)
			}
		}
		if b := sc.batch; b != nil {
			b.add(cell, slot, from) // flush adds them up, local answers included
		} else {
			s.countAnswer(cell, slot)
			if from == sourceTable {
				metricQueries.local.Inc()
			}
		}
	}
	if s.opts.AccessLog.Sampled() {
		s.logAccess(r, src, tcp, pod, rcode, from, netip.AddrPort{}, "", limit, s.clock()-now)
	}
	return out
}

// logAccess hands one answered query to the access log: upstream, result
// and limit as accesslog.Entry has them.
func (s *Server) logAccess(r *request, src netip.AddrPort, tcp bool, pod *podcache.Pod, rcode int, from answeredFrom, upstream netip.AddrPort, result, limit string, latency int64) {
	e := accesslog.Entry{
		Time:     time.Now().Add(-time.Duration(latency)),
		Client:   src,
		Name:     string(r.Name),
		Type:     r.Type,
		Proto:    protoLabels[0],
		Rcode:    rcode,
		Answered: sourceLabels[from],
		Upstream: upstream,
		Result:   result,
		Limit:    limit,
		Latency:  time.Duration(latency),
	}
	if tcp {
		e.Proto = protoLabels[1]
	}
	if pod != nil {
		e.Namespace, e.Pod = pod.Namespace, pod.Name
	}
	s.opts.AccessLog.Send(e)
}

func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort()
	case *net.TCPAddr:
		return a.AddrPort()
	}
	return netip.AddrPort{}
}
