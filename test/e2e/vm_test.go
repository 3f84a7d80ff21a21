//go:build linux

package e2e

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestCaptureAddWarnsOfNameserversNeverCaptured: on a systemd-resolved
// machine a namespace without a resolv.conf of its own reads the node's,
// which names the stub at 127.0.0.53. Capture never redirects loopback, so
// its queries never reach ztdns, yet capture add said only `captured …`.
// Now it also warns on stderr, naming the file, the nameserver, why, and a
// nameserver to write instead (the agent's upstream, which the node
// reaches); and so for a namespace that names the agent's own address,
// which answers nothing once the agent stops. A namespace naming a
// nameserver capture redirects gets no warning.
func TestCaptureAddWarnsOfNameserversNeverCaptured(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	c.startReadyAgent(t)
	for _, tc := range []struct {
		name, nameserver string
		want             []string // in the warning; none: no warning
	}{
		{"stub", "127.0.0.53", []string{"127.0.0.53: loopback, never captured", "nameserver " + agentUpstream}},
		{"agent", "169.254.20.53", []string{"169.254.20.53: the agent's own address", "nameserver " + agentUpstream}},
		{"upstream", podNameserver1, nil},
	} {
		p := c.pod(t, tc.nameserver)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		cmd := exec.CommandContext(ctx, c.bin, "capture", "add", "--socket", c.socket, "--netns", p.Path(), "--name", tc.name)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		cancel()
		if err != nil || !strings.HasPrefix(stdout.String(), "captured default/"+tc.name+" ") {
			t.Fatalf("%s: capture add: %v\nstdout: %s\nstderr: %s", tc.name, err, &stdout, &stderr)
		}
		warning := stderr.String()
		t.Logf("%s (nameserver %s): stderr %q", tc.name, tc.nameserver, warning)
		if tc.want == nil {
			if warning != "" {
				t.Errorf("%s: nameserver %s is captured, yet capture add wrote %q", tc.name, tc.nameserver, warning)
			}
			continue
		}
		file := "/etc/netns/" + p.Name + "/resolv.conf"
		for _, w := range append([]string{"ztdns capture add: warning: no nameserver in " + file + " is captured", "write in " + file}, tc.want...) {
			if !strings.Contains(warning, w) {
				t.Errorf("%s: capture add's stderr lacks %q:\n%s", tc.name, w, warning)
			}
		}
		if strings.Count(warning, "\n") != 1 {
			t.Errorf("%s: the warning is not one line:\n%s", tc.name, warning)
		}
	}
}
