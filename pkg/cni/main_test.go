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

	"github.com/ztdns/ztdns/pkg/control"
)

// asPluginEnv makes the test binary act as the plugin, the way
// cmd/ztdns/main.go calls PluginMain when a runtime runs it: the whole skel
// path (environment, version checks, error JSON, exit codes) runs for real.
const asPluginEnv = "ZTDNS_TEST_RUN_AS_CNI_PLUGIN"

func TestMain(m *testing.M) {
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
	cmd := exec.Command(os.Args[0])
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
