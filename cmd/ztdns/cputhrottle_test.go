//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// TestCPULimitThrottlingIsExported runs the agent in a cgroup of its own
// with a CPU limit of 100m (10 ms of every 100 ms), as a pod's
// limits.cpu, or a LimitRange's default, sets it, and keeps it busy
// answering: the kernel stops it for the rest of each period it used its
// quota in, and no pod on the node is answered meanwhile. /metrics says
// so: ztdns_cpu_throttled_periods_total, read from the agent's own
// cgroup's cpu.stat, is there and rises under the load, no higher than
// the kernel's count, within ztdns_cpu_periods_total, with the time in
// ztdns_cpu_throttled_seconds_total. (Before, nothing told the operator:
// the reviewer measured 103 of 116 periods throttled and a well-behaved
// pod's p99 at 78 ms, against 8.8 ms without the limit.)
func TestCPULimitThrottlingIsExported(t *testing.T) {
	cg := testenv.NewCPUCgroup(t, 10*time.Millisecond, 100*time.Millisecond)
	bin := makeBuild(t)
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.Marker(netip.MustParseAddr("203.0.113.99"), netip.MustParseAddr("2001:db8::99")))
	listen, metrics := testenv.FreePort(t), testenv.FreePort(t).String()
	socket := filepath.Join(t.TempDir(), "ztdns.sock")
	// Killed before the cgroup is removed (cleanups run last first).
	w := cg.Wrapper()
	testenv.StartLocal(t, w[0], append(w[1:], bin, "agent", "--capture=false", "--config-dir", "../../examples",
		"--listen", listen.String(), "--upstream", up.Addr.String(), "--socket", socket, "--metrics", metrics)...)

	// The agent answers a scrape late while it is stopped: no deadline
	// shorter than a few periods.
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	read := func() (map[string]float64, error) {
		resp, err := client.Get("http://" + metrics + "/metrics")
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		parser := expfmt.NewTextParser(model.UTF8Validation)
		families, err := parser.TextToMetricFamilies(resp.Body)
		if err != nil {
			return nil, err
		}
		out := map[string]float64{}
		for _, name := range []string{"ztdns_cpu_periods_total", "ztdns_cpu_throttled_periods_total", "ztdns_cpu_throttled_seconds_total"} {
			if f, ok := families[name]; ok && len(f.Metric) == 1 {
				out[name] = f.Metric[0].GetCounter().GetValue()
			}
		}
		return out, nil
	}
	var first map[string]float64
	agenttest.Eventually(t, 30*time.Second, func() (err error) {
		first, err = read()
		return err
	})
	if _, ok := first["ztdns_cpu_throttled_periods_total"]; !ok {
		t.Fatalf("/metrics lacks ztdns_cpu_throttled_periods_total with the agent in a cgroup with a CPU limit (%s): %v", cg.Path, first)
	}

	// Busy: queries from two sockets as fast as they go, answers unread.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { stop(); wg.Wait() })
	q, err := new(dns.Msg).SetQuestion("address.internal.", dns.TypeA).Pack()
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		conn, err := net.Dial("udp", listen.String())
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer conn.Close()
			for ctx.Err() == nil {
				_, _ = conn.Write(q) // refused while the agent's queue is full
			}
		})
	}

	var last map[string]float64
	agenttest.Eventually(t, 60*time.Second, func() (err error) {
		if last, err = read(); err != nil {
			return err
		}
		if last["ztdns_cpu_throttled_periods_total"] <= first["ztdns_cpu_throttled_periods_total"] {
			return fmt.Errorf("ztdns_cpu_throttled_periods_total did not rise under load: %v, then %v", first, last)
		}
		return nil
	})
	stop()
	wg.Wait()
	t.Logf("before the load %v, under it %v", first, last)
	throttled, periods := last["ztdns_cpu_throttled_periods_total"], last["ztdns_cpu_periods_total"]
	if kernel := cg.Throttled(t); throttled > float64(kernel) {
		t.Errorf("ztdns_cpu_throttled_periods_total %v, over the cgroup's nr_throttled %d read after it", throttled, kernel)
	}
	if periods < throttled {
		t.Errorf("ztdns_cpu_periods_total %v, below the periods throttled %v", periods, throttled)
	}
	if last["ztdns_cpu_throttled_seconds_total"] <= 0 {
		t.Errorf("ztdns_cpu_throttled_seconds_total %v after %v periods throttled", last["ztdns_cpu_throttled_seconds_total"], throttled)
	}
}
