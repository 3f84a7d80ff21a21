package forward

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of one upstream attempt, the values of the "result" label.
const (
	resultOK       = "ok"        // NOERROR or NXDOMAIN
	resultServfail = "servfail"  // any other rcode: SERVFAIL, REFUSED, NOTIMP, …
	resultTimeout  = "timeout"   // no valid reply within the bound
	resultError    = "error"     // socket error, e.g. connection refused
	resultCanceled = "canceled"  // stopped because another upstream answered first
	resultNoMemory = "no_memory" // the reply did not fit the budget of replies in flight (the node's)
	// the reply did not fit what the asking source may hold of that budget:
	// its own bound or its fair share
	resultSourceLimited = "source_limited"
	// no socket could be opened for the exchange: the agent out of file
	// descriptors (its open-file limit), or the kernel of memory for one
	resultNoSocket = "no_socket"
)

var (
	// cacheHits counts queries answered from the forward cache.
	cacheHits = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "ztdns",
		Subsystem: "forward",
		Name:      "cache_hits_total",
		Help:      "Forwarded queries answered from the cache.",
	})

	// cacheMisses counts cacheable queries that had to go upstream.
	cacheMisses = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "ztdns",
		Subsystem: "forward",
		Name:      "cache_misses_total",
		Help:      "Cacheable forwarded queries not found in the cache.",
	})

	// cacheEvictions counts live entries dropped to make room.
	cacheEvictions = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "ztdns",
		Subsystem: "forward",
		Name:      "cache_evictions_total",
		Help:      "Cache entries evicted because the cache was full.",
	})

	// cacheBytes and cacheEntries are what the caches hold now.
	cacheBytes = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "ztdns",
		Subsystem: "forward",
		Name:      "cache_bytes",
		Help:      "Bytes the cache of upstream answers holds (replies, keys and bookkeeping), bounded by --cache-bytes.",
	})
	cacheEntries = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "ztdns",
		Subsystem: "forward",
		Name:      "cache_entries",
		Help:      "Replies the cache of upstream answers holds, bounded by --cache-size.",
	})

	// cacheTooLarge counts replies not cached because of their size alone.
	cacheTooLarge = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "ztdns",
		Subsystem: "forward",
		Name:      "cache_too_large_total",
		Help:      "Replies not cached because one would take more than a quarter of --cache-bytes.",
	})

	// coalesced counts queries that waited for an identical one already upstream.
	coalesced = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "ztdns",
		Subsystem: "forward",
		Name:      "coalesced_queries_total",
		Help:      "Queries that shared the upstream exchange of an identical query in flight.",
	})
)

// Collectors returns the package's metrics, for the agent to register.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{cacheHits, cacheMisses, cacheEvictions, cacheBytes, cacheEntries, cacheTooLarge, coalesced}
}

// otherUpstreams is the "to" label of every upstream past the first
// maxUpstreamSeries not known: the nameservers come from pods' resolv.conf,
// so their number is the pods' choice, not ours.
const otherUpstreams = "other"

// An upstream not known gives its label back once it has not been asked
// for labelIdle (its series leave the output; asked again, it counts from
// 0, as a Prometheus counter may), so that pods gone long ago (a custom
// dnsConfig, a `dig @x` while debugging) do not keep a later nameserver
// in "other" until the agent restarts. The labels are looked over at most
// once per labelSweepEvery, on an upstream's use: a scan of at most
// maxSeries labels, with no goroutine of its own.
//
// Why by use rather than by the nameservers the captured pods name (the
// redirect's map, swept by capture's SweepNameservers): the forwarder asks
// more than those (the --upstream fallbacks, a query sent straight to a
// nameserver), a nameserver still named but no longer asked has nothing to
// count, and the forwarder alone knows when it last asked one.
const (
	labelIdle       = 10 * time.Minute
	labelSweepEvery = time.Minute
)

// upstreamMetrics are a Forwarder's per-upstream metrics (Istio's
// istio_dns_upstream_*, CoreDNS's coredns_forward_*), labelled by the
// upstream's address for the known upstreams and at most maxSeries others
// asked within labelIdle, and otherUpstreams for the rest.
type upstreamMetrics struct {
	queries  *prometheus.CounterVec
	duration *prometheus.HistogramVec
	resends  *prometheus.CounterVec
	icmp     *prometheus.CounterVec

	maxSeries int
	now       func() time.Time
	mu        sync.Mutex
	labels    map[netip.AddrPort]*upstreamLabel
	other     upstreamLabel // what upstreams past maxSeries share
	chosen    int           // labels given to upstreams not known, at most maxSeries
	nextSweep time.Time     // when label may next look for idle labels
}

// upstreamLabel is the label of one upstream, when it was last asked
// (zero: not since the agent started), and how its exchanges ended since
// it was first asked after labelIdle unasked (Asked).
type upstreamLabel struct {
	to       string
	known    bool
	lastUsed time.Time
	// results counts the exchanges by result, indexed as Results: an
	// array, so that counting one under mu is an index, not a map's hash.
	results [len(Results)]uint64
}

// Results are the values of the "result" label, in the order Asked's
// readers show them: the upstream's answers, its failures, then those that
// say nothing of it.
var Results = [...]string{resultOK, resultServfail, resultTimeout, resultError, resultCanceled, resultNoMemory, resultSourceLimited, resultNoSocket}

// Asked is an upstream nameserver the Forwarder asked within the last 10
// minutes (the time its metric series live on unasked), and how those
// exchanges ended.
type Asked struct {
	// Upstream is the nameserver's address; "other" stands for those
	// past --metrics-max-upstreams, together.
	Upstream string
	// Last is when it was last asked.
	Last time.Time
	// Results counts its exchanges by how they ended (Results' values),
	// from the first after it had been 10 minutes unasked, or from the
	// agent's start.
	Results map[string]uint64
}

// Asked returns the upstreams asked within the last 10 minutes, most
// recently asked first: at most --metrics-max-upstreams of them, the
// known ones (--upstream, the capture list's single addresses) and
// "other".
func (f *Forwarder) Asked() []Asked { return f.upstreams.asked() }

func newUpstreamMetrics(maxSeries int, known []netip.AddrPort, now func() time.Time) *upstreamMetrics {
	m := &upstreamMetrics{
		// queries counts attempts sent to upstream nameservers, by result.
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "ztdns",
			Subsystem: "forward",
			Name:      "upstream_queries_total",
			Help: "Queries sent to upstream nameservers, by upstream (to: its address, or \"other\" past --metrics-max-upstreams upstreams not configured) " +
				"and result (ok, servfail, timeout, error, canceled, no_memory, source_limited, no_socket); servfail, timeout and error are the upstream's failures, " +
				"canceled, no_memory, source_limited and no_socket say nothing of it (canceled: another upstream answered first). " +
				"no_memory: the reply did not fit the node's budget of replies in flight (--inflight-bytes); " +
				"source_limited: it did not fit what the asking pod may hold of it (--pod-inflight-bytes, or its fair share), the pod's doing; " +
				"no_socket: the agent could not open a socket for the exchange, out of file descriptors (its open-file limit) or kernel memory.",
		}, []string{"to", "result"}),
		// duration measures how long upstreams take to send a valid reply.
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "ztdns",
			Subsystem: "forward",
			Name:      "upstream_duration_seconds",
			Help:      "Time from sending a query to an upstream nameserver to its valid reply, by upstream (to) and protocol.",
			Buckets:   durationBuckets,
		}, []string{"to", "proto"}),
		// resends counts UDP queries sent again within their exchange.
		resends: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "ztdns",
			Subsystem: "forward",
			Name:      "upstream_resends_total",
			Help: "UDP queries sent again to an upstream nameserver that had not answered, within the same exchange (same ID, same socket), " +
				"by upstream (to) and reason: joined (an identical query joined the exchange, its own query at least 400 ms old: a client's retry, or another pod's query) " +
				"or timer (no reply half-way through --forward-timeout).",
		}, []string{"to", "reason"}),
		// icmp counts ICMP errors about a UDP query that did not come from
		// its upstream, ignored.
		icmp: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "ztdns",
			Subsystem: "forward",
			Name:      "upstream_icmp_ignored_total",
			Help: "ICMP errors (port unreachable, …) about a UDP query to an upstream nameserver, by upstream (to), that did not come from the upstream's address, " +
				"ignored: the exchange waited on for the reply. A router's, or forged: a pod guessing the forwarding sockets' ports to end forwarded queries early.",
		}, []string{"to"}),
		maxSeries: maxSeries,
		now:       now,
		labels:    map[netip.AddrPort]*upstreamLabel{},
		other:     upstreamLabel{to: otherUpstreams},
	}
	for _, u := range known {
		if u, ok := canonicalUpstream(u); ok {
			m.labels[u] = &upstreamLabel{to: u.String(), known: true}
		}
	}
	return m
}

// durationBuckets are ztdns_forward_upstream_duration_seconds's upper
// bounds, +Inf aside.
var durationBuckets = []float64{.00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// DurationBuckets returns the upper bounds of the buckets of
// ztdns_forward_upstream_duration_seconds, +Inf aside: what an alert on
// it (the chart's ZtdnsUpstreamSlow) can tell apart.
func DurationBuckets() []float64 { return slices.Clone(durationBuckets) }

// label is the "to" label of upstream u.
func (m *upstreamMetrics) label(u netip.AddrPort) string {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.use(u, now).to
}

// use returns the label of u, asked at now, with m.mu held.
func (m *upstreamMetrics) use(u netip.AddrPort, now time.Time) *upstreamLabel {
	if !now.Before(m.nextSweep) {
		m.nextSweep = now.Add(labelSweepEvery)
		m.forgetIdle(now)
	}
	l, ok := m.labels[u]
	switch {
	case ok:
	case m.chosen >= m.maxSeries:
		l = &m.other
	default:
		m.chosen++
		l = &upstreamLabel{to: u.String()}
		m.labels[u] = l
	}
	if now.Sub(l.lastUsed) >= labelIdle {
		l.results = [len(Results)]uint64{} // unasked for labelIdle: Asked counts afresh
	}
	l.lastUsed = now
	return l
}

// asked is Forwarder.Asked.
func (m *upstreamMetrics) asked() []Asked {
	now := m.now()
	m.mu.Lock()
	var out []Asked
	add := func(l *upstreamLabel) {
		if now.Sub(l.lastUsed) >= labelIdle { // never asked, too: lastUsed zero
			return
		}
		var results map[string]uint64
		for i, n := range l.results {
			if n > 0 {
				if results == nil {
					results = make(map[string]uint64, 2)
				}
				results[Results[i]] = n
			}
		}
		if results != nil { // not taken by resent or icmpIgnored alone
			out = append(out, Asked{Upstream: l.to, Last: l.lastUsed, Results: results})
		}
	}
	for _, l := range m.labels {
		add(l)
	}
	add(&m.other)
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Asked) int {
		if c := b.Last.Compare(a.Last); c != 0 {
			return c
		}
		return strings.Compare(a.Upstream, b.Upstream)
	})
	return out
}

// forgetIdle gives back the labels of upstreams not known and not asked
// for labelIdle, and deletes their series. Whoever took one of them did so
// over labelIdle ago (taking it makes it used), so no exchange in flight
// counts under it again.
func (m *upstreamMetrics) forgetIdle(now time.Time) {
	for u, l := range m.labels {
		if l.known || now.Sub(l.lastUsed) < labelIdle {
			continue
		}
		delete(m.labels, u)
		m.chosen--
		to := prometheus.Labels{"to": l.to}
		m.queries.DeletePartialMatch(to)
		m.duration.DeletePartialMatch(to)
		m.resends.DeletePartialMatch(to)
		m.icmp.DeletePartialMatch(to)
	}
}

// attempt counts an exchange with upstream u that ended with result, and
// returns u's label.
func (m *upstreamMetrics) attempt(u netip.AddrPort, result string) string {
	now := m.now()
	m.mu.Lock()
	l := m.use(u, now)
	if i := slices.Index(Results[:], result); i >= 0 {
		l.results[i]++
	}
	to := l.to
	m.mu.Unlock()
	m.queries.WithLabelValues(to, result).Inc()
	return to
}

func (m *upstreamMetrics) resent(u netip.AddrPort, reason string) {
	m.resends.WithLabelValues(m.label(u), reason).Inc()
}

func (m *upstreamMetrics) icmpIgnored(u netip.AddrPort) {
	m.icmp.WithLabelValues(m.label(u)).Inc()
}

// observe records how long the upstream labelled to (label's) took.
func (m *upstreamMetrics) observe(to, proto string, d time.Duration) {
	m.duration.WithLabelValues(to, proto).Observe(d.Seconds())
}

// Collectors returns the Forwarder's own metrics (per upstream), for the
// agent to register beside the package's.
func (f *Forwarder) Collectors() []prometheus.Collector {
	return []prometheus.Collector{f.upstreams.queries, f.upstreams.duration, f.upstreams.resends, f.upstreams.icmp}
}
