//go:build linux

package agent

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
)

// TestResolverAnswersFailsOnSilence: an address where a socket is bound but
// nothing reads (a resolver that stopped serving) and one where nothing is
// bound both fail the check, each named: the silent ones because the
// query's own timeout ended the wait (the check is given no deadline of its
// own), the other refused.
func TestResolverAnswersFailsOnSilence(t *testing.T) {
	silent, ln := testenv.ListenPair(t) // accepted by the kernel, never answered
	defer silent.Close()
	defer ln.Close()
	goneAddr := testenv.DeadAddr(t)

	a := &Agent{addrs: []netip.AddrPort{silent.LocalAddr().(*net.UDPAddr).AddrPort(), goneAddr}}
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- a.resolverAnswers(context.Background()) }()
	var err error
	select {
	case err = <-done:
	case <-time.After(healthQueryTimeout + 30*time.Second):
		t.Fatalf("the check still waits %v after it began, with its queries bounded by %v", time.Since(start), healthQueryTimeout)
	}
	t.Logf("the check failed after %v (each query bounded by %v)", time.Since(start), healthQueryTimeout)
	if err == nil {
		t.Fatal("the check passed although no resolver answers")
	}
	probes := map[string]error{}
	joined, _ := err.(interface{ Unwrap() []error })
	if joined == nil {
		t.Fatalf("the check failed with %v, want one error per probe", err)
	}
	for _, e := range joined.Unwrap() {
		probe, _, _ := strings.Cut(e.Error(), ": ") // "udp 127.0.0.1:53: …"
		probes[probe] = e
	}
	for _, want := range []string{"udp " + a.addrs[0].String(), "tcp " + a.addrs[0].String()} {
		switch e, ok := probes[want]; {
		case !ok:
			t.Errorf("the error does not name %s: %v", want, err)
		case !isTimeout(e):
			t.Errorf("%s: %v; want the query's timeout", want, e)
		}
	}
	want := "udp " + goneAddr.String()
	switch e, ok := probes[want]; {
	case !ok:
		t.Errorf("the error does not name %s: %v", want, err)
	case !errors.Is(e, syscall.ECONNREFUSED):
		t.Errorf("%s: %v; want connection refused", want, e)
	}
}

// isTimeout reports whether err is a deadline that passed.
func isTimeout(err error) bool {
	var nerr net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &nerr) && nerr.Timeout()
}

func TestAskable(t *testing.T) {
	for in, want := range map[string]string{"0.0.0.0": "127.0.0.1", "::": "::1", "169.254.20.53": "169.254.20.53"} {
		if got := askable(netip.MustParseAddr(in)); got.String() != want {
			t.Errorf("askable(%s) = %s, want %s", in, got, want)
		}
	}
}
