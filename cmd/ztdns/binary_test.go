//go:build linux

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/version"
)

// The build TestBuiltBinary stamps in through make's VERSION and REVISION.
const (
	stampedVersion  = "v0.0.0-clitest.1"
	stampedRevision = "0123456789abcdef0123456789abcdef01234567"
)

// TestBuiltBinary runs the binary `make build` makes, stamped with a
// version. It reports that version in `ztdns version`, in the agent's start
// log line, in `ztdns status` and in ztdns_build_info; the fresh agent
// exports its failed CNI events at 0 (before: such a series appeared at
// its first event, at 1, and ZtdnsCNIAddFailing's increase() never saw
// it); the agent takes the single-dash flags of earlier releases; the
// process exits 0, 1 and 2 as
// documented; the CNI path still comes first; and the binary never executes
// a text/template (cobra's templates keep every exported method of every
// linked type: some 30 MB more binary).
func TestBuiltBinary(t *testing.T) {
	bin := makeBuild(t)

	out, err := exec.Command(bin, "version", "-o", "json").Output()
	var info version.Info
	if err != nil || json.Unmarshal(out, &info) != nil {
		t.Fatalf("ztdns version -o json: %v\n%s", err, out)
	}
	if info.Version != stampedVersion || info.Revision != stampedRevision {
		t.Fatalf("ztdns version -o json = %+v, want version %s and revision %s", info, stampedVersion, stampedRevision)
	}

	up := dnstest.Start(t, "127.0.0.1:0", dnstest.Marker(netip.MustParseAddr("203.0.113.99"), netip.MustParseAddr("2001:db8::99")))
	socket := filepath.Join(t.TempDir(), "run", "ztdns.sock")
	metrics := testenv.FreePort(t).String()
	// Killed at cleanup, or when the test binary dies without one (a
	// -timeout panic); its log is printed if the test failed.
	listen := testenv.FreePort(t).String()
	agent := testenv.StartLocal(t, bin, "agent", "-capture=false", "-config-dir", "../../examples", "-listen", listen,
		"-upstream", up.Addr.String(), "-socket", socket, "-metrics", metrics, "-log-level", "info")

	var st control.Status
	agenttest.Eventually(t, 30*time.Second, func() error {
		out, err := exec.Command(bin, "status", "-socket", socket, "-o", "json").Output()
		if err != nil {
			return fmt.Errorf("ztdns status: %w", err)
		}
		if err := json.Unmarshal(out, &st); err != nil || !st.Ready {
			return fmt.Errorf("not ready: %v %s", err, out)
		}
		return nil
	})
	if st.Build != info {
		t.Errorf("ztdns status says %+v, ztdns version %+v", st.Build, info)
	}
	wantLog := fmt.Sprintf("version=%s revision=%s", info.Version, info.Revision)
	if !agent.LogContains(`msg="agent started"`) || !agent.LogContains(wantLog) {
		t.Errorf("the agent's start line lacks %q:\n%s", wantLog, agent.Log())
	}
	wantMetrics := []string{
		fmt.Sprintf(`ztdns_build_info{goversion=%q,revision=%q,version=%q} 1`, info.GoVersion, info.Revision, info.Version),
		// The CNI failures from the start, at 0, so that an alert's
		// increase() sees the first (ZtdnsCNIAddFailing).
		`ztdns_cni_events_total{command="add",outcome="error"} 0`,
		`ztdns_cni_events_total{command="add",outcome="refused"} 0`,
		`ztdns_cni_events_total{command="del",outcome="error"} 0`,
	}
	body := testenv.Metrics(t, metrics)
	for _, want := range wantMetrics {
		if !strings.Contains(body, "\n"+want+"\n") {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// A second agent on the address (run by hand beside the first, with
	// a control socket of its own) refuses to serve beside it: exit 2.
	second := testenv.StartLocal(t, bin, "agent", "--capture=false", "--config-dir", t.TempDir(), "--listen", listen,
		"--upstream", testenv.DeadAddr(t).String(), "--socket", filepath.Join(t.TempDir(), "ztdns.sock"))
	agenttest.Eventually(t, 30*time.Second, func() error {
		if second.Running() && !second.LogContains(`msg="agent started"`) {
			return errors.New("the second agent neither exited nor started")
		}
		return nil
	})
	if second.Running() {
		t.Errorf("a second agent on --listen %s started beside the first:\n%s", listen, second.Log())
	} else {
		err := second.Wait(t, 0)
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != exitUsage ||
			!second.LogContains("ztdns agent: udp "+listen+": another process already serves on this address") {
			t.Errorf("a second agent on --listen %s: %v, output:\n%s\nwant exit status %d, saying that another process serves there", listen, err, second.Log(), exitUsage)
		}
	}

	if err := agent.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := agent.Wait(t, 20*time.Second); err != nil {
		t.Errorf("agent exited with %v after SIGTERM", err)
	}

	for _, tc := range []struct {
		args   []string
		status int
		stdout string // a part of it
	}{
		{[]string{"--help"}, exitOK, "Exit status: 0 success, 1 failure, 2 usage error"},
		{[]string{"--bogus"}, exitUsage, ""},
		{[]string{"table", "-o", "xml"}, exitUsage, ""},
		{[]string{"status", "--socket", socket}, exitFailure, ""}, // the agent is gone
	} {
		cmd := exec.Command(bin, tc.args...)
		var stdout strings.Builder
		cmd.Stdout = &stdout
		err := cmd.Run()
		var exit *exec.ExitError
		status := 0
		if errors.As(err, &exit) {
			status = exit.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if status != tc.status || !strings.Contains(stdout.String(), tc.stdout) {
			t.Errorf("ztdns %s: exit status %d, stdout:\n%s\nwant %d and %q", strings.Join(tc.args, " "), status, stdout.String(), tc.status, tc.stdout)
		}
	}

	cni := exec.Command(bin)
	cni.Env = append(os.Environ(), "CNI_COMMAND=VERSION")
	cni.Stdin = strings.NewReader(`{"cniVersion": "1.0.0"}`)
	if out, err := cni.Output(); err != nil || !strings.Contains(string(out), `"supportedVersions"`) {
		t.Errorf("CNI_COMMAND=VERSION ztdns: %v\n%s\nwant the plugin's versions", err, out)
	}

	nm, err := exec.Command("go", "tool", "nm", bin).Output()
	if err != nil {
		t.Fatalf("go tool nm: %v", err)
	}
	if strings.Contains(string(nm), "text/template.(*state).walk") {
		t.Error("the binary executes text/template (a cobra Set…Template call?): the linker keeps every exported method then")
	}
}

// makeBuild runs `make build` into a temporary directory with the test's
// VERSION and REVISION, as a release build would set them.
func makeBuild(t *testing.T) string {
	t.Helper()
	makeBin := testenv.LookPath(t, "make")
	bin := filepath.Join(t.TempDir(), "ztdns")
	cmd := exec.Command(makeBin, "-s", "build", "BIN="+bin, "VERSION="+stampedVersion, "REVISION="+stampedRevision)
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, out)
	}
	return bin
}
