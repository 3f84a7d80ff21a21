package resolver

import (
	"slices"
	"sync"
	"sync/atomic"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztdns/ztdns/pkg/dnswire"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
)

var (
	// metricQueriesVec counts queries by how they were answered.
	metricQueriesVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztdns_resolver_queries_total",
		Help: "DNS queries by outcome: local (answered from the table), forwarded, autopath, formerr, refused, " +
			"rate_limited (over the source's query rate: dropped over UDP, REFUSED over TCP), " +
			"forward_limited (SERVFAIL, or an answer without what a refused lookup of the resolver's own would have added, " +
			"such as a CNAME's target: the source had its own bound or its fair share of forwarded queries in flight, " +
			"or of the bytes of their replies, read from the upstream or waiting to be written to it; " +
			"or its forward or reply was ended to make room for a source within its share; once per query), " +
			"overload (SERVFAIL: too many forwarded queries, or bytes of their replies, in flight in all), drop.",
	}, []string{"outcome"})
	// metricTruncatedVec counts replies ztdns cut to fit, with TC, by
	// protocol (an upstream's own TC reply is relayed as it is, uncounted).
	metricTruncatedVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztdns_resolver_truncated_total",
		Help: "Replies ztdns cut to fit (TC set), by proto: udp (the records that fit in the client's buffer: it may ask again over TCP) " +
			"or tcp (the records that fit in a TCP message, 65,535 bytes).",
	}, []string{"proto"})
	// metricTCPRejectedVec counts TCP connections closed at once, by the
	// bound they hit.
	metricTCPRejectedVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztdns_resolver_tcp_rejected_total",
		Help: "TCP connections closed, by the limit reached: source (refused at once for the source's own bound, --pod-max-tcp, " +
			"or its fair share of --max-tcp; or closed later, a connection of a source over its share, to make room for one within it) " +
			"or total (refused at once, --max-tcp open).",
	}, []string{"limit"})
	// metricTCPClosedVec counts the TCP connections served, by why they
	// were closed.
	metricTCPClosedVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztdns_resolver_tcp_closed_total",
		Help: "TCP connections served, by why they were closed: client (it closed or reset the connection), " +
			"idle (no query within the idle timeout, counted from its last reply), read_stall (a started message not whole within 2 s), " +
			"not_dns (a message that is no query), write_timeout (a reply not written within 2 s of being ready), " +
			"evicted (to make room for a source within its share; also in ztdns_resolver_tcp_rejected_total), " +
			"stopped (the agent stopped or handed its sockets over).",
	}, []string{"reason"})
	// metricTCPUnsentVec counts replies to TCP queries, counted as
	// answered, that were never written.
	metricTCPUnsentVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ztdns_resolver_tcp_unsent_replies_total",
		Help: "Replies to TCP queries, counted as answered (ztdns_dns_requests_total, ztdns_resolver_queries_total), " +
			"that were not written: their connection was closed first, by the reason it was (as in ztdns_resolver_tcp_closed_total).",
	}, []string{"reason"})
	// metricTCPConns is the number of open TCP connections.
	metricTCPConns = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ztdns_resolver_tcp_connections",
		Help: "Open TCP connections from clients.",
	})
	// metricForwarding is the number of forwarded queries in flight.
	metricForwarding = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ztdns_resolver_forwarding",
		Help: "Queries waiting for an upstream nameserver.",
	})
)

// metricQueries holds the outcome counters bound once, so counting a query
// on the hot path is one atomic add.
var metricQueries = struct {
	local, forwarded, autopath, formerr, refused, rateLimited, forwardLimited, overload, drop prometheus.Counter
}{
	local:          metricQueriesVec.WithLabelValues("local"),
	forwarded:      metricQueriesVec.WithLabelValues("forwarded"),
	autopath:       metricQueriesVec.WithLabelValues("autopath"),
	formerr:        metricQueriesVec.WithLabelValues("formerr"),
	refused:        metricQueriesVec.WithLabelValues("refused"),
	rateLimited:    metricQueriesVec.WithLabelValues("rate_limited"),
	forwardLimited: metricQueriesVec.WithLabelValues("forward_limited"),
	overload:       metricQueriesVec.WithLabelValues("overload"),
	drop:           metricQueriesVec.WithLabelValues("drop"),
}

// metricTruncated is ztdns_resolver_truncated_total by protoOf.
var metricTruncated = [...]prometheus.Counter{
	metricTruncatedVec.WithLabelValues(protoLabels[0]),
	metricTruncatedVec.WithLabelValues(protoLabels[1]),
}

var metricTCPRejected = struct{ source, total prometheus.Counter }{
	source: metricTCPRejectedVec.WithLabelValues("source"),
	total:  metricTCPRejectedVec.WithLabelValues("total"),
}

// metricTCPClosed and metricTCPUnsent are ztdns_resolver_tcp_closed_total
// and ztdns_resolver_tcp_unsent_replies_total by closeReason.
var metricTCPClosed, metricTCPUnsent = func() (closed, unsent [nCloseReasons]prometheus.Counter) {
	for r, label := range closeReasonLabels {
		closed[r] = metricTCPClosedVec.WithLabelValues(label)
		unsent[r] = metricTCPUnsentVec.WithLabelValues(label)
	}
	return closed, unsent
}()

// kernelDropsDesc describes the UDP queries the kernel dropped over their
// source's rate.
var kernelDropsDesc = prometheus.NewDesc("ztdns_resolver_kernel_rate_limited_total",
	"UDP queries over their source's rate, dropped in the kernel before the resolver saw them.",
	nil, nil)

// Collector is the server's own metrics, read at scrape time: its answers
// by type, protocol, rcode, source and namespace, how long they took, and
// the queries the kernel dropped over their source's rate.
func (s *Server) Collector() prometheus.Collector { return serverCollector{s} }

type serverCollector struct{ s *Server }

func (c serverCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- kernelDropsDesc
	c.s.metrics.describe(ch)
}

func (c serverCollector) Collect(ch chan<- prometheus.Metric) {
	c.s.metrics.collect(ch)
	if c.s.kernel != nil {
		ch <- prometheus.MustNewConstMetric(kernelDropsDesc, prometheus.CounterValue, float64(c.s.kernel.totalDrops()))
	}
}

// Collectors returns the package's metrics for registration.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{metricQueriesVec, metricTruncatedVec, metricTCPRejectedVec, metricTCPClosedVec, metricTCPUnsentVec,
		metricTCPConns, metricForwarding}
}

// Labels of ztdns_dns_requests_total. Every label takes a value from a
// fixed list, so the series are bounded whatever clients ask: query types
// outside typeCodes count as "other" (CoreDNS keeps a list of the same
// kind), rcodes outside the six of RFC 1035 and BADVERS as "other".
var (
	typeCodes = [...]uint16{dns.TypeA, dns.TypeNS, dns.TypeCNAME, dns.TypeSOA, dns.TypePTR, dns.TypeMX, dns.TypeTXT, dns.TypeAAAA,
		dns.TypeSRV, dns.TypeNAPTR, dns.TypeDS, dns.TypeDNSKEY, dns.TypeSVCB, dns.TypeHTTPS, dns.TypeIXFR, dns.TypeAXFR, dns.TypeANY}
	// typeLabels are typeCodes' mnemonics, then "other".
	typeLabels = func() (l [len(typeCodes) + 1]string) {
		for i, t := range typeCodes {
			l[i] = dns.TypeToString[t]
		}
		l[len(typeCodes)] = "other"
		return l
	}()
	// typeIndex maps a query type below 256 to its label's index.
	typeIndex = func() (idx [256]uint8) {
		for i := range idx {
			idx[i] = typeOther
		}
		for i, t := range typeCodes {
			idx[t] = uint8(i)
		}
		return idx
	}()
	rcodeLabels  = [...]string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "other"}
	protoLabels  = [...]string{"udp", "tcp"}
	sourceLabels = [...]string{"table", "cache", "upstream", "none"}
)

const (
	typeOther = uint8(len(typeCodes))
	// rcodeBadVers is BADVERS (16, RFC 6891), which needs EDNS to carry;
	// labelBadVers and labelOther are rcodeLabels' slots for it and for
	// every rcode past the first six.
	rcodeBadVers = 16
	labelBadVers = 6
	labelOther   = 7
	nTypes       = len(typeLabels)
	nRcodes      = len(rcodeLabels)
	nCells       = nTypes * nRcodes * 2 * nSources
)

// answeredFrom is where an answer came from: the value of the source label
// of the request metrics (the constants are named for it, sourceLabels
// spells them), and the access log's "answered". Not the asking source
// (quota.Source).
type answeredFrom uint8

const (
	sourceTable    answeredFrom = iota // the name table
	sourceCache                        // the cache of upstream answers
	sourceUpstream                     // an upstream exchange
	sourceNone                         // an error the resolver gave itself: FORMERR, REFUSED, SERVFAIL over a limit or with no upstream
	nSources       = 4
)

// servfailCause is whose failure a SERVFAIL answer to a forwarded query
// is, the cause label of ztdns_resolver_forward_servfails_total
// (causeLabels spells them).
type servfailCause uint8

const (
	// causeNode: the node's. The upstream that failed (or answered
	// SERVFAIL) is a known one, which the node asks for every pod
	// (forward.Forwarder.Knows: --upstream, the cluster DNS Service), or
	// the node's own budget refused the exchange (its replies' bytes, its
	// sockets), whichever nameserver it was with.
	causeNode servfailCause = iota
	// causePod: the upstream is one the pod chose itself (its dnsConfig,
	// a dig @), whose failures are that pod's.
	causePod
	nCauses = 2
)

var causeLabels = [nCauses]string{"node", "pod"}

// servfailCause says whose failure the query's SERVFAIL answer, relayed
// from or made for its forward, is. The upstream is the forward's Origin's:
// of several raced, the one whose SERVFAIL was relayed, else the first
// given (the forwarder's choice); a forward that ended before any
// exchange named none, and the first of the query's upstreams stands for
// it. Asked only of SERVFAIL answers: the forwarder's lookup takes a lock.
func (q *slowQuery) servfailCause() servfailCause {
	switch q.result {
	case forward.FailureNoMemory, forward.FailureNoSocket:
		return causeNode
	}
	u := q.upstream
	if !u.IsValid() {
		if ups := q.upstreams(); len(ups) > 0 {
			u = ups[0]
		}
	}
	if f := q.s.opts.Forwarder; f != nil && f.Knows(u) {
		return causeNode
	}
	return causePod
}

// protoOf is the index of a query's protocol in protoLabels.
func protoOf(tcp bool) int {
	if tcp {
		return 1
	}
	return 0
}

// requestCell is the index of a (type, rcode, proto, source) counter.
func requestCell(qtype uint16, rcode int, tcp bool, from answeredFrom) int {
	t := typeOther
	if qtype < 256 {
		t = typeIndex[qtype]
	}
	rc := rcode
	switch {
	case rc == rcodeBadVers:
		rc = labelBadVers
	case rc < 0 || rc > 5:
		rc = labelOther
	}
	p := protoOf(tcp)
	return ((int(t)*nRcodes+rc)*2+p)*nSources + int(from)
}

// durationBounds are the buckets of ztdns_dns_request_duration_seconds, in
// nanoseconds: local answers take microseconds, forwarded ones what the
// upstream takes.
var durationBounds = [...]int64{10e3, 25e3, 50e3, 100e3, 250e3, 500e3, 1e6, 2.5e6, 5e6, 10e6, 25e6, 50e6, 100e6, 250e6, 500e6, 1e9, 2.5e9, 5e9}

// durations is a histogram that takes several observations of one duration
// at once: the UDP loop times a batch, whose answers all waited as long.
type durations struct {
	buckets [len(durationBounds) + 1]atomic.Uint64 // the last one is +Inf
	sumNs   atomic.Uint64
}

func (h *durations) observe(d int64, n uint64) {
	i := 0
	for i < len(durationBounds) && d > durationBounds[i] {
		i++
	}
	h.buckets[i].Add(n)
	h.sumNs.Add(uint64(max(d, 0)) * n)
}

// requestMetrics are a Server's per-query metrics, read at scrape time.
type requestMetrics struct {
	requests   [nCells]atomic.Uint64
	durations  [nSources]durations
	namespaces namespaceCounts
	// servfails counts SERVFAIL answers to forwards by servfailCause,
	// on the slow path (finish) as they are written: the fast path never
	// touches it.
	servfails [nCauses]atomic.Uint64
}

// Namespace labels that no Kubernetes namespace can take (a namespace name
// starts with a letter or digit).
const (
	namespaceUnknown = "_unknown" // a source address that is no known pod
	namespaceOther   = "_other"   // past the cap on namespaces with series of their own
)

// namespaceCounts counts answered queries per namespace of the asking pod:
// a namespace gets a slot of its own when it asks while fewer than max
// namespaces have one, else it shares namespaceOther. A slot is freed when
// the registry has no pod of its namespace left (forget), for the next
// namespace to ask: the series are bounded and follow the namespaces of
// the node's pods, not the first ones ever seen. A pod remembers its slot
// (podcache.Pod.NamespaceSlot), so the hot path takes no lock and makes no
// map lookup.
//
// A slot number may outlive its namespace's hold on it: in the memo of a
// pod object a query in flight still holds (the registry makes a new pod
// object, its memo unset, on every change of the pod, and new objects of
// every pod on every change of the source), or in a UDP batch's counts
// not yet flushed. Such a count is added to counts[slot], which stays in
// range and is atomic: the worst it does is count those few queries of a
// namespace that is gone in the slot's next namespace, or in a free slot,
// whose count is dropped when the slot is taken again. Such a query may
// also take a slot for its gone namespace, until the registry's next
// change frees it.
type namespaceCounts struct {
	counts []atomic.Uint64 // by slot: slotUnknown, slotOther, then namespaces; never resized

	mu    sync.Mutex
	max   int
	slots map[string]int32
	names []string // by slot; "" for a free one, taken before namespaceOther
}

const (
	slotUnknown = 0
	slotOther   = 1
)

func (nc *namespaceCounts) init(max int) {
	nc.max = max
	nc.counts = make([]atomic.Uint64, max+2)
	nc.slots = map[string]int32{}
	nc.names = []string{namespaceUnknown, namespaceOther}
}

// slotOf is the slot pod's queries count in.
func (nc *namespaceCounts) slotOf(pod *podcache.Pod) int32 {
	if pod == nil {
		return slotUnknown
	}
	s := pod.NamespaceSlot.Load()
	if s == slotUnknown { // no pod has it: the pod has not looked its slot up yet
		s = nc.assign(pod)
	}
	return s
}

// assign finds or makes the slot of pod's namespace, and has the pod
// remember it.
func (nc *namespaceCounts) assign(pod *podcache.Pod) int32 {
	nc.mu.Lock()
	s, ok := nc.slots[pod.Namespace]
	if !ok {
		s = slotOther
		// A free slot first: a scan of at most max names, on a namespace's
		// first query only.
		if i := slices.Index(nc.names[slotOther+1:], ""); i >= 0 {
			s = int32(slotOther + 1 + i)
			nc.counts[s].Store(0) // what queries in flight added since it was freed
			nc.names[s] = pod.Namespace
			nc.slots[pod.Namespace] = s
		} else if len(nc.names)-2 < nc.max {
			s = int32(len(nc.names))
			nc.names = append(nc.names, pod.Namespace)
			nc.slots[pod.Namespace] = s
		}
	}
	nc.mu.Unlock()
	pod.NamespaceSlot.Store(s)
	return s
}

// forget frees the slots of the namespaces none of pods (every pod of the
// registry, host-network and address-less ones included) is in: their
// series leave the output, and a namespace that comes back starts again at
// 0, as a Prometheus counter may.
func (nc *namespaceCounts) forget(pods []*podcache.Pod) {
	nc.mu.Lock()
	defer nc.mu.Unlock()
	if len(nc.slots) == 0 {
		return
	}
	live := make(map[string]struct{}, len(nc.slots))
	for _, p := range pods {
		live[p.Namespace] = struct{}{}
	}
	freed := false
	for ns, s := range nc.slots {
		if _, ok := live[ns]; !ok {
			delete(nc.slots, ns)
			nc.names[s] = ""
			freed = true
		}
	}
	if !freed {
		return
	}
	// A pod that asked between the registry's change and this call may
	// have taken namespaceOther for want of the slot just freed: let it
	// look again.
	for _, p := range pods {
		p.NamespaceSlot.CompareAndSwap(slotOther, slotUnknown)
	}
}

// batchCounts gathers one UDP batch's counts in plain integers: the loop
// adds them to the shared atomic counters once per batch (flush) rather
// than once per query.
type batchCounts struct {
	// answered counts the batch's answers by source, for the duration
	// histogram and ztdns_resolver_queries_total.
	answered [nSources]uint64
	// The counts by request cell and by namespace slot, and which of them
	// are not zero (each listed once).
	requests             [nCells]uint32
	namespaces           []uint32 // by slot
	touched, touchedNS   []int32
	nTouched, nTouchedNS int
}

func (s *Server) newBatchCounts() *batchCounts {
	slots := len(s.metrics.namespaces.counts) // fixed when the server was made
	return &batchCounts{
		namespaces: make([]uint32, slots),
		touched:    make([]int32, nCells),
		touchedNS:  make([]int32, slots),
	}
}

// add counts one answer.
func (b *batchCounts) add(cell int, slot int32, from answeredFrom) {
	b.answered[from]++
	if b.requests[cell] == 0 {
		b.touched[b.nTouched] = int32(cell)
		b.nTouched++
	}
	b.requests[cell]++
	if b.namespaces[slot] == 0 {
		b.touchedNS[b.nTouchedNS] = slot
		b.nTouchedNS++
	}
	b.namespaces[slot]++
}

// countAnswer counts one answered query at once.
func (s *Server) countAnswer(cell int, slot int32) {
	s.metrics.requests[cell].Add(1)
	s.metrics.namespaces.counts[slot].Add(1)
}

// observeLocal times one answer of the fast path that is not batched (TCP).
func (s *Server) observeLocal(reply []byte, took int64) {
	from := sourceTable
	if dnswire.HeaderRcode(reply) != dnswire.RcodeSuccess {
		from = sourceNone
	}
	s.metrics.durations[from].observe(took, 1)
}

// flush adds b's counts to the server's and observes the batch's duration
// d once per answer in it.
func (s *Server) flush(b *batchCounts, d int64) {
	m := &s.metrics
	for _, c := range b.touched[:b.nTouched] {
		m.requests[c].Add(uint64(b.requests[c]))
		b.requests[c] = 0
	}
	b.nTouched = 0
	for _, slot := range b.touchedNS[:b.nTouchedNS] {
		m.namespaces.counts[slot].Add(uint64(b.namespaces[slot]))
		b.namespaces[slot] = 0
	}
	b.nTouchedNS = 0
	if n := b.answered[sourceTable]; n > 0 {
		metricQueries.local.Add(float64(n))
	}
	for src, n := range b.answered {
		if n > 0 {
			m.durations[src].observe(d, n)
			b.answered[src] = 0
		}
	}
}

var (
	requestsDesc = prometheus.NewDesc("ztdns_dns_requests_total",
		"DNS queries answered, by query type (type: the common types, else \"other\"), protocol (proto), "+
			"rcode, and where the answer came from (source: table, cache, upstream, or none for an error ztdns gave itself: "+
			"FORMERR, BADVERS, REFUSED, SERVFAIL over a limit). Queries dropped unanswered are in ztdns_resolver_queries_total.",
		[]string{"type", "proto", "rcode", "source"}, nil)
	durationDesc = prometheus.NewDesc("ztdns_dns_request_duration_seconds",
		"Time from reading a query to its answer, by source (local answers: table and none; forwarded: cache and upstream). "+
			"UDP answers from the table are timed per batch of datagrams read at once: each counts the batch's time.",
		[]string{"source"}, nil)
	namespaceDesc = prometheus.NewDesc("ztdns_dns_namespace_requests_total",
		"DNS queries answered, by the asking pod's namespace: up to --metrics-max-namespaces namespaces have their own, "+
			"taken when one asks and given up when the node has no pod of it left (it starts again at 0 if it comes back); "+
			"the rest count as \"_other\", and sources that are no known pod (the node, host-network pods) as \"_unknown\".",
		[]string{"client_namespace"}, nil)
	servfailsDesc = prometheus.NewDesc("ztdns_resolver_forward_servfails_total",
		"Forwarded queries answered SERVFAIL for want of an upstream's answer, or with an upstream's own SERVFAIL "+
			"(in ztdns_dns_requests_total, rcode SERVFAIL of source upstream): once per answer, however many upstreams it asked, "+
			"by whose failure it is (cause): node (the upstream is a known one, ztdns_forward_upstream_known, which the node asks for every pod; "+
			"or the node's own budget refused the exchange, result no_memory or no_socket) or pod (a nameserver the pod chose itself). "+
			"Answered by another upstream, a query counts nothing here, however many of those it raced failed.",
		[]string{"cause"}, nil)
)

func (m *requestMetrics) describe(ch chan<- *prometheus.Desc) {
	ch <- requestsDesc
	ch <- durationDesc
	ch <- namespaceDesc
	ch <- servfailsDesc
}

func (m *requestMetrics) collect(ch chan<- prometheus.Metric) {
	for cell := range m.requests {
		v := m.requests[cell].Load()
		if v == 0 {
			continue
		}
		src := cell % nSources
		p := cell / nSources % 2
		rc := cell / nSources / 2 % nRcodes
		t := cell / nSources / 2 / nRcodes
		ch <- prometheus.MustNewConstMetric(requestsDesc, prometheus.CounterValue, float64(v),
			typeLabels[t], protoLabels[p], rcodeLabels[rc], sourceLabels[src])
	}
	for src := range m.durations {
		h := &m.durations[src]
		buckets := make(map[float64]uint64, len(durationBounds))
		var count uint64
		for i, bound := range durationBounds {
			count += h.buckets[i].Load()
			buckets[float64(bound)/1e9] = count
		}
		count += h.buckets[len(durationBounds)].Load()
		if count == 0 {
			continue
		}
		ch <- prometheus.MustNewConstHistogram(durationDesc, count, float64(h.sumNs.Load())/1e9, buckets, sourceLabels[src])
	}
	// The counts are read with the names, so that a slot freed and taken
	// again meanwhile cannot show one namespace's count under another's.
	type series struct {
		name string
		v    uint64
	}
	var ns []series
	nc := &m.namespaces
	nc.mu.Lock()
	for slot, name := range nc.names {
		if v := nc.counts[slot].Load(); v > 0 && name != "" {
			ns = append(ns, series{name, v})
		}
	}
	nc.mu.Unlock()
	for _, s := range ns {
		ch <- prometheus.MustNewConstMetric(namespaceDesc, prometheus.CounterValue, float64(s.v), s.name)
	}
	// Both causes from the start, at 0: the alert's rate sees the first
	// failure, which a series born with it would not.
	for c, label := range causeLabels {
		ch <- prometheus.MustNewConstMetric(servfailsDesc, prometheus.CounterValue, float64(m.servfails[c].Load()), label)
	}
}
