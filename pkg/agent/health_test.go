//go:build linux

package agent

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/testenv"
)

// TestResolverAnswersFailsOnSilence: an address where a socket is bound but
// nothing reads (a resolver that stopped serving) and one where nothing is
// bound both fail the check, each named, within the query timeout.
func TestResolverAnswersFailsOnSilence(t *testing.T) {
	silent, ln := testenv.ListenPair(t) // accepted by the kernel, never answered
	defer silent.Close()
	defer ln.Close()
	goneAddr := testenv.DeadAddr(t)

	a := &Agent{addrs: []netip.AddrPort{silent.LocalAddr().(*net.UDPAddr).AddrPort(), goneAddr}}
	start := time.Now()
	err := a.resolverAnswers(context.Background())
	took := time.Since(start)
	if err == nil {
		t.Fatal("the check passed although no resolver answers")
	}
	for _, want := range []string{"udp " + a.addrs[0].String(), "tcp " + a.addrs[0].String(), "udp " + goneAddr.String()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not name %s: %v", want, err)
		}
	}
	if took > healthQueryTimeout+time.Second {
		t.Errorf("the check took %v, more than its %v timeout", took, healthQueryTimeout)
	}
}

func TestAskable(t *testing.T) {
	for in, want := range map[string]string{"0.0.0.0": "127.0.0.1", "::": "::1", "169.254.20.53": "169.254.20.53"} {
		if got := askable(netip.MustParseAddr(in)); got.String() != want {
			t.Errorf("askable(%s) = %s, want %s", in, got, want)
		}
	}
}
