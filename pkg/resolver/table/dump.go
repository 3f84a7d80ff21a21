package table

import (
	"cmp"
	"context"
	"iter"
	"net/netip"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/ztdns/ztdns/pkg/resolver/vip"
)

// Row is one record set as an operator sees it in `ztdns table`.
type Row struct {
	Name   string   `json:"name"`
	Type   string   `json:"type"`
	Values []string `json:"values"`
	// Origin is "ServiceEntry ns/name" or "Service ns/name".
	Origin string `json:"origin"`
	// AddrSource says where addresses came from: clusterIP, endpoints, spec,
	// status or allocated.
	AddrSource string `json:"addrSource,omitempty"`
	// Forwarded marks a name Origin holds without records (a headless
	// Service without a ready endpoint, a ServiceEntry host under
	// .svc.<domain> without a VIP): every query for it is forwarded, and no
	// wildcard or other object answers it. Its row has type ForwardedType
	// and the one value ForwardedValue.
	Forwarded bool `json:"forwarded,omitempty"`
	// Reason says why a name is forwarded, or answered by a wildcard in
	// place of a ServiceEntry host without a VIP: "no ready endpoint",
	// "no VIP: istiod has not allocated one", …
	Reason string `json:"reason,omitempty"`
}

// The type and value of a Forwarded row.
const (
	ForwardedType  = "-"
	ForwardedValue = "(forwarded)"
)

// Rows lists every name a pod in namespace ns can resolve, with what it
// resolves to and where that came from, as the resolver decides it: a name
// whose ExternalName Service yields to a wildcard shows the wildcard's
// addresses, and a name held without records is listed as forwarded. A
// ServiceEntry host without a VIP that pods pass over is listed as the
// resolver answers it: by a wildcard covering it, else forwarded, with the
// reason it has no VIP (when another namespace's object answers it, that
// one is listed). Names the namespace cannot see are left out. The empty
// namespace lists what an unknown client sees.
//
// Rows are in the order of AllRows; Rows builds them all, AllRows one
// name at a time.
func (t *Table) Rows(ns string) []Row {
	return slices.Collect(t.AllRows(context.Background(), ns))
}

// AllRows yields the rows of Rows one name at a time, in order: names
// first, reverse-lookup names (PTR) after them, each part by name, then
// type. It first sorts an index of the names that may have rows (a
// string or an address each, 16 bytes, 32 for an SRV name: no row), then
// makes each name's rows when it comes to it: a caller that stops early
// has made no more.
//
// It runs beside the DNS server, on the same cores: every paceYield of its
// work it lets goroutines that wait for a core run, and it stops, yielding
// no more, once ctx is done, which it looks at every paceSteps steps. So
// the index of a table of 200,000 names, a second or more of a core, holds
// no DNS server goroutine off a core for more than a millisecond, and a
// caller that goes away while it is built costs no more of it.
func (t *Table) AllRows(ctx context.Context, ns string) iter.Seq[Row] {
	return func(yield func(Row) bool) {
		p := newPacer(ctx)
		idx := t.rowIndex(ns, p)
		if idx == nil {
			return // ctx is done
		}
		var group []Row
		var next [numLists]int // each list's next item
		for {
			if !p.step() {
				return
			}
			// The items of the least name left, its rows sorted by type.
			least, ok := idx.least(next)
			if !ok {
				return
			}
			group = group[:0]
			for l := range numLists {
				for ; next[l] < idx.len(l) && compareItems(idx.item(l, next[l]), least) == 0; next[l]++ {
					if l == listSRV && next[l] > 0 && idx.srvs[next[l]] == idx.srvs[next[l]-1] {
						continue // one SRV item stands for every set of its prefix
					}
					group = t.appendItemRows(group, idx.item(l, next[l]), ns)
				}
			}
			slices.SortStableFunc(group, func(a, b Row) int { return cmp.Compare(a.Type, b.Type) })
			for _, r := range group {
				if !yield(r) {
					return
				}
			}
			clear(group) // no row outlives its name
		}
	}
}

// rowIndex is what AllRows walks: the names with rows for a namespace, in
// three sorted lists merged as they are walked.
type rowIndex struct {
	// names are exact names (their keys in Table.names) and wildcards
	// ("*.example.com.", under example.com. in Table.wildcards): their
	// rows but SRV.
	names []string
	// srvs are the SRV sets' names.
	srvs []srvItem
	// ptrs are every address with a reverse name: which of them ns sees
	// is chosen once, when its row is made (appendItemRows).
	ptrs []addrKey
}

// The lists of a rowIndex.
const (
	listNames = iota
	listSRV
	listPTR
	numLists
)

// srvItem is the name of the SRV sets of prefix of the entry of name.
type srvItem struct{ prefix, name string }

func (x *rowIndex) len(l int) int {
	switch l {
	case listNames:
		return len(x.names)
	case listSRV:
		return len(x.srvs)
	}
	return len(x.ptrs)
}

func (x *rowIndex) item(l, i int) rowItem {
	var it rowItem
	switch l {
	case listNames:
		it = rowItem{name: x.names[i]}
	case listSRV:
		it = rowItem{prefix: x.srvs[i].prefix, name: x.srvs[i].name}
	default:
		return rowItem{addr: x.ptrs[i], kind: itemReverse}
	}
	if isWildcard(it.name) {
		it.kind = itemWildcard
	}
	return it
}

// least is the least of the lists' next items.
func (x *rowIndex) least(next [numLists]int) (rowItem, bool) {
	var least rowItem
	ok := false
	for l := range numLists {
		if next[l] == x.len(l) {
			continue
		}
		if it := x.item(l, next[l]); !ok || compareItems(it, least) < 0 {
			least, ok = it, true
		}
	}
	return least, ok
}

// rowItem is one name of a rowIndex: prefix+name is a row's name. Its rows
// are made from it when their turn comes.
type rowItem struct {
	// prefix is an SRV set's "_http._tcp." (its rows are that set's), ""
	// for the name's other rows.
	prefix string
	// name is an exact name or a wildcard's; "" for a reverse name.
	name string
	// addr is the address of a reverse name.
	addr addrKey
	kind itemKind
}

type itemKind uint8

const (
	itemName itemKind = iota
	itemWildcard
	itemReverse
)

// rowIndex lists, sorted, the names with rows for ns and every reverse
// name; nil when p stops it.
func (t *Table) rowIndex(ns string, p *pacer) *rowIndex {
	// Sized for every name and address: an index held while the rows are
	// written is not twice its size for having grown.
	addrs := 0
	for i := range t.reverse {
		addrs += len(t.reverse[i].one)
	}
	x := &rowIndex{names: make([]string, 0, t.size), ptrs: make([]addrKey, 0, addrs)}
	srvItems := func(e *Entry) {
		for _, set := range e.srv {
			if set.prefix != "" { // the name's own set is one of its rows
				x.srvs = append(x.srvs, srvItem{prefix: set.prefix, name: e.Name})
			}
		}
	}
	for i := range t.names {
		for k := range t.names[i].one {
			if !p.step() {
				return nil
			}
			if e := t.exactChoice(k, ns); e != nil {
				x.names = append(x.names, k)
				if e.Name == k && !e.forward {
					srvItems(e)
				}
			} else if passedOver(t.lookup(k), ns) != nil {
				x.names = append(x.names, k)
			}
		}
	}
	for k := range t.wildcards.one {
		if !p.step() {
			return nil
		}
		if e := choose(t.wildcards.get(k), ns); e != nil {
			x.names = append(x.names, e.Name)
			if !e.forward {
				srvItems(e)
			}
		} else if p := passedOver(t.wildcards.get(k), ns); p != nil {
			x.names = append(x.names, p.Name)
		}
	}
	for i := range t.reverse {
		for k := range t.reverse[i].one {
			if !p.step() {
				return nil
			}
			x.ptrs = append(x.ptrs, k)
		}
	}
	var ok bool
	x.names, ok = sortPaced(x.names, p, func(a, b string) int {
		return compareItems(rowItem{name: a}, rowItem{name: b})
	})
	if !ok {
		return nil
	}
	x.srvs, ok = sortPaced(x.srvs, p, func(a, b srvItem) int {
		return compareItems(rowItem{prefix: a.prefix, name: a.name}, rowItem{prefix: b.prefix, name: b.name})
	})
	if !ok {
		return nil
	}
	x.ptrs, ok = sortPaced(x.ptrs, p, func(a, b addrKey) int {
		return compareItems(rowItem{addr: a, kind: itemReverse}, rowItem{addr: b, kind: itemReverse})
	})
	if !ok {
		return nil
	}
	return x
}

// Pacing of AllRows' work. Every paceSteps steps of it (a name looked at,
// sorted or merged, a name's rows made) it looks whether its caller is
// still there; a step is at most a sorted run's share of comparisons
// (log2 of paceSteps, each of two names spelled out), so paceSteps of them
// take well under a millisecond. Every paceYield it looks whether
// goroutines wait for a core (those of the DNS server, when the node's
// queries keep its other cores busy), and lets them run if so: they wait
// that long behind it, not the 10 ms after which Go would make it let go.
// When none waits it keeps its core: letting go then would only send it
// to another core (woken for it), among the DNS server's goroutines.
const (
	paceSteps = 256
	paceYield = 500 * time.Microsecond
)

// pacer spaces AllRows' work out: see paceSteps.
type pacer struct {
	ctx     context.Context
	n       int       // steps since the last look at ctx
	looked  time.Time // when it last looked for goroutines waiting
	waiting []metrics.Sample
}

func newPacer(ctx context.Context) *pacer {
	return &pacer{ctx: ctx, looked: time.Now(), waiting: []metrics.Sample{{Name: "/sched/goroutines/runnable:goroutines"}}}
}

// step counts a step of work, and every paceSteps pauses.
func (p *pacer) step() bool {
	if p.n++; p.n < paceSteps {
		return true
	}
	return p.pause()
}

// pause lets goroutines that wait for a core run (every paceYield), and
// says whether the caller is still there.
func (p *pacer) pause() bool {
	p.n = 0
	if now := time.Now(); now.Sub(p.looked) >= paceYield {
		p.looked = now
		if metrics.Read(p.waiting); p.waiting[0].Value.Uint64() > 0 {
			runtime.Gosched()
		}
	}
	return p.ctx.Err() == nil
}

// sortPaced sorts s by cmp in steps p spaces out, and returns it sorted
// (in s, or in a slice of its length) or, when p stops it, false. A
// merge sort: runs of paceSteps sorted each in one go, merged pairwise in
// passes, p stepped for each item merged. Items cmp finds equal keep no
// order that callers rely on.
func sortPaced[T any](s []T, p *pacer, cmp func(a, b T) int) ([]T, bool) {
	for lo := 0; lo < len(s); lo += paceSteps {
		slices.SortFunc(s[lo:min(lo+paceSteps, len(s))], cmp)
		if !p.pause() {
			return nil, false
		}
	}
	if len(s) <= paceSteps {
		return s, true
	}
	src, dst := s, make([]T, len(s))
	for width := paceSteps; width < len(s); width *= 2 {
		for lo := 0; lo < len(s); lo += 2 * width {
			mid, hi := min(lo+width, len(s)), min(lo+2*width, len(s))
			i, j, k := lo, mid, lo
			for ; i < mid && j < hi; k++ {
				if cmp(src[j], src[i]) < 0 {
					dst[k], j = src[j], j+1
				} else {
					dst[k], i = src[i], i+1
				}
				if !p.step() {
					return nil, false
				}
			}
			k += copy(dst[k:], src[i:mid])
			copy(dst[k:], src[j:hi])
		}
		src, dst = dst, src
	}
	clear(dst) // no name kept alive by the spare half
	return src, true
}

// compareItems orders items as their rows' names are ordered: names
// first, reverse names after them, each by name.
func compareItems(a, b rowItem) int {
	var ba, bb [reverseNameMax]byte
	na, nb := a.rowName(ba[:0]), b.rowName(bb[:0])
	return cmp.Or(cmp.Compare(na.isReverse(), nb.isReverse()), compareNames(na, nb))
}

// itemNameParts is an item's row name in parts: prefix and name, or a reverse
// name written into buf. Comparing it allocates nothing.
type itemNameParts struct{ prefix, name []byte }

func (it rowItem) rowName(buf []byte) itemNameParts {
	if it.kind == itemReverse {
		return itemNameParts{name: appendReverseName(buf, netip.AddrFrom16(it.addr).Unmap())}
	}
	return itemNameParts{prefix: unsafeBytes(it.prefix), name: unsafeBytes(it.name)}
}

// compareNames compares a.prefix+a.name with b.prefix+b.name.
func compareNames(a, b itemNameParts) int {
	ai, bi := 0, 0
	la, lb := len(a.prefix)+len(a.name), len(b.prefix)+len(b.name)
	for ai < la && bi < lb {
		ca, cb := a.at(ai), b.at(bi)
		if ca != cb {
			return cmp.Compare(ca, cb)
		}
		ai++
		bi++
	}
	return cmp.Compare(la, lb)
}

func (p itemNameParts) at(i int) byte {
	if i < len(p.prefix) {
		return p.prefix[i]
	}
	return p.name[i-len(p.prefix)]
}

// isReverse reports whether the name is a reverse name, as 1 (0 if not).
func (p itemNameParts) isReverse() int {
	name := unsafe.String(unsafe.SliceData(p.name), len(p.name))
	if len(p.name) < len(inAddrArpa) && len(p.prefix) > 0 {
		name = string(p.prefix) + name
	}
	if isReverse(name) {
		return 1
	}
	return 0
}

func unsafeBytes(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// appendItemRows appends the rows of it, as Rows lists them for ns.
func (t *Table) appendItemRows(rows []Row, it rowItem, ns string) []Row {
	switch it.kind {
	case itemReverse:
		owners := t.ptrOwners(t.reverse[shardOfAddr(it.addr)].get(it.addr), ns)
		if owners.one == nil {
			return rows
		}
		names := make([]string, 0, owners.len())
		for i := range owners.len() {
			names = append(names, owners.at(i).Name)
		}
		a := netip.AddrFrom16(it.addr).Unmap()
		return append(rows, Row{Name: reverseName(a), Type: "PTR", Values: names, Origin: owners.one.Origin().String()})
	case itemWildcard:
		k := it.name[len("*."):]
		e := choose(t.wildcards.get(k), ns)
		if e == nil {
			if p := passedOver(t.wildcards.get(k), ns); p != nil && it.prefix == "" {
				return append(rows, t.passedRows(p, p.Name, ns)...)
			}
			return rows
		}
		return t.appendEntryRows(rows, e, e.Name, it.prefix)
	}
	if e := t.exactChoice(it.name, ns); e != nil {
		return t.appendEntryRows(rows, e, it.name, it.prefix)
	}
	if p := passedOver(t.lookup(it.name), ns); p != nil && it.prefix == "" {
		return append(rows, t.passedRows(p, it.name, ns)...)
	}
	return rows
}

// appendEntryRows appends e's rows as the answer for name: its records'
// (prefix ""), or those of its SRV sets of prefix.
func (t *Table) appendEntryRows(rows []Row, e *Entry, name, prefix string) []Row {
	if prefix == "" {
		n := len(rows)
		rows = e.appendRecordRows(rows, name)
		if e.forward {
			rows[n].Reason = t.noRecordsReason(e)
		}
		if set := e.ownSRV(); set != nil && name == e.Name {
			rows = append(rows, e.srvRow(*set, e.Origin().String()))
		}
		return rows
	}
	if name != e.Name {
		return rows
	}
	origin := e.Origin().String()
	for _, set := range e.srv {
		if set.prefix == prefix {
			rows = append(rows, e.srvRow(set, origin))
		}
	}
	return rows
}

// passedOver is the ServiceEntry host without a VIP that choose passed
// over for a pod in ns, having found no other entry (its namespace's
// first, else the first visible); nil when none was.
func passedOver(entries bucket, ns string) *Entry {
	var first *Entry
	for i := range entries.len() {
		e := entries.at(i)
		if !e.passed || !e.VisibleFrom(ns) {
			continue
		}
		if ns != "" && e.src.namespace == ns {
			return e
		}
		if first == nil {
			first = e
		}
	}
	return first
}

// passedRows are the rows of name, which p, a host without a VIP, names
// and pods pass over: the wildcard's that answers it, else a forwarded
// row of p's; either with the reason p has no VIP.
func (t *Table) passedRows(p *Entry, name, ns string) []Row {
	reason := t.noRecordsReason(p)
	if !isWildcard(name) {
		if w := t.wildcardChoice(name, ns); w != nil {
			rows := w.rows(name)
			for i := range rows {
				rows[i].Reason = p.Origin().String() + " passed over: " + reason
			}
			return rows
		}
	}
	return []Row{{Name: name, Type: ForwardedType, Values: []string{ForwardedValue}, Origin: p.Origin().String(), Forwarded: true, Reason: reason}}
}

// noRecordsReason says why e, held without records (forward) or passed
// over (passed), has none.
func (t *Table) noRecordsReason(e *Entry) string {
	if e.src.se == nil {
		return "no ready endpoint" // a headless Service's
	}
	switch {
	case e.src.se.noVIP != "":
		return e.src.se.noVIP
	case isWildcard(e.Name) && !e.src.se.dynamicDNS:
		return "no VIP: a wildcard host gets one only with resolution DYNAMIC_DNS"
	case t.vipsFrom == vip.FromStatus:
		return "no VIP: istiod has not allocated one (no status.addresses)"
	case t.vipsFrom == vip.FromNowhere:
		return "no VIP: --vip-source=none"
	}
	return "no VIP: none left to allocate"
}

// rows are e's record sets as the answer for name: e's own name, or one its
// wildcard answers in place of an ExternalName Service.
func (e *Entry) rows(name string) []Row {
	rows := e.appendRecordRows(nil, name)
	if name != e.Name {
		return rows // SRV names are looked up under the entry's own name
	}
	origin := e.Origin().String()
	for _, set := range e.srv {
		rows = append(rows, e.srvRow(set, origin))
	}
	return rows
}

// appendRecordRows appends e's record sets but SRV as the answer for name.
func (e *Entry) appendRecordRows(rows []Row, name string) []Row {
	origin := e.Origin().String()
	if e.forward {
		return append(rows, Row{Name: name, Type: ForwardedType, Values: []string{ForwardedValue}, Origin: origin, Forwarded: true})
	}
	row := func(name, typ string, values []string, src string) Row {
		return Row{Name: name, Type: typ, Values: values, Origin: origin, AddrSource: src}
	}
	var v4, v6 []string
	for _, a := range e.Addrs {
		if a.Is4() {
			v4 = append(v4, a.String())
		} else {
			v6 = append(v6, a.String())
		}
	}
	if len(v4) > 0 {
		rows = append(rows, row(name, "A", v4, e.AddrSource()))
	}
	if len(v6) > 0 {
		rows = append(rows, row(name, "AAAA", v6, e.AddrSource()))
	}
	if e.Alias != "" {
		rows = append(rows, row(name, "CNAME", []string{e.Alias}, ""))
	}
	return rows
}

// srvRow is the row of e's SRV set.
func (e *Entry) srvRow(set srvSet, origin string) Row {
	var vals []string
	for _, s := range set.recordsOf(e) {
		vals = append(vals, strings.Join([]string{"0", "100", strconv.Itoa(int(s.Port)), s.Target}, " "))
	}
	return Row{Name: set.prefix + e.Name, Type: "SRV", Values: vals, Origin: origin}
}
