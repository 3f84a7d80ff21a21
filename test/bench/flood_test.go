//go:build linux

package bench

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// BenchmarkFlood: one captured pod floods the agent at full speed while
// another captured pod asks for a table name 20 times a second over UDP
// and 20 times over TCP, each query from a fresh socket as a stub resolver
// asks. The agent runs with its default limits in a cgroup with the Helm
// chart's memory limit, from which it takes the Go runtime's as in a pod. One sub-benchmark per flood, and "none", the same
// probes without a flood, the measure of what this machine gives:
//
//   - known: a table name over UDP, as fast as the pod can send;
//   - forwarded: unique names over UDP, as fast as the pod can send, that
//     go to the pod's own nameserver, which answers half a second late;
//   - tcp-idle: thousands of TCP connections held open without a query,
//     each opened again a second after the agent closes it;
//   - large: unique names over TCP, 16 pipelined on each of 8 connections,
//     whose nameserver answers each with 16 KiB of TXT.
//
// Reported: the second pod's answered share over UDP and over TCP (target
// at least 99% and 95%), the p99 latency of its answers (target 50 ms; an
// unanswered query counts as infinitely slow), the agent's RSS before the
// flood and at its peak (VmHWM), its anonymous memory before the flood and
// a minute after it, and when, after the flood, it came within 2 MiB of
// where it ended (target: near the baseline within a minute), the flood's
// own rate, and
// the datagrams the node's kernel dropped because a socket's buffer was
// full (of every pod: the agent never saw them), and the agent's CPU during
// the flood (100% is one core).
//
//	go test -run '^$' -bench Flood -benchtime 1x ./test/bench/ -args -flood-for 20s
func BenchmarkFlood(b *testing.B) {
	for _, sc := range []struct {
		name  string
		flood testenv.FloodConfig
		ns    dnstest.Responder // the flooding pod's nameserver
	}{
		{"none", testenv.FloodConfig{}, nil}, // the same probes with no flood: what this machine gives
		{"known", testenv.FloodConfig{Mode: "udp", Name: "address.internal", Conns: 2}, nil},
		{"forwarded", testenv.FloodConfig{Mode: "udp", Name: "n%d.flood.example", Conns: 2},
			dnstest.Delayed(500*time.Millisecond, dnstest.Marker(netip.MustParseAddr("203.0.113.99"), netip.IPv6Unspecified()))},
		{"tcp-idle", testenv.FloodConfig{Mode: "tcp-idle", Conns: 3000, Pause: time.Second}, nil},
		{"large", testenv.FloodConfig{Mode: "tcp", Name: "n%d.large.example", Type: "TXT", Conns: 8, Window: 16},
			dnstest.LargeTXT(16 << 10)},
	} {
		b.Run(sc.name, func(b *testing.B) {
			for b.Loop() {
				runFlood(b, sc.flood, sc.ns)
			}
		})
	}
}

// Settings of BenchmarkFlood.
var (
	flagFloodFor     = flag.Duration("flood-for", 20*time.Second, "Flood: how long each flood lasts")
	flagFloodRecover = flag.Duration("flood-recover", time.Minute, "Flood: how long the agent's memory is watched after the flood")
)

// floodNameserver is the flooding pod's nameserver, on the node.
const floodNameserver = "198.51.100.57"

func runFlood(b *testing.B, flood testenv.FloodConfig, ns dnstest.Responder) {
	node := testenv.NewNode(b)
	cg := testenv.NewCgroup(b)
	bpffs := filepath.Join(testenv.NewBPFFS(b), "ztdns")
	dir := b.TempDir()
	socket := filepath.Join(dir, "run", "ztdns.sock")
	resolvConf := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolvConf, []byte("nameserver 198.51.100.55\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	if ns == nil {
		ns = dnstest.Zone{}
	}
	node.ServeNameserver(b, netip.MustParseAddr(floodNameserver), ns)
	examples, err := filepath.Abs("../../examples")
	if err != nil {
		b.Fatal(err)
	}
	bin := ztdnsBinary(b)
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if out, err := node.Nsenter(ctx, bin, "uninstall", "--bpffs", bpffs, "--cgroup", cg.Path).CombinedOutput(); err != nil {
			b.Errorf("cleanup: ztdns uninstall: %v\n%s", err, out)
		}
	})
	mem := testenv.NewMemoryCgroup(b, chartMemoryLimit(b)) // the agent runs as the chart runs it
	agent := testenv.StartAgentIn(b, node, mem.Wrapper(), bin, "agent", "--config-dir", examples, "--cgroup", cg.Path, "--bpffs", bpffs,
		"--socket", socket, "--state-dir", filepath.Join(dir, "state"), "--resolv-conf", resolvConf, "--log-level", "warn")
	agent.WaitReady(b, socket, 30*time.Second)
	flooder := node.AddPod(b, testenv.PodConfig{Nameservers: []string{floodNameserver}})
	victim := node.AddPod(b, testenv.PodConfig{Nameservers: []string{"203.0.113.53"}}) // exists nowhere: only the redirect answers
	for name, p := range map[string]*testenv.Pod{"flooder": flooder, "victim": victim} {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		out, err := exec.CommandContext(ctx, bin, "capture", "add", "--socket", socket, "--netns", p.Path(), "--namespace", "default", "--name", name).CombinedOutput()
		cancel()
		if err != nil {
			b.Fatalf("ztdns capture add %s: %v\n%s", name, err, out)
		}
	}
	time.Sleep(3 * time.Second) // let the start-up garbage go before the baseline
	baseline, baselineAnon := rssOf(b, agent.Pid(), "VmRSS"), rssOf(b, agent.Pid(), "RssAnon")

	flood.For = *flagFloodFor
	var f *testenv.Flood
	if flood.Mode != "" {
		f = testenv.StartFlood(b, flooder, cg, flood)
	}
	probe := func(tcp bool) *testenv.Flood {
		return testenv.StartFlood(b, victim, cg, testenv.FloodConfig{Mode: "probe", Name: "address.internal", TCP: tcp,
			Every: 50 * time.Millisecond, Timeout: 2 * time.Second, For: *flagFloodFor})
	}
	udpProbe, tcpProbe := probe(false), probe(true)
	dropsBefore, cpuBefore := udpReceiveErrors(b, node), cpuOf(b, agent.Pid())
	udp, tcp := udpProbe.Wait(b), tcpProbe.Wait(b)
	var load testenv.FloodResult
	if f != nil {
		load = f.Wait(b)
	}
	drops, cpu := udpReceiveErrors(b, node)-dropsBefore, cpuOf(b, agent.Pid())-cpuBefore
	peak := rssOf(b, agent.Pid(), "VmHWM")

	// Back near the baseline: the agent's anonymous memory (what it
	// allocated; the rest of its RSS is the binary's own pages, which the
	// kernel may drop at will) over the next minute: where it ends, and
	// when it came within 2 MiB of that.
	end := time.Now()
	var samples []int64
	for time.Since(end) < *flagFloodRecover {
		samples = append(samples, rssOf(b, agent.Pid(), "RssAnon"))
		time.Sleep(time.Second)
	}
	after := rssOf(b, agent.Pid(), "RssAnon")
	returned := len(samples)
	for returned > 0 && samples[returned-1] <= after+2<<20 {
		returned--
	}
	if !agent.Running() {
		b.Fatalf("the agent died during the flood:\n%s", agent.Log())
	}

	b.Logf("victim: UDP %d of %d answered (p99 %v), TCP %d of %d (p99 %v); flooder sent %d (%v), TCP connections %d opened, %d closed by the agent",
		udp.Answered, udp.Sent, udp.LatencyQuantile(0.99), tcp.Answered, tcp.Sent, tcp.LatencyQuantile(0.99), load.Sent, load.Rcodes, load.Opened, load.Closed)
	b.Logf("agent RSS: %d MiB before (%d MiB anonymous), %d MiB at the peak; anonymous %d MiB %v after the flood, within 2 MiB of that %d s after it",
		baseline>>20, baselineAnon>>20, peak>>20, after>>20, flagFloodRecover, returned)
	b.ReportMetric(100*udp.AnsweredFraction(), "udp-answered-%")
	b.ReportMetric(100*tcp.AnsweredFraction(), "tcp-answered-%")
	b.ReportMetric(ms(udp.LatencyQuantile(0.99)), "udp-p99-ms")
	b.ReportMetric(ms(tcp.LatencyQuantile(0.99)), "tcp-p99-ms")
	b.ReportMetric(float64(baseline)/(1<<20), "rss-before-MiB")
	b.ReportMetric(float64(peak)/(1<<20), "rss-peak-MiB")
	b.ReportMetric(float64(baselineAnon)/(1<<20), "anon-before-MiB")
	b.ReportMetric(float64(after)/(1<<20), "anon-after-MiB")
	b.ReportMetric(float64(returned), "returned-s")
	b.ReportMetric(float64(load.Sent)/flood.For.Seconds(), "flood-q/s")
	b.ReportMetric(float64(drops), "udp-overflows")
	b.ReportMetric(100*cpu.Seconds()/flood.For.Seconds(), "agent-cpu-%")
	b.ReportMetric(0, "ns/op")
}

// cpuOf is the CPU time (user and system) process pid has used.
func cpuOf(b *testing.B, pid int) time.Duration {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which ends with the last ')'.
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// udpReceiveErrors is how many datagrams the node's kernel dropped because
// a socket's receive buffer was full (UDP RcvbufErrors): queries the agent
// never saw, whoever sent them.
func udpReceiveErrors(b *testing.B, node *testenv.Node) int64 {
	b.Helper()
	out, err := node.Output(b, nil, 5*time.Second, "cat", "/proc/net/snmp")
	if err != nil {
		b.Fatalf("/proc/net/snmp in the node: %v\n%s", err, out)
	}
	var names []string
	for line := range strings.SplitSeq(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || fields[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = fields
			continue
		}
		for i, n := range names {
			if n == "RcvbufErrors" && i < len(fields) {
				v, _ := strconv.ParseInt(fields[i], 10, 64)
				return v
			}
		}
	}
	b.Fatalf("no Udp RcvbufErrors in /proc/net/snmp:\n%s", out)
	return 0
}

// ms is d in milliseconds, capped at an hour (an unanswered probe counts
// as infinitely slow).
func ms(d time.Duration) float64 { return float64(min(d, time.Hour)) / float64(time.Millisecond) }

// rssOf reads a memory field of /proc/PID/status (VmRSS, VmHWM, RssAnon),
// in bytes.
func rssOf(b *testing.B, pid int, field string) int64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				b.Fatalf("%s in /proc/%d/status: %v", field, pid, err)
			}
			return kb << 10
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// chartMemoryLimit is the memory limit the Helm chart gives the agent with
// its default values, in bytes.
func chartMemoryLimit(b *testing.B) int64 {
	b.Helper()
	data, err := os.ReadFile("../../deploy/charts/ztdns/values.yaml")
	if err != nil {
		b.Fatal(err)
	}
	var values struct {
		Resources struct {
			Limits struct {
				Memory string `json:"memory"`
			} `json:"limits"`
		} `json:"resources"`
	}
	if err := yaml.Unmarshal(data, &values); err != nil {
		b.Fatal(err)
	}
	q, err := resource.ParseQuantity(values.Resources.Limits.Memory)
	if err != nil {
		b.Fatalf("the chart's memory limit %q: %v", values.Resources.Limits.Memory, err)
	}
	return q.Value()
}

// The flood and probe clients are this test binary in helper mode.
func init() { testenv.RunHelper() }
