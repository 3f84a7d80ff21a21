package main

import (
	"bufio"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/table"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// TestZoneMatchesAgent is the generator's promise: the manifests, read the
// way `ztdns agent --config-dir` reads them, give every queried name exactly
// the addresses unbound's zone gives it.
func TestZoneMatchesAgent(t *testing.T) {
	c := config{out: t.TempDir(), services: 300, entries: 200, queries: 300, aaaaEvery: 10}
	if err := run(c); err != nil {
		t.Fatal(err)
	}
	snap := loadManifests(t, filepath.Join(c.out, "manifests"))
	if len(snap.Services) != c.services || len(snap.ServiceEntries) != c.entries {
		t.Fatalf("the agent reads %d Services and %d ServiceEntries, want %d and %d",
			len(snap.Services), len(snap.ServiceEntries), c.services, c.entries)
	}
	tbl, warnings := table.Build(snap, table.Options{Domain: domain, TTL: ttl})
	if len(warnings) > 0 {
		t.Fatalf("table warnings: %v", warnings)
	}

	zone := readZone(t, filepath.Join(c.out, "unbound-zone.conf"))
	queries := readLines(t, filepath.Join(c.out, "queries.txt"))
	if len(queries) != c.queries {
		t.Fatalf("%d query lines, want %d", len(queries), c.queries)
	}
	var aaaa, services, hosts int
	for _, q := range queries {
		name, qtype, ok := strings.Cut(q, " ")
		if !ok || (qtype != "A" && qtype != "AAAA") {
			t.Fatalf("query line %q is not \"name A|AAAA\"", q)
		}
		if qtype == "AAAA" {
			aaaa++
		}
		if strings.HasSuffix(name, ".svc.cluster.local") {
			services++
		} else {
			hosts++
		}
		fqdn := name + "."
		e := tbl.Resolve(fqdn, "").Entry
		if e == nil {
			t.Fatalf("the agent does not know %s", fqdn)
		}
		if got, want := strings.Join(zone[fqdn], " "), addrList(e.Addrs); got != want {
			t.Errorf("%s: unbound zone has [%s], the agent answers [%s]", fqdn, got, want)
		}
	}
	if want := c.queries / c.aaaaEvery; aaaa != want {
		t.Errorf("%d AAAA queries, want %d", aaaa, want)
	}
	if services != c.queries/2 || hosts != c.queries-c.queries/2 {
		t.Errorf("%d Service and %d host queries, want half of %d each", services, hosts, c.queries)
	}
	if len(zone) != c.queries {
		t.Errorf("the zone holds %d names, want the %d queried", len(zone), c.queries)
	}
}

func TestRejectsBadSizes(t *testing.T) {
	cases := []struct {
		name string
		c    config
		// noOut leaves -out empty; other cases get a fresh directory.
		noOut bool
	}{
		{name: "no output directory", c: config{services: 10, entries: 10, queries: 10}, noOut: true},
		{name: "no services", c: config{services: 0, entries: 10, queries: 10}},
		{name: "too many entries for a /16", c: config{services: 10, entries: 70000, queries: 10}},
		{name: "more queries than names", c: config{services: 10, entries: 10, queries: 30}},
		{name: "no queries", c: config{services: 10, entries: 10, queries: 0}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.noOut {
				tc.c.out = t.TempDir()
			}
			if err := run(tc.c); err == nil {
				t.Fatal("run succeeded, want an error")
			}
		})
	}
}

// loadManifests reads dir through the agent's own source and returns its
// first snapshot.
func loadManifests(tb testing.TB, dir string) *model.Snapshot {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tb.Cleanup(cancel)
	got := make(chan *model.Snapshot, 1)
	done := make(chan error, 1)
	go func() {
		done <- configdir.New(dir).Run(ctx, func(s *model.Snapshot) {
			select {
			case got <- s:
			default:
			}
		})
	}()
	tb.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case s := <-got:
		return s
	case err := <-done:
		tb.Fatalf("the config-dir source stopped: %v", err)
	case <-ctx.Done():
		tb.Fatal("the config-dir source delivered nothing in 30 s")
	}
	return nil
}

// readZone maps each owner name in an unbound include file to its addresses,
// in file order.
func readZone(tb testing.TB, path string) map[string][]string {
	tb.Helper()
	zone := map[string][]string{}
	for _, line := range readLines(tb, path) {
		rr, ok := strings.CutPrefix(strings.TrimSpace(line), "local-data: ")
		if !ok {
			continue
		}
		f := strings.Fields(strings.Trim(rr, `"`))
		if len(f) != 5 || f[2] != "IN" {
			tb.Fatalf("local-data %q is not \"name ttl IN type addr\"", rr)
		}
		zone[f[0]] = append(zone[f[0]], f[4])
	}
	return zone
}

func readLines(tb testing.TB, path string) []string {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var lines []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		lines = append(lines, s.Text())
	}
	if err := s.Err(); err != nil {
		tb.Fatal(err)
	}
	return lines
}

func addrList(addrs []netip.Addr) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, " ")
}
