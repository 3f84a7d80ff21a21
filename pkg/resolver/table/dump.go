package table

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
	"strings"
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
}

// Rows lists every name a pod in namespace ns can resolve, with what it
// resolves to and where that came from. Names the namespace cannot see are
// left out. The empty namespace lists what an unknown client sees.
func (t *Table) Rows(ns string) []Row {
	var rows []Row
	for _, sh := range append(t.names[:], t.wildcards) {
		for k := range sh.one {
			if e := t.pick(sh.get(k), ns); e != nil {
				rows = append(rows, e.rows()...)
			}
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

func isReverse(name string) int {
	if strings.HasSuffix(name, inAddrArpa) || strings.HasSuffix(name, ip6Arpa) {
		return 1
	}
	return 0
}

func (e *Entry) rows() []Row {
	origin := e.Origin().String()
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
		rows = append(rows, row(e.Name, "A", v4, e.AddrSource()))
	}
	if len(v6) > 0 {
		rows = append(rows, row(e.Name, "AAAA", v6, e.AddrSource()))
	}
	if e.Alias != "" {
		rows = append(rows, row(e.Name, "CNAME", []string{e.Alias}, ""))
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
