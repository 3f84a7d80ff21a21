package resolver

// Truncation of the slow path's replies: a reply, forwarded or made here,
// is cut to the whole records that fit the client's UDP buffer or a TCP
// message, as CoreDNS cuts it, with TC when an answer or authority record
// is left out (RFC 2181 9), before it is held, counted and sent.

import (
	"log/slog"
	"slices"
	"strings"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/dnswire"
)

// replyRoom is the most octets a reply to r may take, the fast path's and
// the slow path's alike: a TCP message, or over UDP what the client's
// buffer takes (r.UDPLimit).
func replyRoom(r *request, tcp bool) int {
	if tcp {
		return maxTCPMessage
	}
	return r.UDPLimit()
}

// fitUDP cuts a forwarded reply larger than the client's UDP buffer to the
// whole records that fit, as CoreDNS's forward plugin does
// (request.Scrub), with TC when an answer or authority record is left out:
// additional records left out set none (RFC 2181 9), as BIND and unbound
// cut them. The cut is planned on the wire, without decoding the
// reply; where it drops records, the reply is decoded and cut compressed
// (compressedFit), as CoreDNS's is, and that is sent if it keeps more.
// CoreDNS compresses only a reply that does not fit otherwise, so what it
// answers ztdns over TCP, cached and then served to a client over UDP,
// keeps half the records cut as it came. Otherwise the wire cut is
// applied in place (the forwarder's reply is a copy of its own). One that
// does not parse becomes an empty reply with TC.
func (q *slowQuery) fitUDP(reply []byte) []byte {
	limit := q.r.UDPLimit()
	f, err := dnswire.PlanFit(reply, limit)
	if err != nil {
		return q.truncated()
	}
	q.cut = f.Truncated
	if f.Dropped {
		if out, tc := compressedFit(reply, limit, f.Kept()); out != nil {
			q.cut = tc
			return out
		}
	}
	return f.Apply(reply)
}

// compressedFit is reply cut to limit as miekg's Msg.Truncate cuts it
// (CoreDNS's server, for every reply), its names compressed, with TC when
// an answer or authority record is left out (truncateAndPack), which tc
// reports (TC the reply came with aside): the ID, flags, question (as the client spelled it) and OPT
// record (its options, an extended error among them) are the reply's. It
// is nil when the reply does not decode or pack within limit, or when the
// cut keeps no more records than kept, those that fit as the reply came
// (one that was compressed already): that cut is cheaper and changes
// nothing.
//
// Only the records that can fit are decoded (firstRead), and the first
// that cannot, so that the cut knows its section and its RRset: a cached
// reply of 64 KB, of many small records or a few huge ones, cut again for
// each UDP query of a pod, costs what one of limit octets does.
func compressedFit(reply []byte, limit, kept int) (out []byte, tc bool) {
	n, room := firstRead(limit)
	first, _, err := dnswire.FirstRecordsIn(reply, n, room)
	m := new(dns.Msg)
	if err != nil || m.Unpack(first) != nil {
		return nil, false
	}
	out, err = truncateAndPack(m, limit, kept)
	if out == nil || err != nil {
		return nil, false
	}
	was, _ := dnswire.ReadHeader(reply) // both parsed
	cut, _ := dnswire.ReadHeader(out)
	return out, cut.ANCount < was.ANCount || cut.NSCount < was.NSCount
}

// errTooLarge: a reply packs larger than its limit, even cut.
const errTooLarge = constError("the reply packs larger than its limit")

// truncateAndPack cuts m to the whole records that fit in size (miekg's
// Msg.Truncate, as CoreDNS's server cuts every reply), and packs it with
// its names compressed: after Truncate, which turns compression off for a
// reply that fits without it, as compressed it only gets smaller. TC is
// set when an answer or authority record is left out, and kept when m had
// it; Truncate sets it for any record, but additional records left out
// set none (RFC 2181 9), nor do RRSIGs among them (RFC 4035 3.1.1), and a
// client given TC throws the answer away and asks again over TCP. Cut in
// the additional section, it keeps whole RRsets (wholeExtra). It is nil,
// not packed, when the cut keeps no more than noBetter records (the OPT
// record counted), and fails with errTooLarge when the reply still packs
// larger than size.
func truncateAndPack(m *dns.Msg, size, noBetter int) ([]byte, error) {
	tc, an, ns := m.Truncated, len(m.Answer), len(m.Ns)
	extra := slices.DeleteFunc(slices.Clone(m.Extra), isOPT) // Truncate moves the OPT record last
	m.Truncate(size)
	m.Truncated = tc || len(m.Answer) < an || len(m.Ns) < ns
	wholeExtra(m, extra)
	if len(m.Answer)+len(m.Ns)+len(m.Extra) <= noBetter {
		return nil, nil
	}
	m.Compress = true
	out, err := m.Pack()
	if err == nil && len(out) > size {
		return nil, errTooLarge
	}
	return out, err
}

func isOPT(rr dns.RR) bool { return rr.Header().Rrtype == dns.TypeOPT }

// wholeExtra leaves out of m's additional section, cut from extra (its
// records before the cut, the OPT record aside), the records at its end
// that are of the RRset of the first left out, as BIND and unbound do:
// without TC, a client would take the part for the whole (RFC 2181 5).
func wholeExtra(m *dns.Msg, extra []dns.RR) {
	var opt dns.RR
	kept := m.Extra
	if n := len(kept); n > 0 && isOPT(kept[n-1]) {
		opt, kept = kept[n-1], kept[:n-1]
	}
	k := len(kept)
	if k == 0 || k >= len(extra) {
		return
	}
	left := extra[k].Header()
	for k > 0 {
		h := kept[k-1].Header()
		if h.Rrtype != left.Rrtype || h.Class != left.Class || !strings.EqualFold(h.Name, left.Name) {
			break
		}
		k--
	}
	m.Extra = kept[:k]
	if opt != nil {
		m.Extra = append(m.Extra, opt)
	}
}

// minPackedRR is the fewest octets a record takes packed, compressed or
// not: a root owner (a compression pointer takes 2), type, class, TTL and
// data length, and no data.
const minPackedRR = 1 + 10

// firstRead is what of any reply cut to limit the cut reads: its first
// records besides the OPT record, at most n, and none past the first at
// which they take more than room octets packed as small as they can be
// (dnswire.FirstRecordsIn). miekg's Msg.Truncate keeps whole records in
// order within room, what limit or 512 (dns.MinMsgSize), whichever is
// larger, leaves after the header, and at least minPackedRR octets each:
// n is one more than it can keep. Decoding those first records, the cut
// drops a record, and sets TC, where the cut of the whole does, and keeps
// the same records.
func firstRead(limit int) (n, room int) {
	room = max(limit, dns.MinMsgSize) - dnswire.HeaderLen
	return room/minPackedRR + 1, room
}

// pack serialises a slow-path reply, truncating like the fast path: to the
// records that fit in the client's UDP buffer or in a TCP message, with TC
// when an answer or authority record is left out (truncateAndPack, miekg's
// Msg.Truncate as CoreDNS's server cuts), before it is packed,
// so that what is held, counted and sent is the reply the client gets. A reply
// that does not pack is a SERVFAIL, logged at Debug as a failed forward
// is: what it holds comes from the query and the upstream's answer to
// names the pod chose, so a pod could repeat it at its query rate. The
// SERVFAIL still counts in ztdns_dns_requests_total.
func (q *slowQuery) pack(reply *dns.Msg) []byte {
	out, err := truncateAndPack(reply, replyRoom(&q.r, q.tcp), -1)
	q.cut = reply.Truncated // set when answers were dropped: replyTo's never has it
	switch {
	case err == errTooLarge && !q.tcp:
		return q.truncated()
	case err != nil:
		q.s.logs.packFailed.Log(q.s.log, slog.LevelDebug, "packing a reply failed", "client", q.src, "name", string(q.r.Name), "err", err)
		return dnswire.AppendErrorReply(nil, q.msg, &q.r, dnswire.RcodeServFail)
	}
	return out
}

// truncated is an empty UDP reply with TC, counted once it goes out
// (finishing): the last resort for a reply Truncate could not fit.
func (q *slowQuery) truncated() []byte {
	q.cut = true
	return dnswire.AppendTruncated(nil, q.msg, &q.r)
}
