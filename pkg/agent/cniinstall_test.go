//go:build linux

package agent_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/cni"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// TestCNIInstallClashAtStart: an agent with --cni-install that starts on a
// node whose conf dir holds a .conf beside a .conflist of the same name it
// did not write (it cannot turn the one into the other) serves DNS and is
// ready; `ztdns status` warns that the plugin is not installed, naming the
// file and why, and ztdns_cni_config_installed is 0. Once the clash is
// gone, the plugin is installed, the gauge is 1 and the warning gone.
// (Before: the agent exited 1, "cni install: cni install: …", and the
// whole node failed open over a config-file clash; a clash arising later
// showed only as an error in the log every 5 s.)
func TestCNIInstallClashAtStart(t *testing.T) {
	binDir, confDir := t.TempDir(), t.TempDir()
	conf := filepath.Join(confDir, "05-a.conf")
	list := filepath.Join(confDir, "05-a.conflist")
	for path, content := range map[string]string{
		conf: `{"cniVersion": "1.0.0", "name": "a", "type": "bridge", "bridge": "cni0"}`,
		list: `{"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "bridge", "bridge": "cni1"}]}`,
	} {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	metrics := testenv.FreePort(t)
	a := agenttest.Start(t, agent.Config{Source: configdir.New(t.TempDir()), MetricsAddr: metrics.String(),
		Upstreams: []netip.AddrPort{testenv.DeadAddr(t)},
		CNI:       &agent.CNIConfig{BinDir: binDir, ConfDir: confDir, Plugin: cni.Config{OnAgentUnreachable: cni.PolicyAllow}}})

	installed := func(want string) func() error {
		return func() error {
			line := "ztdns_cni_config_installed " + want
			if lines := strings.Split(testenv.Metrics(t, metrics.String()), "\n"); !slices.Contains(lines, line) {
				return fmt.Errorf("/metrics lacks %q", line)
			}
			return nil
		}
	}
	// The warning, once the installer has looked.
	var warning string
	agenttest.Eventually(t, 30*time.Second, func() error {
		st, err := a.Status()
		if err != nil {
			return err
		}
		if !st.Ready {
			t.Fatalf("not ready with the CNI plugin out: %s", st.NotReady)
		}
		warning = ""
		for _, w := range st.Warnings {
			if strings.Contains(w, "CNI plugin is not installed") {
				warning = w
			}
		}
		if !strings.Contains(warning, "not one ztdns wrote") {
			return fmt.Errorf("status warnings %q: none says why the plugin is not installed", st.Warnings)
		}
		return nil
	})
	for _, want := range []string{conf, "cannot turn it into 05-a.conflist", "captured only when the agent's scan finds them"} {
		if !strings.Contains(warning, want) {
			t.Errorf("status warning %q does not say %q", warning, want)
		}
	}
	if err := installed("0")(); err != nil {
		t.Error(err)
	}
	if strings.Contains(warning, "cni install:") {
		t.Errorf("status warning %q carries Install's prefix", warning)
	}

	// The operator removes the conflist the primary plugin no longer
	// writes: the agent turns the .conf into its own, at the change.
	if err := os.Remove(list); err != nil {
		t.Fatal(err)
	}
	agenttest.Eventually(t, 30*time.Second, installed("1"))
	if data, err := os.ReadFile(list); err != nil || !strings.Contains(string(data), `"ztdns"`) {
		t.Errorf("%s after the clash: %q, %v; want ztdns's entry in it", list, data, err)
	}
	st, err := a.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range st.Warnings {
		if strings.Contains(w, "CNI plugin") {
			t.Errorf("status still warns once the plugin is installed: %q", w)
		}
	}
}
