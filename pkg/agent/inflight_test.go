package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
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
			c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
			m := new(dns.Msg)
			m.SetQuestion("big.example.", dns.TypeTXT)
			r, _, err := c.Exchange(m, listen.String())
			if err != nil {
				t.Fatal(err)
			}
			got := 0
			for _, rr := range r.Answer {
				if txt, ok := rr.(*dns.TXT); ok {
					for _, s := range txt.Txt {
						got += len(s)
					}
				}
			}
			if r.Rcode != dns.RcodeSuccess || got != tc.txt {
				t.Errorf("%s with %d bytes of TXT, want NOERROR with %d", dns.RcodeToString[r.Rcode], got, tc.txt)
			}
		})
	}
}
