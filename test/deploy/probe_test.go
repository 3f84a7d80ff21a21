//go:build linux

package deploy

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/ztdns/ztdns/internal/testenv"
)

// TestLivenessProbeFollowsTheResolver runs the agent as the chart does (see
// TestAgentRunsWithTheChartsPrivileges) and probes it as the kubelet would
// with the chart's liveness probe: it succeeds while the resolver answers,
// although the agent's upstream answers nothing, and fails when the
// resolver stops answering: when its addresses vanish from ztdns0 (a network
// manager flushing an interface it does not know), and when the process
// stops. The kubelet restarts the agent after failureThreshold failures.
func TestLivenessProbeFollowsTheResolver(t *testing.T) {
	agent, procMountPath := chartAgent(t)
	probe := agent.LivenessProbe
	if probe == nil || probe.HTTPGet == nil {
		t.Fatalf("liveness probe %+v, want an HTTP GET", probe)
	}
	r := runAsTheChart(t, buildZtdns(t), agent, procMountPath, sorted(caps(agent.SecurityContext.Capabilities.Add)), true)
	r.agent.WaitReady(t, r.socket, 30*time.Second)

	ok, why := kubeletProbe(t, r.node, probe, "127.0.0.1") // HOST_IP, as runAsTheChart sets it
	if !ok {
		t.Fatalf("the liveness probe fails against a serving agent: %s\nlog:\n%s", why, r.agent.Log())
	}

	if out, err := exec.Command("ip", "-n", r.node.Name, "addr", "flush", "dev", "ztdns0").CombinedOutput(); err != nil {
		t.Fatalf("ip addr flush dev ztdns0: %v\n%s", err, out)
	}
	ok, why = kubeletProbe(t, r.node, probe, "127.0.0.1")
	if ok {
		t.Fatal("the liveness probe succeeds although the resolver's addresses are gone")
	}
	t.Logf("without the resolver's addresses the probe fails: %s", why)

	pid := agentPid(t, r.agent.Pid())
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	start := time.Now()
	ok, why = kubeletProbe(t, r.node, probe, "127.0.0.1")
	if ok {
		t.Fatal("the liveness probe succeeds against a stopped agent")
	}
	t.Logf("against a stopped agent the probe fails after %v: %s", time.Since(start).Round(time.Millisecond), why)
}

// kubeletProbe runs an HTTP GET probe as the kubelet does, from node's
// network namespace (the pod is on the host's network): host is the pod's
// IP when the probe names none, the timeout is the probe's, and a status
// from 200 to 399 is a success.
func kubeletProbe(t *testing.T, node *testenv.Node, p *corev1.Probe, podIP string) (bool, string) {
	t.Helper()
	g := p.HTTPGet
	host := g.Host
	if host == "" {
		host = podIP
	}
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	addr := net.JoinHostPort(host, strconv.Itoa(g.Port.IntValue()))
	var conn net.Conn
	if err := node.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", addr, timeout)
		return err
	}); err != nil {
		return false, err.Error()
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+g.Path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Close = true
	if err := req.Write(conn); err != nil {
		return false, err.Error()
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	body := make([]byte, 512)
	n, _ := resp.Body.Read(body)
	return resp.StatusCode >= 200 && resp.StatusCode < 400, fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(body[:n])))
}

// agentPid returns the process the wrapper with pid started: the agent.
func agentPid(t *testing.T, wrapper int) int {
	t.Helper()
	children, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", wrapper, wrapper))
	fields := strings.Fields(string(children))
	if err != nil || len(fields) != 1 {
		t.Fatalf("the wrapper's children: %q, %v", children, err)
	}
	pid, err := strconv.Atoi(fields[0])
	if err != nil {
		t.Fatal(err)
	}
	return pid
}
