package agent

import (
	"math"
	"os"
	"path/filepath"
	"testing"
)

// TestCgroupMemoryLimit reads limits from fake /proc files and cgroup
// trees: the lowest of the cgroup's and its ancestors', on a v2 host and on
// a hybrid one whose memory controller is v1.
func TestCgroupMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cgroup    string
		mountinfo func(root string) string
		files     map[string]string // under root
		want      float64
	}{
		{
			name:   "v2: the pod's limit, lower than the container's",
			cgroup: "0::/kubepods/pod1/ctr\n",
			mountinfo: func(root string) string {
				return "30 24 0:26 / " + root + "/unified rw,nosuid - cgroup2 cgroup2 rw\n"
			},
			files: map[string]string{
				"unified/kubepods/memory.max":          "max\n",
				"unified/kubepods/pod1/memory.max":     "268435456\n",
				"unified/kubepods/pod1/ctr/memory.max": "536870912\n",
			},
			want: 268435456,
		},
		{
			name:   "v2: none",
			cgroup: "0::/a\n",
			mountinfo: func(root string) string {
				return "30 24 0:26 / " + root + "/unified rw - cgroup2 cgroup2 rw\n"
			},
			files: map[string]string{"unified/a/memory.max": "max\n"},
			want:  math.Inf(1),
		},
		{
			name:   "hybrid: v1 memory controller",
			cgroup: "12:memory:/a/b\n11:cpu,cpuacct:/a/b\n0::/a/b\n",
			mountinfo: func(root string) string {
				return "30 24 0:26 / " + root + "/unified rw - cgroup2 cgroup2 rw\n" +
					"31 24 0:27 / " + root + "/memory rw - cgroup cgroup rw,memory\n" +
					"32 24 0:28 / " + root + "/cpu rw - cgroup cgroup rw,cpu,cpuacct\n"
			},
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
			mountinfo: func(string) string { return "" },
			want:      math.Inf(1),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, proc := t.TempDir(), t.TempDir()
			write(t, filepath.Join(proc, "cgroup"), tc.cgroup)
			write(t, filepath.Join(proc, "mountinfo"), tc.mountinfo(root))
			for path, content := range tc.files {
				write(t, filepath.Join(root, path), content)
			}
			if got := cgroupMemoryLimit(proc); got != tc.want {
				t.Errorf("limit %v, want %v", got, tc.want)
			}
		})
	}
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
