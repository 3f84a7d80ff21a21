//go:build linux

package agent

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ztdns/ztdns/internal/testenv"
)

// cgroupnsChildEnv, set, makes TestCgroupNamespaceFindsThePodsCgroup the
// child: it prints the memory limit its agent would read and returns.
const cgroupnsChildEnv = "ZTDNS_TEST_CGROUPNS_CHILD_POD_UID"

// TestCgroupNamespaceFindsThePodsCgroup runs a process as a container
// runtime runs the agent on a cgroup v2 node: in its container's cgroup
// (a pod's, laid out as the cgroupfs driver does, under the test's), then
// in a cgroup namespace of its own (unshare --cgroup), with the node's
// hierarchy mounted where it is, as the chart mounts it. Its
// /proc/self/cgroup says "/" for that hierarchy, and mountinfo shows the
// mount's root above the namespace's. It finds its container's cgroup by
// its pod's UID and reads the container's limit, lower than the pod's.
// (Before: +Inf, and no limit for the Go runtime.)
func TestCgroupNamespaceFindsThePodsCgroup(t *testing.T) {
	if uid := os.Getenv(cgroupnsChildEnv); uid != "" {
		src := agentLimits{cgroup: findSelfCgroup("/proc/self", os.Getpid(), uid)}.memory()
		fmt.Printf("limit=%v from=%s\n", src.limit, src.from)
		return
	}
	testenv.RequireRoot(t)
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		testenv.Unavailable(t, "needs unshare (util-linux): %v", err)
	}
	const uid = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
	_, ctr := testenv.NewPodMemoryCgroups(t, uid, 256<<20, 200<<20)
	w := ctr.Wrapper()
	cmd := exec.Command(w[0], append(w[1:], unshare, "--cgroup", os.Args[0], "-test.run=^TestCgroupNamespaceFindsThePodsCgroup$", "-test.count=1")...)
	cmd.Env = append(os.Environ(), cgroupnsChildEnv+"="+uid)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the child: %v\n%s", err, out)
	}
	if want := fmt.Sprintf("limit=%v ", float64(200<<20)); !strings.Contains(string(out), want) || !strings.Contains(string(out), "its container's") {
		t.Errorf("the child read %q, want %q from its container's cgroup", out, want)
	}
}
