package table

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
)

// TestSnapshotDefaultExportTo: a ServiceEntry without exportTo takes the
// snapshot's DefaultExportTo (Istio's mesh config, as the source reads it)
// unless Options.DefaultExportTo is set; a snapshot that changes only the
// default rebuilds those entries, as a fresh build makes them, and leaves
// the ones with their own exportTo alone.
func TestSnapshotDefaultExportTo(t *testing.T) {
	se := func(name string, exportTo []string, addr string) model.ServiceEntry {
		return model.ServiceEntry{Namespace: "bank", Name: name, Created: time.Unix(1, 0), Resolution: "STATIC",
			Hosts: []string{name + ".example-bank.com"}, Addresses: []netip.Addr{netip.MustParseAddr(addr)}, HasSpecAddresses: true,
			ExportTo: exportTo}
	}
	ses := []model.ServiceEntry{se("login", nil, "192.0.2.66"), se("www", []string{"*"}, "192.0.2.67")}
	visible := func(tbl *Table, name, ns string) bool { return tbl.Find(name+".example-bank.com.", ns) != nil }

	for _, tc := range []struct {
		name        string
		opt         []string
		steps       [][]string // the snapshots' DefaultExportTo, in turn
		loginTenant []bool     // login seen from namespace tenant, per step
	}{
		{name: "follows the snapshot", steps: [][]string{{"."}, nil, {"tenant"}, {"~"}}, loginTenant: []bool{false, true, true, false}},
		{name: "the option wins", opt: []string{"."}, steps: [][]string{nil, {"*"}}, loginTenant: []bool{false, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBuilder(Options{DefaultExportTo: tc.opt})
			for i, def := range tc.steps {
				// The same ServiceEntries slice: only the default changed.
				s := &model.Snapshot{ServiceEntries: ses, DefaultExportTo: def}
				tbl, _ := b.Build(s)
				fresh, _ := Build(s, Options{DefaultExportTo: tc.opt})
				for _, tb := range []struct {
					what string
					t    *Table
				}{{"incremental", tbl}, {"fresh", fresh}} {
					if got := visible(tb.t, "login", "tenant"); got != tc.loginTenant[i] {
						t.Errorf("step %d (%q), %s table: login seen from tenant %v, want %v", i, def, tb.what, got, tc.loginTenant[i])
					}
					if !visible(tb.t, "www", "tenant") {
						t.Errorf("step %d (%q), %s table: www, exported to every namespace, not seen from tenant", i, def, tb.what)
					}
				}
			}
		})
	}
}
