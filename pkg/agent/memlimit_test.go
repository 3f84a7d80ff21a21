package agent

import (
	"log/slog"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// TestCgroupMemoryLimit reads limits from fake /proc files and cgroup
// trees: the lowest of the cgroup's and its ancestors', on a v2 host and on
// a hybrid one whose memory controller is v1.
func TestCgroupMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cgroup    string
		mountinfo string            // %s: where the cgroup trees are
		files     map[string]string // under root
		want      float64
	}{
		{
			name:      "v2: the pod's limit, lower than the container's",
			cgroup:    "0::/kubepods/pod1/ctr\n",
			mountinfo: "30 24 0:26 / %s/unified rw,nosuid - cgroup2 cgroup2 rw\n",
			files: map[string]string{
				"unified/kubepods/memory.max":          "max\n",
				"unified/kubepods/pod1/memory.max":     "268435456\n",
				"unified/kubepods/pod1/ctr/memory.max": "536870912\n",
			},
			want: 268435456,
		},
		{
			name:      "v2: none",
			cgroup:    "0::/a\n",
			mountinfo: "30 24 0:26 / %s/unified rw - cgroup2 cgroup2 rw\n",
			files:     map[string]string{"unified/a/memory.max": "max\n"},
			want:      math.Inf(1),
		},
		{
			name:   "hybrid: v1 memory controller",
			cgroup: "12:memory:/a/b\n11:cpu,cpuacct:/a/b\n0::/a/b\n",
			mountinfo: "30 24 0:26 / %s/unified rw - cgroup2 cgroup2 rw\n" +
				"31 24 0:27 / %s/memory rw - cgroup cgroup rw,memory\n" +
				"32 24 0:28 / %s/cpu rw - cgroup cgroup rw,cpu,cpuacct\n",
			files: map[string]string{
				"memory/a/memory.limit_in_bytes":   "9223372036854771712\n", // v1's "no limit"
				"memory/a/b/memory.limit_in_bytes": "104857600\n",
				"cpu/a/b/memory.limit_in_bytes":    "1\n", // not the memory hierarchy
			},
			want: 104857600,
		},
		{
			name:      "unreadable",
			cgroup:    "",
			mountinfo: "",
			want:      math.Inf(1),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proc, _ := fakeProc(t, tc.cgroup, tc.mountinfo, tc.files)
			if got, _ := cgroupMemoryLimit(findSelfCgroup(proc, 7, "")); got != tc.want {
				t.Errorf("limit %v, want %v", got, tc.want)
			}
		})
	}
}

// fakeProc writes a /proc/self whose cgroup file is cgroup and whose
// mountinfo is mountinfo with %s the directory of the cgroup trees, which
// holds files; it returns the /proc directory and that one.
func fakeProc(t *testing.T, cgroup, mountinfo string, files map[string]string) (proc, root string) {
	t.Helper()
	root, proc = t.TempDir(), t.TempDir()
	write(t, filepath.Join(proc, "cgroup"), cgroup)
	write(t, filepath.Join(proc, "mountinfo"), strings.ReplaceAll(mountinfo, "%s", root))
	for path, content := range files {
		write(t, filepath.Join(root, path), content)
	}
	return proc, root
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestMemoryLimiterFollowsTheCgroup: each check gives the Go runtime the
// cgroup's limit less the kernel's memory and the binary's pages, or
// GOMEMLIMIT when lower, or a quarter of the limit when that is more; no
// cgroup limit leaves GOMEMLIMIT's (the runtime's default without it). The
// warning of a limit below the bound is logged once when it falls below,
// kept for status while it is, and cleared when it holds the bound again.
func TestMemoryLimiterFollowsTheCgroup(t *testing.T) {
	proc, root := fakeProc(t, "12:memory:/a\n0::/a\n", "31 24 0:27 / %s/memory rw - cgroup cgroup rw,memory\n", nil)
	limit := func(n int64) {
		write(t, filepath.Join(root, "memory/a/memory.limit_in_bytes"), strconv.FormatInt(n, 10)+"\n")
	}
	const mi = 1 << 20
	bound := memoryBound{names: 100, binary: 20 * mi, live: 40 * mi, kernel: 8 * mi} // 68 MiB
	var logged strings.Builder
	set := int64(math.MaxInt64)
	m := &memoryLimiter{limit: agentLimits{cgroup: findSelfCgroup(proc, 7, "")}.memory, env: math.MaxInt64, bound: func() memoryBound { return bound },
		set: func(n int64) int64 { old := set; set = n; return old }, log: slog.New(slog.NewTextHandler(&logged, nil))}
	warns := func() int { return strings.Count(logged.String(), "level=WARN") }

	for _, step := range []struct {
		name      string
		limit     int64 // 0: none
		env       int64
		wantGC    int64
		wantShort bool
		wantWarns int // logged so far
	}{
		{"128 MiB", 128 * mi, math.MaxInt64, 100 * mi, false, 0},
		{"lowered to 64 MiB", 64 * mi, math.MaxInt64, 36 * mi, true, 1},
		{"checked again", 64 * mi, math.MaxInt64, 36 * mi, true, 1},
		{"GOMEMLIMIT lower", 64 * mi, 30 * mi, 30 * mi, true, 1},
		{"32 MiB: a quarter of it", 32 * mi, math.MaxInt64, 8 * mi, true, 1},
		{"raised to 1 GiB", 1024 * mi, math.MaxInt64, 996 * mi, false, 1},
		{"no limit, no GOMEMLIMIT", 0, math.MaxInt64, math.MaxInt64, false, 1},
		{"no limit, GOMEMLIMIT", 0, 50 * mi, 50 * mi, false, 1},
		{"64 MiB again", 64 * mi, math.MaxInt64, 36 * mi, true, 2},
	} {
		if step.limit == 0 {
			limit(9223372036854771712) // v1's "no limit"
		} else {
			limit(step.limit)
		}
		m.env = step.env
		m.check()
		if set != step.wantGC {
			t.Errorf("%s: the runtime's limit %d, want %d", step.name, set, step.wantGC)
		}
		if got := m.warning() != ""; got != step.wantShort {
			t.Errorf("%s: warning %q, want one: %v", step.name, m.warning(), step.wantShort)
		}
		if got := warns(); got != step.wantWarns {
			t.Errorf("%s: %d warnings logged, want %d:\n%s", step.name, got, step.wantWarns, logged.String())
		}
	}
}

// TestREADMEMemoryFigures: the figures README's "The memory bound" gives
// for the defaults with capture (eight resolver addresses) are what the
// agent computes from its terms: the kernel's 89 MiB, 137.3 MiB with 110
// pods' sockets' records, the GC's limit under the chart's 384 MiB, and a
// bound of 176 MiB with no names, about 224 MiB at 20,000. (Before, it
// counted six addresses, the slots alone: 4 MiB short.)
func TestREADMEMemoryFigures(t *testing.T) {
	a, err := newAgent(Config{Source: configdir.New(t.TempDir()), Capture: &CaptureConfig{},
		Listen: []netip.AddrPort{netip.MustParseAddrPort("169.254.20.53:53"), netip.MustParseAddrPort("[fd00:7a74:646e::53]:53")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.server.Close(); a.fwd.Close() })
	const mi = 1 << 20
	b := a.memoryBound()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	at20k := b
	at20k.live += 20000 * boundPerName
	// 110 captured pods (the kubelet's default --max-pods), each at the
	// default cap of redirected sockets.
	pods110 := int64(110 * redirect.DefaultSocketsPerPod * redirect.SocketRecordBytes)
	with110 := b
	with110.kernel += pods110
	at20kWith110 := at20k
	at20kWith110.kernel += pods110
	tenth := func(n int64) int64 { return (n*10 + mi/2) / mi } // MiB to a tenth, times ten
	for _, f := range []struct {
		what     string
		got      int64
		want     int64
		sentence string
	}{
		{"resolver addresses", int64(len(a.addrs)), 8, "capture on (eight resolver addresses"},
		{"the kernel's term (MiB)", b.kernel / mi, 89, "the kernel ≤ 17 + 72 = 89 MiB"},
		{"the sockets' records of 110 pods (MiB × 10)", tenth(pods110), 483, "48.3 MiB more with 110 captured pods"},
		{"the kernel's term with 110 pods (MiB × 10)", tenth(with110.kernel), 1373, "each holding 1,024 redirected sockets open at once: 137.3 MiB"},
		{"the GC's limit under 384 MiB with 110 pods (MiB × 10)", tenth(gcMemoryLimit(384*mi, with110, math.MaxInt64)), 2267, "384 − 137.3 − 20 = 226.7 MiB"},
		{"the GC's limit under 384 MiB (MiB)", gcMemoryLimit(384*mi, b, math.MaxInt64) / mi, 275, "384 MiB\nand capture, 275 MiB with no pod captured"},
		{"the bound at 20,000 names with 110 pods (MiB, rounded)", (at20kWith110.need() + mi/2) / mi, 273, "about 273 MiB with 110\npods captured"},
		{"the bound with no names (MiB, rounded)", (b.need() + mi/2) / mi, 176, "the bound is 20 + 67 + 89 = 176 MiB"},
		{"the bound at 20,000 names (MiB, rounded)", (at20k.need() + mi/2) / mi, 224, "at 20,000 names it is about 224 MiB"},
	} {
		if f.got != f.want {
			t.Errorf("%s: %d, want %d as README says", f.what, f.got, f.want)
		}
		if !strings.Contains(string(readme), f.sentence) {
			t.Errorf("README does not say %q", f.sentence)
		}
	}
}
