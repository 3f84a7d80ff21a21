package agent

import (
	"testing"
)

// TestCgroupCPUStat reads CFS bandwidth statistics from fake /proc files
// and cgroup trees: the agent's own cgroup's, on a v2 host, on a hybrid
// one whose cpu controller is v1 (throttled_time in nanoseconds), and none
// where v2's cpu controller is off for the cgroup or nothing can be read.
func TestCgroupCPUStat(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cgroup    string
		mountinfo string            // %s: where the cgroup trees are
		files     map[string]string // under root
		want      cpuStat
		ok        bool
	}{
		{
			name:      "v2: the container's own cgroup",
			cgroup:    "0::/kubepods/pod1/ctr\n",
			mountinfo: "30 24 0:26 / %s/unified rw,nosuid - cgroup2 cgroup2 rw\n",
			files: map[string]string{
				"unified/kubepods/pod1/cpu.stat": "usage_usec 9\nnr_periods 1\nnr_throttled 1\nthrottled_usec 1\n",
				"unified/kubepods/pod1/ctr/cpu.stat": "usage_usec 2400000\nuser_usec 2000000\nsystem_usec 400000\n" +
					"nr_periods 116\nnr_throttled 103\nthrottled_usec 8500000\nnr_bursts 0\nburst_usec 0\n",
			},
			want: cpuStat{periods: 116, throttled: 103, throttledSeconds: 8.5},
			ok:   true,
		},
		{
			name:      "v2: cpu controller on, no limit",
			cgroup:    "0::/a\n",
			mountinfo: "30 24 0:26 / %s/unified rw - cgroup2 cgroup2 rw\n",
			files:     map[string]string{"unified/a/cpu.stat": "usage_usec 5\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n"},
			ok:        true,
		},
		{
			name:      "v2: cpu controller off",
			cgroup:    "0::/a\n",
			mountinfo: "30 24 0:26 / %s/unified rw - cgroup2 cgroup2 rw\n",
			files:     map[string]string{"unified/a/cpu.stat": "usage_usec 5\nuser_usec 3\nsystem_usec 2\n"},
		},
		{
			name:   "hybrid: v1 cpu controller",
			cgroup: "12:memory:/a/b\n11:cpu,cpuacct:/a/b\n0::/a/b\n",
			mountinfo: "30 24 0:26 / %s/unified rw - cgroup2 cgroup2 rw\n" +
				"31 24 0:27 / %s/memory rw - cgroup cgroup rw,memory\n" +
				"32 24 0:28 / %s/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n",
			files: map[string]string{
				"unified/a/b/cpu.stat":     "usage_usec 5\n", // no controller in v2
				"memory/a/b/cpu.stat":      "nr_periods 1\n", // not the cpu hierarchy
				"cpu,cpuacct/a/cpu.stat":   "nr_periods 2\nnr_throttled 2\nthrottled_time 2\n",
				"cpu,cpuacct/a/b/cpu.stat": "nr_periods 40\nnr_throttled 19\nthrottled_time 2400000000\nnr_bursts 0\nburst_time 0\n",
			},
			want: cpuStat{periods: 40, throttled: 19, throttledSeconds: 2.4},
			ok:   true,
		},
		{
			name:      "unreadable",
			cgroup:    "",
			mountinfo: "",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proc, _ := fakeProc(t, tc.cgroup, tc.mountinfo, tc.files)
			got, ok := cgroupCPUStat(findSelfCgroup(proc, 7, ""))
			if got != tc.want || ok != tc.ok {
				t.Errorf("cgroupCPUStat = %+v, %v; want %+v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}
