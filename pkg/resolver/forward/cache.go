package forward

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/ztdns/ztdns/pkg/dnswire"
)

// Key flag bits: the parts of a query that change what an upstream answers
// without showing in the question.
const (
	keyEDNS = 1 << iota
	keyDO
	keyCD
)

// upstreamKeyLen is one upstream in a cache key: 16-byte address, 2-byte port.
const upstreamKeyLen = 18

// appendKey appends the cache key of a query to dst: flags, qtype, qclass,
// the lower-cased wire name, then the upstream set sorted and deduplicated,
// so that two pods with different nameservers never share an entry and the
// order in which a pod lists them does not matter. Zones of link-local IPv6
// upstreams are not part of the key.
func appendKey(dst []byte, msg []byte, r dnswire.Query, upstreams []netip.AddrPort) []byte {
	var flags byte
	if r.EDNS {
		flags |= keyEDNS
	}
	if r.DO {
		flags |= keyDO
	}
	if r.Flags&dnswire.FlagCD != 0 {
		flags |= keyCD
	}
	dst = append(dst, flags)
	dst = binary.BigEndian.AppendUint16(dst, r.Type)
	dst = binary.BigEndian.AppendUint16(dst, r.Class)
	dst = dnswire.AppendLower(dst, msg[dnswire.HeaderLen:r.NameEnd])
	start := len(dst)
	for _, u := range upstreams {
		a := u.Addr().Unmap().As16()
		dst = append(dst, a[:]...)
		dst = binary.BigEndian.AppendUint16(dst, u.Port())
	}
	return sortUpstreamChunks(dst, start)
}

// sortUpstreamChunks sorts the 18-byte chunks in dst[start:] and drops
// duplicates, in place: an insertion sort, as pods list at most a few
// nameservers and this runs on every cache lookup.
func sortUpstreamChunks(dst []byte, start int) []byte {
	n := (len(dst) - start) / upstreamKeyLen
	chunk := func(i int) []byte {
		o := start + i*upstreamKeyLen
		return dst[o : o+upstreamKeyLen]
	}
	var tmp [upstreamKeyLen]byte
	for i := 1; i < n; i++ {
		for j := i; j > 0 && string(chunk(j)) < string(chunk(j-1)); j-- {
			copy(tmp[:], chunk(j))
			copy(chunk(j), chunk(j-1))
			copy(chunk(j-1), tmp[:])
		}
	}
	out := start
	for i := range n {
		if i > 0 && string(chunk(i)) == string(dst[out-upstreamKeyLen:out]) {
			continue
		}
		copy(dst[out:], chunk(i))
		out += upstreamKeyLen
	}
	return dst[:out]
}

// entry is one cached reply. msg and ttlOffsets never change once stored,
// so a hit may read them after the cache lock is released.
type entry struct {
	key        string
	msg        []byte
	ttlOffsets []uint16
	stored     time.Time
	expires    time.Time
	from       netip.AddrPort // the upstream that sent msg
	prev, next *entry
}

// entryOverhead is what an entry costs besides its key, reply and offsets:
// the struct, its map slot, and the allocator's rounding of three objects.
const entryOverhead = 256

// cost is the bytes an entry holds, as the cache's byte bound counts them.
func (e *entry) cost() int64 {
	return int64(len(e.key) + cap(e.msg) + 2*cap(e.ttlOffsets) + entryOverhead)
}

// cache is an LRU of upstream replies, bounded in entries and in bytes.
type cache struct {
	mu       sync.Mutex
	max      int
	maxBytes int64
	bytes    int64
	entries  map[string]*entry
	// head.next is the most recently used entry, head.prev the least.
	head entry
}

func newCache(maxEntries int, maxBytes int64) *cache {
	c := &cache{max: maxEntries, maxBytes: maxBytes, entries: make(map[string]*entry, min(maxEntries, 1024))}
	c.head.next, c.head.prev = &c.head, &c.head
	return c
}

// usage returns the number of entries and the bytes they hold.
func (c *cache) usage() (int, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries), c.bytes
}

// get returns the live entry for key, or nil. An expired entry is dropped.
func (c *cache) get(key []byte, now time.Time) *entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[string(key)]
	if e == nil {
		return nil
	}
	if !now.Before(e.expires) {
		c.remove(e)
		return nil
	}
	c.unlink(e)
	c.pushFront(e)
	return e
}

// put stores e, replacing any entry with the same key and evicting least
// recently used entries until both bounds hold. A reply that alone would
// take more than a quarter of the bytes is not kept: it would push out many
// small ones for one big one.
func (c *cache) put(e *entry) {
	cost := e.cost()
	if cost > c.maxBytes/4 {
		cacheTooLarge.Inc()
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.entries[e.key]; old != nil {
		c.remove(old)
	}
	for (len(c.entries) >= c.max || c.bytes+cost > c.maxBytes) && c.head.prev != &c.head {
		c.remove(c.head.prev)
		cacheEvictions.Inc()
	}
	c.entries[e.key] = e
	c.bytes += cost
	cacheBytes.Add(float64(cost))
	cacheEntries.Inc()
	c.pushFront(e)
}

func (c *cache) remove(e *entry) {
	c.unlink(e)
	delete(c.entries, e.key)
	c.bytes -= e.cost()
	cacheBytes.Sub(float64(e.cost()))
	cacheEntries.Dec()
}

func (c *cache) unlink(e *entry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func (c *cache) pushFront(e *entry) {
	e.prev, e.next = &c.head, c.head.next
	c.head.next.prev = e
	c.head.next = e
}

// cacheLifetime says how long a reply may be served from the cache, and
// whether it may be cached at all: RFC 2308 for negative answers (only with
// an SOA), the smallest answer TTL for positive ones, never for truncated or
// failed replies. maxTTL caps the result.
func cacheLifetime(s dnswire.Reply, maxTTL time.Duration) (time.Duration, bool) {
	if s.Opcode() != dnswire.OpcodeQuery || s.Flags&dnswire.FlagQR == 0 || s.Flags&dnswire.FlagTC != 0 || s.QDCount != 1 {
		return 0, false
	}
	var ttl uint32
	switch rc := s.Rcode(); {
	case rc == dnswire.RcodeSuccess && s.ANCount > 0:
		ttl = s.MinAnswerTTL
	case rc == dnswire.RcodeSuccess || rc == dnswire.RcodeNXDomain:
		// NODATA or NXDOMAIN, possibly after a CNAME chain whose TTLs also bound it.
		if !s.SOA {
			return 0, false
		}
		ttl = s.NegTTL
		if s.ANCount > 0 {
			ttl = min(ttl, s.MinAnswerTTL)
		}
	default:
		return 0, false
	}
	d := min(time.Duration(ttl)*time.Second, maxTTL)
	return d, d > 0
}

// newEntry prepares a reply for the cache: it keeps msg, which nobody may
// change any more (a hit copies it), and the TTL offsets, so a hit can age
// its copy without parsing it.
func newEntry(key string, msg []byte, s dnswire.Reply, now time.Time, lifetime time.Duration) *entry {
	return &entry{
		key:        key,
		msg:        msg,
		ttlOffsets: slices.Clip(s.TTLOffsets),
		stored:     now,
		expires:    now.Add(lifetime),
	}
}
