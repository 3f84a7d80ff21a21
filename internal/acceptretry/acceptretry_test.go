package acceptretry

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// acceptError is an error as Accept returns it: the errno in an
// *os.SyscallError in a *net.OpError.
func acceptError(errno syscall.Errno) error {
	return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}
}

// TestReason: what an accept loop waits out, and what stops it.
func TestReason(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{acceptError(syscall.EMFILE), ReasonDescriptors},
		{acceptError(syscall.ENFILE), ReasonDescriptors},
		{acceptError(syscall.ENOBUFS), ReasonMemory},
		{acceptError(syscall.ENOMEM), ReasonMemory},
		{acceptError(syscall.ECONNABORTED), ReasonConnection},
		{acceptError(syscall.EPROTO), ReasonConnection},
		{acceptError(syscall.EPERM), ReasonConnection},
		{&net.OpError{Op: "accept", Net: "tcp", Err: net.ErrClosed}, ""},
		{acceptError(syscall.EBADF), ""},
		{acceptError(syscall.EINVAL), ""},
		{errors.New("something else"), ""},
	} {
		t.Run(fmt.Sprint(tc.err), func(t *testing.T) {
			if got := Reason(tc.err); got != tc.want {
				t.Errorf("Reason(%v) = %q, want %q", tc.err, got, tc.want)
			}
		})
	}
}

// TestWaitBacksOff: each failure waited out is counted and waits twice as
// long as the one before, 5 ms to 1 s; an accepted connection starts the
// pause afresh; a closed listener is not waited out; a burst of failures
// is logged once.
func TestWaitBacksOff(t *testing.T) {
	const listener = "test-backoff"
	b := New(listener)
	var slept []time.Duration
	b.sleep = func(d time.Duration) { slept = append(slept, d) }
	var logged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logged, nil))
	counted := metricErrors.WithLabelValues(listener, ReasonDescriptors)
	if n := testutil.ToFloat64(counted); n != 0 {
		t.Fatalf("before any failure: %v counted", n)
	}

	for range 10 {
		if !b.Wait(log, acceptError(syscall.EMFILE)) {
			t.Fatal("EMFILE not waited out")
		}
	}
	b.Accepted()
	if !b.Wait(log, acceptError(syscall.ENOBUFS)) {
		t.Fatal("ENOBUFS not waited out")
	}
	if b.Wait(log, &net.OpError{Op: "accept", Net: "tcp", Err: net.ErrClosed}) {
		t.Fatal("a closed listener waited out")
	}

	ms := time.Millisecond
	want := []time.Duration{5 * ms, 10 * ms, 20 * ms, 40 * ms, 80 * ms, 160 * ms, 320 * ms, 640 * ms, time.Second, time.Second, 5 * ms}
	if fmt.Sprint(slept) != fmt.Sprint(want) {
		t.Errorf("slept %v, want %v", slept, want)
	}
	if n := testutil.ToFloat64(counted); n != 10 {
		t.Errorf("out of descriptors counted %v times, want 10", n)
	}
	if n := testutil.ToFloat64(metricErrors.WithLabelValues(listener, ReasonMemory)); n != 1 {
		t.Errorf("out of memory counted %v times, want 1", n)
	}
	if lines := strings.Count(logged.String(), "\n"); lines != 1 || !strings.Contains(logged.String(), "out of file descriptors") {
		t.Errorf("logged %d lines, want 1 saying the agent is out of file descriptors:\n%s", lines, &logged)
	}
}
