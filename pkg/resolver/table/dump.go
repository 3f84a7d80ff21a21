package table

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
	"strings"

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
func (t *Table) Rows(ns string) []Row {
	var rows []Row
	for i := range t.names {
		for k := range t.names[i].one {
			if e := t.exactChoice(k, ns); e != nil {
				rows = append(rows, t.rowsOf(e, k)...)
			} else if p := passedOver(t.lookup(k), ns); p != nil {
				rows = append(rows, t.passedRows(p, k, ns)...)
			}
		}
	}
	for k := range t.wildcards.one {
		if e := choose(t.wildcards.get(k), ns); e != nil {
			rows = append(rows, t.rowsOf(e, e.Name)...)
		} else if p := passedOver(t.wildcards.get(k), ns); p != nil {
			rows = append(rows, t.passedRows(p, p.Name, ns)...)
		}
	}
	for _, sh := range t.reverse {
		for k := range sh.one {
			owners := t.ptrOwners(sh.get(k), ns)
			if owners.one == nil {
				continue
			}
			var names []string
			for i := range owners.len() {
				names = append(names, owners.at(i).Name)
			}
			a := netip.AddrFrom16(k).Unmap()
			rows = append(rows, Row{Name: reverseName(a), Type: "PTR", Values: names, Origin: owners.one.Origin().String()})
		}
	}
	// Names first, reverse-lookup names (PTR) after them.
	slices.SortFunc(rows, func(a, b Row) int {
		return cmp.Or(cmp.Compare(isReverse(a.Name), isReverse(b.Name)), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Type, b.Type))
	})
	return rows
}

// rowsOf is e's rows as the answer for name, a forwarded one with the
// reason it has no records.
func (t *Table) rowsOf(e *Entry, name string) []Row {
	rows := e.rows(name)
	if e.forward {
		rows[0].Reason = t.noRecordsReason(e)
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

func isReverse(name string) int {
	if strings.HasSuffix(name, inAddrArpa) || strings.HasSuffix(name, ip6Arpa) {
		return 1
	}
	return 0
}

// rows are e's record sets as the answer for name: e's own name, or one its
// wildcard answers in place of an ExternalName Service.
func (e *Entry) rows(name string) []Row {
	origin := e.Origin().String()
	if e.forward {
		return []Row{{Name: name, Type: ForwardedType, Values: []string{ForwardedValue}, Origin: origin, Forwarded: true}}
	}
	row := func(name, typ string, values []string, src string) Row {
		return Row{Name: name, Type: typ, Values: values, Origin: origin, AddrSource: src}
	}
	var rows []Row
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
	if name != e.Name {
		return rows // SRV names are looked up under the entry's own name
	}
	for _, set := range e.srv {
		var vals []string
		for _, s := range set.recordsOf(e) {
			vals = append(vals, strings.Join([]string{"0", "100", strconv.Itoa(int(s.Port)), s.Target}, " "))
		}
		rows = append(rows, row(set.prefix+e.Name, "SRV", vals, ""))
	}
	return rows
}
