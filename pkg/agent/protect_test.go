//go:build linux

package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/handoff"
	"github.com/ztdns/ztdns/pkg/model"
)

// helperEnv turns the test binary into one of the processes below, run as
// another user by the tests.
const (
	helperEnv     = "ZTDNS_AGENT_TEST_HELPER"
	helperPathEnv = "ZTDNS_AGENT_TEST_PATH"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
	case "plant-handoff":
		os.Exit(plantHandoff(os.Getenv(helperPathEnv)))
	default:
		fmt.Fprintf(os.Stderr, "unknown %s\n", helperEnv)
		os.Exit(2)
	}
	testenv.RunHelper()
	os.Exit(m.Run())
}

// plantHandoff plays an attacker who planted a hand-off socket: it listens
// at path, and offers a UDP socket of its own to whoever asks for sockets.
// It reports what happened on stdout.
func plantHandoff(path string) int {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		fmt.Println("listen:", err)
		return 1
	}
	os.Chmod(path, 0o666)
	fmt.Println("listening")
	c, err := ln.AcceptUnix()
	if err != nil {
		fmt.Println("accept:", err)
		return 1
	}
	fmt.Println("connected")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	fmt.Printf("read %q\n", line)
	if line != "sockets\n" {
		return 0
	}
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		fmt.Println("udp:", err)
		return 1
	}
	f, _ := pc.(*net.UDPConn).File()
	payload, _ := json.Marshal([]handoff.SocketDesc{{Network: "udp", Addr: pc.LocalAddr().String()}})
	if _, _, err := c.WriteMsgUnix(payload, unix.UnixRights(int(f.Fd())), nil); err == nil {
		fmt.Println("sent a socket")
	}
	return 0
}

// sharedDir is a directory under /tmp any user can write in: where an
// attacker can plant a socket.
func sharedDir(t *testing.T) string {
	t.Helper()
	testenv.RequireRoot(t)
	dir, err := os.MkdirTemp("", "ztshared-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestPlantedHandoffSocketRefused: a process that is not root listens at
// the hand-off path of a socket in a shared directory. A starting agent
// refuses that directory outright; and the hand-off itself, asked directly,
// refuses a peer that is not root before it says a word, so nothing is
// adopted and the planter is sent nothing.
func TestPlantedHandoffSocketRefused(t *testing.T) {
	dir := sharedDir(t)
	socket := filepath.Join(dir, "ztdns.sock")

	planter, out := testenv.StartAsUser(t, testenv.Nobody, helperEnv+"=plant-handoff", helperPathEnv+"="+handoff.Path(socket))
	if line, err := out.ReadString('\n'); line != "listening\n" {
		t.Fatalf("the planter did not start: %q %v", line, err)
	}
	var log bytes.Buffer
	in, err := handoff.TakeOver(socket, handoff.Identity(""), 0, handoff.Timeouts{}, slog.New(slog.NewTextHandler(&log, nil)))
	if in != nil || err == nil || !strings.Contains(err.Error(), "runs as uid 65534, not root") {
		t.Fatalf("TakeOver from a planted socket = %v, %v; want nothing adopted and a refusal", in, err)
	}
	// What the agent logs with "binding fresh ones": that it took nothing,
	// not that a running agent refused it.
	if want := "handoff: took nothing from the process at the hand-off path: peer pid "; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("TakeOver's error %q, want it to start %q", err, want)
	}
	if !strings.Contains(log.String(), "refusing the sockets offered at the hand-off path") {
		t.Errorf("the refusal is not logged:\n%s", log.String())
	}
	rest, _ := io.ReadAll(out) // until it exits
	planter.Wait()
	if got := string(rest); !strings.Contains(got, "connected") || !strings.Contains(got, `read ""`) || strings.Contains(got, "sent") {
		t.Errorf("the planter saw %q; want a connection that asked for nothing", got)
	}

	// The agent itself never gets that far: the directory is refused.
	os.Remove(handoff.Path(socket))
	planter, out = testenv.StartAsUser(t, testenv.Nobody, helperEnv+"=plant-handoff", helperPathEnv+"="+handoff.Path(socket))
	if line, err := out.ReadString('\n'); line != "listening\n" {
		t.Fatalf("the planter did not start: %q %v", line, err)
	}
	err = Run(context.Background(), Config{Source: stuckSource{}, Listen: []netip.AddrPort{testenv.FreePort(t)}, Socket: socket,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err == nil || !strings.Contains(err.Error(), "writable by others") {
		t.Errorf("an agent with its socket in a shared directory: %v, want it refused", err)
	}
	planter.Process.Kill()
	rest, _ = io.ReadAll(out)
	planter.Wait()
	if bytes.Contains(rest, []byte("connected")) {
		t.Errorf("the agent connected to the planted socket: %q", rest)
	}
}

// stuckSource never delivers and ignores its context, like a source stuck
// in a read that never returns.
type stuckSource struct{}

func (stuckSource) Run(context.Context, func(*model.Snapshot)) error { select {} }

// TestStopsWhateverTheSourceDoes: SIGTERM (a cancelled context) stops the
// agent within stopTimeout even when its source never returns, and the log
// says which part it left behind.
func TestStopsWhateverTheSourceDoes(t *testing.T) {
	testenv.RequireRoot(t)
	socket := filepath.Join(t.TempDir(), "run", "ztdns.sock")
	var log testenv.Log
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Source: stuckSource{}, Listen: []netip.AddrPort{testenv.FreePort(t)}, Socket: socket,
			Logger: slog.New(slog.NewTextHandler(&log, nil))})
	}()
	c := control.NewClient(socket, time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := c.Status(context.Background()); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("the agent stopped before it served: %v\n%s", err, log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent's control socket never answered:\n%s", log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
		t.Logf("stopped %v after the signal", time.Since(start))
	case <-time.After(stopTimeout + 5*time.Second):
		t.Fatalf("the agent did not stop within %v of the signal:\n%s", stopTimeout+5*time.Second, log.String())
	}
	if !strings.Contains(log.String(), "did not stop in time") || !strings.Contains(log.String(), "source") {
		t.Errorf("the log does not name the part left behind:\n%s", log.String())
	}
}
