package resolver

import (
	"context"
	"net/netip"
	"strings"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

const (
	typeCNAME = 5
	typeIXFR  = 251
	typeAXFR  = 252
	// maxChain bounds CNAME chains through the table (an ExternalName may
	// point at another local name, which may point further).
	maxChain = 8
	// extRcodeBadVers is BADVERS (16) as carried in the OPT record's upper
	// eight rcode bits (RFC 6891 6.1.3).
	extRcodeBadVers = 1
)

// answerSlow produces the reply for a query the fast path handed over, or nil
// to drop it.
func (s *Server) answerSlow(ctx context.Context, msg []byte, src, local netip.AddrPort, tcp bool) []byte {
	var r request
	switch parse(msg, &r, new(nameBuf)) {
	case verdictDrop:
		return nil
	case verdictFormErr:
		metricQueries.formerr.Inc()
		return appendErrorReply(nil, msg, &r, rcodeFormErr)
	case verdictOther: // NOTIFY, UPDATE, …: not ours to judge
		return s.forward(ctx, msg, &r, src, local, tcp)
	}
	if r.ednsVersion != 0 {
		metricQueries.formerr.Inc()
		out := appendHeader(nil, &r, 0, false, 1, 0, 1)
		out = append(out, msg[headerLen:r.qend]...)
		return appendOPT(out, &r, extRcodeBadVers)
	}
	if !r.plain || (r.qclass != classINET && r.qclass != classANY) {
		return s.forward(ctx, msg, &r, src, local, tcp)
	}
	pod := s.opts.Pods.Lookup(src.Addr())
	var ns string
	if pod != nil {
		ns = pod.Namespace
	}
	tbl := s.table.Load()
	res := tbl.Resolve(string(r.name), ns)
	if res.Entry == nil {
		if s.opts.Autopath && pod != nil {
			if out := s.autopath(ctx, msg, &r, pod, tbl, src, local, tcp); out != nil {
				return out
			}
		}
		return s.forward(ctx, msg, &r, src, local, tcp)
	}
	if r.qtype == typeAXFR || r.qtype == typeIXFR {
		metricQueries.refused.Inc()
		return appendErrorReply(nil, msg, &r, rcodeRefused)
	}
	req := new(dns.Msg)
	if err := req.Unpack(msg); err != nil {
		metricQueries.formerr.Inc()
		return appendErrorReply(nil, msg, &r, rcodeFormErr)
	}
	reply := replyTo(req, &r)
	owner := req.Question[0].Name
	if res.Alias != "" {
		// A search-list expansion of a known name: point the client at the
		// name it meant, spelled as it spelled it.
		alias := owner[:len(res.Alias)]
		reply.Answer = append(reply.Answer, cname(owner, alias, tbl.TTL()))
		owner = alias
	}
	s.chase(ctx, reply, res, owner, &r, tbl, ns, src, local, tcp)
	metricQueries.local.Inc()
	return s.pack(reply, msg, &r, tcp)
}

// chase appends the records res answers for the question type, following
// an ExternalName alias through the table and, for a name the table does not
// know, upstream. The reply stays authoritative, as CoreDNS's is: ztdns owns
// the name asked, the CNAME's owner. When the last name has no records of
// the type, the authority section gets its zone's SOA (RFC 2308 2.2): the
// table's for a local name, the upstream's for one resolved there.
func (s *Server) chase(ctx context.Context, reply *dns.Msg, res table.Result, owner string, r *request, tbl *table.Table, ns string, src, local netip.AddrPort, tcp bool) {
	for range maxChain {
		if !res.Chases(r.qtype) {
			rrs := res.Records(owner, r.qtype, tbl.TTL(), r.id)
			if len(rrs) == 0 {
				reply.Ns = append(reply.Ns, tbl.SOA(owner))
			}
			reply.Answer = append(reply.Answer, rrs...)
			return
		}
		alias := res.Entry.Alias
		reply.Answer = append(reply.Answer, cname(owner, alias, tbl.TTL()))
		owner = alias
		if next := tbl.Find(alias, ns); next != nil {
			res = table.Result{Entry: next}
			continue
		}
		// The target lives outside: resolve it so clients that do not chase
		// CNAMEs themselves (glibc's stub among them) get addresses.
		up, err := s.lookupUpstream(ctx, owner, r, src, local, tcp)
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
// answers with a CNAME to the first name that exists (CoreDNS's autopath). It
// returns nil to fall back to forwarding the query as it is.
func (s *Server) autopath(ctx context.Context, msg []byte, r *request, pod *podcache.Pod, tbl *table.Table, src, local netip.AddrPort, tcp bool) []byte {
	if len(pod.Search) == 0 {
		return nil
	}
	search := append(append([]string(nil), pod.Search...), s.opts.NodeSearch...)
	qname := string(r.name)
	first := dns.CanonicalName(search[0])
	if len(qname) <= len(first)+1 || !strings.HasSuffix(qname, "."+first) {
		return nil
	}
	req := new(dns.Msg)
	if err := req.Unpack(msg); err != nil {
		return nil
	}
	owner := req.Question[0].Name
	base := owner[:len(owner)-len(first)] // keeps the client's case and a trailing dot
	answerWith := func(target string, rrs []dns.RR, authoritative bool) []byte {
		reply := replyTo(req, r)
		reply.Authoritative = authoritative
		reply.Answer = append([]dns.RR{cname(owner, target, tbl.TTL())}, rrs...)
		metricQueries.autopath.Inc()
		return s.pack(reply, msg, r, tcp)
	}
	for _, d := range search[1:] {
		cand := base + dns.CanonicalName(d)
		if dns.IsSubDomain(tbl.Domain(), strings.ToLower(cand)) {
			if e := tbl.Find(strings.ToLower(cand), pod.Namespace); e != nil {
				reply := replyTo(req, r)
				reply.Answer = append(reply.Answer, cname(owner, cand, tbl.TTL()))
				s.chase(ctx, reply, table.Result{Entry: e}, cand, r, tbl, pod.Namespace, src, local, tcp)
				metricQueries.autopath.Inc()
				return s.pack(reply, msg, r, tcp)
			}
			continue
		}
		up, err := s.lookupUpstream(ctx, cand, r, src, local, tcp)
		if err == nil && up.Rcode == dns.RcodeSuccess && len(up.Answer) > 0 {
			return answerWith(cand, up.Answer, false)
		}
	}
	up, err := s.lookupUpstream(ctx, base, r, src, local, tcp)
	switch {
	case err != nil:
		return nil
	case up.Rcode == dns.RcodeSuccess:
		return answerWith(base, up.Answer, false)
	case up.Rcode == dns.RcodeNameError:
		// Every candidate is gone: so is the expansion the client asked for.
		reply := replyTo(req, r)
		reply.Rcode = dns.RcodeNameError
		reply.Authoritative = false
		reply.Ns = up.Ns
		metricQueries.autopath.Inc()
		return s.pack(reply, msg, r, tcp)
	}
	return nil
}

// forward relays the query to the pod's upstreams.
func (s *Server) forward(ctx context.Context, msg []byte, r *request, src, local netip.AddrPort, tcp bool) []byte {
	metricQueries.forwarded.Inc()
	upstreams := s.upstreams(src, local)
	if len(upstreams) == 0 || s.opts.Forwarder == nil {
		return appendErrorReply(nil, msg, r, rcodeServFail)
	}
	out, err := s.opts.Forwarder.Forward(ctx, msg, tcp, upstreams)
	if err != nil {
		s.log.Debug("forward failed", "client", src, "err", err)
		return appendErrorReply(nil, msg, r, rcodeServFail)
	}
	if !tcp && len(out) > r.udpLimit() && r.qend > 0 {
		return truncate(nil, msg, r)
	}
	return out
}

func (s *Server) upstreams(src, local netip.AddrPort) []netip.AddrPort {
	if s.opts.Upstreams == nil {
		return nil
	}
	return s.opts.Upstreams(src, local)
}

// lookupUpstream asks the pod's upstreams one question of its own.
func (s *Server) lookupUpstream(ctx context.Context, name string, r *request, src, local netip.AddrPort, tcp bool) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), r.qtype)
	if r.edns {
		q.SetEdns0(ourUDPSize, r.do)
	}
	wire, err := q.Pack()
	if err != nil {
		return nil, err
	}
	upstreams := s.upstreams(src, local)
	if len(upstreams) == 0 || s.opts.Forwarder == nil {
		return nil, errNoUpstream
	}
	out, err := s.opts.Forwarder.Forward(ctx, wire, tcp, upstreams)
	if err != nil {
		return nil, err
	}
	resp := new(dns.Msg)
	if err := resp.Unpack(out); err != nil {
		return nil, err
	}
	if resp.Truncated && !tcp {
		return s.lookupUpstream(ctx, name, r, src, local, true)
	}
	return resp, nil
}

type constError string

func (e constError) Error() string { return string(e) }

const errNoUpstream = constError("no upstream nameserver for this client")

// replyTo starts an authoritative reply to req.
func replyTo(req *dns.Msg, r *request) *dns.Msg {
	reply := new(dns.Msg)
	reply.SetReply(req)
	reply.Authoritative = true
	reply.RecursionAvailable = true
	if r.edns {
		reply.SetEdns0(ourUDPSize, r.do)
	}
	return reply
}

// pack serialises a slow-path reply, truncating for UDP like the fast path.
func (s *Server) pack(reply *dns.Msg, msg []byte, r *request, tcp bool) []byte {
	reply.Compress = true
	out, err := reply.Pack()
	if err != nil {
		s.log.Error("packing a reply failed", "err", err)
		return appendErrorReply(nil, msg, r, rcodeServFail)
	}
	if !tcp && len(out) > r.udpLimit() {
		return truncate(nil, msg, r)
	}
	return out
}

func cname(owner, target string, ttl uint32) dns.RR {
	return &dns.CNAME{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: ttl}, Target: target}
}
