//go:build linux

package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Agent is a `ztdns agent` process (the real binary) running in a node
// namespace, as a user starts it there (or a process StartLocal started).
// Its output is kept for the test; it is killed at cleanup if still
// running, and its log is printed if the test failed.
type Agent struct {
	// Bin is the ztdns binary and Args what followed it on the command
	// line ("agent", flags...).
	Bin  string
	Args []string

	cmd  *exec.Cmd
	log  *Log
	done chan struct{} // closed when it exited; err is set then
	err  error
}

// StartAgent runs bin with args (the subcommand first, e.g. "agent",
// "--config-dir", dir, ...) in node's network namespace, with Nsenter so
// that it sees the cgroup2 and bpf mounts. The process gets SIGKILL if the
// test binary dies without running its cleanup (e.g. a -timeout panic).
func StartAgent(tb testing.TB, node *Node, bin string, args ...string) *Agent {
	tb.Helper()
	return StartAgentIn(tb, node, nil, bin, args...)
}

// StartAgentIn is StartAgent behind a wrapper command line, e.g. unshare
// and setpriv to run the agent as a container runtime would: the wrapper
// gets bin and args after its own arguments and must exec them (Pid is then
// the wrapper's).
func StartAgentIn(tb testing.TB, node *Node, wrapper []string, bin string, args ...string) *Agent {
	tb.Helper()
	RequireRoot(tb)
	LookPath(tb, "nsenter")
	line := append(slices.Clone(wrapper), bin)
	return startAgent(tb, node.Nsenter(context.Background(), line[0], append(line[1:], args...)...), bin, args)
}

// StartLocal runs bin with args in the test's own network namespace, with
// the same care as StartAgent: an agent that serves on loopback without
// capture, or a peer server such as unbound. It needs no root.
func StartLocal(tb testing.TB, bin string, args ...string) *Agent {
	tb.Helper()
	return startAgent(tb, exec.Command(bin, args...), bin, args)
}

func startAgent(tb testing.TB, cmd *exec.Cmd, bin string, args []string) *Agent {
	tb.Helper()
	a := &Agent{
		Bin:  bin,
		Args: args,
		cmd:  cmd,
		log:  &Log{},
		done: make(chan struct{}),
	}
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	if err := StartOrphanProof(a.cmd); err != nil {
		tb.Fatalf("testenv: start %s: %v", bin, err)
	}
	go func() {
		a.err = a.cmd.Wait()
		close(a.done)
	}()
	tb.Cleanup(func() {
		a.Kill()
		if tb.Failed() {
			tb.Logf("log of %s with pid %d (%v):\n%s", bin, a.Pid(), a.err, a.log)
		}
	})
	return a
}

// Pid is the agent's process ID (nsenter execs it, so it is the agent's).
func (a *Agent) Pid() int { return a.cmd.Process.Pid }

// Running reports whether the process has not exited yet.
func (a *Agent) Running() bool {
	select {
	case <-a.done:
		return false
	default:
		return true
	}
}

// Signal sends sig to the agent.
func (a *Agent) Signal(sig syscall.Signal) error { return a.cmd.Process.Signal(sig) }

// Wait waits up to within for the agent to exit and returns how it exited;
// it fails the test if the agent is still running then.
func (a *Agent) Wait(tb testing.TB, within time.Duration) error {
	tb.Helper()
	select {
	case <-a.done: // first: with within 0 both cases below are ready at once
		return a.err
	default:
	}
	select {
	case <-a.done:
		return a.err
	case <-time.After(within):
		tb.Fatalf("testenv: agent with pid %d still running %v later; log:\n%s", a.Pid(), within, a.log)
		return nil
	}
}

// Stop sends SIGTERM, the signal a kubelet stops a pod with, and waits up to
// within for the agent to exit; the test fails if it exits with an error
// or not at all.
func (a *Agent) Stop(tb testing.TB, within time.Duration) {
	tb.Helper()
	if err := a.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		tb.Fatalf("testenv: SIGTERM to the agent: %v", err)
	}
	if err := a.Wait(tb, within); err != nil {
		tb.Fatalf("testenv: agent exited with %v after SIGTERM; log:\n%s", err, a.log)
	}
}

// Kill kills the agent with SIGKILL, if it still runs, and waits for it.
func (a *Agent) Kill() {
	if a.Running() {
		_ = a.cmd.Process.Kill()
	}
	<-a.done
}

// Log returns everything the agent printed so far.
func (a *Agent) Log() string { return a.log.String() }

// LogContains reports whether the agent printed s.
func (a *Agent) LogContains(s string) bool { return a.log.Contains(s) }

// WaitLog waits until the agent printed s; the test fails if it exits or
// does not print it within the time.
func (a *Agent) WaitLog(tb testing.TB, s string, within time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(within)
	for !a.log.Contains(s) {
		if !a.Running() {
			tb.Fatalf("testenv: agent exited (%v) before printing %q; log:\n%s", a.err, s, a.log)
		}
		if time.Now().After(deadline) {
			tb.Fatalf("testenv: agent did not print %q within %v; log:\n%s", s, within, a.log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// WaitReady polls `ztdns status --socket socket -o json` until the agent reports
// ready with capture on. An agent that exits because the kernel lacks a
// feature makes the test unavailable (a failure under CI=true); any other
// exit, or no readiness within the time, fails it.
func (a *Agent) WaitReady(tb testing.TB, socket string, within time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(within)
	for {
		out, err := a.status(socket)
		var st struct {
			Ready   bool `json:"ready"`
			Capture bool `json:"capture"`
		}
		if err == nil && json.Unmarshal(out, &st) == nil && st.Ready {
			if !st.Capture {
				tb.Fatalf("testenv: the agent is ready without capture: %s", out)
			}
			return
		}
		if !a.Running() {
			if a.log.Contains("kernel lacks") {
				Unavailable(tb, "the agent cannot load its programs on this kernel:\n%s", a.log)
			}
			tb.Fatalf("testenv: agent exited: %v; log:\n%s", a.err, a.log)
		}
		if time.Now().After(deadline) {
			tb.Fatalf("testenv: agent not ready after %v: %v %s; log:\n%s", within, err, out, a.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (a *Agent) status(socket string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, a.Bin, "status", "--socket", socket, "-o", "json")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("ztdns status: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Log collects what a process or a logger writes, safe for concurrent use.
type Log struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// Contains reports whether s was written.
func (l *Log) Contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Contains(l.buf.Bytes(), []byte(s))
}

func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// A child's parent-death signal fires when the OS thread that forked it
// exits, not the process. Go retires threads (e.g. one a goroutine locked
// and left), so agents are forked from one thread that is locked for the
// whole life of the test binary.
var spawner struct {
	once     sync.Once
	requests chan spawnRequest
}

type spawnRequest struct {
	cmd  *exec.Cmd
	done chan error
}

// StartOrphanProof starts cmd, an AsUser command say, so that the kernel
// kills it (SIGKILL) when the test binary dies, however it dies (a
// -timeout panic, a SIGKILL): the test's cleanup, which never runs then,
// is not all that stops it. Wait for it as for any started command. It
// sets SIGKILL as cmd's parent-death signal and starts it from the
// spawner thread.
func StartOrphanProof(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		spawner.requests = make(chan spawnRequest)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread must outlive every child
			for req := range spawner.requests {
				req.done <- req.cmd.Start()
			}
		}()
	})
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	done := make(chan error, 1)
	spawner.requests <- spawnRequest{cmd: cmd, done: done}
	return <-done
}
