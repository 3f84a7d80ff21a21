//go:build linux

package bench

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
)

// metricsScrapeEvery is how often the Metrics benchmark scrapes the agent
// whose metrics are on: more often than Prometheus's default (1 minute) and
// the usual 15–30 s.
const metricsScrapeEvery = 5 * time.Second

// BenchmarkMetrics: what the per-query metrics cost at full speed. Two
// agents serve the Resolver benchmark's cluster under the same dnsperf
// load: one with --metrics, scraped every metricsScrapeEvery, and one
// without, which keeps no per-query metrics; the access log is off in
// both. Issue 11's bound: qps with metrics on at least 0.97 of qps without.
//
//	go test -run '^$' -bench Metrics -benchtime 1x ./test/bench/ -args -rounds 6
func BenchmarkMetrics(b *testing.B) {
	testenv.LookPath(b, "dnsperf")
	files := generate(b, resolverCluster)
	upstream := startUpstream(b)
	on := startAgent(b, upstream, 1, "--config-dir", files.Manifests)
	off := startAgent(b, upstream, 1, "--config-dir", files.Manifests, "--metrics", "") // the last --metrics counts
	for _, s := range []*dnsServer{on, off} {
		waitAnswers(b, s, files.Names[0], files.Names[len(files.Names)-1])
	}
	on.scrapeEvery(b, metricsScrapeEvery)
	sideBySide(b, []namedServer{{"metrics-on", on}, {"metrics-off", off}}, files.Queries, []int{0}, *flagDuration, local)
}

// scrapeEvery fetches s's /metrics every interval until tb ends, as
// Prometheus would.
func (s *dnsServer) scrapeEvery(tb testing.TB, every time.Duration) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	url := "http://" + s.metrics.String() + "/metrics"
	go func() {
		defer close(done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		failed := false
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			err := scrapeOnce(ctx, url)
			if err != nil && ctx.Err() == nil && !failed {
				failed = true
				tb.Errorf("scraping %s: %v", url, err)
			}
		}
	}()
	tb.Cleanup(func() { cancel(); <-done })
}

func scrapeOnce(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}
