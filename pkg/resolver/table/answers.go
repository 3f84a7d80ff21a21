package table

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/dnswire"
)

// Answers are written straight from an entry's fields: every answer
// record's owner name is dnswire.QuestionPointer (the question name at
// offset 12), so the reply repeats the name exactly as the client spelled
// it. Other owners are pointers too, or names: a NODATA's SOA points at
// its zone's labels in the question (appendSOA), and an SRV answer's
// additional records at their target's name in the SRV record that names
// it (appendSRVExtra). An address record is 12 fixed bytes and the
// address, as cheap to write as to copy, so the table keeps no prepared
// wire data.

// AppendAnswer appends the answer to qtype to out, a reply whose header
// starts at out[hdr] and whose question (the name at offset 12 of the
// reply, which every owner points at) is written, and sets the header's
// record counts. A name without records of the type is NODATA: the zone's
// SOA goes in the authority section, so that caches in front of the client
// can keep the negative answer (RFC 2308 3). ANY gets every record of the
// name (RFC 8482 allows less; all is still small here). rot rotates a set
// of several addresses, so that clients do not all pick the same first one
// (kube-dns's loadbalance and Istio's proxy shuffle them too): the query's
// ID gives each query its own order without a shared counter.
//
// room is the most bytes the reply (out[hdr:]) may take. Answer records
// that would go past it are left out, as many as fit are kept, and the
// header gets TC (as miekg's Msg.Truncate, which CoreDNS applies to every
// reply); truncated reports it. An SRV answer's additional records (its
// targets' addresses) go in only where they fit, and never cause TC, where
// Msg.Truncate, which cannot tell which records a reply needs, sets it for
// any left out: RFC 2181 9 says TC is not to be set for what additional
// section processing could not fit, and a client that gets TC drops the
// reply and asks again over TCP, for an answer it already has whole.
func (r *Result) AppendAnswer(out []byte, hdr int, qtype uint16, rot uint16, room int) (_ []byte, truncated bool) {
	if own, ok := r.ownSRV(qtype); ok {
		return own.AppendAnswer(out, hdr, qtype, rot, room)
	}
	e := r.Entry
	ttl := e.ttl
	start := len(out) // where the answer section starts
	w := answer{out: out, end: hdr + room}
	switch {
	case r.srv != nil:
		switch qtype {
		case dns.TypeSRV, dns.TypeANY:
			if r.srv.records == nil {
				w.srv(ttl, SRV{Port: r.srv.port, Target: e.Name})
			}
			for _, s := range r.srv.records {
				w.srv(ttl, s)
			}
		case dns.TypeA, dns.TypeAAAA:
			// CoreDNS answers the Service's addresses for a port it has:
			// the ClusterIPs, or the addresses of the endpoints the SRV
			// records name.
			r.appendSRVAddrs(&w, qtype, ttl, rot)
		}
	case r.owners.one != nil:
		if qtype == dns.TypePTR || qtype == dns.TypeANY {
			for _, o := range r.owners.many[min(1, len(r.owners.many)):] { // the first is e, last
				w.nameRR(dns.TypePTR, ttl, o.Name)
			}
			w.nameRR(dns.TypePTR, ttl, e.Name)
		}
	case qtype == dns.TypeANY:
		w.addrs(r.family(dns.TypeA), ttl, 0)
		w.addrs(r.family(dns.TypeAAAA), ttl, 0)
		if e.Alias != "" {
			w.nameRR(dns.TypeCNAME, ttl, e.Alias)
		}
		if set := e.ownSRV(); set != nil {
			for _, s := range set.recordsOf(e) {
				w.srv(ttl, s)
			}
		}
	case qtype == dns.TypeA, qtype == dns.TypeAAAA:
		w.addrs(r.family(qtype), ttl, rot)
	case qtype == dns.TypeCNAME:
		if e.Alias != "" {
			w.nameRR(dns.TypeCNAME, ttl, e.Alias)
		}
	}
	out = w.out
	dnswire.SetANCount(out[hdr:], w.n)
	switch {
	case w.cut:
		out[hdr+2] |= dnswire.FlagTC >> 8
	case w.n == 0 && r.t != nil:
		out = r.t.appendSOA(out, r.t.zoneStart(r.qname), ttl)
		dnswire.SetNSCount(out[hdr:], 1)
	case qtype == dns.TypeSRV && r.srv != nil:
		out = r.appendSRVExtra(out, hdr, start-hdr, w.end, ttl)
	}
	return out, w.cut
}

// ownSRV is r answering SRV at an endpoint's own name: r with the set of
// the name's own records (Entry.ownSRV), which it answers as it answers
// one of the Service's SRV names, the targets' addresses added; false for
// any other query.
func (r *Result) ownSRV(qtype uint16) (Result, bool) {
	if qtype != dns.TypeSRV || r.srv != nil || r.owners.one != nil {
		return Result{}, false
	}
	set := r.Entry.ownSRV()
	if set == nil {
		return Result{}, false
	}
	own := *r
	own.srv = set
	return own, true
}

// answer is the answer section being written: records are appended to out
// while they fit before end; n counts them, cut says one did not fit (and
// none is written after it).
type answer struct {
	out []byte
	end int
	n   uint16
	cut bool
}

// fits reports whether a record of size bytes can be written.
func (w *answer) fits(size int) bool {
	if w.cut || len(w.out)+size > w.end {
		w.cut = true
		return false
	}
	w.n++
	return true
}

// addrs appends the A or AAAA records of addrs (of one family), starting
// with the rot-th and wrapping around, as many as fit: a set cut short
// starts at the rotation point too, so that clients that get only part of
// it (without EDNS, 29 IPv4 addresses) do not all get the same part.
func (w *answer) addrs(addrs []netip.Addr, ttl uint32, rot uint16) {
	if len(addrs) == 0 || w.cut {
		return
	}
	n := len(addrs)
	if size := addrLen(addrs[0]); len(w.out)+n*size > w.end {
		w.cut = true
		n = max(0, (w.end-len(w.out))/size)
	}
	w.out = appendAddrs(w.out, addrs, n, ttl, rot)
	w.n += uint16(n)
}

func (w *answer) nameRR(rrtype uint16, ttl uint32, target string) {
	if w.fits(rrFixed + nameLen(target)) {
		w.out = appendNameRR(w.out, rrtype, ttl, target)
	}
}

func (w *answer) srv(ttl uint32, s SRV) {
	if w.fits(srvLen(s)) {
		w.out = appendSRV(w.out, ttl, s)
	}
}

// rrFixed is the length of a record before its data, its owner a
// compression pointer.
const rrFixed = 2 + 10

// addrLen is the length of the A or AAAA record of a.
func addrLen(a netip.Addr) int {
	if a.Is4() {
		return rrFixed + 4
	}
	return rrFixed + 16
}

// srvLen is the length of s's record.
func srvLen(s SRV) int { return rrFixed + 6 + nameLen(s.Target) }

// appendSRVAddrs writes the A or AAAA answer at an SRV name: the entry's
// own addresses for a set that points at the entry (a Service's port),
// otherwise every address of the set's targets (a headless Service's
// endpoints), each target once, starting at the rot-th.
func (r *Result) appendSRVAddrs(w *answer, qtype uint16, ttl uint32, rot uint16) {
	recs := r.srv.records
	if recs == nil {
		w.addrs(r.family(qtype), ttl, rot)
		return
	}
	cut := int(uint32(rot) % uint32(len(recs)))
	for i := range recs {
		if t := r.targetAt(recs, (cut+i)%len(recs)); t != nil {
			w.addrs(t.family(qtype), ttl, 0)
		}
	}
}

// targetAt returns the entry recs[i] names, or nil when that is not found
// or the record before names it too: sorted, a target's records are
// together, so each target is taken once.
func (r *Result) targetAt(recs []SRV, i int) *Entry {
	if i > 0 && recs[i].Target == recs[i-1].Target {
		return nil
	}
	return r.target(recs[i].Target)
}

// target returns the entry an SRV record of the result's entry names: the
// entry itself, or one of its object's endpoint names.
func (r *Result) target(name string) *Entry {
	if name == r.Entry.Name {
		return r.Entry
	}
	if r.t == nil {
		return nil
	}
	b := r.t.lookup(name)
	for i := range b.len() {
		if e := b.at(i); e.src == r.Entry.src {
			return e
		}
	}
	return nil
}

// appendSRVExtra appends to the SRV answer (out[hdr:], whose records are
// all written, starting at offset at of the message) the additional
// section CoreDNS gives it: the A and AAAA records of each target, as many
// as fit before end. Each is owned by a compression pointer to its
// target's name in the SRV record that names it, while that lies within a
// pointer's reach.
func (r *Result) appendSRVExtra(out []byte, hdr, at, end int, ttl uint32) []byte {
	recs := r.srv.records
	if recs == nil {
		recs = []SRV{{Port: r.srv.port, Target: r.Entry.Name}} // stays on the stack
	}
	var n uint16
	for i, s := range recs {
		name := at + rrFixed + 6 // the target in the record's data
		at += srvLen(s)
		t := r.targetAt(recs, i)
		if t == nil {
			continue
		}
		owner, ownerLen := dnswire.Pointer(name), 2
		if name >= 0x4000 {
			owner, ownerLen = 0, nameLen(s.Target)
		}
		for _, a := range t.Addrs {
			size := ownerLen + addrLen(a) - 2
			if len(out)+size > end {
				dnswire.AddARCount(out[hdr:], n)
				return out
			}
			out = appendExtraAddr(out, owner, s.Target, ttl, a)
			n++
		}
	}
	dnswire.AddARCount(out[hdr:], n)
	return out
}

// appendExtraAddr appends the A or AAAA record of a owned by owner, a
// compression pointer, or when 0 by name written out.
func appendExtraAddr(out []byte, owner uint16, name string, ttl uint32, a netip.Addr) []byte {
	if owner == 0 {
		out = dnswire.AppendName(out, name)
	} else {
		out = binary.BigEndian.AppendUint16(out, owner)
	}
	if a.Is4() {
		b := a.As4()
		return append(dnswire.AppendRRFixed(out, dns.TypeA, dns.ClassINET, ttl, 4), b[:]...)
	}
	b := a.As16()
	return append(dnswire.AppendRRFixed(out, dns.TypeAAAA, dns.ClassINET, ttl, 16), b[:]...)
}

// appendAddrs appends n (at most len(addrs)) of the A or AAAA records of
// addrs (of one family), starting with the rot-th and wrapping around.
func appendAddrs(out []byte, addrs []netip.Addr, n int, ttl uint32, rot uint16) []byte {
	if len(addrs) < 2 { // the usual case: no rotation, no division
		for _, a := range addrs[:n] {
			out = appendAddr(out, ttl, a)
		}
		return out
	}
	cut := dnswire.RotationStart(rot, len(addrs))
	head := addrs[cut:]
	if n < len(head) {
		head = head[:n]
	}
	for _, a := range head {
		out = appendAddr(out, ttl, a)
	}
	for _, a := range addrs[:n-len(head)] {
		out = appendAddr(out, ttl, a)
	}
	return out
}

// appendAddr appends the A or AAAA record of a, in a few word-sized
// stores: the fast path writes one for every address it answers.
func appendAddr(out []byte, ttl uint32, a netip.Addr) []byte {
	// Owner 0xC00C, type, class IN, the TTL's high half; then its low half,
	// the rdata length and, for A, the address.
	const a4, a6 = uint64(dnswire.QuestionPointer)<<48 | uint64(dns.TypeA)<<32 | uint64(dns.ClassINET)<<16,
		uint64(dnswire.QuestionPointer)<<48 | uint64(dns.TypeAAAA)<<32 | uint64(dns.ClassINET)<<16
	if a.Is4() {
		b := a.As4()
		out = binary.BigEndian.AppendUint64(out, a4|uint64(ttl>>16))
		return binary.BigEndian.AppendUint64(out, uint64(ttl&0xffff)<<48|4<<32|uint64(binary.BigEndian.Uint32(b[:])))
	}
	b := a.As16()
	out = binary.BigEndian.AppendUint64(out, a6|uint64(ttl>>16))
	out = binary.BigEndian.AppendUint32(out, (ttl&0xffff)<<16|16)
	out = binary.BigEndian.AppendUint64(out, binary.BigEndian.Uint64(b[:8]))
	return binary.BigEndian.AppendUint64(out, binary.BigEndian.Uint64(b[8:]))
}

// appendNameRR appends one record whose rdata is just a name (PTR, CNAME),
// the name uncompressed.
func appendNameRR(out []byte, rrtype uint16, ttl uint32, target string) []byte {
	out = appendHeader(out, rrtype, ttl, nameLen(target))
	return dnswire.AppendName(out, target)
}

// appendSRV appends one SRV record, its target uncompressed.
func appendSRV(out []byte, ttl uint32, s SRV) []byte {
	out = appendHeader(out, dns.TypeSRV, ttl, 6+nameLen(s.Target))
	out = append(out, 0, 0, 0, 100, byte(s.Port>>8), byte(s.Port)) // priority 0, weight 100 (kube-dns's)
	return dnswire.AppendName(out, s.Target)
}

// Forwards reports whether a query of type qtype for the result's name is
// not answered here but forwarded: a ServiceEntry host (a name under its
// wildcard, a search-list expansion of either) has only the addresses of
// its A and AAAA records here. Its other records (TXT, MX, SRV, CAA, …)
// are the real name's, upstream: Istio's proxy and ztunnel forward every
// other type, ANY included. A reverse name (PTR) of its address is the
// table's own. So is a Service's name reached through a short form ("web.",
// "web.ns.", and their search-list expansions): its A and AAAA records are
// the table's, as ztunnel answers them, and its other types forwarded, as
// ztunnel forwards them and as kube-dns, which has no such name, forwards
// it. The Service's full name keeps kube-dns's NODATA with the cluster
// zone's SOA, not a denial in a zone named after the short form.
func (r *Result) Forwards(qtype uint16) bool {
	if r.Entry == nil || r.owners.one != nil || qtype == dns.TypeA || qtype == dns.TypeAAAA {
		return false
	}
	return r.Entry.ForwardsType(qtype) || r.viaShortForm()
}

// viaShortForm reports whether r's name is another than its entry's own
// (Resolve's qname, or the alias of a search-list expansion), an SRV name
// aside: reached through a short form (a wildcard's names are
// ServiceEntries', which ForwardsType forwards already).
func (r *Result) viaShortForm() bool {
	if r.srv != nil {
		return false
	}
	return r.Alias != "" || r.qname != "" && r.qname != r.Entry.Name
}

// ForwardsType reports whether a query of type qtype at e's name is
// forwarded (see Result.Forwards).
func (e *Entry) ForwardsType(qtype uint16) bool {
	return e.kind == kindServiceEntry && qtype != dns.TypeA && qtype != dns.TypeAAAA
}

// Chases reports whether answering qtype means following the entry's
// ExternalName alias (the CNAME alone answers only CNAME queries).
func (r *Result) Chases(qtype uint16) bool {
	return r.Entry.Alias != "" && r.srv == nil && r.owners.one == nil && qtype != dns.TypeCNAME
}

// Records returns the answer records AppendAnswer writes, in its order,
// owned by owner, for the replies that cannot be a plain copy (CNAME
// chains, search-list expansions): TestRecordsAreAppendAnswers holds the
// two to the same records.
func (r *Result) Records(owner string, qtype uint16, ttl uint32, rot uint16) []dns.RR {
	if own, ok := r.ownSRV(qtype); ok {
		return own.Records(owner, qtype, ttl, rot)
	}
	e := r.Entry
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: owner, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
	}
	addrs := func(out []dns.RR, as []netip.Addr, rot uint16) []dns.RR {
		start := len(out)
		for _, a := range as {
			if a.Is4() {
				out = append(out, &dns.A{Hdr: hdr(dns.TypeA), A: a.AsSlice()})
			} else {
				out = append(out, &dns.AAAA{Hdr: hdr(dns.TypeAAAA), AAAA: a.AsSlice()})
			}
		}
		rotate(out[start:], rot)
		return out
	}
	name := func(out []dns.RR, rrtype uint16, target string) []dns.RR {
		if rrtype == dns.TypePTR {
			return append(out, &dns.PTR{Hdr: hdr(dns.TypePTR), Ptr: target})
		}
		return append(out, &dns.CNAME{Hdr: hdr(dns.TypeCNAME), Target: target})
	}
	var out []dns.RR
	switch {
	case r.srv != nil:
		switch qtype {
		case dns.TypeSRV, dns.TypeANY:
			out = srvRRs(out, r.srv, e, hdr(dns.TypeSRV))
		case dns.TypeA, dns.TypeAAAA: // as appendSRVAddrs
			recs := r.srv.records
			if recs == nil {
				return addrs(out, r.family(qtype), rot)
			}
			cut := int(uint32(rot) % uint32(len(recs)))
			for i := range recs {
				if t := r.targetAt(recs, (cut+i)%len(recs)); t != nil {
					out = addrs(out, t.family(qtype), 0)
				}
			}
		}
	case r.owners.one != nil:
		if qtype == dns.TypePTR || qtype == dns.TypeANY {
			for _, o := range r.owners.many[min(1, len(r.owners.many)):] { // the first is e, last
				out = name(out, dns.TypePTR, o.Name)
			}
			out = name(out, dns.TypePTR, e.Name)
		}
	case qtype == dns.TypeANY:
		out = addrs(out, r.family(dns.TypeA), 0)
		out = addrs(out, r.family(dns.TypeAAAA), 0)
		if e.Alias != "" {
			out = name(out, dns.TypeCNAME, e.Alias)
		}
		if set := e.ownSRV(); set != nil {
			out = srvRRs(out, set, e, hdr(dns.TypeSRV))
		}
	case qtype == dns.TypeA, qtype == dns.TypeAAAA:
		out = addrs(out, r.family(qtype), rot)
	case qtype == dns.TypeCNAME:
		if e.Alias != "" {
			out = name(out, dns.TypeCNAME, e.Alias)
		}
	}
	return out
}

// srvRRs appends the records of set, held by e, with header h.
func srvRRs(out []dns.RR, set *srvSet, e *Entry, h dns.RR_Header) []dns.RR {
	for _, s := range set.recordsOf(e) {
		out = append(out, &dns.SRV{Hdr: h, Priority: 0, Weight: 100, Port: s.Port, Target: s.Target})
	}
	return out
}

// rotate starts rrs at its rot-th record, as appendAddrs does, in place.
func rotate(rrs []dns.RR, rot uint16) {
	if len(rrs) < 2 {
		return
	}
	cut := dnswire.RotationStart(rot, len(rrs))
	copy(rrs, append(slices.Clone(rrs[cut:]), rrs[:cut]...))
}

// ownsPTR reports whether the entry's addresses' reverse names point at it.
func (e *Entry) ownsPTR() bool { return e.ptr && len(e.Addrs) > 0 }

// isEndpoint reports whether the entry is a headless Service's endpoint
// name (the Service's own name answers the same addresses but owns no PTR).
func (e *Entry) isEndpoint() bool { return e.addrSource == addrEndpointName }

// The SOA of a zone the table answers in, as CoreDNS's kubernetes plugin
// writes it: "ns.dns.<zone> hostmaster.<zone> serial 7200 1800 86400 ttl".
const (
	soaRefresh = 7200
	soaRetry   = 1800
	soaExpire  = 86400
	// soaMaxTTL caps the SOA record's own TTL (CoreDNS's 300).
	soaMaxTTL = 300
)

// appendSOA appends the SOA record of the zone that starts zone bytes into
// the question name, for a negative answer of TTL ttl (the entry's: a
// ServiceEntry host's is Istio's, not kube-dns's): the owner and the zone
// in both names are compression pointers into the question (a
// presentation-form offset is the wire offset of the same label).
func (t *Table) appendSOA(out []byte, zone int, ttl uint32) []byte {
	ptr := dnswire.Pointer(dnswire.HeaderLen + zone)
	out = dnswire.AppendRRHeader(out, ptr, dns.TypeSOA, dns.ClassINET, min(ttl, soaMaxTTL), 9+13+20)
	out = append(out, 2, 'n', 's', 3, 'd', 'n', 's')
	out = binary.BigEndian.AppendUint16(out, ptr)
	out = append(out, 10, 'h', 'o', 's', 't', 'm', 'a', 's', 't', 'e', 'r')
	out = binary.BigEndian.AppendUint16(out, ptr)
	for _, v := range [...]uint32{t.serial, soaRefresh, soaRetry, soaExpire, ttl} {
		out = binary.BigEndian.AppendUint32(out, v)
	}
	return out
}

// SOA returns the SOA record for the authority section of a negative answer
// about name (a name this table answers, spelled as the client spelled it),
// of TTL ttl (its entry's, Entry.TTL).
func (t *Table) SOA(name string, ttl uint32) dns.RR {
	name = dns.Fqdn(name)
	zone := name[t.zoneStart(strings.ToLower(name)):]
	return &dns.SOA{
		Hdr: dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: min(ttl, soaMaxTTL)},
		Ns:  "ns.dns." + zone, Mbox: "hostmaster." + zone,
		Serial: t.serial, Refresh: soaRefresh, Retry: soaRetry, Expire: soaExpire, Minttl: ttl,
	}
}

// zoneStart returns where the zone of a local name begins in it: the cluster
// domain for names in it, in-addr.arpa or ip6.arpa for reverse names (the
// zones kube-dns serves), and otherwise the name itself, which ztdns alone
// answers for (a ServiceEntry host, a short form).
func (t *Table) zoneStart(name string) int {
	switch {
	case inZone(name, t.domain):
		return len(name) - len(t.domain)
	case strings.HasSuffix(name, inAddrArpa):
		return len(name) - len(inAddrArpa) + 1
	case strings.HasSuffix(name, ip6Arpa):
		return len(name) - len(ip6Arpa) + 1
	}
	return 0
}

// appendHeader appends a record's owner (the question name), type, class,
// TTL and rdata length.
func appendHeader(w []byte, rrtype uint16, ttl uint32, rdlen int) []byte {
	return dnswire.AppendRRHeader(w, dnswire.QuestionPointer, rrtype, dns.ClassINET, ttl, uint16(rdlen))
}

// nameLen is the length of fqdn (validated, fully qualified) on the wire.
func nameLen(fqdn string) int { return len(fqdn) + 1 }
