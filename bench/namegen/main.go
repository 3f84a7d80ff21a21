// Command namegen writes the synthetic cluster `make bench` measures (see
// package bench/workload) into a directory, for running ztdns, unbound and
// dnsperf by hand: manifests/ for `ztdns agent --config-dir`,
// unbound-zone.conf (local-data answering the queried names as ztdns does)
// and queries.txt for dnsperf.
//
// Usage: go run ./bench/namegen -out DIR [-services N] [-entries N] [-queries N] ...
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/ztdns/ztdns/bench/workload"
)

func main() {
	var c workload.Config
	out := flag.String("out", "", "directory to write manifests/, unbound-zone.conf and queries.txt into")
	flag.IntVar(&c.Services, "services", 10000, "Services in the manifests")
	flag.IntVar(&c.Entries, "entries", 10000, "ServiceEntries (one host each); even ones auto-allocate a VIP, odd ones carry spec.addresses")
	flag.IntVar(&c.Queries, "queries", 10000, "distinct names queried (and served by unbound): half Services, half ServiceEntry hosts")
	flag.IntVar(&c.AAAAEvery, "aaaa-every", 10, "make every Nth query line AAAA instead of A (0: only A)")
	flag.IntVar(&c.HeadlessEvery, "headless-every", 0, "make every Nth Service headless (0: none)")
	flag.IntVar(&c.EndpointsPerService, "endpoints", 0, "endpoints in one EndpointSlice per Service (0: no EndpointSlices)")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "namegen: -out is required")
		os.Exit(2)
	}
	if _, err := workload.Write(*out, c); err != nil {
		fmt.Fprintln(os.Stderr, "namegen:", err)
		os.Exit(1)
	}
}
