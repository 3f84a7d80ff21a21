//go:build linux

package handoff

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ztdns/ztdns/internal/testenv"
)

// helperEnv turns the test binary into one of the processes below, run as
// another user by the tests.
const (
	helperEnv     = "ZTDNS_HANDOFF_TEST_HELPER"
	helperPathEnv = "ZTDNS_HANDOFF_TEST_PATH"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
	case "take-handoff":
		os.Exit(takeHandoff(os.Getenv(helperPathEnv)))
	default:
		fmt.Fprintf(os.Stderr, "unknown %s\n", helperEnv)
		os.Exit(2)
	}
	os.Exit(m.Run())
}

// takeHandoff plays a process that is not root asking a running agent for
// its sockets; it reports how many descriptors it was sent.
func takeHandoff(path string) int {
	c, err := net.Dial("unix", path)
	if err != nil {
		fmt.Println("dial:", err)
		return 1
	}
	_, files, err := askSockets(c.(*net.UnixConn))
	fmt.Printf("received %d descriptors (%v)\n", len(files), err)
	return 0
}

// TestHandoffRefusesSuccessorNotRoot: a process that is not root connects
// to a running agent's hand-off socket (whose mode someone loosened) and
// asks for the sockets: it is sent none, and the agent keeps serving.
func TestHandoffRefusesSuccessorNotRoot(t *testing.T) {
	testenv.RequireRoot(t)
	dir, err := os.MkdirTemp("", "zthandoff-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	socket := filepath.Join(dir, "ztdns.sock")
	ln, err := Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(Path(socket), 0o666) // the mistake
	var asked, stopped atomic.Bool
	var log testenv.Log
	done := make(chan error, 1)
	go func() {
		_, err := Offer(t.Context(), ln, slog.New(slog.NewTextHandler(&log, nil)), Identities{}, Timeouts{}, func() ([]SocketDesc, []*os.File, error) {
			asked.Store(true)
			return nil, nil, nil
		}, func(bool) { asked.Store(true) }, func(bool) { stopped.Store(true) })
		done <- err
	}()
	taker, out := testenv.StartAsUser(t, testenv.Nobody, helperEnv+"=take-handoff", helperPathEnv+"="+Path(socket))
	got, _ := io.ReadAll(out)
	taker.Wait()
	if !strings.HasPrefix(string(got), "received 0 descriptors") {
		t.Errorf("the successor that is not root got %q", got)
	}
	ln.Close()
	<-done
	if asked.Load() || stopped.Load() {
		t.Errorf("the agent listed its sockets (%v) or stopped serving (%v) for a caller that is not root", asked.Load(), stopped.Load())
	}
	if !strings.Contains(log.String(), "refusing a hand-off to a process that is not root") || !strings.Contains(log.String(), "uid 65534") {
		t.Errorf("the refusal is not logged:\n%s", log.String())
	}
}
