package agent

import (
	"bufio"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// memoryLimitDesc is the memory the agent may use before the kernel's OOM
// killer takes it: what "memory near limit" alerts compare
// process_resident_memory_bytes with.
var memoryLimitDesc = prometheus.NewDesc("ztdns_memory_limit_bytes",
	"The agent's memory limit: the lowest memory.max (cgroup v2) or memory.limit_in_bytes (v1) of its cgroup and those above it; +Inf when there is none.",
	nil, nil)

// memoryLimit reads the agent's cgroup memory limit at scrape time, so a
// limit changed in place (a resized pod) shows.
type memoryLimit struct{}

func (memoryLimit) Describe(ch chan<- *prometheus.Desc) { ch <- memoryLimitDesc }

func (memoryLimit) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(memoryLimitDesc, prometheus.GaugeValue, cgroupMemoryLimit("/proc/self"))
}

// cgroupMemoryLimit is the lowest memory limit of the cgroup of the process
// whose /proc directory is proc, and of its ancestors up to the root of the
// hierarchy as mounted; +Inf when none is set or none can be read.
func cgroupMemoryLimit(proc string) float64 {
	limit := math.Inf(1)
	v2, v1 := cgroupPaths(filepath.Join(proc, "cgroup"))
	for _, h := range []struct {
		path, fstype, controller, file string
	}{{v2, "cgroup2", "", "memory.max"}, {v1, "cgroup", "memory", "memory.limit_in_bytes"}} {
		if h.path == "" {
			continue
		}
		mount := cgroupMount(filepath.Join(proc, "mountinfo"), h.fstype, h.controller)
		if mount == "" {
			continue
		}
		for dir := filepath.Join(mount, h.path); strings.HasPrefix(dir, mount); dir = filepath.Dir(dir) {
			if n, ok := readLimit(filepath.Join(dir, h.file)); ok {
				limit = min(limit, n)
			}
			if dir == mount {
				break
			}
		}
	}
	return limit
}

// cgroupPaths reads a /proc/PID/cgroup file: the process's cgroup v2 path
// and, on a hybrid or v1 host, its memory controller's v1 path.
func cgroupPaths(file string) (v2, v1memory string) {
	f, err := os.Open(file)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			v2 = parts[2]
		case slices.Contains(strings.Split(parts[1], ","), "memory"):
			v1memory = parts[2]
		}
	}
	return v2, v1memory
}

// cgroupMount finds where a cgroup hierarchy is mounted, from a
// /proc/PID/mountinfo file: the cgroup2 one, or the v1 one holding
// controller.
func cgroupMount(file, fstype, controller string) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID parent major:minor root mountpoint options [optional...] - fstype source superoptions
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, after := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(after) < 3 || after[0] != fstype || fields[3] != "/" {
			continue // another type, or a bind mount of a cgroup below the root
		}
		if controller == "" || slices.Contains(strings.Split(after[2], ","), controller) {
			return fields[4]
		}
	}
	return ""
}

// readLimit reads a memory limit file; "max" (v2) and v1's page-rounded
// largest value are no limit.
func readLimit(file string) (float64, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	s := strings.TrimSpace(string(b))
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n >= math.MaxInt64/2 {
		return 0, false
	}
	return float64(n), true
}
