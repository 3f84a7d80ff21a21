//go:build linux

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/testenv"
)

// TestCaptureOnAKernelWithoutNetnsCookies: an agent with capture on a
// kernel before Linux 5.14, where getsockopt(SO_NETNS_COOKIE) fails with
// ENOPROTOOPT (testenv.WithoutNetnsCookie), exits at start saying capture
// needs Linux 5.14+ and what this kernel lacks, and leaves the node as it
// found it: no resolver interface, no pinned link or map. Before, the
// kernel check passed, the agent made ztdns0 and pinned 9 links, then
// exited 1 "cannot read the node's own network namespace cookie", naming
// no kernel, and left both behind on every crash-loop restart.
func TestCaptureOnAKernelWithoutNetnsCookies(t *testing.T) {
	t.Parallel()
	bin := ztdnsBinary(t)
	node := testenv.NewNode(t)
	cg := testenv.NewCgroup(t)
	bpffs := filepath.Join(testenv.NewBPFFS(t), "ztdns")
	dir := t.TempDir()
	resolvConf := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolvConf, []byte("nameserver 198.51.100.55\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	examples, err := filepath.Abs("../../examples")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // what an agent that failed this test left
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if out, err := node.Nsenter(ctx, bin, "uninstall", "--bpffs", bpffs, "--cgroup", cg.Path).CombinedOutput(); err != nil {
			t.Errorf("cleanup: ztdns uninstall: %v\n%s", err, out)
		}
	})
	a := testenv.StartAgentIn(t, node, testenv.WithoutNetnsCookie(t), bin, "agent", "--config-dir", examples, "--cgroup", cg.Path,
		"--bpffs", bpffs, "--socket", filepath.Join(dir, "run", "ztdns.sock"), "--state-dir", filepath.Join(dir, "state"),
		"--resolv-conf", resolvConf)
	if err := a.Wait(t, 60*time.Second); err == nil {
		t.Fatalf("the agent exited 0 on a kernel it cannot capture on:\n%s", a.Log())
	}
	for _, want := range []string{"capture needs Linux 5.14+ (this kernel lacks SO_NETNS_COOKIE", "protocol not available"} {
		if !a.LogContains(want) {
			t.Errorf("the agent's log does not say %q:\n%s", want, a.Log())
		}
	}
	if out, err := node.Output(t, nil, 10*time.Second, "ip", "-o", "link", "show", "dev", "ztdns0"); err == nil {
		t.Errorf("the agent left its interface behind: %s", out)
	}
	var pins []string
	filepath.WalkDir(bpffs, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			pins = append(pins, path)
		}
		return nil
	})
	if len(pins) != 0 {
		t.Errorf("the agent left pins behind: %v", pins)
	}
}

// TestCNIInstallOnAKernelWithoutNetnsCookies: an agent without capture,
// with --cni-install, on a kernel before Linux 5.14 (as above) serves DNS
// and is ready, but does not put the plugin in the chain: the plugin could
// capture no pod there, and under onAgentUnreachable "fail" would refuse
// every one. It takes out the entry an earlier agent put there, and
// `ztdns status` says why. Before, it installed the plugin, and every pod
// ADD on the node failed "CNI_NETNS … is not a usable network namespace".
func TestCNIInstallOnAKernelWithoutNetnsCookies(t *testing.T) {
	t.Parallel()
	bin := ztdnsBinary(t)
	binDir, confDir := t.TempDir(), t.TempDir()
	list := filepath.Join(confDir, "10-bridge.conflist")
	earlier := `{"cniVersion": "1.0.0", "name": "pods", "plugins": [{"type": "bridge", "bridge": "cni0"}, {"type": "ztdns", "socketPath": "/run/ztdns/ztdns.sock", "onAgentUnreachable": "fail"}]}`
	if err := os.WriteFile(list, []byte(earlier), 0o644); err != nil {
		t.Fatal(err)
	}
	ag := &agenttest.Agent{Addr: testenv.FreePort(t), Socket: filepath.Join(t.TempDir(), "run", "ztdns.sock")}
	wrapper := testenv.WithoutNetnsCookie(t)
	proc := testenv.StartLocal(t, wrapper[0], append(wrapper[1:], bin, "agent", "--capture=false", "--config-dir", "../../examples",
		"--listen", ag.Addr.String(), "--upstream", testenv.DeadAddr(t).String(), "--socket", ag.Socket,
		"--cni-install", "--cni-bin-dir", binDir, "--cni-conf-dir", confDir)...)
	var warning string
	agenttest.Eventually(t, 30*time.Second, func() error {
		if !proc.Running() {
			t.Fatalf("the agent exited: %v\n%s", proc.Wait(t, 0), proc.Log())
		}
		st, err := ag.Status()
		if err != nil {
			return err
		}
		if !st.Ready {
			return fmt.Errorf("not ready: %s", st.NotReady)
		}
		for _, w := range st.Warnings {
			if strings.Contains(w, "CNI plugin is not installed") {
				warning = w
			}
		}
		if !strings.Contains(warning, "SO_NETNS_COOKIE") {
			return fmt.Errorf("status warnings %q: none says the kernel keeps the plugin out", st.Warnings)
		}
		return nil
	})
	for _, want := range []string{"no pod on this node is captured", "capture needs Linux 5.14+ (this kernel lacks SO_NETNS_COOKIE"} {
		if !strings.Contains(warning, want) {
			t.Errorf("status warning %q does not say %q", warning, want)
		}
	}
	if got := askOver(ag, "udp", "address.internal."); got != "198.51.100.1" {
		t.Errorf("address.internal over UDP: %s", got)
	}
	// Whatever the agent would do to the chain it has done by the time it
	// warns.
	data, err := os.ReadFile(list)
	if err != nil || strings.Contains(string(data), `"ztdns"`) {
		t.Errorf("%s: %s, %v; want no ztdns entry", list, data, err)
	}
	if _, err := os.Stat(filepath.Join(binDir, "ztdns")); err == nil {
		t.Errorf("the agent installed the plugin binary in %s", binDir)
	}
}
