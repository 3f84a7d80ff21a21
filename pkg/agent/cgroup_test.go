package agent

import (
	"log/slog"
	"math"
	"path/filepath"
	"strings"
	"testing"
)

// The agent's pod, its PID in its own PID namespace, and the cgroup
// directories of its pod as the kubelet names them.
const (
	testPodUID    = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
	testPodUIDSys = "0f1e2d3c_4b5a_6978_8a9b_0c1d2e3f4a5b"
	testPID       = 7
	mi            = 1 << 20
)

// TestCgroupNamespaceUnderTheNodesHierarchy: in a cgroup namespace of its
// own (containerd's and CRI-O's default on cgroup v2) the agent's
// /proc/self/cgroup says "0::/", and the chart mounts the node's hierarchy
// over the container's own /sys/fs/cgroup, where "/" is the node's root
// cgroup: no memory.max there, no cpu.stat of the agent's. The agent finds
// its container's cgroup by its pod's UID under kubepods, as the systemd
// and cgroupfs drivers name it, kind's kubelet.slice above it, and reads
// its limit (the lowest of its own and those above) and CPU statistics
// there, not another pod's (whose cgroup.procs shows the same PID: another
// PID namespace's process); its pod's when no container's cgroup lists
// it. (Before: +Inf, so the Go runtime got no limit at all, and
// ztdns_memory_limit_bytes was +Inf, ztdns_cpu_* absent, on most nodes of
// today.)
func TestCgroupNamespaceUnderTheNodesHierarchy(t *testing.T) {
	const statFile = "usage_usec 100\nnr_periods 50\nnr_throttled 5\nthrottled_usec 250000\n"
	// node is the node's hierarchy with the agent's pod at pod, its
	// container at pod/ctr (listing testPID), a pause container, and
	// another pod whose process has the same PID in its own namespace.
	node := func(kubepods, pod, ctr, other string) map[string]string {
		return map[string]string{
			"cgroup.procs":                                 "1\n120\n",
			kubepods + "/memory.max":                       "8000000000\n",
			pod + "/memory.max":                            "419430400\n", // 400 MiB
			pod + "/cgroup.procs":                          "",
			pod + "/" + ctr + "/memory.max":                "402653184\n", // 384 MiB
			pod + "/" + ctr + "/cgroup.procs":              "7\n",
			pod + "/" + ctr + "/cpu.stat":                  statFile,
			pod + "/pause/cgroup.procs":                    "1\n",
			other + "/memory.max":                          "104857600\n",
			other + "/cri-containerd-b.scope/cgroup.procs": "7\n",
			other + "/cri-containerd-b.scope/cpu.stat":     "nr_periods 9\n",
		}
	}
	systemd := node("kubepods.slice",
		"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+testPodUIDSys+".slice", "cri-containerd-a.scope",
		"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod11111111_2222_3333_4444_555555555555.slice")
	// A pod resized or without a limit on its container: the pod's is lower.
	noCtrLimit := node("kubepods.slice",
		"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+testPodUIDSys+".slice", "cri-containerd-a.scope",
		"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod11111111_2222_3333_4444_555555555555.slice")
	noCtrLimit["kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+testPodUIDSys+".slice/cri-containerd-a.scope/memory.max"] = "max\n"
	noCtr := node("kubepods.slice",
		"kubepods.slice/kubepods-pod"+testPodUIDSys+".slice", "cri-containerd-a.scope",
		"kubepods.slice/kubepods-pod11111111_2222_3333_4444_555555555555.slice")
	noCtr["kubepods.slice/kubepods-pod"+testPodUIDSys+".slice/cri-containerd-a.scope/cgroup.procs"] = "1\n"
	own := map[string]string{ // the container's own cgroup mount: its root is the container's cgroup
		"cgroup.procs": "1\n7\n",
		"memory.max":   "402653184\n",
		"cpu.stat":     statFile,
	}
	const (
		rootMount  = "30 24 0:26 / %s/sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n"
		aboveMount = "30 24 0:26 /../../.. %s/sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n"
	)
	wantStat := cpuStat{periods: 50, throttled: 5, throttledSeconds: 0.25}
	for _, tc := range []struct {
		name      string
		mountinfo string
		podUID    string
		files     map[string]string // under the mount
		want      float64
		wantStat  cpuStat
		wantFrom  string // in the log's "from"
	}{
		{"systemd driver, the node's hierarchy over the container's mount", rootMount, testPodUID, systemd, 384 * mi, wantStat, "cri-containerd-a.scope"},
		{"systemd driver, the node's hierarchy alone (shown above the namespace)", aboveMount, testPodUID, systemd, 384 * mi, wantStat, "cri-containerd-a.scope"},
		{"cgroupfs driver, Guaranteed", rootMount, testPodUID,
			node("kubepods", "kubepods/pod"+testPodUID, "0123abcd", "kubepods/pod11111111-2222-3333-4444-555555555555"), 384 * mi, wantStat, "0123abcd"},
		{"cgroupfs driver, Burstable", aboveMount, testPodUID,
			node("kubepods", "kubepods/burstable/pod"+testPodUID, "0123abcd", "kubepods/burstable/pod11111111-2222-3333-4444-555555555555"), 384 * mi, wantStat, "0123abcd"},
		{"kind: the kubelet's cgroup root above kubepods", aboveMount, testPodUID,
			node("kubelet.slice/kubelet-kubepods.slice", "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod"+testPodUIDSys+".slice",
				"cri-containerd-a.scope", "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod11111111_2222_3333_4444_555555555555.slice"), 384 * mi, wantStat, "cri-containerd-a.scope"},
		{"the pod's limit, lower than the container's none", rootMount, testPodUID, noCtrLimit, 400 * mi, wantStat, "kubepods-burstable-pod" + testPodUIDSys + ".slice"},
		{"no container's cgroup lists the agent: its pod's", rootMount, testPodUID, noCtr, 400 * mi, cpuStat{}, "its pod's"},
		{"the container's own cgroup mount", rootMount, testPodUID, own, 384 * mi, wantStat, "/proc/self/cgroup"},
		{"no pod UID: none (not the node's root)", rootMount, "", systemd, math.Inf(1), cpuStat{}, "no pod UID"},
		{"another pod's UID: none", rootMount, "99999999-2222-3333-4444-555555555555", systemd, math.Inf(1), cpuStat{}, "no cgroup of pod"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proc := fakeCgroupNamespace(t, tc.mountinfo, tc.files)
			c := findSelfCgroup(proc, testPID, tc.podUID)
			got, from := cgroupMemoryLimit(c)
			if got != tc.want {
				t.Errorf("limit %v, want %v (%s)", got, tc.want, from)
			}
			if !strings.Contains(from, tc.wantFrom) {
				t.Errorf("from %q, want it to say %q", from, tc.wantFrom)
			}
			st, ok := cgroupCPUStat(c)
			if st != tc.wantStat || ok != (tc.wantStat != cpuStat{}) {
				t.Errorf("cpu.stat %+v, %v; want %+v", st, ok, tc.wantStat)
			}
		})
	}
}

// fakeCgroupNamespace writes a /proc/self of a process in a cgroup
// namespace of its own ("0::/") whose /sys/fs/cgroup, as mountinfo
// (a format with the root's directory) says, holds files; it returns the
// /proc directory.
func fakeCgroupNamespace(t *testing.T, mountinfo string, files map[string]string) string {
	t.Helper()
	under := make(map[string]string, len(files))
	for path, content := range files {
		under[filepath.Join("sys/fs/cgroup", path)] = content
	}
	proc, _ := fakeProc(t, "0::/\n", mountinfo, under)
	return proc
}

// TestMemoryLimitFromTheDownwardAPI: when no cgroup limit of the agent's
// can be read (here: in a cgroup namespace of its own, no pod UID to look
// for), its memory limit is the one the chart gives from the downward API
// (MEMORY_LIMIT, Config.MemoryLimit): the Go runtime's limit and
// ztdns_memory_limit_bytes follow it, and the log says where it came from
// and that a resize is not followed. A cgroup limit that can be read wins.
// (Before: none, and no limit for the Go runtime.)
func TestMemoryLimitFromTheDownwardAPI(t *testing.T) {
	node := fakeCgroupNamespace(t, "30 24 0:26 /../.. %s/sys/fs/cgroup ro - cgroup2 cgroup2 rw\n",
		map[string]string{"cgroup.procs": "1\n"})
	l := agentLimits{cgroup: findSelfCgroup(node, testPID, ""), downward: 384 * mi}
	src := l.memory()
	if src.limit != 384*mi || !strings.Contains(src.from, "MEMORY_LIMIT") || !strings.Contains(src.from, "resize in place is not followed") {
		t.Errorf("memory() = %+v, want 384 MiB from MEMORY_LIMIT", src)
	}

	var logged strings.Builder
	set := int64(math.MaxInt64)
	bound := memoryBound{binary: 20 * mi, live: 40 * mi, kernel: 89 * mi}
	m := &memoryLimiter{limit: l.memory, env: math.MaxInt64, bound: func() memoryBound { return bound },
		set: func(n int64) int64 { old := set; set = n; return old }, log: slog.New(slog.NewTextHandler(&logged, nil))}
	m.check()
	if set != 275*mi {
		t.Errorf("the runtime's limit %d, want %d (384 − 89 − 20 MiB)", set, 275*mi)
	}
	if !strings.Contains(logged.String(), "MEMORY_LIMIT") {
		t.Errorf("the log does not say the limit came from MEMORY_LIMIT:\n%s", logged.String())
	}

	own := fakeCgroupNamespace(t, "30 24 0:26 / %s/sys/fs/cgroup ro - cgroup2 cgroup2 rw\n",
		map[string]string{"cgroup.procs": "7\n", "memory.max": "536870912\n"})
	l = agentLimits{cgroup: findSelfCgroup(own, testPID, ""), downward: 384 * mi}
	if src := l.memory(); src.limit != 512*mi || strings.Contains(src.from, "MEMORY_LIMIT") {
		t.Errorf("memory() = %+v, want the cgroup's 512 MiB (resized in place)", src)
	}
}
