//go:build linux

package cnie2e

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/cni"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/netns"
)

// The tests here run without an agent: they prove the runtime-facing half
// (installation, the chain, the policy when the agent is down, the pending
// records, bad input). The tests with a real agent on the node are in
// capture_test.go (config-dir source) and kube_test.go (a real API server).

// requireCNIError checks that err is the CNI error a plugin printed, with
// code, and that its message contains want.
func requireCNIError(tb testing.TB, err error, code uint, want string) {
	tb.Helper()
	var cniErr *types.Error
	if !errors.As(err, &cniErr) {
		tb.Fatalf("error = %v (%T), want a CNI error with code %d", err, err, code)
	}
	if cniErr.Code != code || !strings.Contains(cniErr.Error(), want) {
		tb.Fatalf("error = code %d %q, want code %d containing %q", cniErr.Code, cniErr.Error(), code, want)
	}
}

// requireBridgeResult checks that res is what the bridge plugin reports for
// the pod, passed through by ztdns: the bridge, the host veth and the pod's
// eth0, with the addresses that are really on eth0.
func requireBridgeResult(tb testing.TB, r *Runtime, p *Pod, res *current.Result, ipv6 bool) []netip.Addr {
	tb.Helper()
	if len(res.Interfaces) != 3 || res.Interfaces[0].Name != r.Bridge || res.Interfaces[2].Name != "eth0" || res.Interfaces[2].Sandbox != p.Path() {
		tb.Fatalf("interfaces = %v, want the bridge, a veth and eth0 in %s", res.Interfaces, p.Path())
	}
	var ips []netip.Addr
	for _, ipc := range res.IPs {
		a, _ := netip.AddrFromSlice(ipc.Address.IP)
		ips = append(ips, a.Unmap())
		gw, _ := netip.AddrFromSlice(ipc.Gateway)
		if gw = gw.Unmap(); gw != r.Gateway4 && gw != r.Gateway6 {
			tb.Errorf("IP %s has gateway %s", a, gw)
		}
	}
	wantFamilies := 1
	if ipv6 {
		wantFamilies = 2
	}
	if len(ips) != wantFamilies || !podSubnet4.Contains(ips[0]) || (ipv6 && !podSubnet6.Contains(ips[1])) {
		tb.Fatalf("IPs = %v, want one from %s (and %s with IPv6)", ips, podSubnet4, podSubnet6)
	}
	if onEth0 := eth0Addrs(tb, p); !slices.Equal(onEth0, ips) {
		tb.Fatalf("the result says %v, the pod's eth0 has %v", ips, onEth0)
	}
	return ips
}

// eth0Addrs is what `ip addr` shows on the pod's eth0: its addresses of
// global scope, IPv4 first (the order of a CNI result).
func eth0Addrs(tb testing.TB, p *Pod) []netip.Addr {
	tb.Helper()
	out, err := exec.Command("ip", "-j", "-n", p.Netns.Name, "addr", "show", "dev", "eth0").Output()
	if err != nil {
		tb.Fatalf("ip -n %s addr show dev eth0: %v", p.Netns.Name, err)
	}
	var links []struct {
		AddrInfo []struct {
			Family string `json:"family"`
			Local  string `json:"local"`
			Scope  string `json:"scope"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		tb.Fatalf("ip -j -n %s addr show dev eth0: %v, %d links:\n%s", p.Netns.Name, err, len(links), out)
	}
	var v4, v6 []netip.Addr
	for _, a := range links[0].AddrInfo {
		if a.Scope != "global" {
			continue
		}
		addr, err := netip.ParseAddr(a.Local)
		if err != nil {
			tb.Fatalf("ip -j -n %s addr show dev eth0: %v", p.Netns.Name, err)
		}
		if a.Family == "inet" {
			v4 = append(v4, addr)
		} else {
			v6 = append(v6, addr)
		}
	}
	return append(v4, v6...)
}

func cookieOf(tb testing.TB, p *Pod) uint64 {
	tb.Helper()
	c, err := netns.Cookie(p.Path())
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// TestInstalledConflistIsValid: cni.Install put ztdns last in the runtime's
// conflist, and the runtime finds every plugin and agrees on versions.
func TestInstalledConflistIsValid(t *testing.T) {
	t.Parallel()
	r := NewRuntime(t, RuntimeOptions{})
	var types []string
	for _, p := range r.list.Plugins {
		types = append(types, p.Network.Type)
	}
	if want := []string{"bridge", "ztdns"}; !slices.Equal(types, want) {
		t.Errorf("plugins = %v, want %v", types, want)
	}
	if _, err := r.cni.ValidateNetworkList(context.Background(), r.list); err != nil {
		t.Errorf("runtime rejects the conflist: %v", err)
	}
}

// TestAgentDownPolicyAllow: the pod starts, with the bridge's result passed
// through, and the ADD is recorded for the agent.
func TestAgentDownPolicyAllow(t *testing.T) {
	t.Parallel()
	r := NewRuntime(t, RuntimeOptions{IPv6: true, Plugin: cni.Config{OnAgentUnreachable: cni.PolicyAllow, Timeout: "500ms"}})
	r.MarkAgentInstalled(t)
	p := r.NewPod(t, PodOptions{Namespace: "shop", Name: "web-0"})
	res, err := r.Add(t, p)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	ips := requireBridgeResult(t, r, p, res, true)
	if log := r.Log(t); !strings.Contains(log, "level=WARN") || !strings.Contains(log, "WITHOUT DNS capture") {
		t.Errorf("no loud warning in the plugin's log:\n%s", log)
	}

	pending, err := cni.PendingAdds(r.PendingDir)
	want := control.CNIAddRequest{
		ContainerID: p.ContainerID, Netns: p.Path(), IfName: "eth0",
		PodNamespace: "shop", PodName: "web-0", PodUID: p.UID,
		IPs: ips, NetnsCookie: cookieOf(t, p),
	}
	if err != nil || len(pending) != 1 || !addRequestsEqual(pending[0], want) {
		t.Fatalf("pending ADDs = %+v, %v; want %+v", pending, err, want)
	}

	// CHECK passes without the agent: it never asks it.
	if err := r.Check(t, p); err != nil {
		t.Errorf("CHECK: %v", err)
	}
}

// TestAgentDownPolicyFail: the pod is refused with "try again later", and
// the runtime's DEL after the failed ADD goes through.
func TestAgentDownPolicyFail(t *testing.T) {
	t.Parallel()
	r := NewRuntime(t, RuntimeOptions{Plugin: cni.Config{OnAgentUnreachable: cni.PolicyFail, Timeout: "500ms"}})
	r.MarkAgentInstalled(t)
	p := r.NewPod(t, PodOptions{})
	_, err := r.Add(t, p)
	requireCNIError(t, err, types.ErrTryAgainLater, "ztdns agent unreachable at "+r.Socket)
	if pending, _ := cni.PendingAdds(r.PendingDir); len(pending) != 0 {
		t.Errorf("a refused pod was recorded: %+v", pending)
	}
	if err := r.Del(t, p); err != nil {
		t.Errorf("DEL after the failed ADD: %v", err)
	}
}

// TestAgentDownDel: a DEL the agent misses is recorded and succeeds, also
// when the pod's namespace is already gone, and replaces the pod's
// pending ADD.
func TestAgentDownDel(t *testing.T) {
	t.Parallel()
	for _, netnsGone := range []bool{false, true} {
		name := "netns present"
		if netnsGone {
			name = "netns gone"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := NewRuntime(t, RuntimeOptions{Plugin: cni.Config{Timeout: "500ms"}})
			r.MarkAgentInstalled(t)
			p := r.NewPod(t, PodOptions{})
			if _, err := r.Add(t, p); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if netnsGone {
				p.rt.NetNS = "" // the runtime passes no netns once it is gone
			}
			for range 2 {
				if err := r.Del(t, p); err != nil {
					t.Fatalf("DEL: %v", err)
				}
			}
			pending, err := cni.PendingDeletes(r.PendingDir)
			want := control.CNIDelRequest{ContainerID: p.ContainerID, Netns: p.rt.NetNS, PodNamespace: p.Namespace, PodName: p.Name}
			if err != nil || len(pending) != 1 || pending[0] != want {
				t.Errorf("pending DELs = %+v, %v; want %+v", pending, err, want)
			}
			if adds, _ := cni.PendingAdds(r.PendingDir); len(adds) != 0 {
				t.Errorf("the deleted pod's ADD is still pending: %+v", adds)
			}
		})
	}
}

// TestStatus: through the runtime, STATUS says ready under either policy
// while the agent is down, so an agent restart never turns the node
// NotReady; under "fail" the ADD is what fails.
func TestStatus(t *testing.T) {
	t.Parallel()
	node := testenv.NewNode(t)
	allow := NewRuntime(t, RuntimeOptions{Node: node, CNIVersion: "1.1.0", Plugin: cni.Config{OnAgentUnreachable: cni.PolicyAllow}})
	if err := allow.Status(t); err != nil {
		t.Errorf("STATUS under allow: %v", err)
	}
	fail := NewRuntime(t, RuntimeOptions{Node: node, CNIVersion: "1.1.0", Plugin: cni.Config{OnAgentUnreachable: cni.PolicyFail, Timeout: "500ms"}})
	if err := fail.Status(t); err != nil {
		t.Errorf("STATUS under fail, agent down: %v", err)
	}
	_, err := fail.Add(t, fail.NewPod(t, PodOptions{}))
	requireCNIError(t, err, types.ErrTryAgainLater, "ztdns agent unreachable")
}

// TestBadInput: what a misconfigured runtime or conflist gets back.
func TestBadInput(t *testing.T) {
	t.Parallel()
	t.Run("no pod identity in CNI_ARGS", func(t *testing.T) {
		t.Parallel()
		r := NewRuntime(t, RuntimeOptions{})
		p := r.NewPod(t, PodOptions{OmitK8sArgs: true})
		_, err := r.Add(t, p)
		requireCNIError(t, err, types.ErrInvalidEnvironmentVariables, "CNI_ARGS lacks [K8S_POD_NAMESPACE K8S_POD_NAME]")
	})
	t.Run("invalid policy in the conflist", func(t *testing.T) {
		t.Parallel()
		r := NewRuntime(t, RuntimeOptions{Plugin: cni.Config{OnAgentUnreachable: "sometimes"}})
		p := r.NewPod(t, PodOptions{})
		_, err := r.Add(t, p)
		requireCNIError(t, err, types.ErrInvalidNetworkConfig, `onAgentUnreachable "sometimes"`)
		// DEL still goes through, so the bridge releases the pod.
		if err := r.Del(t, p); err != nil {
			t.Errorf("DEL: %v", err)
		}
	})
	t.Run("not chained", func(t *testing.T) {
		t.Parallel()
		r := NewRuntime(t, RuntimeOptions{})
		// A conflist where ztdns runs first, with no primary plugin before it.
		only := *r.list
		only.Plugins = r.list.Plugins[len(r.list.Plugins)-1:]
		r.list = &only
		_, err := r.Add(t, r.NewPod(t, PodOptions{}))
		requireCNIError(t, err, types.ErrInvalidNetworkConfig, "must be called as a chained plugin")
	})
	t.Run("netns that does not exist", func(t *testing.T) {
		t.Parallel()
		r := NewRuntime(t, RuntimeOptions{})
		p := r.NewPod(t, PodOptions{})
		// Only ztdns runs, with a fake prevResult: the bridge would fail
		// first on a missing netns.
		var err error
		p.rt.NetNS = filepath.Join(r.Dir, "no-such-netns")
		err = r.inNode(func(ctx context.Context) error {
			conf, cerr := libcni.InjectConf(r.list.Plugins[1], map[string]any{
				"cniVersion": r.list.CNIVersion, "name": r.list.Name,
				"prevResult": map[string]any{"cniVersion": r.list.CNIVersion, "ips": []any{map[string]any{"address": "10.252.0.9/24"}}},
			})
			if cerr != nil {
				return cerr
			}
			_, aerr := r.cni.AddNetwork(ctx, conf, p.rt)
			return aerr
		})
		requireCNIError(t, err, types.ErrInvalidNetNS, "is not a usable network namespace")
	})
}

// TestUninstallLeavesTheRuntimeWorking: after cni.Uninstall the runtime's
// conflist is the original, and pods still get their network; the binary
// stays for the DELs of pods created under ztdns.
func TestUninstallLeavesTheRuntimeWorking(t *testing.T) {
	t.Parallel()
	r := NewRuntime(t, RuntimeOptions{})
	cfg := cni.InstallConfig{BinDir: r.BinDir, ConfDir: r.ConfDir}
	if err := cni.Uninstall(cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(r.BinDir, "ztdns")); err != nil {
		t.Errorf("binary removed: %v", err)
	}
	list, err := libcni.ConfListFromFile(r.ConfFile)
	if err != nil || len(list.Plugins) != 1 || list.Plugins[0].Network.Type != "bridge" {
		t.Fatalf("conflist after uninstall: %v, %v", list, err)
	}
	r.list = list
	p := r.NewPod(t, PodOptions{})
	res, err := r.Add(t, p)
	if err != nil {
		t.Fatalf("ADD without ztdns: %v", err)
	}
	requireBridgeResult(t, r, p, res, false)
}

func addRequestsEqual(a, b control.CNIAddRequest) bool {
	return a.ContainerID == b.ContainerID && a.Netns == b.Netns && a.IfName == b.IfName &&
		a.PodNamespace == b.PodNamespace && a.PodName == b.PodName && a.PodUID == b.PodUID &&
		slices.Equal(a.IPs, b.IPs) && a.NetnsCookie == b.NetnsCookie
}
