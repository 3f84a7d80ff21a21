//go:build linux

package bench

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/testenv"
)

// captureWay is one way a pod's query reaches the resolver.
type captureWay struct {
	name string
	pod  *testenv.Pod
	// target is the address dnsperf sends to.
	target string
}

// The ways, in the order of the first round; the last is the one the
// others are compared with.
const (
	// wayRedirect: a marked pod asks its own nameserver, which exists
	// nowhere; the eBPF programs redirect the query to the resolver.
	wayRedirect = "redirect"
	// wayIptables: an unmarked pod asks its nameserver; a DNAT rule in the
	// pod's netns sends it to the resolver, as istio-cni does.
	wayIptables = "iptables"
	// wayDirect: an unmarked pod asks the resolver's address itself.
	wayDirect = "direct"
)

// BenchmarkCapture (root): the same dnsperf load from inside a pod network
// namespace to the agent in the node namespace, three ways (wayRedirect,
// wayIptables, wayDirect), dnsperf always in the cgroup the programs are
// attached to, so an unmarked pod pays their early exit. Per way: qps, the
// agent's, dnsperf's (the sending path: the program, or conntrack and NAT)
// and ksoftirqd's CPU per answered query. Then bpf/way=redirect runs the
// redirect with the kernel's BPF run-time statistics on (they add two clock
// reads per run) for each program's time per query.
//
//	go test -run '^$' -bench Capture -benchtime 1x ./test/bench/ -args -rounds 6
func BenchmarkCapture(b *testing.B) {
	testenv.RequireRoot(b)
	for _, bin := range []string{"dnsperf", "dig", "iptables", "ip"} {
		testenv.LookPath(b, bin)
	}
	files := generate(b, resolverCluster)
	n := newCaptureNode(b)
	agent := n.startAgent(b, 1, "--config-dir", files.Manifests)
	ways := []captureWay{
		{name: wayRedirect, pod: n.pod(b), target: podNameserver},
		{name: wayIptables, pod: n.pod(b), target: podNameserver},
		{name: wayDirect, pod: n.pod(b), target: resolverAddr.Addr().String()},
	}
	n.mark(b, ways[0].pod, wayRedirect)
	for _, proto := range []string{"udp", "tcp"} {
		if out, err := ways[1].pod.Output(b, nil, 10*time.Second, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", proto,
			"--dport", "53", "-j", "DNAT", "--to-destination", resolverAddr.String()); err != nil {
			b.Fatalf("iptables: %v\n%s", err, out)
		}
	}
	checkWays(b, n, ways, files.Names)

	for _, rate := range loads(b, *flagCaptureRate) {
		for r := range *flagRounds {
			for _, w := range turn(ways, r) {
				b.Run(loadName(rate)+roundName(r)+"/way="+w.name, func(b *testing.B) {
					l := dnsperfLoad{server: w.target, port: 53, queries: files.Queries, rate: rate, duration: *flagDuration}
					var t tally
					for b.Loop() {
						t.add(measureLoad(b, agent.pid(), l, inPod(w.pod, n.cg), *flagWarmup))
					}
					t.report(b)
				})
			}
		}
	}
	b.Run("bpf/way="+wayRedirect, func(b *testing.B) {
		benchBPFStats(b, n, ways[0], files.Queries)
	})
}

// checkWays: every way answers a sample of names with the same addresses,
// and an unmarked pod that asks its nameserver gets nothing, so only the
// capture makes the redirect way work.
func checkWays(b *testing.B, n *captureNode, ways []captureWay, names []string) {
	b.Helper()
	dig := func(w captureWay, name string) ([]string, error) {
		out, err := w.pod.Output(b, n.cg, 10*time.Second, "dig", "+short", "+time=1", "+tries=1", "@"+w.target, name, "A")
		addrs := testenv.ParseAddrs(out)
		s := make([]string, len(addrs))
		for i, a := range addrs {
			s[i] = a.String()
		}
		slices.Sort(s)
		return s, err
	}
	for i := 0; i < len(names); i += max(1, len(names)/20) {
		var first []string
		for k, w := range ways {
			got, err := dig(w, names[i])
			if err != nil || len(got) == 0 || (k > 0 && !slices.Equal(got, first)) {
				b.Fatalf("%s: %s gave %v (%v), %s gave %v", w.name, names[i], got, err, ways[0].name, first)
			}
			first = got
		}
	}
	unmarked := captureWay{name: "unmarked", pod: ways[len(ways)-1].pod, target: podNameserver}
	if got, _ := dig(unmarked, names[0]); len(got) > 0 {
		b.Fatalf("an unmarked pod asking %s (which exists nowhere) got %v: something else captures its DNS", podNameserver, got)
	}
}

// benchBPFStats runs a full-speed load through way with the kernel's BPF
// run-time statistics on, and reports each capture program's runs and
// nanoseconds per answered query.
func benchBPFStats(b *testing.B, n *captureNode, way captureWay, queries string) {
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		testenv.Unavailable(b, "BPF run-time statistics: %v", err)
	}
	defer stats.Close()
	progs := attachedPrograms(b, n.cg)
	before := programStats(b, progs)
	var answered int64
	l := dnsperfLoad{server: way.target, port: 53, queries: queries, duration: min(*flagDuration, 10*time.Second)}
	for b.Loop() {
		answered += runDnsperf(b, l, inPod(way.pod, n.cg)).completed
	}
	after := programStats(b, progs)
	b.ReportMetric(0, "ns/op")
	var total time.Duration
	for name, a := range after {
		runs, t := a.RunCount-before[name].RunCount, a.Runtime-before[name].Runtime
		total += t
		if runs > 0 {
			b.ReportMetric(float64(runs)/float64(answered), name+"-runs/query")
			b.ReportMetric(float64(t.Nanoseconds())/float64(answered), name+"-ns/query")
		}
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(answered), "bpf-ns/query")
}

// captureAttachTypes are the hooks ztdns attaches to.
var captureAttachTypes = []ebpf.AttachType{
	ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect,
	ebpf.AttachCGroupUDP4Sendmsg, ebpf.AttachCGroupUDP6Sendmsg,
	ebpf.AttachCGroupUDP4Recvmsg, ebpf.AttachCGroupUDP6Recvmsg,
	ebpf.AttachCgroupInet4GetPeername, ebpf.AttachCgroupInet6GetPeername,
}

// attachedPrograms opens the programs attached to the cgroup, by name
// without ztdns's prefix (the kernel cuts names to 15 characters).
func attachedPrograms(b *testing.B, cg *testenv.Cgroup) map[string]*ebpf.Program {
	b.Helper()
	progs := map[string]*ebpf.Program{}
	for _, at := range captureAttachTypes {
		res, err := link.QueryPrograms(link.QueryOptions{Target: cg.FD(), Attach: at})
		if err != nil {
			b.Fatalf("query the programs on %s: %v", cg.Path, err)
		}
		for _, ap := range res.Programs {
			p, err := ebpf.NewProgramFromID(ap.ID)
			if err != nil {
				b.Fatalf("program %d: %v", ap.ID, err)
			}
			b.Cleanup(func() { p.Close() })
			info, err := p.Info()
			if err != nil {
				b.Fatalf("program %d: %v", ap.ID, err)
			}
			progs[strings.TrimPrefix(info.Name, "ztdns_")] = p
		}
	}
	if len(progs) == 0 {
		b.Fatalf("no program attached to %s", cg.Path)
	}
	return progs
}

func programStats(b *testing.B, progs map[string]*ebpf.Program) map[string]ebpf.ProgramStats {
	b.Helper()
	out := map[string]ebpf.ProgramStats{}
	for name, p := range progs {
		s, err := p.Stats()
		if err != nil {
			b.Fatalf("stats of %s: %v", name, err)
		}
		out[name] = *s
	}
	return out
}
