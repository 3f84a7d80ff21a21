package kubetest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// stopGrace is how long a server gets to exit after SIGTERM before SIGKILL.
const stopGrace = 10 * time.Second

// process is one server binary running in its own process group, with its
// output in a log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited and been reaped
	waitErr error         // valid after done is closed
}

// startProcess runs bin with args in a new process group, appending its
// stdout and stderr to logPath; configure, if any, adjusts the command
// (environment, working directory) before it starts.
//
// The child also gets SIGKILL when the thread that started it exits
// (Pdeathsig), which is what cleans up when the test binary dies without
// running its cleanups (a -timeout panic, a SIGKILL). Pdeathsig follows the
// starting OS thread, not the process, so the start and the wait happen on a
// goroutine locked to its thread for the child's whole life: no other
// goroutine can end that thread early.
func startProcess(name, bin string, args []string, logPath string, configure ...func(*exec.Cmd)) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s log: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	for _, c := range configure {
		c(cmd)
	}

	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Never unlocked: the thread exits with this goroutine, after the child
		// has been reaped.
		runtime.LockOSThread()
		defer close(p.done)
		defer logFile.Close()
		if err := cmd.Start(); err != nil {
			started <- err
			p.waitErr = err
			return
		}
		started <- nil
		p.waitErr = cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return p, nil
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after stopGrace, and
// waits until the process is reaped. A process that has already exited is
// not an error: its exit status is only interesting while it should be running.
func (p *process) stop() error {
	if p.exited() {
		return nil
	}
	pgid := p.cmd.Process.Pid // Setpgid makes the child lead a group with its own pid
	if err := syscall.Kill(-pgid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("SIGTERM %s: %w", p.name, err)
	}
	select {
	case <-p.done:
	case <-time.After(stopGrace):
		if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("SIGKILL %s: %w", p.name, err)
		}
		<-p.done
	}
	return nil
}

// kill sends SIGKILL to the process group and waits until the process is
// reaped: for cleanup, where the data is thrown away and a graceful shutdown
// would only cost time.
func (p *process) kill() error {
	if p.exited() {
		return nil
	}
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("SIGKILL %s: %w", p.name, err)
	}
	<-p.done
	return nil
}

// logTail returns the last n lines of the process's log, for error messages.
func (p *process) logTail(n int) string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s log: %v)", p.name, err)
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
