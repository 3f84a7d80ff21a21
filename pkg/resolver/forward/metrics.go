package forward

import "github.com/prometheus/client_golang/prometheus"

// Results of one upstream attempt, the values of the "result" label.
const (
	resultOK       = "ok"        // NOERROR or NXDOMAIN
	resultServfail = "servfail"  // any other rcode: SERVFAIL, REFUSED, NOTIMP, …
	resultTimeout  = "timeout"   // no valid reply within the bound
	resultError    = "error"     // socket error, e.g. connection refused
	resultCanceled = "canceled"  // stopped because another upstream answered first
	resultNoMemory = "no_memory" // the reply did not fit the budget of replies in flight
)

var (
	// upstreamQueries counts attempts sent to upstream nameservers, by result.
	upstreamQueries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ztdns",
		Subsystem: "forward",
		Name:      "upstream_queries_total",
		Help:      "Queries sent to upstream nameservers, by result (ok, servfail, timeout, error, canceled, no_memory).",
	}, []string{"result"})

	// upstreamDuration measures how long upstreams take to send a valid reply.
	upstreamDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "ztdns",
		Subsystem: "forward",
		Name:      "upstream_duration_seconds",
		Help:      "Time from sending a query to an upstream nameserver to its valid reply, by protocol.",
		Buckets:   []float64{.00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"proto"})

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
	return []prometheus.Collector{upstreamQueries, upstreamDuration, cacheHits, cacheMisses, cacheEvictions, cacheBytes, cacheEntries, cacheTooLarge, coalesced}
}
