package forward

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/ratelog"
	"github.com/ztdns/ztdns/internal/testenv"
)

// TestFailedExchangesLoggedSparingly: at debug level, 1,000 queries to an
// upstream that refuses them and 1,000 to one that answers SERVFAIL log a
// line or so each, naming the upstream, not one per query: a client
// repeats a failing query at will, and the access log has each one.
// (Before: 1,000 lines of each.)
func TestFailedExchangesLoggedSparingly(t *testing.T) {
	t.Parallel()
	dead := testenv.DeadAddr(t)
	servfail := startUpstream(t, answerRcode(dns.RcodeServerFailure)).addr
	var log testenv.Log
	f := newForwarder(t, WithTimeout(2*time.Second),
		WithLogger(slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	start := time.Now()
	for i := range 1000 {
		for _, up := range []netip.AddrPort{dead, servfail} {
			name := fmt.Sprintf("q%d.example.com.", i) // none cached
			reply, err := f.Forward(context.Background(), query(t, name, dns.TypeA), false, []netip.AddrPort{up})
			if err != nil {
				t.Fatal(err)
			}
			var m dns.Msg
			if err := m.Unpack(reply); err != nil || m.Rcode != dns.RcodeServerFailure {
				t.Fatalf("%s from %s: %v %s, want SERVFAIL", name, up, err, dns.RcodeToString[m.Rcode])
			}
		}
	}
	// A line per ratelog.Every at most, however long the run took.
	most := 1 + int(time.Since(start)/ratelog.Every)
	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	for _, want := range []string{
		`msg="upstream exchange failed" upstream=` + dead.String(),
		`msg="upstream answered with an error" upstream=` + servfail.String(),
	} {
		n := 0
		for _, l := range lines {
			if strings.Contains(l, want) {
				n++
			}
		}
		if n == 0 || n > most {
			t.Errorf("%d lines %s, want 1 to %d", n, want, most)
		}
	}
	if len(lines) > 2*most {
		t.Errorf("%d lines logged, want at most %d; the first:\n%s", len(lines), 2*most, strings.Join(lines[:min(len(lines), 10)], "\n"))
	}
}
