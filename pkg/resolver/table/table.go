// Package table is ztdns's name table: every name a pod can resolve locally,
// built from Services and ServiceEntries and seen through the asking pod's
// namespace.
//
// A Table is immutable once built. A change in the cluster builds a new one
// that the server swaps in atomically, so a query sees the table before or
// after an update, never half of it, and the query path takes no lock. No
// answer is prepared when the table is built: answering a known name writes
// its records straight from the entry's fields (see AppendAnswer), which
// costs about as much as copying them would.
//
// Memory matters (a node agent with 10,000 Services and 10,000 ServiceEntry
// hosts must stay small), so a name holds only what a query needs: SRV
// records live in the entry of the Service they describe, reverse lookups go
// through an index of addresses instead of an entry per PTR name, and what
// every entry of one object shares (where it came from, who sees it) is kept
// once per object.
package table

import (
	"hash/maphash"
	"net/netip"
	"strings"
	"time"
	"unsafe"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/pkg/resolver/vip"
)

// Kinds of objects a name comes from.
const (
	KindService      = "Service"
	KindServiceEntry = "ServiceEntry"
)

// Where an address came from, for operators reading `ztdns table`.
const (
	FromClusterIP = "clusterIP"
	FromEndpoints = "endpoints"
	FromSpec      = "spec"      // ServiceEntry spec.addresses
	FromStatus    = "status"    // ServiceEntry status.addresses (istiod's allocator)
	FromAllocated = "allocated" // ztdns's fallback allocator
)

// Origin names the object an entry was made from.
type Origin struct {
	Kind      string
	Namespace string
	Name      string
}

func (o Origin) String() string { return o.Kind + " " + o.Namespace + "/" + o.Name }

// SRV is one service record.
type SRV struct {
	Port   uint16
	Target string // fqdn
}

// source is what every entry made from one object shares. It is part of
// the builder's state of that object (serviceState, seState), so it costs
// no allocation of its own.
type source struct {
	namespace, name string
	// se is what only a ServiceEntry has; nil for a Service.
	se   *seSource
	ttl  uint32 // of every record
	kind uint8  // index into kinds
	rank uint8  // lower wins when objects claim the same name
	// folded marks the entries of a ServiceEntry's hosts written otherwise
	// than a pod asks for them (upper case, a trailing dot: Folded): they
	// share a copy of the object's source. See compareEntries.
	folded bool
}

// seSource is what only a ServiceEntry's entries share.
type seSource struct {
	// exportTo is nil when the object is visible from every namespace;
	// otherwise the namespaces that see it ("~" in Istio yields an empty,
	// non-nil list: nobody).
	exportTo []string
	created  time.Time
	// noVIP says why none of its hosts gets a VIP, whatever the allocator
	// does ("": they may get one); dynamicDNS: its resolution is
	// DYNAMIC_DNS, with which a wildcard host may get one too. For
	// Table.noRecordsReason.
	noVIP      string
	dynamicDNS bool
}

// kinds are the Kind* constants by source.kind.
var kinds = [...]string{KindService, KindServiceEntry}

const (
	kindService = iota
	kindServiceEntry
)

// Entry is what one object says about one name. Its answers are written
// from these fields when a query asks (as fast as copying prepared bytes,
// and no bytes to keep per entry).
//
// What the common query reads (choose, yieldExternal, held, Restrict, the
// fast path's checks and an A or AAAA answer) is in the entry itself, its
// object's too (ttl, kind, everywhere, unsent): between two queries the
// table is out of the caches, and each pointer followed is a miss (see
// BenchmarkColdLookup), src and its seSource two more. 72 bytes (a test
// holds it there): with its name and addresses it fills size classes
// (pack).
type Entry struct {
	// Addrs are the A and AAAA answers, IPv4 first, and the addresses whose
	// reverse names point back here.
	Addrs []netip.Addr
	// more holds Alias and srv, which few entries have: those without
	// share one (none), so reading them costs no miss.
	*more
	// Name is the canonical owner name: lower case, fully qualified.
	Name string
	src  *source
	// n4 is how many of Addrs are IPv4.
	n4 uint32
	// ttl, kind: src's (setSource), read from here rather than src.
	ttl  uint32
	kind uint8
	// addrSource says where Addrs came from.
	addrSource addrSource
	// ptr says whether the reverse names of Addrs point here.
	ptr bool
	// forward marks a name claimed without records (a headless Service
	// without a ready endpoint, a ServiceEntry host under .svc.<domain>
	// without a VIP): a pod that picks it is forwarded, and gets no other
	// object's answer for the name.
	forward bool
	// passed marks a ServiceEntry host without a VIP outside .svc.<domain>:
	// istiod keeps it as its namespace's object for the name (newer ones
	// there never reach ztunnel), and ztunnel passes over it, to other
	// namespaces' objects and to wildcards.
	passed bool
	// everywhere: every namespace sees it (no exportTo in src: VisibleFrom).
	everywhere bool
	// unsent: src ranks rankUnsent (yieldExternal).
	unsent bool
}

// more is what few entries have. Entries that have the same SRV sets and
// no alias share one (names.moreOf).
type more struct {
	// Alias is the CNAME target of an ExternalName Service (fqdn), or "".
	Alias string
	// srv are the SRV record sets of the name's named ports, sorted by
	// prefix; an endpoint's name has one with prefix "": the records at
	// the name itself (ownSRV).
	srv []srvSet
}

// none is the more of every entry without an alias or SRV records. Never
// written.
var none = &more{}

// setSource makes src e's source, and copies what queries read of it.
func (e *Entry) setSource(src *source) {
	e.src, e.ttl, e.kind, e.unsent = src, src.ttl, src.kind, src.rank == rankUnsent
	e.everywhere = src.se == nil || src.se.exportTo == nil
}

// addrSource says where an entry's addresses came from: one value per
// From* constant, kept in a byte; addrSources names them.
type addrSource uint8

const (
	addrNone addrSource = iota // no addresses (an ExternalName alias)
	addrClusterIP
	addrEndpoints
	// addrEndpointName: a headless Service's endpoint name's, from
	// endpoints too; a value of its own, so that yieldExternal tells one
	// in a compare.
	addrEndpointName
	addrSpec
	addrStatus
	addrAllocated
	// addrNoVIP: none, although istiod's rules give the host a VIP
	// (Table.HostsWithoutVIP). A value of its own rather than a field
	// keeps Entry small (see Entry).
	addrNoVIP
)

// addrSources are the From* constants by addrSource.
var addrSources = [...]string{
	addrNone:         "",
	addrClusterIP:    FromClusterIP,
	addrEndpoints:    FromEndpoints,
	addrEndpointName: FromEndpoints,
	addrSpec:         FromSpec,
	addrStatus:       FromStatus,
	addrAllocated:    FromAllocated,
	addrNoVIP:        "",
}

// AddrSource says where Addrs came from (one of the From* constants).
func (e *Entry) AddrSource() string { return addrSources[e.addrSource] }

// srvSet is the answer to _port._proto.<entry name>, or with prefix "" to
// SRV at the entry's name.
type srvSet struct {
	prefix string // "_http._tcp.", or ""
	// records are the set's records; nil when it is one record that points
	// at the entry's own name (a Service's port, the usual case), on port.
	records []SRV
	port    uint16
}

// ownSRV returns the set of SRV records at e's own name, nil when it has
// none (sorted by prefix, it comes first).
func (e *Entry) ownSRV() *srvSet {
	if len(e.srv) > 0 && e.srv[0].prefix == "" {
		return &e.srv[0]
	}
	return nil
}

// recordsOf returns the set's records, e being the entry that holds it.
func (s *srvSet) recordsOf(e *Entry) []SRV {
	if s.records == nil {
		return []SRV{{Port: s.port, Target: e.Name}}
	}
	return s.records
}

// Origin returns the object the entry was made from.
func (e *Entry) Origin() Origin { return originOf(e.src) }

// VisibleFrom reports whether a pod in namespace ns sees the entry. The
// empty namespace is an asker that is not a known pod: it sees only what is
// exported everywhere.
func (e *Entry) VisibleFrom(ns string) bool {
	if e.everywhere {
		return true
	}
	for _, n := range e.src.se.exportTo {
		if n == ns {
			return ns != ""
		}
	}
	return false
}

// Options shape a table.
type Options struct {
	// Domain is the cluster domain, e.g. "cluster.local".
	Domain string
	// TTL of the answers made for Services (cluster names: kube-dns's),
	// in seconds.
	TTL uint32
	// ServiceEntryTTL is that of a ServiceEntry host's answers and of its
	// NODATA's SOA, in seconds: Istio's DNS proxies give every record they
	// make 30 s (ztunnel's DEFAULT_TTL_SECONDS, the sidecar's defaultTTLInSeconds),
	// and kube-dns never answers these names. 0: DefaultServiceEntryTTL.
	ServiceEntryTTL uint32
	// VIPSource says where auto-allocated VIPs come from (default auto).
	VIPSource vip.Source
	// DefaultExportTo is the exportTo of a ServiceEntry that gives none, as
	// Istio's MeshConfig defaultServiceExportTo: "." its own namespace, "*"
	// all, "~" none, or namespace names (ParseExportTo). Empty: the
	// snapshot's (model.Snapshot.DefaultExportTo, Istio's mesh config as
	// the source reads it), else "*", Istio's default.
	DefaultExportTo []string
	// MaxNamesPerNamespace bounds the names one namespace's objects make
	// in the table (see nsBudget); 0: no bound.
	MaxNamesPerNamespace int
}

// Defaults for Options.
const (
	DefaultDomain          = "cluster.local"
	DefaultTTL             = 30
	DefaultServiceEntryTTL = 30
)

// Table maps names and addresses to entries. The zero value is an empty
// table.
//
// Names and addresses are spread over shards by a hash so that a new table
// can share every shard of the last one but those holding a changed key (see
// Builder).
type Table struct {
	domain    string // "cluster.local." (lower case, trailing dot)
	svcDomain string // ".svc.cluster.local."
	names     [numShards]shard[string]
	// reverse finds the entries that hold an address, for PTR queries.
	reverse [numShards]shard[addrKey]
	// wildcards holds "*.example.com" entries under "example.com.".
	wildcards shard[string]
	ttl       uint32
	// serial is the SOA serial: when the table was built (Unix seconds), as
	// CoreDNS's kubernetes plugin counts it.
	serial uint32
	size   int
	// vipsFrom: where the ServiceEntries' VIPs came from
	// (Builder.VIPsFrom), which says why a host has none.
	vipsFrom vip.From
	// vips counts the auto-allocating hosts by what they lack, and those
	// holding an IPv4 VIP (vipCounts.count).
	vips vipCounts
}

// vipCounts count ServiceEntry hosts that istiod's rules give a VIP, per
// entry and host.
type vipCounts struct {
	noVIP, noIPv4, ipv4 int
}

// numShards trades the cost of copying a shard on a change (a 1/256th of
// the keys) against the per-table array of shard maps.
const numShards = 256

// addrKey is an address as a reverse-index key: 16 bytes without a pointer
// (a netip.Addr is 24, with one). IPv4 addresses are 4-in-6.
type addrKey [16]byte

func keyOf(a netip.Addr) addrKey { return a.As16() }

var shardSeed = maphash.MakeSeed()

func shardOf(name string) uint32 {
	return uint32(maphash.String(shardSeed, name) % numShards)
}

func shardOfAddr(k addrKey) uint32 {
	return uint32(maphash.Bytes(shardSeed, k[:]) % numShards)
}

// shard maps keys to their entries. Nearly every key has one entry, kept in
// one without a list; the keys that several entries claim (a host in two
// ServiceEntries, a pod behind two headless Services) have their ordered
// list in many, whose first element is also in one. A name's list in served
// leaves out the entries that are not their namespace's object for it
// (servedOf), for the few names that have such entries: lookups choose
// among the rest.
type shard[K comparable] struct {
	one    map[K]*Entry
	many   map[K][]*Entry
	served map[K][]*Entry
}

// get returns the entries of k that lookups choose from.
func (s *shard[K]) get(k K) bucket {
	e := s.one[k]
	if e == nil || len(s.many) == 0 {
		return bucket{one: e}
	}
	list := s.many[k]
	if list == nil {
		return bucket{one: e} // one entry: no list in served either
	}
	if l, ok := s.served[k]; ok {
		list = l
	}
	if len(list) < 2 {
		return bucket{one: e}
	}
	return bucket{one: e, many: list}
}

// serve remakes k's list in served from its list in many.
func (s *shard[K]) serve(k K) {
	l := servedOf(s.many[k])
	if l == nil {
		delete(s.served, k)
		return
	}
	if s.served == nil {
		s.served = map[K][]*Entry{}
	}
	s.served[k] = l
}

// servedOf is list, one name's entries in compareEntries order, without
// those istiod does not serve: of each namespace it keeps one object per
// name, its Service, else its oldest ServiceEntry, whatever their exportTo
// (selectWorkloadServices), so a newer ServiceEntry there never reaches
// ztunnel, from any namespace. A name istiod sends ztunnel nothing of
// (rankUnsent: a Service it does not send, an endpoint name) is no
// namespace's object and stays. Hosts written otherwise
// than asked go too, when another object's is written as asked
// (shadowsFolded). Nil when list loses none.
func servedOf(list []*Entry) []*Entry {
	var seen nsSet
	var out []*Entry
	shadow := shadowsFolded(list)
	for i, e := range list {
		drop := shadow && e.src.folded
		if !drop && e.rank() != rankUnsent {
			if drop = seen.has(e.src.namespace); !drop {
				seen.add(e.src.namespace)
			}
		}
		if drop {
			if out == nil {
				out = append(make([]*Entry, 0, len(list)-1), list[:i]...)
			}
			continue
		}
		if out != nil {
			out = append(out, e)
		}
	}
	return out
}

// bucket is the entries of one key, in order: one, or many when several.
type bucket struct {
	one  *Entry
	many []*Entry // nil unless several; many[0] == one
}

func (b bucket) len() int {
	if b.many != nil {
		return len(b.many)
	}
	if b.one != nil {
		return 1
	}
	return 0
}

func (b bucket) at(i int) *Entry {
	if b.many != nil {
		return b.many[i]
	}
	return b.one
}

// lookup returns the entries of an exact name.
func (t *Table) lookup(name string) bucket {
	return t.names[shardOf(name)].get(name)
}

// Domain returns the cluster domain as a fully qualified name.
func (t *Table) Domain() string { return t.domain }

// TTL returns the TTL of the answers made for Services, in seconds (a
// ServiceEntry host's: Entry.TTL).
func (t *Table) TTL() uint32 { return t.ttl }

// rank is e's place among the objects that claim its name (see the
// rank constants): its object's, but a headless Service's endpoint name
// ranks as a Service istiod sends ztunnel nothing of, for ztunnel's DNS
// has no pod records: a ServiceEntry naming it, exactly or by a wildcard,
// answers wherever it is visible, as ztunnel answers it, and one of the
// Service's namespace is that namespace's object for the name (servedOf).
// yieldExternal spells this test out, to inline: a change here goes there.
func (e *Entry) rank() uint8 {
	if e.addrSource == addrEndpointName {
		return rankUnsent
	}
	return e.src.rank
}

// TTL returns the TTL of the entry's records and of its NODATA's SOA, in
// seconds: its object's kind's (Options.TTL, Options.ServiceEntryTTL).
func (e *Entry) TTL() uint32 { return e.ttl }

// Len returns the number of distinct names (exact and wildcard, those held
// without records included; reverse and SRV names not counted).
func (t *Table) Len() int { return t.size }

// Result is the outcome of resolving a query name in a namespace.
type Result struct {
	// Entry holds the records. nil means the name is unknown here: forward.
	Entry *Entry
	// Alias, when set, is the name the query is a search-list expansion of:
	// the reply is a CNAME from the query name to Alias, then Alias's records.
	Alias string
	// srv is set when the name was an SRV name of Entry; owners when it was
	// a reverse name: the entries its PTR records name (Entry is the first).
	srv    *srvSet
	owners bucket
	// t and qname make the SOA of a negative answer.
	t     *Table
	qname string
	// hide are the families whose auto-allocated VIPs the asker does not
	// get (Restrict).
	hide Families
}

// Families is a set of IP families: those a client has addresses of.
type Families uint8

const (
	IPv4 Families = 1 << iota
	IPv6
	// BothFamilies is a dual-stack client's.
	BothFamilies = IPv4 | IPv6
)

// Restrict makes r what a client whose addresses are of the families f
// gets (0: not known, as BothFamilies): of a ServiceEntry host's
// auto-allocated VIPs (istiod's status.addresses, ztdns's allocator) only
// those of its families, as Istio's sidecar proxy filters them
// (getAllAddressesForProxy: a proxy that is not dual-stack gets its own
// family's). Its query for the other family is NODATA, and a host none of
// whose VIPs it can use is no name of the sidecar's: r becomes unknown
// (forwarded). A ServiceEntry's own spec.addresses, which the sidecar
// leaves alone, and a Service's addresses, kube-dns's answer, are kept.
// Small enough to inline: for a client that is no known pod (0) it costs
// a compare, for a dual-stack one two; the pod cache has worked out the
// pod's families when it was rebuilt (podcache.Pod.Families).
func (r *Result) Restrict(f Families) {
	if f != 0 && f != BothFamilies && r.Entry != nil {
		r.restrict(f)
	}
}

// restrict is Restrict for a single-family client.
func (r *Result) restrict(f Families) {
	e := r.Entry
	if !e.autoVIPs() || r.srv != nil || r.owners.one != nil {
		return
	}
	r.hide = BothFamilies &^ f
	if len(r.family(dns.TypeA))+len(r.family(dns.TypeAAAA)) == 0 {
		r.Entry, r.Alias = nil, ""
	}
}

// autoVIPs reports whether e's addresses are auto-allocated VIPs.
func (e *Entry) autoVIPs() bool {
	return e.addrSource == addrStatus || e.addrSource == addrAllocated
}

// family returns the addresses of r's entry of qtype's family (A: IPv4;
// AAAA, or any other: IPv6) that the asker gets (Restrict).
func (r *Result) family(qtype uint16) []netip.Addr {
	hidden := IPv6
	if qtype == dns.TypeA {
		hidden = IPv4
	}
	if r.hide&hidden != 0 {
		return nil
	}
	return r.Entry.family(qtype)
}

// family returns e's IPv4 addresses for A, its IPv6 ones otherwise.
func (e *Entry) family(qtype uint16) []netip.Addr {
	if qtype == dns.TypeA {
		return e.Addrs[:e.n4]
	}
	return e.Addrs[e.n4:]
}

// Resolve finds what a pod in namespace ns gets for qname (lower case, fully
// qualified). In order: the exact name (see yieldExternal); a reverse name
// (PTR); an SRV name of a Service; a wildcard ServiceEntry covering it; a
// Kubernetes short form ("svc" from the pod's own namespace, "svc.ns",
// "svc.ns.svc"), its full name or a wildcard covering that; and finally a
// search-list expansion (see expansion). The names and wildcards come in the
// order ztunnel tries them (find_server), and a name claimed without records
// ends the search: forwarded. qname must stay unchanged while the result is
// used.
func (t *Table) Resolve(qname, ns string) (r Result) {
	t.resolve(&r, qname, ns)
	r.t, r.qname = t, qname
	return r
}

func (t *Table) resolve(r *Result, qname, ns string) {
	if e, claimed := held(t.yieldExternal(choose(t.lookup(qname), ns), qname, ns)); claimed {
		r.Entry = e
		return
	}
	if a, ok := parseReverse(qname); ok {
		if a.Is4In6() {
			return // no table address has that name: addresses are unmapped
		}
		k := keyOf(a)
		if r.owners = t.ptrOwners(t.reverse[shardOfAddr(k)].get(k), ns); r.owners.one != nil {
			r.Entry = r.owners.one
		}
		return
	}
	if t.srvName(r, qname, ns) {
		return
	}
	if e, claimed := t.wildcard(qname, ns); claimed {
		r.Entry = e
		return
	}
	if e, claimed := t.shortForm(qname, ns); claimed {
		r.Entry = e
		return
	}
	r.Alias, r.Entry = t.expansion(qname, ns)
}

// ptrOwners chooses the names an address's PTR records give, from the
// entries that hold it (endpoints first, see compareOwners): the names of
// every endpoint with that address, as kube-dns answers (an endpoint's
// hostname record is more specific than its Service, and a pod behind two
// headless Services has a name in each), up to the maxPTROwners the table
// keeps; else a Service whose ClusterIP it is; otherwise the one owner pick
// chooses among all the others. The result is a part of entries: nothing is
// allocated.
func (t *Table) ptrOwners(entries bucket, ns string) bucket {
	if n := leadingEndpoints(entries.many); n > 1 {
		return bucket{one: entries.many[0], many: entries.many[:n]}
	}
	if entries.one != nil && (entries.one.isEndpoint() || entries.one.kind == kindService) {
		// The only endpoint (many[0] is one), or a Service's ClusterIP:
		// kube-dns answers it, and Istio forwards PTR queries there, from
		// every namespace, whatever ServiceEntry also lists the address.
		return bucket{one: entries.one}
	}
	if e := t.pick(entries, ns); e != nil {
		return bucket{one: e}
	}
	return bucket{}
}

// srvName resolves "_port._proto.<name>" to name's SRV set. A port the
// Service does not have is no name here: forwarded.
func (t *Table) srvName(r *Result, qname, ns string) bool {
	if len(qname) == 0 || qname[0] != '_' {
		return false
	}
	i := strings.IndexByte(qname, '.')
	if i < 0 || i+1 >= len(qname) || qname[i+1] != '_' {
		return false
	}
	j := strings.IndexByte(qname[i+1:], '.')
	if j < 0 {
		return false
	}
	cut := i + 1 + j + 1
	e := t.pick(t.lookup(qname[cut:]), ns)
	if e == nil {
		return false
	}
	for k := range e.srv {
		if e.srv[k].prefix == qname[:cut] {
			r.Entry, r.srv = e, &e.srv[k]
			return true
		}
	}
	return false
}

// SearchBase returns the name qname was expanded from when it looks like a
// search-list expansion for a pod in ns (see bases), or "" otherwise. The base
// need not be known: the server's autopath uses it to resolve unknown names
// in one round trip.
func (t *Table) SearchBase(qname, ns string) string {
	b, n, _ := t.bases(qname, ns)
	if n == 0 {
		return ""
	}
	return b[0]
}

// Find resolves a fully qualified name exactly or through a wildcard, without
// short forms or search expansions: the lookup for CNAME targets.
func (t *Table) Find(name, ns string) *Entry {
	e, _ := t.find(name, ns)
	return e
}

// FindService resolves a fully qualified name as kube-dns does: to a
// Service's name or a headless Service's endpoint name; nil for any other
// (a ServiceEntry host, a name under a wildcard) and for a name held
// without records. The lookup for an ExternalName's target: istiod sends
// ztunnel no ExternalName Service, so kube-dns answers it and follows the
// CNAME to its own records or upstream, never to a ServiceEntry's VIP.
func (t *Table) FindService(name string) *Entry {
	b := t.lookup(name)
	for i := range b.len() {
		if e := b.at(i); e.kind == kindService {
			e, _ = held(e)
			return e
		}
	}
	return nil
}

// find is one name ztunnel tries: the name, then the wildcards covering it;
// claimed as held.
func (t *Table) find(name, ns string) (*Entry, bool) {
	if e, claimed := held(t.yieldExternal(choose(t.lookup(name), ns), name, ns)); claimed {
		return e, true
	}
	return t.wildcard(name, ns)
}

// exactChoice is the entry that decides name itself for a pod in ns, as
// resolve and find choose it. Rows shows this choice, so `ztdns table`
// cannot tell another story than the resolver.
func (t *Table) exactChoice(name, ns string) *Entry {
	return t.yieldExternal(choose(t.lookup(name), ns), name, ns)
}

// yieldExternal is e, choose's entry for name itself, but a name ztunnel
// has no record of (Entry.rank rankUnsent: an ExternalName Service, one of
// a namespace istiod does not select, a headless Service's endpoint name)
// yields to a wildcard covering it (ztunnel finds the wildcard). Small
// enough to inline, with the rank spelled out from the entry's own copy
// (a call to Entry.rank would not inline, and it reads src: a miss): the
// usual entry costs resolve no call here.
func (t *Table) yieldExternal(e *Entry, name, ns string) *Entry {
	if e != nil && (e.unsent || e.addrSource == addrEndpointName) {
		return t.wildcardOr(e, name, ns)
	}
	return e
}

// wildcardOr is the wildcard that decides name for a pod in ns, else e:
// yieldExternal's rare path, kept out of line so yieldExternal inlines.
//
//go:noinline
func (t *Table) wildcardOr(e *Entry, name, ns string) *Entry {
	if w := t.wildcardChoice(name, ns); w != nil {
		return w
	}
	return e
}

// pick is choose's entry when it has records: nil also for a name held
// without records (Entry.forward).
func (t *Table) pick(entries bucket, ns string) *Entry {
	e, _ := held(choose(entries, ns))
	return e
}

// choose is the entry that decides one key for a pod in ns, as ztunnel
// chooses: one from the asker's own namespace first, else the first visible
// in build order (the Service, else the oldest ServiceEntry: istiod's
// canonical one, else a Service it does not send, rankUnsent). entries are the objects
// istiod serves, one per namespace (shard.get), and exportTo applies to
// those: a namespace whose object the asker cannot see gives it nothing,
// as one whose object is passed over (Entry.passed). One held without
// records (Entry.forward) decides too; nil when none does.
func choose(entries bucket, ns string) *Entry {
	var e *Entry
	if entries.many == nil { // one entry, or none: the usual case
		if entries.one != nil && entries.one.VisibleFrom(ns) {
			e = entries.one
		}
	} else if i := pickIndex(entries.many, ns); i >= 0 {
		e = entries.many[i]
	}
	if e == nil || e.passed {
		return nil
	}
	return e
}

// held is what a lookup gets from the entry that decides a name: its
// records; (nil, true), claimed, from one held without records: forwarded,
// not looked up further; (nil, false) when no entry decides it.
func held(e *Entry) (*Entry, bool) {
	if e != nil && e.forward {
		return nil, true
	}
	return e, e != nil
}

// pickIndex is choose's choice among several entries, as an index, -1 for
// none.
func pickIndex(entries []*Entry, ns string) int {
	first, ownOut := -1, false
	for i, e := range entries {
		own := ns != "" && e.src.namespace == ns
		switch {
		case e.passed || !e.VisibleFrom(ns):
			ownOut = ownOut || own
		case own && e.rank() != rankUnsent:
			return i
		case first < 0:
			first = i
		}
		if first >= 0 && (ns == "" || ownOut) {
			return first
		}
	}
	return first
}

// nsSet is a set of namespaces that allocates nothing while it is small.
type nsSet struct {
	few  [4]string
	n    int
	many map[string]bool
}

func (s *nsSet) add(ns string) {
	switch {
	case s.has(ns):
	case s.n < len(s.few):
		s.few[s.n] = ns
		s.n++
	default:
		if s.many == nil {
			s.many = map[string]bool{}
		}
		s.many[ns] = true
	}
}

func (s *nsSet) has(ns string) bool {
	for _, x := range s.few[:s.n] {
		if x == ns {
			return true
		}
	}
	return s.many[ns]
}

// shortForm maps the names a pod may use for a Service to the full name,
// found as find finds it. The candidate is assembled in a stack buffer so a
// miss costs no allocation.
func (t *Table) shortForm(qname, ns string) (*Entry, bool) {
	var buf [256]byte
	dots := strings.Count(qname, ".")
	var b []byte
	switch {
	case dots == 1 && ns != "": // "svc." from a pod in ns
		b = append(append(append(buf[:0], qname...), ns...), t.svcDomain...)
	case dots == 2: // "svc.ns."
		b = append(append(buf[:0], qname[:len(qname)-1]...), t.svcDomain...)
	case dots == 3 && strings.HasSuffix(qname, ".svc."): // "svc.ns.svc."
		b = append(append(buf[:0], qname...), t.domain...)
	default:
		return nil, false
	}
	if len(b) > len(buf) {
		return nil, false
	}
	return t.find(unsafe.String(&b[0], len(b)), ns) // b lives on this frame; find keeps nothing
}

// wildcard finds the most specific "*.suffix" entry covering qname; claimed
// as held.
func (t *Table) wildcard(qname, ns string) (*Entry, bool) {
	return held(t.wildcardChoice(qname, ns))
}

// wildcardChoice is the entry of the most specific wildcard that decides
// qname for a pod in ns (as choose), or nil.
func (t *Table) wildcardChoice(qname, ns string) *Entry {
	if len(t.wildcards.one) == 0 {
		return nil
	}
	for i := strings.IndexByte(qname, '.'); i >= 0 && i+1 < len(qname); {
		suffix := qname[i+1:]
		if e := choose(t.wildcards.get(suffix), ns); e != nil {
			return e
		}
		j := strings.IndexByte(suffix, '.')
		if j < 0 {
			break
		}
		i += j + 1
	}
	return nil
}

// expansion finds the name qname is a search-list expansion of, and its
// entry, as Istio's proxy answers them: a known name outside the cluster
// domain (a ServiceEntry host, exact or under a wildcard) under any of the
// three suffixes kubelet's search list appends, and a Service's short form
// "svc.ns" or "svc.ns.svc" under the first one, the pod's own namespace's
// (productpage.ns1.ns1.svc.cluster.local is productpage.ns1). A name inside
// the cluster domain is never expanded: no Kubernetes name has the shape
// "<cluster name>.<search domain>", and kube-dns denies it.
func (t *Table) expansion(qname, ns string) (string, *Entry) {
	b, n, own := t.bases(qname, ns)
	for i, base := range b[:n] {
		if t.inDomain(base) {
			continue
		}
		e, claimed := t.find(base, ns)
		if !claimed && i == 0 && own && strings.Count(base, ".") >= 2 {
			e, claimed = t.shortForm(base, ns)
		}
		switch {
		case e != nil:
			return base, e
		case claimed:
			return "", nil
		}
	}
	return "", nil
}

// inDomain reports whether name is the cluster domain or below it.
func (t *Table) inDomain(name string) bool { return inZone(name, t.domain) }

// inZone reports whether name is zone or below it (both fully qualified).
func inZone(name, zone string) bool {
	return zone != "" && strings.HasSuffix(name, zone) && (len(name) == len(zone) || name[len(name)-len(zone)-1] == '.')
}

// bases strips the suffixes kubelet's search list appends, longest first:
// ".<ns>.svc.<domain>" (own reports that b[0] is this one),
// ".svc.<domain>", ".<domain>". Each base keeps its trailing dot and is a
// substring of qname, so nothing is allocated.
func (t *Table) bases(qname, ns string) (b [3]string, n int, own bool) {
	if t.domain == "" {
		return b, 0, false
	}
	if strings.HasSuffix(qname, t.svcDomain) {
		rest := qname[:len(qname)-len(t.svcDomain)+1] // "<base>.<ns>."
		if k := len(rest) - len(ns) - 1; ns != "" && k > 1 && rest[k-1] == '.' && rest[k:len(rest)-1] == ns {
			b[n] = rest[:k]
			n++
			own = true
		}
		if len(rest) > 1 {
			b[n] = rest
			n++
		}
	}
	if len(qname) > len(t.domain)+1 && strings.HasSuffix(qname, t.domain) && qname[len(qname)-len(t.domain)-1] == '.' {
		b[n] = qname[:len(qname)-len(t.domain)]
		n++
	}
	return b, n, own
}
