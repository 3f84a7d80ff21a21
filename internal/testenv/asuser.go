//go:build linux

package testenv

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ztdns/ztdns/pkg/control"
)

// Nobody is the unprivileged user tests run callers as: uid 65534 with
// group 0, the caller the control socket once let in.
var Nobody = syscall.Credential{Uid: 65534, Gid: 0}

// AsUser prepares bin with args to run as cred. bin is copied first into a
// directory any user can enter (a test binary's own directory is not), and
// the copy is removed at cleanup; the directory is recorded in the ledger,
// so the next test run removes it if this process is killed first.
func AsUser(tb testing.TB, ctx context.Context, cred syscall.Credential, bin string, args ...string) *exec.Cmd {
	tb.Helper()
	RequireRoot(tb)
	dir := MkdirTemp(tb, asUserPrefix)
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	dst := filepath.Join(dir, filepath.Base(bin))
	if err := copyFile(bin, dst, 0o755); err != nil {
		tb.Fatalf("testenv: copy %s for another user: %v", bin, err)
	}
	cmd := exec.CommandContext(ctx, dst, args...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &cred}
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// StartAsUser starts the test binary as cred with env added (which names
// the helper the package's TestMain then runs), killed when the test ends
// or the test binary dies (StartOrphanProof). It returns the process, to
// wait for, and its stdout; its stderr is the test binary's.
func StartAsUser(tb testing.TB, cred syscall.Credential, env ...string) (*exec.Cmd, *bufio.Reader) {
	tb.Helper()
	cmd := AsUser(tb, tb.Context(), cred, os.Args[0])
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	if err := StartOrphanProof(cmd); err != nil {
		tb.Fatalf("testenv: starting the test binary as uid %d: %v", cred.Uid, err)
	}
	tb.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd, bufio.NewReader(stdout)
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Operations of ControlCallAsUser.
const (
	// CallStatus asks for the agent's status (a read-only route).
	CallStatus = "status"
	// CallCaptureAdd asks the agent to mark a network namespace (a route
	// only root may call).
	CallCaptureAdd = "capture-add"
)

// ControlCallAsUser runs one call of the control API (CallStatus or
// CallCaptureAdd of netns) on the socket from a process running as cred:
// the test binary itself, through RunHelper, which the package's TestMain
// must call. It returns the client's output (the error, when the call
// failed) and whether the call succeeded.
func ControlCallAsUser(tb testing.TB, cred syscall.Credential, socket, op, netns string) (string, bool) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), 30*time.Second)
	defer cancel()
	cmd := AsUser(tb, ctx, cred, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=control-call", "ZTDNS_TESTENV_SOCKET="+socket,
		"ZTDNS_TESTENV_OP="+op, "ZTDNS_TESTENV_NETNS="+netns)
	out, err := cmd.CombinedOutput()
	if _, exited := err.(*exec.ExitError); err != nil && !exited {
		tb.Fatalf("testenv: running the control client as uid %d: %v\n%s", cred.Uid, err, out)
	}
	return string(out), err == nil
}

// controlCall is the client ControlCallAsUser runs.
func controlCall() int {
	c := control.NewClient(os.Getenv("ZTDNS_TESTENV_SOCKET"), 10*time.Second)
	ctx := context.Background()
	var err error
	switch op := os.Getenv("ZTDNS_TESTENV_OP"); op {
	case CallStatus:
		var st control.Status
		if st, err = c.Status(ctx); err == nil {
			fmt.Printf("ready=%v\n", st.Ready)
		}
	case CallCaptureAdd:
		var row control.PodRow
		if row, err = c.CaptureAdd(ctx, control.CaptureRequest{Netns: os.Getenv("ZTDNS_TESTENV_NETNS")}); err == nil {
			fmt.Printf("captured %s/%s\n", row.Namespace, row.Name)
		}
	default:
		err = fmt.Errorf("unknown operation %q", op)
	}
	if err != nil {
		fmt.Println(err)
		return 1
	}
	return 0
}

// ListenAsUser runs the test binary as cred, listening on socket where an
// agent's control socket would be and answering every request as a ready
// agent would (see RunHelper), until the test ends, or the test binary
// does (a -timeout panic, a SIGKILL: it gets SIGKILL then, as StartAgent's
// processes do). It returns once the socket takes connections.
func ListenAsUser(tb testing.TB, cred syscall.Credential, socket string) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := AsUser(tb, ctx, cred, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=control-listen", "ZTDNS_TESTENV_SOCKET="+socket)
	cmd.Stderr = os.Stderr
	if err := StartOrphanProof(cmd); err != nil {
		cancel()
		tb.Fatalf("testenv: listening as uid %d: %v", cred.Uid, err)
	}
	tb.Cleanup(func() {
		cancel()
		cmd.Wait()
	})
	EventuallyNil(tb, 10*time.Second, func() error {
		c, err := net.Dial("unix", socket)
		if err == nil {
			c.Close()
		}
		return err
	})
}

// controlListen is the server ListenAsUser runs.
func controlListen() int {
	ln, err := net.Listen("unix", os.Getenv("ZTDNS_TESTENV_SOCKET"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	err = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintln(w, `{"ready":true}`)
	}))
	fmt.Fprintln(os.Stderr, err)
	return 1
}
