package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
)

// TestSecondAgentOnAServedAddressRefused: a second agent of its own (its
// own control socket, as one run by hand beside the DaemonSet's, or a
// second systemd unit) on the address a running agent serves refuses to
// start, saying that another process serves there and how to find it; the
// first agent answers every query still. (Before: with SO_REUSEPORT the
// second bound beside the first and took about half the queries, from its
// empty table and dead upstream: SERVFAIL.) The same for --metrics.
func TestSecondAgentOnAServedAddressRefused(t *testing.T) {
	dir, socket, listen, up := handoffSetup(t)
	metrics := testenv.FreePort(t).String()
	startTestAgent(t, dir, socket, listen, up, metrics)

	for _, tc := range []struct {
		name    string
		listen  func() netip.AddrPort // the second agent's --listen
		metrics string
		want    []string
	}{
		{"listen", func() netip.AddrPort { return listen }, "",
			[]string{"udp " + listen.String() + ": another process already serves on this address", fmt.Sprintf("ss -lunp 'sport = :%d'", listen.Port()), "another --listen address"}},
		{"metrics", func() netip.AddrPort { return testenv.FreePort(t) }, metrics,
			[]string{"--metrics " + metrics + ": another process already serves on this address", "ss -ltnp 'sport = :" + metrics[strings.LastIndexByte(metrics, ':')+1:] + "'"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			socket2 := filepath.Join(t.TempDir(), "ztdns.sock")
			second := runTestAgent(t, t.TempDir(), socket2, tc.listen(), testenv.DeadAddr(t), tc.metrics)
			err := stoppedOrReady(t, second, socket2)
			if err == nil {
				t.Errorf("the second agent serves beside the first")
			} else {
				if !errors.Is(err, syscall.EADDRINUSE) {
					t.Errorf("the second agent's error does not wrap EADDRINUSE (exit status 2): %v", err)
				}
				for _, want := range tc.want {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("the second agent's error %q does not say %q", err, want)
					}
				}
			}
			var failed []string
			for _, network := range []string{"udp", "tcp"} {
				for i := range 20 { // each from a new source port
					if err := askAddress(network, listen); err != nil {
						failed = append(failed, fmt.Sprintf("%s query %d: %v", network, i, err))
					}
				}
			}
			if len(failed) > 0 {
				t.Errorf("%d of 40 queries to the first agent failed:\n%s", len(failed), strings.Join(failed, "\n"))
			}
		})
	}
}

// stoppedOrReady waits until ta stops, and returns what Run returned, or
// until it is ready on socket, and returns nil.
func stoppedOrReady(t *testing.T, ta *testAgent, socket string) error {
	t.Helper()
	c := control.NewClient(socket, time.Second)
	var err error
	testenv.Eventually(t, 30*time.Second, "the second agent stops or is ready", func() bool {
		select {
		case err = <-ta.done:
			ta.done <- err // for its stop at cleanup
			if err == nil {
				err = errors.New("Run returned nil")
			}
			return true
		default:
		}
		st, serr := c.Status(context.Background())
		return serr == nil && st.Ready
	})
	return err
}

// TestHandoffToMoreUDPSockets: a successor with a larger --udp-sockets
// takes over the predecessor's socket and binds more beside it, though
// another process (the predecessor) serves the address: they are handed
// over, not another resolver's.
func TestHandoffToMoreUDPSockets(t *testing.T) {
	dir, socket, listen, up := handoffSetup(t)
	startTestAgent(t, dir, socket, listen, up, "")
	upNew := testenv.DeadAddr(t) // names the successor in the status
	succ := runTestAgent(t, dir, socket, listen, upNew, "", func(c *Config) { c.SocketsPerAddr = 3 })
	waitServedBy(t, socket, succ, upNew)
	if n := len(testenv.SocketStates(t, "udp", listen)); n != 3 {
		t.Errorf("%d UDP sockets on %s after the handoff, want 3", n, listen)
	}
	for i := range 20 {
		if err := askAddress("udp", listen); err != nil {
			t.Fatalf("UDP query %d: %v", i, err)
		}
	}
}
