//go:build linux

package control_test

import (
	"context"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/bench/workload"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/resolver"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// BenchmarkDNSDuringTable: what `ztdns table` of the table of 200,000
// names (bigTable) does to the node's DNS, in one process on the machine's
// cores: a prober asks one name at a time, a millisecond apart, of a
// resolver serving the table, while nothing else runs (idle), and while a
// caller reads the whole table from the control socket (table); busy and
// busy-table are the same with busyClients more asking without pause, as
// many as keep the machine's two cores busy. It reports
// the probes' p50, p99 and longest latency, in milliseconds; for table,
// those of the probes sent while the agent built the index of the rows
// (before the answer's first byte, index-*) and while it wrote the rows
// (rows-*).
//
//	go test -run '^$' -bench DNSDuringTable -benchtime 3x ./pkg/control/
func BenchmarkDNSDuringTable(b *testing.B) {
	testenv.RequireRoot(b)
	tbl := bigTable()
	dnsAddr := serveDNS(b, tbl)
	socket := serveControl(b, tbl)
	q := new(dns.Msg).SetQuestion(workload.ServiceFQDN(1), dns.TypeA)

	for _, c := range []struct {
		name        string
		table, busy bool
	}{{"idle", false, false}, {"table", true, false}, {"busy", false, true}, {"busy-table", true, true}} {
		b.Run(c.name, func(b *testing.B) {
			var index, rows []time.Duration
			for b.Loop() {
				ctx, cancel := context.WithCancel(context.Background())
				probed := make(chan []probeResult)
				go func() { probed <- probe(ctx, dnsAddr, q, time.Millisecond) }()
				var flood sync.WaitGroup
				for range busyClients {
					if c.busy {
						flood.Go(func() { probe(ctx, dnsAddr, q, 0) })
					}
				}
				var firstByte time.Time
				if c.table {
					firstByte = readTable(b, socket)
				} else {
					time.Sleep(3 * time.Second) // about a table's time
				}
				cancel()
				flood.Wait()
				for _, r := range <-probed {
					if r.sent.Before(firstByte) {
						index = append(index, r.rtt)
					} else {
						rows = append(rows, r.rtt)
					}
				}
			}
			if c.table {
				reportLatency(b, "index-", index)
			}
			reportLatency(b, "", append(index, rows...))
		})
	}
}

// reportLatency reports lat's p50, p99 and longest, in milliseconds.
func reportLatency(b *testing.B, prefix string, lat []time.Duration) {
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(lat[len(lat)/2]), prefix+"p50-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), prefix+"p99-ms")
	b.ReportMetric(ms(lat[len(lat)-1]), prefix+"max-ms")
	b.ReportMetric(float64(len(lat))/float64(b.N), prefix+"probes/op")
}

// serveDNS serves tbl on a UDP port of 127.0.0.1 until the benchmark ends.
func serveDNS(b *testing.B, tbl *table.Table) string {
	b.Helper()
	s := resolver.New(resolver.Options{Limits: quota.Limits{QPS: 1e6}})
	s.SetTable(tbl)
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	go s.ServeUDP(conn)
	b.Cleanup(func() { s.Close() })
	return conn.LocalAddr().String()
}

// serveControl serves tbl's rows on a control socket until the benchmark
// ends.
func serveControl(b *testing.B, tbl *table.Table) string {
	s := serve(b, control.Access{})
	s.api.mu.Lock()
	defer s.api.mu.Unlock()
	s.api.rows = tbl.AllRows
	return s.socket
}

// readTable reads the whole table from socket, as `ztdns table` does
// (but for decoding it), and returns when its first byte came.
func readTable(b *testing.B, socket string) time.Time {
	c, err := net.Dial("unix", socket)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET "+control.RouteTable.Path+" HTTP/1.1\r\nHost: ztdns\r\nConnection: close\r\n\r\n"); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); err != nil {
		b.Fatal(err)
	}
	firstByte := time.Now()
	n, err := io.Copy(io.Discard, c)
	if err != nil || n < 50<<20 {
		b.Fatalf("read %d bytes of the table: %v", n, err)
	}
	return firstByte
}

// probeResult is a probe's time sent and latency.
type probeResult struct {
	sent time.Time
	rtt  time.Duration
}

// busyClients is how many clients ask without pause in BenchmarkDNSDuringTable's
// busy cases.
const busyClients = 2

// probe asks q of addr one at a time, pausing for every between them,
// until ctx is done; an unanswered probe counts as the client's timeout.
func probe(ctx context.Context, addr string, q *dns.Msg, every time.Duration) []probeResult {
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	var res []probeResult
	for ctx.Err() == nil {
		sent := time.Now()
		m, _, err := c.Exchange(q, addr)
		rtt := time.Since(sent)
		if err != nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) == 0 {
			rtt = c.Timeout
		}
		res = append(res, probeResult{sent, rtt})
		time.Sleep(every)
	}
	return res
}
