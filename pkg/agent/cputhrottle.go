package agent

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// The CFS bandwidth statistics of the agent's own cgroup. A CPU limit
// (cpu.max on cgroup v2, cpu.cfs_quota_us on v1; a pod's
// resources.limits.cpu, also one a namespace's LimitRange adds by
// default) stops every thread of the agent for the rest of a period (100
// ms) once it used its quota in it: while it is throttled no pod on the
// node gets an answer (README, Limits and protections, A CPU limit).
var (
	cpuPeriodsDesc = prometheus.NewDesc("ztdns_cpu_periods_total",
		"Enforcement periods of the CPU limit of the agent's cgroup in which the agent ran (nr_periods of its cpu.stat); absent where its cgroup has no CPU bandwidth control to read.",
		nil, nil)
	cpuThrottledPeriodsDesc = prometheus.NewDesc("ztdns_cpu_throttled_periods_total",
		"Of ztdns_cpu_periods_total, the periods in which the agent used its CPU limit's quota and was stopped until the next (nr_throttled): it answered no query meanwhile.",
		nil, nil)
	cpuThrottledSecondsDesc = prometheus.NewDesc("ztdns_cpu_throttled_seconds_total",
		"Time the agent's threads were stopped by its CPU limit, summed over the CPUs they were stopped on (throttled_usec on cgroup v2, throttled_time on v1).",
		nil, nil)
)

// cpuThrottling reads the agent's cgroup's cpu.stat at scrape time: three
// small files, no state. It exports nothing when it finds no cpu.stat
// with nr_periods: cgroup v2 without the cpu controller for the agent's
// cgroup (no limit can be set there), or no cgroup it can read.
type cpuThrottling struct {
	cgroup selfCgroup // the agent's, found at start
}

func (cpuThrottling) Describe(ch chan<- *prometheus.Desc) {
	ch <- cpuPeriodsDesc
	ch <- cpuThrottledPeriodsDesc
	ch <- cpuThrottledSecondsDesc
}

func (c cpuThrottling) Collect(ch chan<- prometheus.Metric) {
	st, ok := cgroupCPUStat(c.cgroup)
	if !ok {
		return
	}
	ch <- prometheus.MustNewConstMetric(cpuPeriodsDesc, prometheus.CounterValue, float64(st.periods))
	ch <- prometheus.MustNewConstMetric(cpuThrottledPeriodsDesc, prometheus.CounterValue, float64(st.throttled))
	ch <- prometheus.MustNewConstMetric(cpuThrottledSecondsDesc, prometheus.CounterValue, st.throttledSeconds)
}

// cpuStat is what cpuThrottling exports of a cpu.stat file.
type cpuStat struct {
	periods, throttled uint64
	throttledSeconds   float64
}

// cgroupCPUStat reads the CFS bandwidth statistics of the cgroup c
// names: cgroup v2's cpu.stat when the cpu controller is on for that
// cgroup, else the v1 cpu controller's (a v1 or hybrid host). Only the
// agent's own cgroup: a container's limit is set there (the pod's cgroup
// above holds their sum, and is what c names when the container's could
// not be found).
func cgroupCPUStat(c selfCgroup) (cpuStat, bool) {
	for _, h := range []struct {
		c         cgroupDir
		throttled string
		perSecond float64 // throttled's units in a second
	}{{c.v2, "throttled_usec", 1e6}, {c.cpu, "throttled_time", 1e9}} {
		if h.c.dir == "" {
			continue
		}
		if st, ok := readCPUStat(filepath.Join(h.c.dir, "cpu.stat"), h.throttled, h.perSecond); ok {
			return st, true
		}
	}
	return cpuStat{}, false
}

// readCPUStat reads a cpu.stat file: nr_periods, nr_throttled and the
// throttled time (the field throttled, perSecond to a second). A file
// without nr_periods (v2 without the cpu controller) is none.
func readCPUStat(file, throttled string, perSecond float64) (cpuStat, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return cpuStat{}, false
	}
	var st cpuStat
	periods := false
	for line := range strings.Lines(string(b)) {
		key, value, _ := strings.Cut(strings.TrimSpace(line), " ")
		n, err := strconv.ParseUint(value, 10, 64)
		if err != nil {
			continue
		}
		switch key {
		case "nr_periods":
			st.periods, periods = n, true
		case "nr_throttled":
			st.throttled = n
		case throttled:
			st.throttledSeconds = float64(n) / perSecond
		}
	}
	return st, periods
}
