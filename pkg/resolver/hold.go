package resolver

// Holding replies in the budget of replies in flight: a TCP reply holds
// its bytes, as its source's, until it is written (holdReply): a slow-path
// reply (finishing), and a table answer too large for the reader's buffer
// (holdAnswer; giveBack gives it back). A reply whose hold is refused
// becomes SERVFAIL; refusals counts, once per query, what of it was
// refused for its source.

import (
	"github.com/ztdns/ztdns/pkg/dnswire"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// holdReply holds n bytes of a TCP reply as source's, in the budget of
// replies in flight, until it is written (the caller gives them back). It
// returns "" when they are held, or the limit that refused them, which
// the reply's SERVFAIL names in the access log: limitPod over the
// source's bound or fair share, counted as the source's doing (counted's
// refusedForBytes); limitNode with the budget spent, counted as overload.
// counted nil counts nothing (the reply was a SERVFAIL already).
func (s *Server) holdReply(source *quota.Source, n int, counted *refusals) (limit string) {
	switch s.opts.Budget.TryTake(source, n) {
	case quota.Taken:
		return ""
	case quota.OverSource:
		if counted != nil {
			counted.refusedForBytes(source)
		}
		return limitPod
	}
	if counted != nil {
		metricQueries.overload.Inc()
	}
	return limitNode
}

// holdAnswer holds reply (out[len(buf):]), a TCP answer that took a buffer
// of its own (larger than a connection keeps: tcpKeepBuf), as its
// connection source's bytes of replies in flight, as a slow-path reply's
// are, until the reader has written it (giveBack): up to tcpWriteTimeout
// for a client that does not read. An answer whose hold is refused
// becomes SERVFAIL, written in buf, the reader's own, counted as
// holdReply counts a slow-path reply refused so, and limit is the limit
// that refused it ("": held).
func (s *Server) holdAnswer(out, buf, msg []byte, r *request, sc *scratch) (reply []byte, limit string) {
	n := len(out) - len(buf)
	var counted refusals
	if limit = s.holdReply(sc.conn, n, &counted); limit == "" {
		sc.held = n
		return out, ""
	}
	return dnswire.AppendErrorReply(buf, msg, r, dnswire.RcodeServFail), limit
}

// giveBack gives back what the answer the reader wrote held (holdAnswer).
func (s *Server) giveBack(sc *scratch) {
	if sc.held > 0 {
		s.opts.Budget.Give(sc.conn, sc.held)
		sc.held = 0
	}
}

// finishing wraps done so that the reply is held, then counted, timed and
// logged as what the client gets, before it is sent. Over TCP, a reply
// holds its bytes of the budget of replies in flight, as its source's,
// until it is written (a client that reads slowly holds it up to
// tcpWriteTimeout); done gets what gives them back (nil: nothing held), to
// call once the reply is sent or dropped.
//
// A reply whose hold is refused becomes SERVFAIL, counted and logged as
// holdReply says. A reply that was a SERVFAIL already is counted for
// neither: the hold changes nothing the client gets. One made as its
// bytes were refused as they were read was counted then; an upstream's
// own SERVFAIL is no refusal, and stays its upstream's (the log names the
// limit too): whose failure it is still counts
// (ztdns_resolver_forward_servfails_total), most of all with the node's
// budget spent.
func (q *slowQuery) finishing(done func(reply []byte, release func())) func(reply []byte) {
	return func(reply []byte) { done(q.conclude(reply)) }
}

// conclude is finishing's work on reply: it returns what is to be sent
// and what gives its hold back (nil: nothing held). Over UDP nothing is
// held, and reply is what is sent.
func (q *slowQuery) conclude(reply []byte) (out []byte, release func()) {
	if q.tcp && reply != nil {
		counted := &q.refusals
		if isServFail(reply) {
			counted = nil
		}
		budget, source, n := q.s.opts.Budget, q.source, len(reply)
		if limit := q.s.holdReply(source, n, counted); limit == "" {
			release = func() { budget.Give(source, n) }
		} else {
			reply = dnswire.AppendErrorReply(nil, q.msg, &q.r, dnswire.RcodeServFail) // q.r: parsed, the reply not nil
			if counted == nil {
				q.limit = limit
			} else {
				q.limitedBy(limit)
			}
		}
	}
	if len(reply) >= dnswire.HeaderLen {
		if q.cut && dnswire.HeaderFlags(reply)&dnswire.FlagTC != 0 { // not a SERVFAIL in its place
			metricTruncated[protoOf(q.tcp)].Inc()
		}
		q.finish(reply)
	}
	return reply, release
}

// refusals is what was counted of one query's refusals for its source,
// each once however many of its parts were refused or ended.
type refusals struct {
	// limited: counted forward_limited. bytesRefused: a reply of its was
	// refused for the source's bytes, and counted in the source's
	// bytesRefused.
	limited, bytesRefused bool
}

// refusedForBytes counts a reply of the query's refused for its source's
// bytes: a lookup's (a CNAME's target, autopath's candidates), its
// forward's, the reply waiting to be written to its TCP client, or a
// large table answer's. It is the pod's doing, as a forward over its
// bound is: it counts in `ztdns pods` and as forward_limited, once per
// query however many were.
func (c *refusals) refusedForBytes(source *quota.Source) {
	if !c.bytesRefused {
		c.bytesRefused = true
		source.CountBytesRefused()
	}
	c.countLimited()
}

// countLimited counts the query forward_limited, its source's doing:
// once, whatever of it was refused or ended.
func (c *refusals) countLimited() {
	if !c.limited {
		c.limited = true
		metricQueries.forwardLimited.Inc()
	}
}

// isServFail reports whether reply is a SERVFAIL.
func isServFail(reply []byte) bool {
	return len(reply) >= dnswire.HeaderLen && dnswire.HeaderRcode(reply) == dnswire.RcodeServFail
}
