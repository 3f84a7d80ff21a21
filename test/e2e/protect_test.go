//go:build linux

package e2e

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
)

// TestControlSocketTrustsNoOne runs the real agent with capture and
// attacks its control socket as the issue did: a caller that is not root,
// `capture add` of the node's own network namespace and of something that
// is no namespace, a 110 MB request, 2,000 half-sent requests; the agent
// refuses each, keeps its memory, and keeps answering root.
func TestControlSocketTrustsNoOne(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a := c.startReadyAgent(t)
	p := c.pod(t, nowhere4)

	t.Run("caller that is not root", func(t *testing.T) {
		for _, args := range [][]string{
			{"status", "--socket", c.socket},
			{"capture", "add", "--socket", c.socket, "--netns", p.Path(), "--name", "intruder"},
		} {
			cmd := testenv.AsUser(t, t.Context(), testenv.Nobody, c.bin, args...)
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), "permission denied") {
				t.Errorf("ztdns %s as uid 65534 gid 0: %v\n%s\nwant permission denied", args[0], err, out)
			}
		}
		for _, r := range c.pods(t) {
			if r.Name == "intruder" || r.NetnsCookie == netnsCookie(t, p) {
				t.Errorf("a caller that is not root marked %+v", r)
			}
		}
	})

	t.Run("the node's own network namespace", func(t *testing.T) {
		// The node namespace by its name, and by another path with the same
		// cookie. (PID 1's, which the agent refuses too, is the machine's
		// own here, not the test node's.)
		for _, netns := range []string{c.node.Path(), fmt.Sprintf("/proc/%d/ns/net", a.Pid())} {
			out, err := c.ztdnsOutput("capture", "add", "--socket", c.socket, "--netns", netns)
			if err == nil || !strings.Contains(out, "node's own network namespace") {
				t.Errorf("capture add --netns %s: %v %s; want it refused", netns, err, out)
			}
		}
	})

	t.Run("not a network namespace", func(t *testing.T) {
		fifo := filepath.Join(t.TempDir(), "fifo")
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		out, err := c.ztdnsOutput("capture", "add", "--socket", c.socket, "--netns", fifo)
		t.Logf("capture add --netns FIFO refused after %v", time.Since(start))
		if err == nil || !strings.Contains(out, "is not a network namespace") {
			t.Errorf("capture add --netns FIFO: %v %s; want it refused", err, out)
		}
		// An open that blocked on the FIFO until a writer came would hold
		// a thread, even once the request was answered.
		if blocked := threadsIn(t, a.Pid(), "fifo_open"); len(blocked) > 0 {
			t.Errorf("agent threads %v are blocked opening a FIFO", blocked)
		}
	})

	t.Run("110 MB request", func(t *testing.T) {
		before := vmHWM(t, a.Pid())
		if status, sent := testenv.OversizedRequest(t, c.socket, control.RouteCNIAdd, 110<<20); status != http.StatusRequestEntityTooLarge || sent >= 110<<20 {
			t.Errorf("a request of 110 MB: status %d after %d bytes, want 413 before the end", status, sent)
		}
		if grew := vmHWM(t, a.Pid()) - before; grew > 32<<20 {
			t.Errorf("the agent's peak RSS grew by %d MB on a 110 MB request", grew>>20)
		}
	})

	t.Run("2000 half-sent requests", func(t *testing.T) {
		fds := testenv.OpenFDs(t, a.Pid())
		conns := testenv.HalfSentRequests(t, c.socket, control.RouteCNIAdd, 2000)
		if out, err := c.ztdnsOutput("status", "--socket", c.socket, "-o", "json"); err != nil || !strings.Contains(out, `"ready": true`) {
			t.Errorf("ztdns status behind 2000 half-sent requests: %v\n%s", err, out)
		}
		if held := testenv.OpenFDs(t, a.Pid()) - fds; held > control.MaxConns+8 {
			t.Errorf("the agent holds %d more descriptors, want at most about %d", held, control.MaxConns)
		}
		testenv.RequireClosedByPeer(t, conns, control.ReadTimeout+10*time.Second)
	})
	if !a.Running() {
		t.Fatalf("the agent died:\n%s", a.Log())
	}
}

// TestSharedSocketDirectoryRefused: an agent told to put its socket in a
// directory others can write in exits with a message that says so, before
// it touches anything there.
func TestSharedSocketDirectoryRefused(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	shared := filepath.Dir(c.socket)
	if err := os.MkdirAll(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o777); err != nil {
		t.Fatal(err)
	}
	a := c.startAgent(t)
	if err := a.Wait(t, 30*time.Second); err == nil {
		t.Fatal("the agent started with its socket in a directory anyone can write in")
	}
	if !a.LogContains("is writable by others") {
		t.Errorf("the agent's log does not say why:\n%s", a.Log())
	}
	if entries, _ := os.ReadDir(shared); len(entries) != 0 {
		t.Errorf("the agent created %v in the shared directory", names(entries))
	}
}

// TestFIFOInConfigDir: a FIFO named like a manifest is skipped without
// being opened (opening it would block until a writer comes): the agent
// starts, serves the other manifests, reports the FIFO, takes one added
// while it runs in its stride, and stops at once on SIGTERM.
func TestFIFOInConfigDir(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	if err := syscall.Mkfifo(filepath.Join(c.configDir, "zz-pipe.yaml"), 0o644); err != nil {
		t.Fatal(err)
	}
	a := c.startReadyAgent(t)
	p := c.markedPod(t, "fifo", nowhere4)
	if got, err := c.dig(t, p, addressHost); err != nil || !slices.Equal(got, []netip.Addr{addressVIP}) {
		t.Fatalf("dig %s = %v, %v; want %s", addressHost, got, err, addressVIP)
	}
	if out := c.ztdns(t, "status", "--socket", c.socket); !strings.Contains(out, "zz-pipe.yaml: not a regular file") {
		t.Errorf("ztdns status does not report the FIFO:\n%s", out)
	}

	// Another one while the agent runs, next to a new manifest it must pick
	// up: the scan goes past the FIFO.
	if err := syscall.Mkfifo(filepath.Join(c.configDir, "aa-pipe.yaml"), 0o644); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(c.configDir, "late.yaml"), `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: late}
spec:
  hosts: [late.internal]
  addresses: [198.51.100.77]
  ports: [{name: http, number: 80, protocol: HTTP}]
`)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := c.dig(t, p, "late.internal")
		if slices.Equal(got, []netip.Addr{netip.MustParseAddr("198.51.100.77")}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("late.internal = %v 10 s after it was written next to a FIFO", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	start := signal(t, a, syscall.SIGTERM)
	if err := a.Wait(t, 5*time.Second); err != nil {
		t.Errorf("the agent exited with %v after SIGTERM", err)
	}
	t.Logf("stopped %v after SIGTERM", time.Since(start))
}

// vmHWM is a process's peak resident set size in bytes.
func vmHWM(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// threadsIn returns the threads of pid whose kernel stack passes through
// fn.
func threadsIn(t *testing.T, pid int, fn string) []int {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var in []int
	read := 0
	for _, task := range tasks {
		stack, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stack", pid, task.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue // the thread is gone
		}
		if err != nil {
			t.Fatalf("the kernel stacks of %d cannot be read: %v", pid, err)
		}
		read++
		if strings.Contains(string(stack), " "+fn+"+") {
			tid, _ := strconv.Atoi(task.Name())
			in = append(in, tid)
		}
	}
	if read == 0 {
		t.Fatalf("no thread of %d to look at", pid)
	}
	return in
}
