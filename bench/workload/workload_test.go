package workload

import (
	"bufio"
	"context"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/table"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// TestZoneMatchesAgent is the generator's promise: the manifests, read the
// way `ztdns agent --config-dir` reads them, give every queried name exactly
// the addresses unbound's zone gives it, and hold every object generated.
func TestZoneMatchesAgent(t *testing.T) {
	c := Config{Services: 300, Entries: 200, Queries: 300, AAAAEvery: 10, HeadlessEvery: 7, EndpointsPerService: 3}
	f, err := Write(t.TempDir(), c)
	if err != nil {
		t.Fatal(err)
	}
	snap := loadManifests(t, f.Manifests)
	if len(snap.Services) != c.Services || len(snap.ServiceEntries) != c.Entries || len(snap.EndpointSlices) != c.Services {
		t.Fatalf("the agent reads %d Services, %d ServiceEntries and %d EndpointSlices, want %d, %d and %d",
			len(snap.Services), len(snap.ServiceEntries), len(snap.EndpointSlices), c.Services, c.Entries, c.Services)
	}
	if want := Snapshot(c); !reflect.DeepEqual(snap.Services, want.Services) || !reflect.DeepEqual(snap.EndpointSlices, want.EndpointSlices) {
		t.Errorf("the agent reads other Services or EndpointSlices than were generated")
	}
	tbl, warnings := table.Build(snap, table.Options{Domain: Domain, TTL: TTL})
	if len(warnings) > 0 {
		t.Fatalf("table warnings: %v", warnings)
	}
	if e := tbl.Resolve(ServiceName(6)+"-0."+ServiceFQDN(6), "").Entry; e == nil || len(e.Addrs) != 1 {
		t.Errorf("the first endpoint of headless Service 6 does not resolve to one address: %+v", e)
	}

	zone := readZone(t, f.Zone)
	queries := readLines(t, f.Queries)
	if len(queries) != c.Queries {
		t.Fatalf("%d query lines, want %d", len(queries), c.Queries)
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
	if want := c.Queries / c.AAAAEvery; aaaa != want {
		t.Errorf("%d AAAA queries, want %d", aaaa, want)
	}
	if services != c.Queries/2 || hosts != c.Queries-c.Queries/2 {
		t.Errorf("%d Service and %d host queries, want half of %d each", services, hosts, c.Queries)
	}
	if len(zone) != c.Queries {
		t.Errorf("the zone holds %d names, want the %d queried", len(zone), c.Queries)
	}
}

func TestRejectsBadSizes(t *testing.T) {
	cases := []struct {
		name string
		c    Config
	}{
		{name: "negative", c: Config{Services: -1}},
		{name: "too many entries for a /16", c: Config{Services: 10, Entries: 70000}},
		{name: "too many services for the Service range", c: Config{Services: MaxServices + 1}},
		{name: "more queries than names", c: Config{Services: 10, Entries: 10, Queries: 30}},
		{name: "more queries than queryable services", c: Config{Services: 10, Entries: 10, Queries: 20, HeadlessEvery: 2}},
		{name: "more endpoints than a slice holds", c: Config{Services: 10, EndpointsPerService: 101}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Write(t.TempDir(), tc.c); err == nil {
				t.Fatal("Write succeeded, want an error")
			}
		})
	}
}

// TestAddressesStayInTheirRanges: the largest cluster's addresses stay in
// the ranges the API server is given for them.
func TestAddressesStayInTheirRanges(t *testing.T) {
	s := Snapshot(Config{Services: MaxServices, Entries: MaxEntries})
	v4, v6 := netip.MustParsePrefix(ServiceCIDRv4), netip.MustParsePrefix(ServiceCIDRv6)
	for _, svc := range []model.Service{s.Services[0], s.Services[len(s.Services)-1]} {
		for _, ip := range svc.ClusterIPs {
			if !v4.Contains(ip) && !v6.Contains(ip) {
				t.Errorf("%s has ClusterIP %s outside %s and %s", svc.Name, ip, v4, v6)
			}
		}
	}
	last := s.ServiceEntries[len(s.ServiceEntries)-1]
	if a := last.Addresses[0]; !netip.MustParsePrefix("10.112.0.0/16").Contains(a) {
		t.Errorf("%s has address %s outside 10.112.0.0/16", last.Name, a)
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
