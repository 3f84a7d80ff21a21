package resolver

// The slow path: a query the fast path hands over (a CNAME chain, a
// search-list alias, autopath, an error that needs a whole message, a
// forward) is answered here, with miekg/dns. Server.slow is its entry: it
// answers what the table and the forwarder's cache can on the caller's
// goroutine, and runs a query that needs an upstream in a goroutine of its
// own, within the bounds on forwarded work.

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztdns/ztdns/pkg/dnswire"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// maxChain bounds CNAME chains through the table (an ExternalName may
// point at another local name, which may point further).
const maxChain = 8

// maxOfflineLookups bounds the lookups of the forwarder's cache that the
// offline pass makes for one query (a CNAME's target, autopath's
// candidates, together), on the goroutine that read it: each is a message
// packed, looked up and decoded, and a pod sets its own search list (up
// to 32 domains) and can fill the cache with its candidates itself. Past
// it the query needs an upstream, as a miss does: it goes online, with a
// forwarding slot and a goroutine of its own, and reuses what the offline
// pass found. 8 covers a pod's usual search list with room: kubelet's
// three cluster domains are looked up in the table, not the cache, then
// come the pod's own domains and the node's (one to three on the clouds'
// nodes), and the bare name; a chase asks one name (two when a truncated
// reply is asked again over TCP).
const maxOfflineLookups = 8

// maxOfflineBytes bounds the bytes of cached replies the offline pass
// reads for one query, as maxOfflineLookups bounds their number: a pod
// can fill the cache with replies of 64 KB to its own names (its own
// nameserver's, which the cache keys by). No read starts past it: the
// query goes online as a 9th lookup does. A read copies only the records
// the reply can hold (firstRecords: however large they are, no more than
// one past the reply's room), so at most one read goes past it, by what
// that is; a candidate's NXDOMAIN or a small answer takes a few hundred
// bytes, and the usual search list stays far below.
const maxOfflineBytes = 16 << 10

// slowQuery is one query on the slow path.
type slowQuery struct {
	s          *Server
	msg        []byte
	r          request // parsed by answer
	src, local netip.AddrPort
	tcp        bool
	// conn is the TCP connection's upstreams (nil over UDP, whose
	// datagrams each say where they were sent).
	conn *connUpstreams
	// offline answers only what needs no upstream (the table's, and the
	// forwarder's cache's): asking one instead sets needsUpstream, and the
	// reply is to be thrown away (slow then runs the query again, online,
	// within the bounds on forwarded work).
	offline, needsUpstream bool
	// out is where a reply from the forwarder's cache is appended offline:
	// over UDP the socket's batch's buffer, which the reply goes out from
	// with the table's answers; nil, a buffer of its own.
	out []byte
	// ups are the query's upstreams once looked up (upsKnown), the
	// offline pass's kept for the online one; cachedLookups the replies
	// the offline pass's lookups (chase, autopath) got from the cache,
	// which the online pass reuses rather than ask the cache again;
	// offlineLookups how many lookups the offline pass made, at most
	// maxOfflineLookups (a name asked again counts again: its reply is
	// unpacked again); offlineBytes the bytes of cached replies it read,
	// past maxOfflineBytes by at most one read.
	ups            []netip.AddrPort
	upsKnown       bool
	cachedLookups  []cachedLookup
	offlineLookups int
	offlineBytes   int
	// cut: the reply was cut, with TC, to the records that fit the
	// client's UDP buffer or a TCP message; counted truncated once it goes out so
	// (finishing), not as it is built: it may be refused or ended yet.
	cut bool

	// What the metrics and the access log say of the answer: when the query
	// was read (the server's clock), where its answer came from and which
	// upstream gave it (or was asked and gave none: result says why), the
	// limit that refused it or a lookup of it (limitPod, limitNode), and
	// the asking pod.
	start         int64
	from          answeredFrom
	upstream      netip.AddrPort
	result, limit string
	badVers       bool
	pod           *podcache.Pod
	families      table.Families // pod's (familiesOf), for each name the query looks up
	// source is the asking source: its TCP connection's, found as it was
	// accepted (whose bytes hold its replies), or over UDP the one looked
	// up to forward (slow). What is refused for it is counted on it.
	source *quota.Source
	// What was counted of its parts (lookups, forward, reply) refused or
	// ended for its source.
	refusals

	// slot is its place among the forwards in flight while it holds one.
	slot forwardSlot
}

// slow answers a query that needs more than a table copy; tc is its TCP
// connection (nil: the query came over UDP, and its source is looked up
// if it forwards), whose source holds the reply's bytes and whose
// upstreams it forwards to. done is
// called exactly once, with the reply or with nil when there is nothing to
// send, and what gives back the reply's hold (nil without one), which done
// calls once the reply is sent or dropped.
//
// What the table answers (search-list aliases, CNAME chains, errors), and
// what the forwarder's cache holds fresh (a forwarded name, a CNAME's
// target, autopath's candidates, within maxOfflineLookups of them), is
// answered here, on the caller's goroutine: such answers never wait behind
// forwarded work, and take no forwarding slot. A query that needs an
// upstream, or more lookups of the cache, runs in its own
// goroutine, within two bounds: its source's forwarded queries in flight, and
// MaxInflight for all sources. Over either, the client gets SERVFAIL at
// once instead of a place in a queue. Past half of MaxInflight, a source
// holding more than its fair share of it gets the same (quota.Pool); one
// within its share that finds MaxInflight reached takes the slot of a
// source over its share (startForward). The forwarder learns the source
// from the context, and charges the reply bytes it reads to it.
func (s *Server) slow(msg []byte, src, local netip.AddrPort, tc *tcpConn, done func(reply []byte, release func())) {
	q := s.newSlowQuery(msg, src, local, tc)
	finish := q.finishing(done)
	if reply := q.answer(s.ctx); !q.needsUpstream {
		finish(reply)
		return
	}
	q.forwardOnline(finish)
}

// newSlowQuery starts the slow path's work on a query: offline.
func (s *Server) newSlowQuery(msg []byte, src, local netip.AddrPort, tc *tcpConn) *slowQuery {
	q := &slowQuery{s: s, msg: msg, src: src, local: local, offline: true, start: s.clock(), from: sourceNone}
	if tc != nil {
		q.tcp, q.conn, q.source = true, &tc.up, tc.source
	}
	return q
}

// askingSource is the source the query counts against: its TCP
// connection's, or over UDP the one its address finds, looked up once.
func (q *slowQuery) askingSource() *quota.Source {
	if q.source == nil {
		_, q.source = q.s.sourceOf(q.src.Addr(), q.s.clock())
	}
	return q.source
}

// forwardOnline runs a query the offline pass found needs an upstream in
// a goroutine of its own, within the bounds on forwarded work (slow), and
// hands its reply to finish.
func (q *slowQuery) forwardOnline(finish func(reply []byte)) {
	s, msg := q.s, q.msg
	source := q.askingSource()
	fw := &q.slot
	fw.source = source
	switch s.startForward(fw) {
	case quota.OverSource: // its own bound, or its fair share of the node's
		q.countLimited()
		q.limitedBy(limitPod)
		finish(dnswire.AppendErrorReply(nil, msg, &q.r, dnswire.RcodeServFail))
		return
	case quota.OverPool:
		metricQueries.overload.Inc()
		q.limitedBy(limitNode)
		finish(dnswire.AppendErrorReply(nil, msg, &q.r, dnswire.RcodeServFail))
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(quota.WithSource(s.ctx, source), slowPathTimeout)
		var reply []byte
		if s.forwards.arm(fw, cancel) {
			q.offline, q.needsUpstream, q.out = false, false, nil
			q.from, q.upstream, q.result = sourceNone, netip.AddrPort{}, ""
			reply = q.answer(ctx)
		}
		cancel()
		// The forward is over once answered: its slot is free before the
		// reply goes out, so a client that asks again as soon as it has
		// it (a stub's next question) finds the slot it just used.
		if s.forwards.remove(fw) {
			s.endForward(source)
		} else {
			// Ended for a source under its share, which has its slot:
			// SERVFAIL, whatever its work got if it started (a CNAME
			// chase cut short would answer NOERROR with no address).
			q.countLimited()
			q.limitedBy(limitPod)
			reply = dnswire.AppendErrorReply(nil, msg, &q.r, dnswire.RcodeServFail)
		}
		finish(reply)
	}()
}

func (q *slowQuery) finish(reply []byte) {
	s := q.s
	rcode := dnswire.HeaderRcode(reply)
	if q.badVers {
		rcode = rcodeBadVers
	}
	if q.pod == nil {
		q.pod = s.opts.Pods.Lookup(q.src.Addr())
	}
	took := s.clock() - q.start
	if !s.opts.NoRequestMetrics {
		cell := requestCell(q.r.Type, rcode, q.tcp, q.from)
		s.countAnswer(cell, s.metrics.namespaces.slotOf(q.pod))
		s.metrics.durations[q.from].observe(took, 1)
		if rcode == dnswire.RcodeServFail && (q.from == sourceUpstream || q.from == sourceCache) {
			s.metrics.servfails[q.servfailCause()].Add(1)
		}
	}
	if s.opts.AccessLog.Sampled() {
		s.logAccess(&q.r, q.src, q.tcp, q.pod, rcode, q.from, q.upstream, q.result, q.limit, took)
	}
}

// The access log's limit: what refused a query, or a lookup of it.
const (
	limitPod  = "pod"  // the asking pod's own bound, or its fair share of the node's
	limitNode = "node" // the node's bound, spent
)

// limitedBy records that the query's answer is a SERVFAIL of the
// resolver's own, made for limit: whatever an upstream gave is not it.
func (q *slowQuery) limitedBy(limit string) {
	q.from, q.upstream, q.result, q.limit = sourceNone, netip.AddrPort{}, "", limit
}

// answeredBy records that an upstream exchange (or the cache) gave part of
// the answer, or failed to: an exchange outweighs the cache.
func (q *slowQuery) answeredBy(o forward.Origin) {
	switch {
	case o.BytesRefused: // no upstream's reply: a SERVFAIL of ztdns's own
		q.refusedForBytes(q.source)
		q.limit = limitPod
	case !o.Cached:
		q.from, q.upstream, q.result = sourceUpstream, o.Upstream, o.Failure
	case q.from != sourceUpstream:
		q.from, q.upstream, q.result = sourceCache, o.Upstream, ""
	}
}

// slowNameBufs lend the slow path the buffer a query's name is read into
// (escaped, a name may take four times its 255 octets).
var slowNameBufs = sync.Pool{New: func() any { return new(nameBuf) }}

// parseOwnName is parse with r.Name a copy of its own, exactly as long as
// the name: a query waiting for its upstream holds its name's octets, not
// a whole nameBuf.
func parseOwnName(msg []byte, r *request) verdict {
	buf := slowNameBufs.Get().(*nameBuf)
	v := parse(msg, r, buf)
	r.Name = bytes.Clone(r.Name)
	slowNameBufs.Put(buf)
	return v
}

// answer produces the reply, or nil to drop the query.
func (q *slowQuery) answer(ctx context.Context) []byte {
	s, msg, r := q.s, q.msg, &q.r
	switch parseOwnName(msg, r) {
	case verdictDrop:
		return nil
	case verdictFormErr:
		metricQueries.formerr.Inc()
		return dnswire.AppendErrorReply(nil, msg, r, dnswire.RcodeFormErr)
	case verdictOther:
		return q.other(ctx)
	case verdictBadVers:
		metricQueries.formerr.Inc()
		q.badVers = true
		return dnswire.AppendBadVers(nil, msg, r)
	}
	// Zone transfers are refused, of the table's names and of forwarded
	// ones alike: a transfer is many messages, and a forward relays one.
	// The fast path hands them all here.
	if r.Type == dns.TypeAXFR || r.Type == dns.TypeIXFR {
		metricQueries.refused.Inc()
		return dnswire.AppendErrorReply(nil, msg, r, dnswire.RcodeRefused)
	}
	if !r.Plain || (r.Class != dns.ClassINET && r.Class != dns.ClassANY) {
		return q.forward(ctx)
	}
	pod := s.opts.Pods.Lookup(q.src.Addr())
	q.pod, q.families = pod, familiesOf(pod)
	if pod.Uncaptured() && s.captureSlot(q.local) {
		// Released, on a socket connected while captured: what its own
		// nameserver says (Options.CaptureSlot).
		return q.forward(ctx)
	}
	var ns string
	if pod != nil {
		ns = pod.Namespace
	}
	tbl := s.table.Load()
	// r.Name is the query's own (parseOwnName), never changed, and Resolve
	// keeps no reference to it: no copy into a string.
	res := tbl.Resolve(unsafe.String(unsafe.SliceData(r.Name), len(r.Name)), ns)
	res.Restrict(q.families)
	if res.Forwards(r.Type) {
		return q.forward(ctx)
	}
	if res.Entry == nil {
		if s.opts.Autopath && pod != nil {
			if out := q.autopath(ctx, pod, tbl); out != nil {
				return out
			}
		}
		return q.forward(ctx)
	}
	req := new(dns.Msg)
	if err := req.Unpack(msg); err != nil {
		metricQueries.formerr.Inc()
		return dnswire.AppendErrorReply(nil, msg, r, dnswire.RcodeFormErr)
	}
	reply := replyTo(req, r)
	owner := req.Question[0].Name
	if res.Alias != "" {
		// A search-list expansion of a known name: point the client at the
		// name it meant, spelled as it spelled it. res.Alias is the raw name
		// and owner miekg's presentation form, which escapes some octets
		// the fast path lets through ('(', '@', '"', …): cut at the same
		// label, not at the same length.
		alias := leadingLabels(owner, strings.Count(res.Alias, "."))
		reply.Answer = append(reply.Answer, cname(owner, alias, res.Entry.TTL()))
		owner = alias
	}
	q.chase(ctx, reply, res, owner, tbl)
	return q.localReply(reply, metricQueries.local)
}

// localReply ends a reply the table answered, as answer and autopath
// built it and chase filled it: nil when it needs an upstream (offline:
// slow runs the query again), otherwise counted with outcome (local or
// autopath, of ztdns_resolver_queries_total), answered from the table
// unless an upstream or the cache gave part of it, and packed.
func (q *slowQuery) localReply(reply *dns.Msg, outcome prometheus.Counter) []byte {
	if q.needsUpstream {
		return nil
	}
	outcome.Inc()
	if q.from == sourceNone {
		q.from = sourceTable
	}
	return q.pack(reply)
}

// chase appends the records res answers for the question type, following
// an ExternalName alias as kube-dns does, which answers it in Istio (istiod
// sends ztunnel no ExternalName Service): through the table's Services
// and, for any other name (a ServiceEntry host's included), upstream. The
// reply stays authoritative, as CoreDNS's is: ztdns owns the name asked,
// the CNAME's owner. When the last name has no records of
// the type, the authority section gets its zone's SOA (RFC 2308 2.2): the
// table's for a local name, the upstream's for one resolved there. A chain
// that comes back to a name of its own (an ExternalName naming itself,
// a → b → a) answers nothing but that SOA, as CoreDNS drops a loop's
// CNAMEs: NODATA, not the same CNAMEs over and over.
func (q *slowQuery) chase(ctx context.Context, reply *dns.Msg, res table.Result, owner string, tbl *table.Table) {
	start, first := len(reply.Answer), owner
	var seen [maxChain]*table.Entry
	for i := range maxChain {
		seen[i] = res.Entry
		if !res.Chases(q.r.Type) {
			rrs := res.Records(owner, q.r.Type, res.Entry.TTL(), q.r.ID)
			if len(rrs) == 0 {
				reply.Ns = append(reply.Ns, tbl.SOA(owner, res.Entry.TTL()))
			}
			reply.Answer = append(reply.Answer, rrs...)
			return
		}
		alias := res.Entry.Alias
		reply.Answer = append(reply.Answer, cname(owner, alias, tbl.TTL()))
		owner = alias
		next := table.Result{Entry: tbl.FindService(alias)}
		if next.Entry != nil {
			if slices.Contains(seen[:i+1], next.Entry) {
				reply.Answer = reply.Answer[:start]
				reply.Ns = append(reply.Ns, tbl.SOA(first, tbl.TTL()))
				return
			}
			res = next
			continue
		}
		// The target lives outside: resolve it so clients that do not chase
		// CNAMEs themselves (glibc's stub among them) get addresses.
		up, err := q.lookupUpstream(ctx, owner, q.tcp, false)
		if err == nil && (up.Rcode == dns.RcodeSuccess || up.Rcode == dns.RcodeNameError) {
			reply.Answer = append(reply.Answer, up.Answer...)
			if len(up.Answer) == 0 {
				reply.Ns = append(reply.Ns, up.Ns...)
			}
		}
		return
	}
}

// autopath answers a search-list expansion of a name the table does not know
// in one round trip: it walks the rest of the pod's search list itself and
// answers with a CNAME to the first name that exists (CoreDNS's autopath). A
// name exists when its upstream says NOERROR, records of the asked type or
// not: as CoreDNS does, only NXDOMAIN moves on to the next candidate, so that
// one name is not NXDOMAIN for one type and a CNAME for another (RFC 8020
// has caches deny every type below an NXDOMAIN). It returns nil to fall back
// to forwarding the query as it is, as it does when a lookup fails and when
// no candidate exists.
func (q *slowQuery) autopath(ctx context.Context, pod *podcache.Pod, tbl *table.Table) []byte {
	r := &q.r
	// The first search domain must be under the cluster domain (below), and
	// the name asked under it: a name outside the cluster domain, most of
	// what is forwarded, is let go before a search list is built for it.
	if d := tbl.Domain(); d != "" && !strictlyUnder(unsafe.String(unsafe.SliceData(r.Name), len(r.Name)), d) {
		return nil
	}
	search := searchList(pod, tbl.Domain(), q.s.opts.NodeSearch)
	if len(search) == 0 {
		return nil
	}
	qname := string(r.Name)
	first := dns.CanonicalName(search[0])
	// Only the table can say the first expansion does not exist: a list
	// that starts with a node's domain (dnsPolicy Default) is the pod's
	// resolver's to walk.
	if len(qname) <= len(first)+1 || !strings.HasSuffix(qname, "."+first) || !dns.IsSubDomain(tbl.Domain(), first) {
		return nil
	}
	req := new(dns.Msg)
	if err := req.Unpack(q.msg); err != nil {
		return nil
	}
	owner := req.Question[0].Name
	base := owner[:len(owner)-len(first)] // keeps the client's case and a trailing dot
	// answerWith answers with the CNAME to target and what its upstream
	// said of it: its records, or for NODATA its authority section (the
	// target zone's SOA, RFC 2308 2.2), as chase does for an ExternalName.
	// It keeps the upstream's AD, which the forwarder leaves only for a
	// client that asked with DO or AD (lookupUpstream asks as it did), as
	// for a forwarded reply.
	answerWith := func(target string, up *dns.Msg) []byte {
		reply := replyTo(req, r)
		reply.Authoritative = false
		reply.AuthenticatedData = up.AuthenticatedData
		reply.Answer = append([]dns.RR{cname(owner, target, tbl.TTL())}, up.Answer...)
		if len(up.Answer) == 0 {
			reply.Ns = up.Ns
		}
		metricQueries.autopath.Inc()
		return q.pack(reply)
	}
	for _, d := range search[1:] {
		cand := base + dns.CanonicalName(d)
		if dns.IsSubDomain(tbl.Domain(), strings.ToLower(cand)) {
			if e := tbl.Find(strings.ToLower(cand), pod.Namespace); e != nil {
				res := table.Result{Entry: e}
				res.Restrict(q.families)
				if res.Entry == nil || e.ForwardsType(r.Type) {
					// The candidate's records are upstream (or, a host
					// without a VIP of the pod's family, its name is):
					// forward the query as it is.
					return nil
				}
				reply := replyTo(req, r)
				reply.Answer = append(reply.Answer, cname(owner, cand, tbl.TTL()))
				q.chase(ctx, reply, res, cand, tbl)
				return q.localReply(reply, metricQueries.autopath)
			}
			continue
		}
		up, err := q.lookupUpstream(ctx, cand, q.tcp, true) // gone, it is passed over
		switch {
		case err != nil || up.Rcode != dns.RcodeSuccess && up.Rcode != dns.RcodeNameError:
			// A failed lookup (SERVFAIL, refused for the pod's bytes, a
			// timeout) says nothing of whether the candidate exists: a
			// later one's answer would be wrong.
			return nil
		case up.Rcode == dns.RcodeSuccess:
			return answerWith(cand, up)
		}
	}
	up, err := q.lookupUpstream(ctx, base, q.tcp, false)
	if err == nil && up.Rcode == dns.RcodeSuccess {
		return answerWith(base, up)
	}
	// Every candidate is gone (or the bare name's lookup failed): the
	// query goes upstream as it is, as CoreDNS's autopath then writes the
	// reply to the name asked. Its denial is the cluster zone's, with
	// kube-dns's SOA and negative TTL, not the bare name's zone's copied
	// onto a name of another (a cache would keep a Service created
	// meanwhile denied for that zone's TTL), nor that zone's AD on a
	// denial of ztdns's own; and a name kube-dns knows is answered.
	return nil
}

// strictlyUnder reports whether name is a name below zone (both fully
// qualified and lower case), without allocating.
func strictlyUnder(name, zone string) bool {
	return len(name) > len(zone) && strings.HasSuffix(name, zone) && name[len(name)-len(zone)-1] == '.'
}

// searchList is the pod's search list as kubelet writes it, the node's
// domains where its dnsPolicy puts them; a pod only the runtime knows so
// far is taken for a ClusterFirst one.
func searchList(pod *podcache.Pod, domain string, node []string) []string {
	spec := pod.Spec
	if spec == nil {
		spec = &model.Pod{Namespace: pod.Namespace}
	}
	return spec.SearchList(strings.TrimSuffix(domain, "."), node)
}

// other answers a query of another opcode than QUERY. NOTIFY and UPDATE
// with one question (UPDATE's zone) are relayed as they came: not ours to
// judge. Either with none, several, or records that do not parse gets
// FORMERR, as unbound and CoreDNS answer such a NOTIFY and RFC 2136 3.1.1
// such an UPDATE: a forward needs the one question to match the reply to.
// The other opcodes (IQUERY,
// STATUS, DSO and the unassigned) get NOTIMP, as the upstreams answer
// them, and DSO requires of a server that does not implement it (RFC 8490
// 5.1): a relay could not tell one DSO message's reply from another's.
// Neither is asked of an upstream; both count with formerr.
func (q *slowQuery) other(ctx context.Context) []byte {
	r := &q.r
	switch op := r.Opcode(); {
	case op != dnswire.OpcodeNotify && op != dnswire.OpcodeUpdate:
		metricQueries.formerr.Inc()
		return dnswire.AppendErrorReply(nil, q.msg, r, dnswire.RcodeNotImp)
	case r.Len == 0: // set only when the query parsed
		metricQueries.formerr.Inc()
		return dnswire.AppendErrorReply(nil, q.msg, r, dnswire.RcodeFormErr)
	}
	return q.forward(ctx)
}

// forward relays the query to the pod's upstreams. Offline, it answers
// only what the forwarder's cache holds fresh (appended to q.out), as
// ForwardFrom would answer it from there, of a large reply only the
// records a UDP client's buffer can take (firstRecords), which fitUDP
// cuts as it would cut the whole; anything else needs an upstream, as
// does a query a lookup of which needed one already, or whose lookups
// read maxOfflineBytes (autopath falling back to forwarding: online, the
// lookup may answer).
func (q *slowQuery) forward(ctx context.Context) []byte {
	s, msg, r := q.s, q.msg, &q.r
	upstreams := q.upstreams()
	noUpstream := len(upstreams) == 0 || s.opts.Forwarder == nil
	var (
		out  []byte
		from forward.Origin
	)
	if q.offline {
		ok := false
		if !q.needsUpstream && !noUpstream && q.offlineBytes < maxOfflineBytes {
			n, room := q.firstRecords()
			out, from, ok = s.opts.Forwarder.AppendCachedFirst(q.out, msg, upstreams, q.askingSource(), n, room)
		}
		if !ok {
			q.needsUpstream = true
			return nil
		}
	}
	metricQueries.forwarded.Inc()
	// The forward's reply is the whole answer: an autopath candidate's
	// lookup answered before it is not where this reply came from.
	q.from, q.upstream, q.result, q.limit = sourceNone, netip.AddrPort{}, "", ""
	if !q.offline {
		if noUpstream {
			q.result = forward.FailureNoUpstream
			return dnswire.AppendErrorReply(nil, msg, r, dnswire.RcodeServFail)
		}
		var err error
		if out, from, err = s.opts.Forwarder.ForwardFrom(ctx, msg, q.tcp, upstreams); err != nil {
			s.logs.forwardFailed.Log(s.log, slog.LevelDebug, "forward failed", "client", q.src, "err", err)
			return dnswire.AppendErrorReply(nil, msg, r, dnswire.RcodeServFail)
		}
	}
	q.answeredBy(from) // a SERVFAIL for the source's bytes: from "none", counted
	if !q.tcp && len(out) > r.UDPLimit() && r.End > 0 {
		return q.fitUDP(out)
	}
	return out
}

// upstreams are where the query's misses go: its TCP connection's, or
// those of the address the datagram was sent to; looked up once a query.
func (q *slowQuery) upstreams() []netip.AddrPort {
	if !q.upsKnown {
		q.upsKnown = true
		if q.conn != nil {
			q.ups = q.conn.get(q.s, q.src, q.local)
		} else {
			q.ups, _ = q.s.upstreams(q.src, q.local)
		}
	}
	return q.ups
}

func (s *Server) upstreams(src, local netip.AddrPort) ([]netip.AddrPort, bool) {
	if s.opts.Upstreams == nil {
		return nil, false
	}
	return s.opts.Upstreams(src, local)
}

// cachedLookup is the reply the offline pass's lookup of name got from
// the forwarder's cache.
type cachedLookup struct {
	name  string
	tcp   bool
	reply []byte
	from  forward.Origin
}

// lookupUpstream asks the pod's upstreams one question of its own.
// Offline, it answers only from the forwarder's cache, and keeps the reply
// for the online pass, should another lookup need an upstream: a hit is
// counted once, where it was made. Past maxOfflineLookups, or once the
// lookups read maxOfflineBytes, a lookup needs an upstream whatever the
// cache holds. Its callers carry only the reply's answer and authority
// records (and its header) into a reply of the query's, which holds at
// most firstRecords: only those are copied from the cache and decoded;
// none of an NXDOMAIN when the caller reads only its rcode (nxRcodeOnly:
// an autopath candidate, passed over when gone).
func (q *slowQuery) lookupUpstream(ctx context.Context, name string, tcp, nxRcodeOnly bool) (*dns.Msg, error) {
	if q.offline {
		if q.offlineLookups == maxOfflineLookups || q.offlineBytes >= maxOfflineBytes {
			q.needsUpstream = true
		}
		if q.needsUpstream {
			return nil, errNeedsUpstream // a lookup before needed one, or made the last allowed: the answer is the online pass's
		}
		q.offlineLookups++
	}
	s, r := q.s, &q.r
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), r.Type)
	// The client's AD and DO: the forwarder keeps the upstream's AD in the
	// reply only for a client that set either (RFC 6840 5.8).
	m.AuthenticatedData = r.Flags&dnswire.FlagAD != 0
	if r.EDNS {
		m.SetEdns0(dnswire.EDNSUDPSize, r.DO)
	}
	wire, err := m.Pack()
	if err != nil {
		return nil, err
	}
	upstreams := q.upstreams()
	if len(upstreams) == 0 || s.opts.Forwarder == nil {
		if q.offline {
			q.needsUpstream = true
			return nil, errNeedsUpstream
		}
		return nil, errNoUpstream
	}
	var (
		out  []byte
		from forward.Origin
	)
	n, room := q.firstRecords()
	if i := slices.IndexFunc(q.cachedLookups, func(l cachedLookup) bool { return l.name == name && l.tcp == tcp }); i >= 0 {
		out, from = q.cachedLookups[i].reply, q.cachedLookups[i].from
	} else if q.offline {
		ok := false
		if out, from, ok = s.opts.Forwarder.AppendCachedFirst(nil, wire, upstreams, q.askingSource(), n, room); !ok {
			q.needsUpstream = true
			return nil, errNeedsUpstream
		}
		q.offlineBytes += len(out)
		q.cachedLookups = append(q.cachedLookups, cachedLookup{name: name, tcp: tcp, reply: out, from: from})
	} else if out, from, err = s.opts.Forwarder.ForwardFrom(ctx, wire, tcp, upstreams); err != nil {
		return nil, err
	}
	q.answeredBy(from)
	if nxRcodeOnly && dnswire.HeaderRcode(out) == dnswire.RcodeNXDomain {
		n = 0 // the OPT record stays: Unpack reads the whole rcode
	}
	first, err := dnswire.FirstAnswersIn(out, n, room)
	if err != nil {
		return nil, err
	}
	resp := new(dns.Msg)
	if err := resp.Unpack(first); err != nil {
		return nil, err
	}
	if resp.Truncated && !tcp {
		return q.lookupUpstream(ctx, name, true, nxRcodeOnly)
	}
	return resp, nil
}

// firstRecords is how much of a reply from the forwarder (its own, or
// one a lookup carries into it) the query reads: at most n records
// besides the OPT record, one more than the cut of its reply to the
// client's UDP buffer or a TCP message keeps, and none past the first at
// which they take more than room octets packed as small as they can be
// (firstRead), so that the cut of those drops a record, and sets TC,
// where the cut of the whole would, and keeps the same records. A reply
// of a few huge records (100 TXT records of 600 octets) is read as far
// as its first two for a buffer of 1,232 octets. Whatever follows them is
// neither copied nor decoded.
func (q *slowQuery) firstRecords() (n, room int) { return firstRead(replyRoom(&q.r, q.tcp)) }

type constError string

func (e constError) Error() string { return string(e) }

const (
	errNoUpstream    = constError("no upstream nameserver for this client")
	errNeedsUpstream = constError("the answer needs an upstream")
)

// replyTo starts an authoritative reply to req.
func replyTo(req *dns.Msg, r *request) *dns.Msg {
	reply := new(dns.Msg)
	reply.SetReply(req)
	reply.Authoritative = true
	reply.RecursionAvailable = true
	if r.EDNS {
		reply.SetEdns0(dnswire.EDNSUDPSize, r.DO)
	}
	return reply
}

// leadingLabels returns the first n labels of name, in presentation form,
// with the dot that ends the last.
func leadingLabels(name string, n int) string {
	off := 0
	for range n {
		off, _ = dns.NextLabel(name, off)
	}
	return name[:off]
}

func cname(owner, target string, ttl uint32) dns.RR {
	return &dns.CNAME{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: ttl}, Target: target}
}
