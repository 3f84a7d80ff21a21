//go:build linux

package testenv

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// A Helper is a process of the test binary that speaks in lines: it
// prints a ready line, then answers lines on its stdin with lines on its
// stdout. Started by StartHelper, it ends at cleanup, killed if it has not
// exited by then.
type Helper struct {
	what   string // the process, for messages
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *bufio.Reader
	stderr Log

	waitOnce sync.Once
	waitErr  error
}

// HelperReadyWithin bounds the wait for a helper's ready line.
const HelperReadyWithin = 30 * time.Second

// StartHelper starts the test binary with env (which names the helper the
// package's TestMain then runs) in the pod's network namespace and cg (nil:
// the current cgroup), and waits until it printed ready as its first line,
// within HelperReadyWithin. ctx, or the test's end, kills it.
func StartHelper(tb testing.TB, ctx context.Context, pod *Pod, cg *Cgroup, ready string, env ...string) *Helper {
	tb.Helper()
	ctx, cancel := context.WithCancel(ctx)
	tb.Cleanup(cancel) // whichever Fatal comes first
	cmd := pod.Command(ctx, cg, os.Args[0])
	cmd.Env = append(os.Environ(), env...)
	return startHelper(tb, cmd, cancel, fmt.Sprintf("helper %v", env), ready)
}

// startHelper starts cmd, whose context cancel ends, as a Helper.
func startHelper(tb testing.TB, cmd *exec.Cmd, cancel context.CancelFunc, what, ready string) *Helper {
	tb.Helper()
	h := &Helper{what: what, cmd: cmd}
	cmd.Stderr = &h.stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("testenv: starting %s: %v", what, err)
	}
	h.stdin, h.out = stdin, bufio.NewReader(stdout)
	tb.Cleanup(func() {
		cancel()
		stdin.Close()
		_ = h.wait()
	})
	type firstLine struct {
		line string
		err  error
	}
	read := make(chan firstLine, 1)
	go func() {
		line, err := h.out.ReadString('\n')
		read <- firstLine{line, err}
	}()
	select {
	case r := <-read:
		if strings.TrimSpace(r.line) != ready {
			cancel()
			_ = h.wait()
			tb.Fatalf("%s printed %q, %v, want %q; stderr: %s", what, r.line, r.err, ready, h.Stderr())
		}
	case <-time.After(HelperReadyWithin):
		cancel() // the read ends with the helper's stdout
		_ = h.wait()
		<-read
		tb.Fatalf("%s printed no line within %v, want %q; stderr: %s", what, HelperReadyWithin, ready, h.Stderr())
	}
	return h
}

// Do sends the helper one line and returns the line it answers.
func (h *Helper) Do(tb testing.TB, line string) string {
	tb.Helper()
	if _, err := io.WriteString(h.stdin, line+"\n"); err != nil {
		tb.Fatalf("%s: %s: %v; stderr: %s", h.what, line, err, h.Stderr())
	}
	return h.Line(tb)
}

// Stdin is the helper's stdin, for lines written from another goroutine
// than the test's.
func (h *Helper) Stdin() io.Writer { return h.stdin }

// Line returns the next line the helper prints, without its newline.
func (h *Helper) Line(tb testing.TB) string {
	tb.Helper()
	line, err := h.out.ReadString('\n')
	if err != nil {
		tb.Fatalf("%s: %v (printed %q); stderr: %s", h.what, err, line, h.Stderr())
	}
	return strings.TrimSpace(line)
}

// Finish sends the helper last, if not empty, closes its stdin, and
// returns what else it printed and how it ended (its stderr with the
// error).
func (h *Helper) Finish(last string) (string, error) {
	if last != "" {
		if _, err := io.WriteString(h.stdin, last+"\n"); err != nil {
			return "", err
		}
	}
	h.stdin.Close()
	rest, _ := io.ReadAll(h.out)
	err := h.wait()
	if err != nil {
		err = fmt.Errorf("%w: %s", err, h.Stderr())
	}
	return string(rest), err
}

// Stderr is what the helper printed on stderr so far.
func (h *Helper) Stderr() string { return h.stderr.String() }

func (h *Helper) wait() error {
	h.waitOnce.Do(func() { h.waitErr = h.cmd.Wait() })
	return h.waitErr
}
