package forward

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"sync"
	"time"
	"unsafe"

	"github.com/ztdns/ztdns/pkg/dnswire"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// Key flag bits: the parts of a query that change what an upstream answers
// without showing in the question.
const (
	keyEDNS = 1 << iota
	keyDO
	keyCD
)

// Zone transfers (RFC 5936, RFC 1995): answered in many messages, and an
// IXFR's by the serial in its authority section.
const (
	typeIXFR = 251
	typeAXFR = 252
)

// shareable reports whether r, a standard query, can be asked upstream as
// its key says (appendUpstreamQuery): its answer is then the answer to every
// query with that key, and may be cached and shared with other sources.
// What the key does not hold is then of no weight: EDNS options (a client
// subnet, a cookie, a malformed one), the UDP size, the AD and Z bits. What
// it cannot stand for makes the query one to forward as it is, for its
// client alone: RD=0 (a resolver answers it from what it holds, without
// recursing), records in the answer or authority section, or additional
// records besides the OPT (TSIG, SIG(0): the reply must be signed for the
// client's key), an EDNS version other than 0, and zone transfers.
func shareable(r *dnswire.Query) bool {
	ar := uint16(0)
	if r.EDNS {
		ar = 1
	}
	return r.Flags&dnswire.FlagRD != 0 && r.ANCount == 0 && r.NSCount == 0 && r.ARCount == ar &&
		r.EDNSVersion == 0 && r.Type != typeAXFR && r.Type != typeIXFR
}

// appendUpstreamQuery appends to dst what a shared exchange asks for r, a
// shareable query in msg: made from its key alone, so that it is the same
// whoever asks. The question lower-cased; RD, CD as asked, and AD (RFC
// 6840 5.7: the upstream says whether it validated the answer; a client
// that asked for neither AD nor DO has it cleared, see personalise); for an
// EDNS query an OPT record of ztdns's own: its UDP size, DO as asked, no
// options. The ID is zero: resolve sets one.
func appendUpstreamQuery(dst, msg []byte, r *dnswire.Query) []byte {
	var ar uint16
	if r.EDNS {
		ar = 1
	}
	dst = binary.BigEndian.AppendUint16(dst, 0)
	dst = binary.BigEndian.AppendUint16(dst, dnswire.FlagRD|dnswire.FlagAD|r.Flags&dnswire.FlagCD)
	dst = binary.BigEndian.AppendUint16(dst, 1)
	dst = binary.BigEndian.AppendUint32(dst, 0) // no answer or authority records
	dst = binary.BigEndian.AppendUint16(dst, ar)
	dst = dnswire.AppendLower(dst, msg[dnswire.HeaderLen:r.NameEnd])
	dst = append(dst, msg[r.NameEnd:r.End]...)
	if r.EDNS {
		dst = dnswire.AppendOPT(dst, r, 0)
	}
	return dst
}

// upstreamKeyLen is one upstream in a cache key: 16-byte address, 2-byte port.
const upstreamKeyLen = 18

// appendKey appends the cache key of a query to dst: flags, qtype, qclass,
// the lower-cased wire name (what appendUpstreamQuery asks, for a
// shareable query), then the upstream set sorted and deduplicated,
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

// entry is one cached reply. msg, ttlOffsets and rotation never change
// once stored, so a hit may read them after the cache lock is released.
type entry struct {
	key        string
	msg        []byte
	ttlOffsets []uint16
	stored     time.Time
	expires    time.Time
	from       netip.AddrPort // the upstream that sent msg
	// rotation is msg's RotationPlan, for a hit that keeps only its first
	// records (appendFromCache): found when the entry is made, for a reply
	// larger than any client's buffer is small (plannedOver), and counted
	// in its cost; nil for one no client's cut leaves records out of.
	rotation   *dnswire.RotationPlan
	prev, next *entry
	// owner is the source charged for the entry, nil once another source
	// used it; oprev and onext link it in the owner's list.
	owner        *owner
	oprev, onext *entry
}

// entryOverhead is what an entry costs besides its key, reply and offsets:
// the struct, its map slot, and the allocator's rounding of three objects.
const entryOverhead = 256

// rotationPlanCost is what an entry's rotation plan holds: one object of
// the allocator's 128-octet class.
const rotationPlanCost = int64(unsafe.Sizeof(dnswire.RotationPlan{}))

// plannedOver is the size of a reply past which a hit may keep only its
// first records, for a client whose buffer takes no more (the resolver's
// firstRecords): 512 octets, the smallest UDP buffer (RFC 1035 4.2.1,
// RFC 6891 6.2.5). Within it, a reply has at most 45 records besides the
// OPT, each of 11 octets at least, and no cut leaves any out.
const plannedOver = 512

// cost is the bytes an entry holds, as the cache's byte bound counts them:
// its rotation plan among them, made with it (newEntry), so that the cost
// is the same when it is stored and when it is removed.
func (e *entry) cost() int64 {
	c := int64(len(e.key) + cap(e.msg) + 2*cap(e.ttlOffsets) + entryOverhead)
	if e.rotation != nil {
		c += rotationPlanCost
	}
	return c
}

// shareDivisor sets a source's share of the cache: an eighth of its bytes
// and of its entries. A source is the client whose query brought a reply in
// (quota.WithSource: the pod, or the address of a client that is no
// known pod). The share only matters once the cache is full: a source
// over it then makes room from its own least recently used entries, and a
// source within it first from sources over theirs, so that one client's
// stream of one-off names replaces its own entries and never more than an
// eighth of what the others use. A fixed fraction rather than a fair share
// of the sources seen lately: it needs no count of active sources, stays
// the same however many there are, and at most fourteen sources can be
// over it at once (seven by bytes, seven by entries).
const shareDivisor = 8

// ownerOverhead is what the record of one source with entries costs: the
// struct and its map slot. There is at most one per entry; the cache's
// byte bound counts them.
const ownerOverhead = 128

// owner is a source with entries charged to it.
type owner struct {
	src     *quota.Source
	bytes   int64
	entries int
	// newest and oldest end the list of its entries (through onext and
	// oprev), most recently used first.
	newest, oldest *entry
	overAt         int // index in cache.over, -1 when within its share
}

// cache is an LRU of upstream replies, bounded in entries and in bytes, with
// a share of both for each source (see shareDivisor).
//
// An entry is charged to the source whose query brought it in, and stops
// being charged to anyone when another source gets a hit on it: it then
// leaves only through the global LRU order (or when it expires), so a
// source can never push out, with its own traffic, a reply that others use
// (it could if entries stayed charged to whoever asked first: ask a name
// others use, then flood). A hit never charges the source that gets it, so
// asking for others' names costs them nothing either.
type cache struct {
	mu           sync.Mutex
	max          int
	maxBytes     int64
	shareEntries int
	shareBytes   int64
	bytes        int64 // entries and owner records
	entries      map[string]*entry
	owners       map[*quota.Source]*owner
	over         []*owner // the sources over their share
	pinned       *owner   // the source a put is for: kept even while it has no entries
	// head.next is the most recently used entry, head.prev the least.
	head entry
}

func newCache(maxEntries int, maxBytes int64) *cache {
	c := &cache{
		max:          maxEntries,
		maxBytes:     maxBytes,
		shareEntries: maxEntries / shareDivisor,
		shareBytes:   maxBytes / shareDivisor,
		entries:      make(map[string]*entry, min(maxEntries, 1024)),
		owners:       make(map[*quota.Source]*owner),
	}
	c.head.next, c.head.prev = &c.head, &c.head
	return c
}

// usage returns the number of entries and the bytes they hold.
func (c *cache) usage() (int, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries), c.bytes
}

// get returns the live entry for key, or nil, for a query from src. An
// expired entry is dropped. A hit from a source other than the one charged
// for the entry makes it shared: charged to no one.
func (c *cache) get(key []byte, now time.Time, src *quota.Source) *entry {
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
	if o := e.owner; o != nil {
		if o.src == src {
			o.unlink(e)
			o.pushFront(e)
		} else {
			c.uncharge(e)
		}
	}
	c.unlink(e)
	c.pushFront(e)
	return e
}

// put stores e for a query from src, replacing any entry with the same key
// and evicting entries until both bounds hold: src's own least recently
// used ones while src is over its share, else those of a source over its
// share, else the least recently used of all. A reply that alone would
// take more than a quarter of the bytes is not kept: it would push out many
// small ones for one big one.
func (c *cache) put(e *entry, src *quota.Source) {
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
	o := c.owner(src)
	c.pinned = o
	for len(c.entries) >= c.max || c.bytes+cost > c.maxBytes {
		v := c.victim(o, cost)
		if v == nil {
			break
		}
		c.remove(v)
		cacheEvictions.Inc()
	}
	c.pinned = nil
	c.entries[e.key] = e
	c.bytes += cost
	cacheBytes.Add(float64(cost))
	cacheEntries.Inc()
	c.pushFront(e)
	e.owner = o
	o.pushFront(e)
	o.bytes += cost
	o.entries++
	c.updateOver(o)
}

// victim is the entry to evict to make room for one of cost bytes charged
// to o, or nil when the cache is empty.
func (c *cache) victim(o *owner, cost int64) *entry {
	if o.oldest != nil && (o.bytes+cost > c.shareBytes || o.entries+1 > c.shareEntries) {
		return o.oldest
	}
	if len(c.over) > 0 {
		return c.over[0].oldest // over its share: it has entries
	}
	if c.head.prev != &c.head {
		return c.head.prev
	}
	return nil
}

// owner returns the record of src, made if it has none.
func (c *cache) owner(src *quota.Source) *owner {
	if o := c.owners[src]; o != nil {
		return o
	}
	o := &owner{src: src, overAt: -1}
	c.owners[src] = o
	c.bytes += ownerOverhead
	cacheBytes.Add(ownerOverhead)
	return o
}

// uncharge takes e off its owner's account, and forgets the owner when it
// has no entries left.
func (c *cache) uncharge(e *entry) {
	o := e.owner
	o.unlink(e)
	e.owner = nil
	o.bytes -= e.cost()
	o.entries--
	c.updateOver(o)
	if o.entries == 0 && o != c.pinned {
		delete(c.owners, o.src)
		c.bytes -= ownerOverhead
		cacheBytes.Sub(ownerOverhead)
	}
}

// updateOver keeps o in c.over exactly while it is over its share.
func (c *cache) updateOver(o *owner) {
	over := o.bytes > c.shareBytes || o.entries > c.shareEntries
	switch {
	case over && o.overAt < 0:
		o.overAt = len(c.over)
		c.over = append(c.over, o)
	case !over && o.overAt >= 0:
		last := c.over[len(c.over)-1]
		c.over[o.overAt], last.overAt = last, o.overAt
		c.over[len(c.over)-1] = nil
		c.over = c.over[:len(c.over)-1]
		o.overAt = -1
	}
}

func (c *cache) remove(e *entry) {
	c.unlink(e)
	delete(c.entries, e.key)
	c.bytes -= e.cost()
	cacheBytes.Sub(float64(e.cost()))
	cacheEntries.Dec()
	if e.owner != nil {
		c.uncharge(e)
	}
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

func (o *owner) unlink(e *entry) {
	if e.oprev != nil {
		e.oprev.onext = e.onext
	} else {
		o.newest = e.onext
	}
	if e.onext != nil {
		e.onext.oprev = e.oprev
	} else {
		o.oldest = e.oprev
	}
	e.oprev, e.onext = nil, nil
}

func (o *owner) pushFront(e *entry) {
	e.oprev, e.onext = nil, o.newest
	if o.newest != nil {
		o.newest.oprev = e
	} else {
		o.oldest = e
	}
	o.newest = e
}

// cacheLifetime says how long a reply may be served from the cache, and
// whether it may be cached at all: RFC 2308 for negative answers (only with
// an SOA), the smallest answer TTL for positive ones, never for truncated or
// failed replies. maxTTL caps the result. A NOERROR reply whose answer is a
// CNAME chain that ends without a record of the asked type is negative, no
// data (RFC 2308 2.2): the record may appear at the chain's end long
// before the chain's own TTLs run out.
func cacheLifetime(s dnswire.Reply, maxTTL time.Duration) (time.Duration, bool) {
	if s.Opcode() != dnswire.OpcodeQuery || s.Flags&dnswire.FlagQR == 0 || s.Flags&dnswire.FlagTC != 0 || s.QDCount != 1 {
		return 0, false
	}
	var ttl uint32
	switch rc := s.Rcode(); {
	case rc == dnswire.RcodeSuccess && s.Answered:
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
// its copy without parsing it; and for a reply some client's cut may
// leave records out of (plannedOver), its rotation plan, so a hit that
// copies only its first records rotates them without walking them all.
func newEntry(key string, msg []byte, s dnswire.Reply, now time.Time, lifetime time.Duration) *entry {
	e := &entry{
		key:        key,
		msg:        msg,
		ttlOffsets: slices.Clip(s.TTLOffsets),
		stored:     now,
		expires:    now.Add(lifetime),
	}
	if len(msg) > plannedOver {
		e.rotation = dnswire.PlanRotation(msg)
	}
	return e
}
