// Package forward sends the queries the resolver cannot answer itself to
// upstream nameservers, relays their replies byte for byte (only the ID, the
// RD and AD bits and the question's case are the client's), and caches them
// for their TTL.
//
// What may be cached or shared with another client (Forwarder.ForwardFrom)
// is asked as its cache key says, not as the client put it.
package forward

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ztdns/ztdns/internal/ratelog"
	"github.com/ztdns/ztdns/pkg/dnswire"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// Forwarder relays queries to upstream nameservers and caches the replies.
// It is safe for concurrent use.
type Forwarder struct {
	timeout    time.Duration
	cacheSize  int
	cacheBytes int64
	maxTTL     time.Duration
	budget     *quota.Budget // nil: unbounded
	now        func() time.Time
	log        *slog.Logger
	// logs space its debug lines: a client can fail an exchange per query
	// (an upstream that refuses every one), so each kind is logged at most
	// once per ratelog.Every, saying how many went unlogged. The metrics
	// count every one, the access log names each query's client.
	logs struct{ noUpstream, failed, rcode, notCached ratelog.Limiter }

	maxUpstreamSeries int
	knownUpstreams    []netip.AddrPort
	upstreams         *upstreamMetrics
	icmp              icmpLog    // the ICMP errors UDP exchanges ignored
	udp               *udpPoller // waits for the UDP exchanges' sockets

	cache *cache // nil when caching is disabled

	// base ends when the Forwarder closes, stopping every upstream exchange.
	base context.Context
	stop context.CancelFunc

	mu      sync.Mutex
	closed  bool
	wg      sync.WaitGroup     // every goroutine the Forwarder started
	flights map[string]*flight // identical queries in flight, by flight key
}

// flight is one upstream exchange shared by identical concurrent queries.
type flight struct {
	done  chan struct{}
	reply []byte         // the upstream's reply with our ID, or nil if none came
	from  netip.AddrPort // the upstream that sent reply, or the one asked that sent none
	// failure says why no reply came (Origin.Failure); empty with one.
	failure string
	// leaderOnly: no reply, for a reason of the leader's own: a reply was
	// refused for want of bytes of its source (its bound, or its fair
	// share of the budget), or its context ended (the resolver cancels a
	// forward to give its slot to a pod under its share). Its waiters,
	// whose sources may have room and whose contexts have not ended, ask
	// again under their own. bytesRefused: the first of those reasons,
	// the leader's to count.
	leaderOnly, bytesRefused bool
	// joined counts the queries that joined it (the tests wait on it).
	joined atomic.Int32
	// udp: the exchange is over UDP, and resend is its to send the query
	// again (the kernel retransmits over TCP). In the flight, not beside
	// it: a UDP exchange costs no allocation more for it.
	udp    bool
	resend resender
}

// resender returns the flight's resender, or nil over TCP.
func (fl *flight) resender() *resender {
	if !fl.udp {
		return nil
	}
	return &fl.resend
}

// resendOnTimer is the UDP exchange's own resend, half-way through the
// timeout.
func (fl *flight) resendOnTimer() { fl.resend.resend(resendTimer) }

// Origin says where a reply came from.
type Origin struct {
	// Cached is true when the reply came from the cache.
	Cached bool
	// Upstream is the nameserver whose reply it is (for a cached reply, the
	// one that sent it then). When none answered and the reply is a
	// SERVFAIL made here, it is the upstream asked (of several, the first
	// given), and Failure says how its exchange ended; not valid when none
	// was asked.
	Upstream netip.AddrPort
	// Failure is empty when an upstream replied (whatever its rcode), else
	// why no reply came: one of the Failure constants.
	Failure string
	// BytesRefused: the reply is a SERVFAIL made here because an upstream's
	// reply did not fit what the source (quota.WithSource) may hold of the
	// budget of replies in flight, its own bound or its fair share.
	BytesRefused bool
}

// Why no upstream reply came (Origin.Failure): the values of the
// upstream query counter's result label, but that a connection refused (an
// ICMP port unreachable over UDP from the upstream's own address, a reset
// over TCP), counted as "error", is told apart here.
const (
	FailureTimeout       = resultTimeout       // no valid reply within the timeout
	FailureRefused       = "refused"           // the upstream refused the connection
	FailureError         = resultError         // any other socket error
	FailureNoMemory      = resultNoMemory      // the reply did not fit the node's budget of replies in flight
	FailureSourceLimited = resultSourceLimited // the reply did not fit what the asking source may hold of it
	FailureCanceled      = resultCanceled      // the query's context ended (the resolver gave up on it) or the Forwarder closed
	FailureNoSocket      = resultNoSocket      // the agent could not open a socket for the exchange (out of descriptors)
	FailureNoUpstream    = "no_upstream"       // no valid upstream to ask
)

// New returns a Forwarder; Close it to stop its upstream exchanges.
func New(opts ...Option) *Forwarder {
	f := &Forwarder{
		timeout:    DefaultTimeout,
		cacheSize:  DefaultCacheSize,
		cacheBytes: DefaultCacheBytes,
		maxTTL:     DefaultMaxTTL,
		now:        time.Now,

		maxUpstreamSeries: DefaultMaxUpstreamSeries,
		log:               slog.Default(),
		flights:           make(map[string]*flight),
	}
	for _, o := range opts {
		o(f)
	}
	if f.cacheSize > 0 {
		f.cache = newCache(f.cacheSize, f.cacheBytes)
	}
	f.upstreams = newUpstreamMetrics(f.maxUpstreamSeries, f.knownUpstreams, f.now)
	f.icmp.metrics, f.icmp.log = f.upstreams, f.log
	f.base, f.stop = context.WithCancel(context.Background())
	f.udp = newUDPPoller()
	return f
}

// CacheUsage returns the number of replies the cache holds and the bytes
// they take, as its byte bound counts them.
func (f *Forwarder) CacheUsage() (entries int, bytes int64) {
	if f.cache == nil {
		return 0, 0
	}
	return f.cache.usage()
}

// Close stops all upstream exchanges and waits for them to end. Queries
// forwarded afterwards get SERVFAIL.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.stop()
	f.wg.Wait()
	f.udp.close()
	return nil
}

// Forward answers req, a complete client query with exactly one question, by
// asking upstreams in parallel over the client's protocol (tcp). The reply is
// the first good upstream reply (NOERROR or NXDOMAIN), else any reply that
// came, else a SERVFAIL built from req, with req's ID and question bytes.
//
// A standard query is answered from the cache when possible, and shares its
// exchange with identical queries in flight: the key (cache.go) is its
// flags (EDNS, DO, CD), type, class, name in any case and the upstream
// set, and the upstream is asked just that (appendUpstreamQuery), never
// what else a client put in its query (EDNS options, its UDP size), which
// would shape an answer others get. A query the key cannot stand for
// (shareable: RD=0, records besides an OPT, zone transfers), and other
// opcodes, are forwarded as they are but for a COOKIE option
// (relayedQuery), and neither cached nor shared. The error is only for a
// req that cannot be parsed.
func (f *Forwarder) Forward(ctx context.Context, req []byte, tcp bool, upstreams []netip.AddrPort) ([]byte, error) {
	reply, _, err := f.ForwardFrom(ctx, req, tcp, upstreams)
	return reply, err
}

// ForwardFrom is Forward, and says where the reply came from.
func (f *Forwarder) ForwardFrom(ctx context.Context, req []byte, tcp bool, upstreams []netip.AddrPort) ([]byte, Origin, error) {
	var r dnswire.Query
	if err := dnswire.ParseQuery(req, &r, nil); err != nil {
		return nil, Origin{}, fmt.Errorf("parse request: %w", err)
	}
	req = req[:r.Len] // what follows the message is not relayed
	if r.Opcode() != dnswire.OpcodeQuery || !shareable(&r) {
		ctx, cancel := context.WithTimeout(ctx, f.timeout)
		defer cancel()
		defer context.AfterFunc(f.base, cancel)()
		a := f.resolve(ctx, relayedQuery(req, &r), r, tcp, upstreams, nil)
		defer f.budget.Give(quota.SourceFrom(ctx), len(a.reply))
		return f.finish(req, r, a.reply, false, false), a.origin(), nil
	}

	var keyBuf [512]byte
	key := appendKey(keyBuf[:0], req, r, upstreams)
	src := quota.SourceFrom(ctx)
	if f.cache != nil {
		if out, from, ok := f.fromCache(nil, req, r, key, src, allRecords, dnswire.AnyRoom); ok {
			return out, from, nil
		}
		cacheMisses.Inc()
	}
	// Identical queries share one exchange. The query that starts it runs
	// it in its own goroutine (a goroutine per query in flight is most of
	// what one costs); the others wait for it, each until its own context
	// ends, so one giving up does not cancel the exchange for the rest.
	// The reply's bytes are the leader's, and the exchange ends with its
	// context: when they did not fit what its source may hold, or the
	// leader was cancelled, the waiters do not take that failure, but join
	// or lead a new exchange under their own sources and contexts.
	// A query that joins a UDP exchange whose query went out a while ago
	// (resendInterval) has it sent again: it may be its client's retry
	// because that datagram, or its reply, was lost.
	proto := byte('u')
	if tcp {
		proto = 't'
	}
	flightKey := string(append(key, proto))
	for joined := false; ; {
		fl, leader := f.joinFlight(flightKey, tcp)
		switch {
		case fl == nil:
			return servfail(req, r), Origin{Failure: FailureCanceled}, nil
		case leader:
			// Only the leader builds the query: the waiters never build one.
			sent := appendUpstreamQuery(make([]byte, 0, r.End+dnswire.OPTLen), req, &r)
			f.fly(ctx, fl, flightKey, src, sent, r, tcp, upstreams)
			return f.finish(req, r, fl.reply, true, false), Origin{Upstream: fl.from, Failure: fl.failure, BytesRefused: fl.bytesRefused}, nil
		}
		fl.resender().resend(resendJoined)
		if !joined { // a query that asks again is coalesced once
			coalesced.Inc()
			joined = true
			fl.joined.Add(1)
		}
		select {
		case <-fl.done:
			if fl.leaderOnly { // set only without a reply
				continue // the leader's source was full or it was cancelled, not ours
			}
			return f.finish(req, r, fl.reply, true, true), Origin{Upstream: fl.from, Failure: fl.failure}, nil
		case <-ctx.Done():
			return servfail(req, r), Origin{Failure: ctxFailure(ctx)}, nil
		}
	}
}

// AppendCached appends to dst the reply ForwardFrom would give req from
// the cache, byte for byte, when the cache holds a fresh one: its TTLs
// aged, its answer's sets rotated by req's ID, req's ID, RD bit and
// question, AD as ForwardFrom fits it. src is the asking source, as
// ForwardFrom learns it from its context (quota.WithSource): a hit from
// another source than the one the entry is charged to shares it, as a
// hit through ForwardFrom does. It asks no upstream, starts nothing and
// waits for nothing, so the resolver answers a hit on the goroutine that
// read the query. ok is false, and dst returned as it was, when the
// cache holds no fresh reply or req is not one the cache answers (one
// that ForwardFrom relays as it came: RD=0, other opcodes, …); a hit is
// counted as ForwardFrom counts it, a miss is not: ForwardFrom, asked
// next, counts it.
func (f *Forwarder) AppendCached(dst, req []byte, upstreams []netip.AddrPort, src *quota.Source) (out []byte, from Origin, ok bool) {
	return f.AppendCachedFirst(dst, req, upstreams, src, allRecords, dnswire.AnyRoom)
}

// AppendCachedFirst is AppendCached for a caller that reads at most the
// first n records of the reply besides its OPT record, and none past the
// first at which they take more than room octets packed as small as they
// can be: the resolver, cutting it to a client's UDP buffer, or building
// a reply of its own from it that can hold no more. Of a cached reply
// with more, only those are copied and aged, and appended with the OPT
// record after them, the counts set to say so, TC as it came
// (dnswire.AppendFirst): what FirstRecordsIn(n, room) reads of
// AppendCached's reply, but that the answer's sets are moved only as the
// stored reply lets them (a reply whose aged TTLs read as a pointer into
// a set keeps it in place in AppendCached's). A hit on a 64 KB reply,
// of many small records or few huge ones, then costs what one the client
// can take does. A reply with no more records is AppendCached's, byte for
// byte.
func (f *Forwarder) AppendCachedFirst(dst, req []byte, upstreams []netip.AddrPort, src *quota.Source, n, room int) (out []byte, from Origin, ok bool) {
	if f.cache == nil {
		return dst, Origin{}, false
	}
	var r dnswire.Query
	if err := dnswire.ParseQuery(req, &r, nil); err != nil {
		return dst, Origin{}, false
	}
	req = req[:r.Len]
	if r.Opcode() != dnswire.OpcodeQuery || !shareable(&r) {
		return dst, Origin{}, false
	}
	var keyBuf [512]byte
	return f.fromCache(dst, req, r, appendKey(keyBuf[:0], req, r, upstreams), src, n, room)
}

// allRecords, as AppendCachedFirst's n: the whole reply, however many
// records it has (at most three sections of 65,535).
const allRecords = 3 * 0xFFFF

// fromCache appends to dst the cached reply to req under key (its first
// records, at most n or room octets of them, AppendCachedFirst), for a
// query from src, when the cache holds a fresh one, and counts the hit.
func (f *Forwarder) fromCache(dst, req []byte, r dnswire.Query, key []byte, src *quota.Source, n, room int) ([]byte, Origin, bool) {
	now := f.now()
	e := f.cache.get(key, now, src)
	if e == nil {
		return dst, Origin{}, false
	}
	cacheHits.Inc()
	return appendFromCache(dst, req, r, e, now, n, room), Origin{Cached: true, Upstream: e.from}, true
}

// relayedQuery is what goes upstream for req, a query forwarded as it
// came: a copy (req keeps its ID: finish writes it), without its COOKIE
// option (RFC 7873). A client's cookie is between it and the server it
// asked, ztdns: the upstream's server cookie, echoed back, would be the
// only one the client gets from that address, as the queries ztdns asks
// itself carry none, and a client that saw one may take later replies
// without one as spoofed (BIND's resolver retries them over TCP, "missing
// expected cookie"). A signed query (TSIG, SIG(0): a record besides the
// OPT in the additional section) keeps it: the signature covers it.
func relayedQuery(req []byte, r *dnswire.Query) []byte {
	q := slices.Clone(req)
	if r.EDNS && r.ARCount == 1 {
		q = dnswire.RemoveOption(q, dnswire.OptionCookie)
	}
	return q
}

// joinFlight returns the flight for flightKey, and whether the caller
// starts it (then it must call fly). It returns nil once the Forwarder is
// closed.
func (f *Forwarder) joinFlight(flightKey string, tcp bool) (fl *flight, leader bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, false
	}
	if fl := f.flights[flightKey]; fl != nil {
		return fl, false
	}
	fl = &flight{done: make(chan struct{}), udp: !tcp}
	fl.resend.init(f.now, f.upstreams)
	f.flights[flightKey] = fl
	f.wg.Add(1) // Close waits for the exchange
	return fl, true
}

// fly runs the exchange of a flight the caller started, sending query (the
// key's, appendUpstreamQuery; fly's own, its ID overwritten), bounded by
// the timeout, the caller's context and Close, caches the reply (charged
// to src, the caller's source) and hands it to the flight's waiters. A UDP
// exchange not answered half-way through the timeout sends its query
// again, unless it went out less than resendInterval before.
func (f *Forwarder) fly(ctx context.Context, fl *flight, flightKey string, src *quota.Source, query []byte, r dnswire.Query, tcp bool, upstreams []netip.AddrPort) {
	defer f.wg.Done()
	caller := ctx
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	defer context.AfterFunc(f.base, cancel)()
	rs := fl.resender()
	if rs != nil && f.timeout/2 > resendInterval {
		defer time.AfterFunc(f.timeout/2, fl.resendOnTimer).Stop()
	}
	a := f.resolve(ctx, query, r, tcp, upstreams, rs)
	fl.reply, fl.from, fl.failure = a.reply, a.upstream, a.failure
	// The caller's context, not the exchange's: an upstream silent for the
	// whole timeout is no reason for the waiters to ask it again.
	fl.bytesRefused = a.reply == nil && a.overSource
	fl.leaderOnly = fl.bytesRefused || (a.reply == nil && caller.Err() != nil)
	if fl.reply != nil {
		f.store(flightKey[:len(flightKey)-1], fl.reply, fl.from, src)
	}
	f.mu.Lock()
	delete(f.flights, flightKey)
	f.mu.Unlock()
	close(fl.done)
	// The waiters copy the reply as they wake; it leaves the budget now.
	f.budget.Give(src, len(fl.reply))
}

// store caches reply under key, charged to src, if its rcode and TTLs
// allow. The cache keeps reply itself: a flight's reply is never changed
// (its waiters copy it).
func (f *Forwarder) store(key string, reply []byte, from netip.AddrPort, src *quota.Source) {
	if f.cache == nil {
		return
	}
	s, err := dnswire.ScanReply(reply)
	if err != nil {
		f.logs.notCached.Log(f.log, slog.LevelDebug, "upstream reply not cached", "upstream", from, "error", err)
		return
	}
	lifetime, ok := cacheLifetime(s, f.maxTTL)
	if !ok {
		return
	}
	e := newEntry(key, reply, s, f.now(), lifetime)
	e.from = from
	f.cache.put(e, src)
}

// attempt is the outcome of asking one upstream.
type attempt struct {
	reply    []byte
	good     bool
	upstream netip.AddrPort // who sent reply, or was asked and sent none
	failure  string         // why no reply came (a Failure constant); empty with one
	// overSource: no reply, and one was refused for want of bytes of the
	// source the exchange ran for (its bound or its fair share).
	overSource bool
}

func (a attempt) origin() Origin {
	if a.reply == nil {
		return Origin{Upstream: a.upstream, Failure: a.failure, BytesRefused: a.overSource}
	}
	return Origin{Upstream: a.upstream}
}

// resolve asks every upstream at once and returns the first good reply, else
// the first reply of any kind, else none (a nil reply; overSource when a
// reply was refused for want of the source's bytes; the upstream and
// failure of the first upstream given). Losing exchanges are
// canceled; they end on their own and are not waited for. The reply's bytes
// are taken from the budget: the caller gives them back when done with it.
// query is resolve's own: its ID is overwritten with a random one. rs
// (nil: none) may send it again over UDP while the exchanges wait.
func (f *Forwarder) resolve(ctx context.Context, query []byte, r dnswire.Query, tcp bool, upstreams []netip.AddrPort, rs *resender) attempt {
	upstreams = distinctUpstreams(upstreams)
	if len(upstreams) == 0 {
		f.logs.noUpstream.Log(f.log, slog.LevelDebug, "no upstream to forward to")
		return attempt{failure: FailureNoUpstream}
	}
	src := quota.SourceFrom(ctx) // whose bytes the replies are
	// The upstream sees an ID of ours (crypto/rand never fails since Go 1.24).
	_, _ = rand.Read(query[:2])
	if len(upstreams) == 1 { // the usual case with capture: no race to run
		return f.ask(ctx, upstreams[0], query, r.Question, tcp, rs)
	}
	return f.race(ctx, src, query, r, tcp, upstreams, rs)
}

// race is resolve's for several upstreams, in a function of its own: a
// query to one upstream waits with resolve's frame on its goroutine's
// stack, which race's would make larger.
func (f *Forwarder) race(ctx context.Context, src *quota.Source, query []byte, r dnswire.Query, tcp bool, upstreams []netip.AddrPort, rs *resender) attempt {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Exchanges that finish after resolve returned give their reply's bytes
	// back themselves.
	type result struct {
		attempt
		i int // the upstream's place in upstreams
	}
	results, returned := make(chan result), make(chan struct{})
	defer close(returned)
	started := 0
	for i, u := range upstreams {
		ok := f.goTracked(func() {
			a := f.ask(ctx, u, query, r.Question, tcp, rs)
			select {
			case results <- result{a, i}:
			case <-returned:
				f.budget.Give(src, len(a.reply))
			}
		})
		if !ok {
			break
		}
		started++
	}
	var fallback attempt
	failed := result{i: len(upstreams)} // the first upstream's of those that sent nothing
	overSource := false
	for range started {
		res := <-results
		a := res.attempt
		if a.good {
			f.budget.Give(src, len(fallback.reply))
			return a
		}
		overSource = overSource || a.overSource
		switch {
		case a.reply == nil:
			if res.i < failed.i {
				failed = res
			}
		case fallback.reply == nil:
			fallback = a
		default:
			f.budget.Give(src, len(a.reply))
		}
	}
	if fallback.reply == nil {
		fallback = failed.attempt
		if started == 0 {
			fallback.failure = FailureCanceled // closed before any was asked
		}
		fallback.overSource = overSource
	}
	return fallback
}

// ask runs one exchange and records its outcome.
func (f *Forwarder) ask(ctx context.Context, upstream netip.AddrPort, query []byte, q dnswire.Question, tcp bool, rs *resender) attempt {
	proto := "udp"
	if tcp {
		proto = "tcp"
	}
	start := time.Now()
	reply, err := exchange(ctx, upstream, query, q, tcp, f.budget, rs, &f.icmp, f.udp)
	if err != nil {
		result := resultError
		switch {
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
			result = resultTimeout
		case errors.Is(err, context.Canceled):
			result = resultCanceled
		case errors.Is(err, errNoMemory):
			result = resultNoMemory
		case errors.Is(err, errSourceMemory):
			result = resultSourceLimited
		case errors.Is(err, errNoSocket):
			result = resultNoSocket
		}
		f.upstreams.attempt(upstream, result)
		if result != resultCanceled {
			f.logs.failed.Log(f.log, slog.LevelDebug, "upstream exchange failed", "upstream", upstream, "proto", proto, "result", result, "error", err)
		}
		failure := result
		if result == resultError && errors.Is(err, syscall.ECONNREFUSED) {
			failure = FailureRefused
		}
		return attempt{upstream: upstream, failure: failure, overSource: result == resultSourceLimited}
	}
	took := time.Since(start)
	rh, _ := dnswire.ReadHeader(reply) // matches() checked the length
	good := rh.Rcode() == dnswire.RcodeSuccess || rh.Rcode() == dnswire.RcodeNXDomain
	result := resultOK
	if !good {
		result = resultServfail
	}
	f.upstreams.observe(f.upstreams.attempt(upstream, result), proto, took)
	if !good {
		f.logs.rcode.Log(f.log, slog.LevelDebug, "upstream answered with an error", "upstream", upstream, "proto", proto, "rcode", rh.Rcode())
	}
	return attempt{reply: reply, good: good, upstream: upstream}
}

// ctxFailure is the failure of a query whose context ended.
func ctxFailure(ctx context.Context) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return FailureTimeout
	}
	return FailureCanceled
}

// goTracked runs fn in a goroutine Close waits for, unless already closed.
func (f *Forwarder) goTracked(fn func()) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.wg.Go(fn)
	return true
}

// distinctUpstreams drops invalid and repeated upstreams (IPv4-mapped IPv6
// counts as IPv4) and keeps at most MaxUpstreams.
func distinctUpstreams(upstreams []netip.AddrPort) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, min(len(upstreams), MaxUpstreams))
	for _, u := range upstreams {
		u, ok := canonicalUpstream(u)
		if !ok || slices.Contains(out, u) {
			continue
		}
		if out = append(out, u); len(out) == MaxUpstreams {
			break
		}
	}
	return out
}

// canonicalUpstream is u as the forwarder keeps it: IPv4-mapped IPv6 as
// IPv4; false for an address or port that cannot be sent to.
func canonicalUpstream(u netip.AddrPort) (netip.AddrPort, bool) {
	if !u.IsValid() || u.Port() == 0 {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(u.Addr().Unmap(), u.Port()), true
}

// finish turns an upstream reply into the client's: a copy with the client's
// ID, RD bit and question bytes (the reply's question has the same length,
// see matches), and for the reply to a shared exchange the AD bit fitted
// to the client. A waiter's copy (rotate) has its answer's sets rotated by
// its ID, as a cached one: the leader's keeps the upstream's order. A nil
// reply becomes SERVFAIL.
func (f *Forwarder) finish(req []byte, r dnswire.Query, reply []byte, shared, rotate bool) []byte {
	if reply == nil {
		return servfail(req, r)
	}
	out := slices.Clone(reply)
	if rotate {
		dnswire.RotateAnswers(out, r.ID)
	}
	return personalise(out, req, r, shared)
}

// appendFromCache appends to dst a copy of a cached reply, its TTLs aged
// by the time spent in the cache, its answer's sets rotated by the
// client's ID, with the client's ID and question. Without the rotation every client would get
// the order the upstream gave the first for the whole TTL, where a
// kube-dns with loadbalance shuffles each reply: clients that take the
// first address (Go's Dial, most HTTP clients, musl) would all pick the
// same backend. Of a reply with more than n records besides the OPT, or
// more than room octets of them, only the first, as rotated, are copied
// and aged (AppendCachedFirst), by the entry's rotation plan (one is
// made for an entry that has none: a caller that keeps fewer records
// than any client's buffer takes).
func appendFromCache(dst, req []byte, r dnswire.Query, e *entry, now time.Time, n, room int) []byte {
	elapsed := uint32(now.Sub(e.stored) / time.Second)
	if h, _ := dnswire.ReadHeader(e.msg); int(h.ANCount)+int(h.NSCount)+int(h.ARCount) > n || len(e.msg) > dnswire.HeaderLen+room {
		p := e.rotation
		if p == nil {
			p = dnswire.PlanRotation(e.msg)
		}
		if out, ok := dnswire.AppendFirst(dst, e.msg, p, r.ID, n, room, e.ttlOffsets, elapsed); ok {
			personalise(out[len(dst):], req, r, true)
			return out
		}
	}
	out := append(dst, e.msg...)
	reply := out[len(dst):]
	dnswire.AgeTTLs(reply, e.ttlOffsets, elapsed)
	dnswire.RotateAnswers(reply, r.ID)
	personalise(reply, req, r, true)
	return out
}

// personalise writes the client's ID, RD bit and question into out. The
// reply to a shared exchange, which asked with AD (appendUpstreamQuery),
// keeps the upstream's AD only for a client that asked for DNSSEC with DO
// or AD (RFC 6840 5.8), as CoreDNS's cache does.
func personalise(out, req []byte, r dnswire.Query, shared bool) []byte {
	copy(out[0:2], req[0:2])
	flags := binary.BigEndian.Uint16(out[2:])&^dnswire.FlagRD | r.Flags&dnswire.FlagRD
	if shared && !r.DO && r.Flags&dnswire.FlagAD == 0 {
		flags &^= dnswire.FlagAD
	}
	binary.BigEndian.PutUint16(out[2:], flags)
	if binary.BigEndian.Uint16(out[4:]) == 1 && len(out) >= r.End {
		copy(out[dnswire.HeaderLen:r.End], req[dnswire.HeaderLen:r.End])
	}
	return out
}

// servfail builds a SERVFAIL for req: its ID, opcode, RD and CD bits, its
// question, and for an EDNS client an OPT record with DO copied and the
// Extended DNS Error "No Reachable Authority".
func servfail(req []byte, r dnswire.Query) []byte {
	out := make([]byte, 0, r.End+dnswire.OPTLen+6)
	out = dnswire.AppendErrorReply(out, req, &r, dnswire.RcodeServFail)
	if r.EDNS {
		out = dnswire.AppendEDE(out, len(out)-dnswire.OPTLen, dnswire.EDENoReachableAuthority)
	}
	return out
}
