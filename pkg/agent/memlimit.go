package agent

import (
	"cmp"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/resolver"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
)

// memoryLimitDesc is the memory the agent may use before the kernel's OOM
// killer takes it: what "memory near limit" alerts compare
// process_resident_memory_bytes with.
var memoryLimitDesc = prometheus.NewDesc("ztdns_memory_limit_bytes",
	"The agent's memory limit: the lowest memory.max (cgroup v2) or memory.limit_in_bytes (v1) of its cgroup and those above it; without one, its container's limit from the downward API ($MEMORY_LIMIT, --memory-limit); +Inf when there is none.",
	nil, nil)

// memoryBoundDesc is the memory the agent may hold at most whatever pods
// ask (memoryBound.need): over ztdns_memory_limit_bytes, the kernel may
// kill it.
var memoryBoundDesc = prometheus.NewDesc("ztdns_memory_bound_bytes",
	"The memory the agent holds at most whatever pods ask, with its flags and the names of its table (README, The memory bound): the binary's pages, the live heap and the kernel's memory. Over ztdns_memory_limit_bytes, the kernel may kill the agent.",
	nil, nil)

// memoryLimit reads the agent's memory limit at scrape time, so a limit
// changed in place (a resized pod) shows, and the bound the agent must fit
// in.
type memoryLimit struct{ a *Agent }

func (memoryLimit) Describe(ch chan<- *prometheus.Desc) {
	ch <- memoryLimitDesc
	ch <- memoryBoundDesc
}

func (m memoryLimit) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(memoryLimitDesc, prometheus.GaugeValue, m.a.limits.memory().limit)
	ch <- prometheus.MustNewConstMetric(memoryBoundDesc, prometheus.GaugeValue, float64(m.a.memoryBound().need()))
}

// The terms of the memory bound, README "Limits and protections", "The
// memory bound", which writes them out as a formula: the GC's limit
// (gcMemoryLimit) and the check of the cgroup's limit (memoryLimiter)
// are computed from them and the agent's flags.
const (
	// boundBinary is the binary's pages: ~20 MiB while starting, 4–15 MiB
	// once serving.
	boundBinary = 20 << 20
	// boundPerName is the table and the source's objects per name: 31 MiB
	// at 20,000 names, and 17 MiB more while a new table is built.
	boundPerName = (31 + 17) << 20 / 20000
	// The live heap's other terms: per forwarded query in flight
	// (--max-forwarding), per TCP connection (--max-tcp), per UDP socket
	// (batch buffers), and the per-source state; and 2 × --cache-bytes,
	// + --inflight-bytes.
	boundPerForwarding = 24 << 10
	boundPerTCPConn    = 24 << 10
	boundPerUDPSocket  = 280 << 10
	boundSources       = 1 << 20
	// The kernel's: each UDP socket's queue of queries, the BPF maps, and
	// a TCP connection's unread replies and queries; and each captured
	// pod's redirected sockets' records (--capture-sockets-per-pod ×
	// redirect.SocketRecordBytes), which the kernel charges to the agent.
	boundKernelPerUDPSocket = 2 << 20
	boundKernelMaps         = 1 << 20
	boundKernelPerTCPConn   = (64 + 8) << 10
)

// memoryBound is what the agent holds at most, by the README's formula.
type memoryBound struct {
	names                int   // the table's, for live
	pods                 int   // captured, for kernel
	binary, live, kernel int64 // bytes
}

// need is what the agent may hold that no collection gives back: the
// binary's pages, the live heap and the kernel's memory.
func (b memoryBound) need() int64 { return b.binary + b.live + b.kernel }

func (b memoryBound) String() string {
	return fmt.Sprintf("%s: the binary's pages %s + a live heap of %s at %d names + the kernel's %s with %d pods captured",
		mib(b.need()), mib(b.binary), mib(b.live), b.names, mib(b.kernel), b.pods)
}

// memoryBound is the bound for the agent's flags and the names of its
// table now.
func (a *Agent) memoryBound() memoryBound {
	udpSockets := int64(len(a.addrs) * a.cfg.SocketsPerAddr)
	tcp := int64(positiveOr(a.cfg.TCPMaxConns, resolver.DefaultTCPMaxConns))
	forwarding := int64(positiveOr(a.cfg.MaxForwarding, resolver.DefaultMaxInflight))
	cache := int64(cmp.Or(max(a.cfg.CacheBytes, 0), forward.DefaultCacheBytes))
	if a.cfg.CacheSize < 0 {
		cache = 0 // no cache
	}
	names := a.server.Table().Len()
	pods, socketRecords := 0, int64(0)
	if a.cfg.Capture != nil {
		for _, att := range a.pods.Attachments() {
			if att.Captured {
				pods++
			}
		}
		socketRecords = int64(pods) * int64(cmp.Or(a.cfg.Capture.SocketsPerPod, redirect.DefaultSocketsPerPod)) * redirect.SocketRecordBytes
	}
	return memoryBound{
		names:  names,
		pods:   pods,
		binary: boundBinary,
		live: int64(names)*boundPerName + 2*cache + cmp.Or(a.cfg.InflightBytes, resolver.DefaultInflightBytes) +
			forwarding*boundPerForwarding + tcp*boundPerTCPConn + udpSockets*boundPerUDPSocket + boundSources,
		kernel: udpSockets*boundKernelPerUDPSocket + boundKernelMaps + tcp*boundKernelPerTCPConn + socketRecords,
	}
}

// envMemoryLimit is the Go runtime's memory limit as the process started:
// GOMEMLIMIT's, or math.MaxInt64 (none) without it.
var envMemoryLimit = debug.SetMemoryLimit(-1)

// gcMemoryLimit is the memory limit the agent gives the Go runtime for a
// cgroup limit (+Inf: none) and its bound: the limit less what the runtime
// does not count, the kernel's memory and the binary's pages; never under
// a quarter of the limit (a limit that small is warned about: under it the
// runtime would collect without pause), and never over env (GOMEMLIMIT's).
// Without a cgroup limit, env.
func gcMemoryLimit(cgroup float64, b memoryBound, env int64) int64 {
	if math.IsInf(cgroup, 1) || cgroup >= math.MaxInt64 {
		return env
	}
	limit := int64(cgroup)
	return min(max(limit-b.kernel-b.binary, limit/4), env)
}

// memoryLimiter keeps the Go runtime's memory limit at gcMemoryLimit of
// the agent's cgroup limit, which may change in place (a resized pod, a
// systemd unit's MemoryMax set again): checked at start and every
// memoryCheckEvery. It warns (log, status) while the limit is under the
// bound.
type memoryLimiter struct {
	limit func() memorySource // agentLimits.memory
	env   int64               // envMemoryLimit
	bound func() memoryBound  // Agent.memoryBound
	// set is debug.SetMemoryLimit.
	set func(int64) int64
	log *slog.Logger

	mu      sync.Mutex
	gcLimit int64  // what the last check set; 0 before the first
	from    string // where the limit of the last check came from
	short   string // the warning while the limit is under the bound
}

func newMemoryLimiter(a *Agent) *memoryLimiter {
	return &memoryLimiter{limit: a.limits.memory, env: envMemoryLimit, bound: a.memoryBound, set: debug.SetMemoryLimit, log: a.log}
}

// check reads the cgroup's limit, sets the runtime's and warns once when
// the limit falls under the bound (and says when it no longer is).
func (m *memoryLimiter) check() {
	src, b := m.limit(), m.bound()
	cgroup := src.limit
	gc := gcMemoryLimit(cgroup, b, m.env)
	short := ""
	if float64(b.need()) > cgroup {
		short = fmt.Sprintf("the memory limit (%s) is below what the agent may hold whatever pods ask, %s: "+
			"the kernel may kill it (pods captured fail open until it is back); raise the limit or lower the flags' bounds (README, The memory bound)",
			mib(int64(cgroup)), b)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if src.from != m.from {
		m.log.Info("the agent's memory limit", "limit", bytesOrNone(cgroup), "from", src.from)
		m.from = src.from
	}
	if gc != m.gcLimit {
		if old := m.set(gc); old != gc {
			m.log.Info("the Go runtime's memory limit set: the cgroup's, less the kernel's memory and the binary's pages, or GOMEMLIMIT if lower",
				"gcLimit", gc, "was", old, "cgroupLimit", bytesOrNone(cgroup), "limitFrom", src.from, "kernel", b.kernel, "binary", b.binary, "GOMEMLIMIT", bytesOrNone(float64(m.env)))
		}
		m.gcLimit = gc
	}
	switch {
	case short != "" && m.short == "":
		m.log.Warn("the memory limit is below what the agent may hold whatever pods ask: the kernel may kill it; raise the limit or lower the flags' bounds (README, The memory bound)",
			"limit", bytesOrNone(cgroup), "bound", b.need(), "binary", b.binary, "live", b.live, "names", b.names, "kernel", b.kernel)
	case short == "" && m.short != "":
		m.log.Info("the memory limit now holds the agent's bound", "limit", bytesOrNone(cgroup), "bound", b.need())
	}
	m.short = short
}

// warning is check's warning, "" while the limit holds the bound.
func (m *memoryLimiter) warning() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.short
}

// bytesOrNone is a limit for the log: its bytes, or "none".
func bytesOrNone(limit float64) any {
	if limit >= math.MaxInt64 {
		return "none"
	}
	return int64(limit)
}

// mib writes n bytes in MiB, to a tenth.
func mib(n int64) string { return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB" }

// agentLimits finds the agent's limits: its cgroup's (found at start),
// else its container's memory limit from the downward API.
type agentLimits struct {
	cgroup selfCgroup
	// downward is the container's memory limit as the pod spec had it when
	// the container started (Config.MemoryLimit: the chart's MEMORY_LIMIT,
	// from resourceFieldRef limits.memory); 0: none given.
	downward int64
}

// memorySource is the agent's memory limit (+Inf: none) and where it
// comes from, for the log.
type memorySource struct {
	limit float64
	from  string
}

// memory is the lowest memory limit of the agent's cgroup and those above
// it; without one that can be read, the downward API's, which a resize in
// place does not change.
func (l agentLimits) memory() memorySource {
	limit, from := cgroupMemoryLimit(l.cgroup)
	if math.IsInf(limit, 1) && l.downward > 0 {
		return memorySource{float64(l.downward), "MEMORY_LIMIT (the container's limit from the downward API, as it started: a resize in place is not followed), for " + from}
	}
	return memorySource{limit, from}
}

// cgroupMemoryLimit is the lowest memory limit of the cgroup c names, and
// of its ancestors up to the root of the hierarchy as mounted (+Inf when
// none is set or none can be read), and where it was read, for the log.
func cgroupMemoryLimit(c selfCgroup) (float64, string) {
	limit, from := math.Inf(1), ""
	for _, h := range []struct {
		c    cgroupDir
		file string
	}{{c.v2, "memory.max"}, {c.memory, "memory.limit_in_bytes"}} {
		if h.c.dir == "" {
			continue
		}
		for dir := h.c.dir; strings.HasPrefix(dir, h.c.mount); dir = filepath.Dir(dir) {
			if n, ok := readLimit(filepath.Join(dir, h.file)); ok && n < limit {
				limit, from = n, "cgroup "+dir+" (the agent's: "+h.c.found+")"
			}
			if dir == h.c.mount {
				break
			}
		}
	}
	if from == "" {
		from = "no cgroup limit: cgroup2 " + cmp.Or(cgroupFound(c.v2), "-") + "; v1 memory " + cmp.Or(cgroupFound(c.memory), "-")
	}
	return limit, from
}

// cgroupFound describes where a hierarchy's cgroup was found, for the log.
func cgroupFound(c cgroupDir) string {
	if c.dir == "" {
		return c.found
	}
	return c.dir + " (" + c.found + ")"
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
