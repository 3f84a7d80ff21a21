//go:build linux

package e2e

import (
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
)

// TestKeptSocketFailsOpen: a client that keeps a UDP socket connected to
// its nameserver (c-ares, in gRPC C++ and Node's dns.resolve*) connected
// it while its pod was captured, so the socket's peer is a resolver slot
// and no hook sees its later sends. When capture ends for good, the agent
// stopping with no successor or `ztdns uninstall` run after an agent that
// died, the socket is aborted: a client waiting on it is told at once
// (ECONNABORTED), one sending on it too, and the socket each opens
// instead reaches the pod's own nameserver. (Before: after the uninstall
// both waited out their timeouts, query after query, on a socket still
// connected to a resolver address that was gone; after the stop the
// waiting one did.)
func TestKeptSocketFailsOpen(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(t *testing.T, c *cluster, a *testenv.Agent)
	}{
		{"agent stopped", func(t *testing.T, c *cluster, a *testenv.Agent) {
			signal(t, a, syscall.SIGTERM)
			if err := a.Wait(t, 10*time.Second); err != nil {
				t.Errorf("agent exited with %v after SIGTERM, want success", err)
			}
		}},
		{"uninstall after the agent died", func(t *testing.T, c *cluster, a *testenv.Agent) {
			signal(t, a, syscall.SIGKILL)
			_ = a.Wait(t, 10*time.Second)
			if out, err := c.nodeZtdns("uninstall", "--bpffs", c.bpffs, "--cgroup", c.cg.Path); err != nil {
				t.Fatalf("ztdns uninstall: %v\n%s", err, out)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t)
			c.serve(t, podNameserver1, ownMarker)
			a := c.startReadyAgent(t)
			p := c.markedPod(t, "kept", podNameserver1)
			waiting, sending := c.startKept(t, p), c.startKept(t, p)
			want := podNameserver1 + ":53"
			for _, k := range []*kept{waiting, sending} {
				if from, got := k.ask(t, addressHost); from != want || got != addressVIP.String() {
					t.Fatalf("captured, kept socket: %s answered %s, want %s answering ztdns's %s", from, got, want, addressVIP)
				}
			}

			if _, err := io.WriteString(waiting.Stdin(), keptWait+"\n"); err != nil {
				t.Fatal(err)
			}
			tc.end(t, c, a)
			if got := waiting.Line(t); !strings.Contains(got, "connection_abort") {
				t.Errorf("the client waiting on its kept socket got %q; want told at once that the socket was aborted (ECONNABORTED)", got)
			}
			if from, got := sending.ask(t, addressHost); from != "-" || !strings.HasPrefix(got, "error:") {
				t.Errorf("a query on the kept socket: %s %s; want an error at once, not a timeout", from, got)
			}
			for name, k := range map[string]*kept{"waiting": waiting, "sending": sending} {
				if from, got := k.ask(t, addressHost); from != want || got != ownMarker.String() {
					t.Errorf("the %s client's new socket: %s answered %s, want %s answering %s, the pod's own nameserver's answer",
						name, from, got, want, ownMarker)
				}
			}
		})
	}
}
