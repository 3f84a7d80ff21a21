package forward

import (
	"log/slog"
	"net/netip"
	"time"

	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

const (
	// DefaultTimeout bounds one forwarded query, all upstreams and resends included.
	DefaultTimeout = 2 * time.Second
	// DefaultCacheSize is the number of replies the cache keeps.
	DefaultCacheSize = 10000
	// DefaultCacheBytes bounds the bytes the cache holds (replies, keys and
	// their bookkeeping): a few thousand typical replies, or sixty-four of
	// the largest ones.
	DefaultCacheBytes = 4 << 20
	// DefaultMaxTTL caps how long any reply stays cached, whatever its TTL.
	DefaultMaxTTL = time.Hour
	// DefaultMaxUpstreamSeries bounds the upstreams with metrics of their
	// own; the rest share the label "other".
	DefaultMaxUpstreamSeries = 32
	// resendInterval is how long a UDP exchange's query must have been out
	// before a query joining the exchange sends it again (resender), and
	// so the least time between two datagrams it sends to one upstream
	// (its first, one to each upstream asked, go out together). Under a
	// second, the shortest retry of the usual clients (glibc's and Go's
	// "options timeout:1", dig +time=1), with room for the time between a client's
	// first query and ours; not under musl's 500 ms between retries with
	// "timeout:1 attempts:2". Above what an upstream takes to answer all
	// but a few queries (unbound starts at 376 ms for a server it knows
	// nothing of), so a query joining sooner finds its answer on the way
	// far more often than lost. With the default timeout, an exchange
	// sends at most five datagrams to each upstream.
	resendInterval = 400 * time.Millisecond
)

// MaxUpstreams bounds how many upstreams one query is sent to in parallel
// (resolv.conf allows three), each on a socket of its own; the rest of a
// longer list is ignored.
const MaxUpstreams = 8

// Option configures a Forwarder.
type Option func(*Forwarder)

// WithTimeout bounds each forwarded query in total. Non-positive values keep
// the default.
func WithTimeout(d time.Duration) Option {
	return func(f *Forwarder) {
		if d > 0 {
			f.timeout = d
		}
	}
}

// WithCacheSize sets how many replies the cache holds; 0 or less disables it.
func WithCacheSize(n int) Option {
	return func(f *Forwarder) { f.cacheSize = n }
}

// WithCacheBytes bounds the bytes the cache holds. Non-positive values keep
// the default.
func WithCacheBytes(n int64) Option {
	return func(f *Forwarder) {
		if n > 0 {
			f.cacheBytes = n
		}
	}
}

// WithBudget bounds the bytes of upstream replies being read or waiting for
// their callers, shared with whoever else holds replies (the resolver, while
// it writes them to TCP clients). An exchange whose reply does not fit fails.
func WithBudget(b *quota.Budget) Option {
	return func(f *Forwarder) { f.budget = b }
}

// WithMaxTTL caps how long a reply stays cached. Non-positive values keep the
// default.
func WithMaxTTL(d time.Duration) Option {
	return func(f *Forwarder) {
		if d > 0 {
			f.maxTTL = d
		}
	}
}

// WithNow replaces the clock the cache ages entries by, by which a query
// joining a UDP exchange finds whether to send its query again, and by
// which idle upstreams give back their metric label (tests inject one).
func WithNow(now func() time.Time) Option {
	return func(f *Forwarder) {
		if now != nil {
			f.now = now
		}
	}
}

// WithLogger sets where upstream failures are logged (at debug level).
func WithLogger(l *slog.Logger) Option {
	return func(f *Forwarder) {
		if l != nil {
			f.log = l
		}
	}
}

// WithMaxUpstreamSeries bounds the upstreams whose metrics carry their own
// address (the first n asked, known upstreams aside); the others are
// labelled "other".
func WithMaxUpstreamSeries(n int) Option {
	return func(f *Forwarder) {
		if n > 0 {
			f.maxUpstreamSeries = n
		}
	}
}

// WithKnownUpstreams names the upstreams the operator configured: their
// metrics always carry their own address, on top of WithMaxUpstreamSeries,
// so that addresses pods choose cannot take every label first.
func WithKnownUpstreams(us ...netip.AddrPort) Option {
	return func(f *Forwarder) { f.knownUpstreams = append(f.knownUpstreams, us...) }
}
