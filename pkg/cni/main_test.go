//go:build linux

package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
)

// asPluginEnv makes the test binary act as the plugin, the way
// cmd/ztdns/main.go calls PluginMain when a runtime runs it: the whole skel
// path (environment, version checks, error JSON, exit codes) runs for real.
const asPluginEnv = "ZTDNS_TEST_RUN_AS_CNI_PLUGIN"

func TestMain(m *testing.M) {
	testenv.RunHelper() // the wrapper testenv.WithoutNetnsCookie names
	if os.Getenv(asPluginEnv) == "1" {
		PluginMain()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// execPlugin runs the test binary as the plugin with the CNI environment
// env (CNI_* variables of the test process itself are dropped) and stdin.
func execPlugin(tb testing.TB, env map[string]string, stdin []byte) (stdout, stderr string, exitCode int) {
	tb.Helper()
	return execPluginIn(tb, nil, env, stdin)
}

// execPluginIn is execPlugin behind a wrapper command line, which must
// exec the command after its own arguments.
func execPluginIn(tb testing.TB, wrapper []string, env map[string]string, stdin []byte) (stdout, stderr string, exitCode int) {
	tb.Helper()
	line := append(slices.Clone(wrapper), os.Args[0])
	cmd := exec.Command(line[0], line[1:]...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CNI_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, asPluginEnv+"=1")
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		exitCode = exitErr.ExitCode()
	default:
		tb.Fatal(err)
	}
	return out.String(), errOut.String(), exitCode
}

// cniEnv is the environment a runtime sets for cmd on the env's pod.
func (e *pluginEnv) cniEnv(cmd string) map[string]string {
	return map[string]string{
		"CNI_COMMAND":     cmd,
		"CNI_CONTAINERID": "c0ffee",
		"CNI_NETNS":       e.netns.Path(),
		"CNI_IFNAME":      "eth0",
		"CNI_PATH":        "/opt/cni/bin",
		"CNI_ARGS":        "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=6f1c-uid",
	}
}

func TestBinaryVersion(t *testing.T) {
	t.Parallel()
	out, _, code := execPlugin(t, map[string]string{"CNI_COMMAND": "VERSION"}, nil)
	var info struct {
		SupportedVersions []string `json:"supportedVersions"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &info) != nil {
		t.Fatalf("VERSION exit %d, output %q", code, out)
	}
	for _, v := range specVersions {
		if !slices.Contains(info.SupportedVersions, v) {
			t.Errorf("supported versions %v lack %s", info.SupportedVersions, v)
		}
	}
}

func TestBinaryWithoutCommandPrintsAbout(t *testing.T) {
	t.Parallel()
	out, errOut, code := execPlugin(t, nil, nil)
	if code != 0 || out != "" || !strings.Contains(errOut, About) {
		t.Errorf("exit %d, stdout %q, stderr %q; want About on stderr", code, out, errOut)
	}
}

func TestBinaryAddAndDel(t *testing.T) {
	t.Parallel()
	e := newPluginEnv(t)
	agent := startFakeAgent(t, e.socket, nil)
	stdin := e.args(t, "1.0.0", nil).StdinData

	out, errOut, code := execPlugin(t, e.cniEnv("ADD"), stdin)
	if code != 0 {
		t.Fatalf("ADD exit %d: %s\nstderr: %s", code, out, errOut)
	}
	requirePrevResult(t, "1.0.0", stdin, []byte(out))

	if out, errOut, code := execPlugin(t, e.cniEnv("DEL"), stdin); code != 0 || out != "" {
		t.Fatalf("DEL exit %d, stdout %q, stderr %s", code, out, errOut)
	}
	adds, dels := agent.requests()
	if len(adds) != 1 || adds[0].ContainerID != "c0ffee" || adds[0].NetnsCookie != e.cookie(t) ||
		len(dels) != 1 || dels[0] != (control.CNIDelRequest{ContainerID: "c0ffee", Netns: e.netns.Path(), PodNamespace: "shop", PodName: "web-0"}) {
		t.Errorf("agent got adds %+v dels %+v", adds, dels)
	}
}

// TestBinaryErrors: errors reach the runtime as the spec wants them: exit
// status 1 and a JSON error with a code on stdout.
func TestBinaryErrors(t *testing.T) {
	t.Parallel()
	e := newPluginEnv(t)
	startFakeAgent(t, e.socket, nil)
	valid := e.args(t, "1.0.0", nil).StdinData
	tests := []struct {
		name  string
		env   func(map[string]string)
		stdin []byte
		code  uint
		want  string
	}{
		{"malformed config", nil, []byte(`{"cniVersion": "1.0.0", "name": "n", `), types.ErrDecodingFailure, "unmarshall network config"},
		{"no prevResult", nil, netConfJSON(t, "1.0.0", nil, map[string]any{"socketPath": e.socket}), types.ErrInvalidNetworkConfig, "must be called as a chained plugin"},
		{"no CNI_ARGS", func(m map[string]string) { delete(m, "CNI_ARGS") }, valid, types.ErrInvalidEnvironmentVariables, "lacks"},
		{"netns does not exist", func(m map[string]string) { m["CNI_NETNS"] = "/var/run/netns/ztdns-no-such-netns" }, valid, types.ErrInvalidNetNS, "not a usable network namespace"},
		{"no container ID", func(m map[string]string) { delete(m, "CNI_CONTAINERID") }, valid, types.ErrInvalidEnvironmentVariables, "CNI_CONTAINERID"},
		{"container ID with a slash", func(m map[string]string) { m["CNI_CONTAINERID"] = "../x" }, valid, types.ErrInvalidEnvironmentVariables, "invalid characters in containerID"},
		{"CHECK on a 0.3.1 config", func(m map[string]string) { m["CNI_COMMAND"] = "CHECK" }, e.args(t, "0.3.1", nil).StdinData, types.ErrIncompatibleCNIVersion, "does not allow CHECK"},
		{"unknown command", func(m map[string]string) { m["CNI_COMMAND"] = "FROB" }, valid, types.ErrInvalidEnvironmentVariables, "unknown CNI_COMMAND"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := e.cniEnv("ADD")
			if tt.env != nil {
				tt.env(env)
			}
			out, errOut, exit := execPlugin(t, env, tt.stdin)
			var cniErr types.Error
			if exit != 1 || json.Unmarshal([]byte(out), &cniErr) != nil {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 and a JSON error", exit, out, errOut)
			}
			if cniErr.Code != tt.code || !strings.Contains(cniErr.Error(), tt.want) {
				t.Errorf("error = code %d %q, want code %d containing %q", cniErr.Code, cniErr.Error(), tt.code, tt.want)
			}
		})
	}
}

// TestBinaryOnAKernelWithoutNetnsCookies: on a kernel before Linux 5.14,
// where getsockopt(SO_NETNS_COOKIE) fails with ENOPROTOOPT (a seccomp
// filter makes it so for the plugin, testenv.WithoutNetnsCookie), a pod
// still starts under onAgentUnreachable "allow" (the default): ADD and
// CHECK succeed, ADD prints prevResult through, the log says why the pod
// is not captured, and the agent is not asked. Under "fail" ADD fails
// with a message naming the kernel's lack. Before, every ADD failed
// whatever the policy: "CNI_NETNS … is not a usable network namespace",
// and no pod on the node could start.
func TestBinaryOnAKernelWithoutNetnsCookies(t *testing.T) {
	t.Parallel()
	wrapper := testenv.WithoutNetnsCookie(t)
	for _, policy := range []string{"", PolicyAllow, PolicyFail} {
		name := policy
		if name == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := newPluginEnv(t)
			agent := startFakeAgent(t, e.socket, nil)
			fields := map[string]any{}
			if policy != "" {
				fields["onAgentUnreachable"] = policy
			}
			stdin := e.args(t, "1.0.0", fields).StdinData

			out, errOut, code := execPluginIn(t, wrapper, e.cniEnv("ADD"), stdin)
			if policy == PolicyFail {
				var cniErr types.Error
				if code != 1 || json.Unmarshal([]byte(out), &cniErr) != nil {
					t.Fatalf("ADD exit %d, stdout %q, stderr %q; want exit 1 and a JSON error", code, out, errOut)
				}
				want := "this kernel cannot read a network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14+)"
				if cniErr.Code != types.ErrInternal || !strings.Contains(cniErr.Msg, want) || !strings.Contains(cniErr.Msg, "onAgentUnreachable: fail") ||
					!strings.Contains(cniErr.Details, "protocol not available") {
					t.Errorf("ADD error = code %d %q (%q), want code %d saying %q", cniErr.Code, cniErr.Msg, cniErr.Details, types.ErrInternal, want)
				}
			} else {
				if code != 0 {
					t.Fatalf("ADD exit %d, stdout %q, stderr %q; want the pod to start", code, out, errOut)
				}
				requirePrevResult(t, "1.0.0", stdin, []byte(out))
				for _, want := range []string{"level=WARN", "SO_NETNS_COOKIE, Linux 5.14+", "WITHOUT DNS capture", "protocol not available"} {
					if !strings.Contains(errOut, want) {
						t.Errorf("the log does not say %q: %s", want, errOut)
					}
				}
				check := e.cniEnv("CHECK")
				if out, errOut, code := execPluginIn(t, wrapper, check, stdin); code != 0 {
					t.Errorf("CHECK exit %d, stdout %q, stderr %q; want success", code, out, errOut)
				}
			}
			if adds, _ := agent.requests(); len(adds) != 0 {
				t.Errorf("the agent was asked to capture a pod it cannot: %+v", adds)
			}
			if pending, err := PendingAdds(e.pending); err != nil || len(pending) != 0 {
				t.Errorf("pending ADDs = %+v, %v; want none", pending, err)
			}
		})
	}
}
