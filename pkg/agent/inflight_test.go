package agent

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/resolver"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// TestLargeTCPReplyWithASmallBudget: with --inflight-bytes as small as
// 1Mi or 512Ki and no --pod-inflight-bytes, a client alone on an idle
// node gets a large TCP reply: the default bound of one source has room
// for the largest replies, and reading one takes no more than its size.
// (With a sixteenth of 1Mi and the reply read into a buffer that doubled,
// old and new both taken, every reply over 32 KiB got SERVFAIL.)
func TestLargeTCPReplyWithASmallBudget(t *testing.T) {
	for _, tc := range []struct {
		inflight int64
		txt      int
	}{
		{1 << 20, 40000},
		{512 << 10, 60000},
	} {
		t.Run(fmt.Sprintf("%d bytes of TXT with %d in flight", tc.txt, tc.inflight), func(t *testing.T) {
			dir, socket := t.TempDir(), filepath.Join(t.TempDir(), "ztdns.sock")
			if err := os.WriteFile(filepath.Join(dir, "se.yaml"), []byte(manifest), 0o644); err != nil {
				t.Fatal(err)
			}
			up := dnstest.Start(t, "127.0.0.1:0", dnstest.LargeTXT(tc.txt)).Addr
			listen := testenv.FreePort(t)
			startTestAgent(t, dir, socket, listen, up, "", func(c *Config) { c.InflightBytes = tc.inflight })
			if rcode, got := largeTXTOverTCP(t, listen); rcode != dns.RcodeSuccess || got != tc.txt {
				t.Errorf("%s with %d bytes of TXT, want NOERROR with %d", dns.RcodeToString[rcode], got, tc.txt)
			}
		})
	}
}

// largeTXTOverTCP asks the resolver on listen for big.example TXT over TCP
// and returns the reply's rcode and how many bytes of TXT it had.
func largeTXTOverTCP(t *testing.T, listen netip.AddrPort) (rcode, txtBytes int) {
	t.Helper()
	c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion("big.example.", dns.TypeTXT)
	r, _, err := c.Exchange(m, listen.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, rr := range r.Answer {
		if txt, ok := rr.(*dns.TXT); ok {
			for _, s := range txt.Txt {
				txtBytes += len(s)
			}
		}
	}
	return r.Rcode, txtBytes
}

// TestPodInflightBytesBelowOneReply: a source's bound of bytes in flight
// below one reply of the largest size (64 KiB) would refuse it every such
// reply; the agent refuses to start with it, saying the value and the
// least it takes, whoever configures it (before: only the command line
// refused it, and an agent.Config with 32 KiB ran and failed every reply
// over 32 KiB). 0 and a negative bound keep their meaning, and the least
// bound answers a reply of nearly 64 KiB.
func TestPodInflightBytesBelowOneReply(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "se.yaml"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.LargeTXT(60000)).Addr
	for _, n := range []int64{1, 32 << 10, resolver.MinPodInflightBytes - 1} {
		t.Run(fmt.Sprintf("%d refused", n), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() {
				done <- Run(ctx, Config{
					Source:           configdir.New(dir),
					Listen:           []netip.AddrPort{testenv.FreePort(t)},
					Upstreams:        []netip.AddrPort{up},
					Socket:           filepath.Join(t.TempDir(), "ztdns.sock"),
					PodInflightBytes: n,
				})
			}()
			select {
			case err := <-done:
				want := fmt.Sprintf("PodInflightBytes %d: want 0 (the default), negative (no bound of its own) or at least 65536, one reply of the largest size", n)
				if err == nil || err.Error() != want {
					t.Errorf("Run: %v, want %q", err, want)
				}
			case <-time.After(5 * time.Second):
				cancel()
				<-done
				t.Errorf("Run with PodInflightBytes %d still running after 5s, want it refused", n)
			}
		})
	}
	for _, n := range []int64{0, -1, resolver.MinPodInflightBytes} {
		t.Run(fmt.Sprintf("%d answers 60000 bytes", n), func(t *testing.T) {
			listen := testenv.FreePort(t)
			startTestAgent(t, dir, filepath.Join(t.TempDir(), "ztdns.sock"), listen, up, "",
				func(c *Config) { c.PodInflightBytes = n })
			if rcode, got := largeTXTOverTCP(t, listen); rcode != dns.RcodeSuccess || got != 60000 {
				t.Errorf("%s with %d bytes of TXT, want NOERROR with 60000", dns.RcodeToString[rcode], got)
			}
		})
	}
}
