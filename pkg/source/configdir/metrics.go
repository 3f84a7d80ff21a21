package configdir

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	problemsDesc = prometheus.NewDesc("ztdns_configdir_problems",
		fmt.Sprintf("Problems in the --config-dir manifests as ztdns status lists them (at most %d a file and %d in all, "+
			"a line counting the rest counted as one), and the directory itself while it cannot be read; 0 when every file is served "+
			"(as written, but for what ztdns_configdir_warnings counts).",
			maxProblemsPerFile, maxProblems),
		nil, nil)
	filesDesc = prometheus.NewDesc("ztdns_configdir_files",
		"Manifest files in --config-dir by state: served (as written, but for what warnings say), refused (problems: its last good objects, if any, are served), "+
			"blocked (valid, but colliding with objects another file serves, or past --config-max-objects), "+
			fmt.Sprintf("skipped (past --config-max-files), unsettled (new, written within the last %g s: read once left alone).", DefaultSettle.Seconds()),
		[]string{"state"}, nil)
	warningsDesc = prometheus.NewDesc("ztdns_configdir_warnings",
		fmt.Sprintf("Warnings about the --config-dir manifests as ztdns status lists them (at most %d a file and %d in all, "+
			"a line counting the rest counted as one): served, but not as written (a field ztdns does not know, ignored; a value skipped; "+
			"an object that looks like a kind ztdns reads but is not); 0 when there are none.", maxProblemsPerFile, maxProblems),
		nil, nil)
	scanDesc = prometheus.NewDesc("ztdns_configdir_scan_seconds",
		"Time the last scan of --config-dir took (reading and parsing the files that changed); the next scan starts no sooner after it ended.",
		nil, nil)
)

// Collectors returns the source's metrics, for the agent to register. They
// belong to one Source, as the agent's registry does.
func (s *Source) Collectors() []prometheus.Collector { return []prometheus.Collector{collector{s}} }

type collector struct{ s *Source }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- problemsDesc
	ch <- warningsDesc
	ch <- filesDesc
	ch <- scanDesc
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	c.s.mu.Lock()
	d, problems, warnings := c.s.stats, len(c.s.errs), len(c.s.warns)
	if c.s.unreadable != nil {
		problems++ // as Errors lists it
	}
	c.s.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(problemsDesc, prometheus.GaugeValue, float64(problems))
	ch <- prometheus.MustNewConstMetric(warningsDesc, prometheus.GaugeValue, float64(warnings))
	for state, n := range map[string]int{
		"served": d.served, "refused": d.refused, "blocked": d.blocked, "skipped": d.skipped, "unsettled": d.unsettled,
	} {
		ch <- prometheus.MustNewConstMetric(filesDesc, prometheus.GaugeValue, float64(n), state)
	}
	ch <- prometheus.MustNewConstMetric(scanDesc, prometheus.GaugeValue, d.scan.Seconds())
}
