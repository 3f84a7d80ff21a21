package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/resolver"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
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
			if rcode, got, _ := largeTXTOverTCP(t, listen); rcode != dns.RcodeSuccess || got != tc.txt {
				t.Errorf("%s with %d bytes of TXT, want NOERROR with %d", dns.RcodeToString[rcode], got, tc.txt)
			}
		})
	}
}

// largeTXTOverTCP asks the resolver on listen for big.example TXT over TCP
// and returns the reply's rcode, how many bytes of TXT it had, and its
// size (without the 2-byte length).
func largeTXTOverTCP(t *testing.T, listen netip.AddrPort) (rcode, txtBytes, size int) {
	t.Helper()
	c, err := net.DialTimeout("tcp", listen.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	m := new(dns.Msg)
	m.SetQuestion("big.example.", dns.TypeTXT)
	q, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if err := dnstest.WriteTCP(c, q); err != nil {
		t.Fatal(err)
	}
	b, err := dnstest.ReadTCP(c)
	if err != nil {
		t.Fatal(err)
	}
	r := dnstest.Unpack(t, b)
	for _, rr := range r.Answer {
		if txt, ok := rr.(*dns.TXT); ok {
			for _, s := range txt.Txt {
				txtBytes += len(s)
			}
		}
	}
	return r.Rcode, txtBytes, len(b)
}

// largestTXT is the TXT data of dnstest.LargeTXT that makes its reply to
// big.example TXT (no EDNS) the largest a DNS message can be, 65,535
// bytes: a header of 12, the question's 17, the record's name (written
// out: dnstest does not compress), type, class, TTL and length 23, and
// the data, 65,222 bytes in 261 strings of up to 250, each with a byte of
// length. The resolver relays it as it is.
const largestTXT = 65222

// TestInflightBytesBelowOneReply: a bound of bytes in flight, the node's
// or a source's, below one reply of the largest size (64 KiB) would refuse
// every such reply; the agent refuses to start with it, saying the value
// and the least it takes, whoever configures it (before: only the command
// line refused a source's bound, and an agent.Config with 32 KiB of either
// ran and failed every reply over 32 KiB; a negative node's bound, no
// bound at all, passed). 0 and a negative source's bound keep their
// meaning, and the least bound answers a reply of the largest size.
func TestInflightBytesBelowOneReply(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "se.yaml"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.LargeTXT(largestTXT)).Addr
	for _, field := range []struct {
		name, want    string
		set           func(*Config, int64)
		refused, fine []int64
	}{
		{"InflightBytes", "want 0 (the default) or at least 65536, one reply of the largest size",
			func(c *Config, n int64) { c.InflightBytes = n },
			[]int64{-1, 1, 32 << 10, resolver.MinInflightBytes - 1}, []int64{0, resolver.MinInflightBytes}},
		{"PodInflightBytes", "want 0 (the default), negative (no bound of its own) or at least 65536, one reply of the largest size",
			func(c *Config, n int64) { c.PodInflightBytes = n },
			[]int64{1, 32 << 10, resolver.MinPodInflightBytes - 1}, []int64{0, -1, resolver.MinPodInflightBytes}},
	} {
		for _, n := range field.refused {
			t.Run(fmt.Sprintf("%s %d refused", field.name, n), func(t *testing.T) {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				cfg := Config{
					Source:    configdir.New(dir),
					Listen:    []netip.AddrPort{testenv.FreePort(t)},
					Upstreams: []netip.AddrPort{up},
					Socket:    filepath.Join(t.TempDir(), "ztdns.sock"),
				}
				field.set(&cfg, n)
				done := make(chan error, 1)
				go func() { done <- Run(ctx, cfg) }()
				select {
				case err := <-done:
					want := fmt.Sprintf("%s %d: %s", field.name, n, field.want)
					if err == nil || err.Error() != want {
						t.Errorf("Run: %v, want %q", err, want)
					}
				case <-time.After(5 * time.Second):
					cancel()
					<-done
					t.Errorf("Run with %s %d still running after 5s, want it refused", field.name, n)
				}
			})
		}
		for _, n := range field.fine {
			t.Run(fmt.Sprintf("%s %d answers the largest reply", field.name, n), func(t *testing.T) {
				listen := testenv.FreePort(t)
				startTestAgent(t, dir, filepath.Join(t.TempDir(), "ztdns.sock"), listen, up, "",
					func(c *Config) { field.set(c, n) })
				if rcode, got, size := largeTXTOverTCP(t, listen); rcode != dns.RcodeSuccess || got != largestTXT || size != dns.MaxMsgSize {
					t.Errorf("%s with %d bytes of TXT in %d, want NOERROR with %d in %d",
						dns.RcodeToString[rcode], got, size, largestTXT, dns.MaxMsgSize)
				}
			})
		}
	}
}

// TestPodsShowBytesRefused: a pod's nameserver sends nearly all of a
// 64 KiB TCP reply and stalls, for 16 queries at once; the pod may hold one
// such reply (--pod-inflight-bytes 64Ki), and the others get SERVFAIL at
// once. `ztdns pods` (the control API's pods) counts every one of those in
// the pod's bytesRefused (before: in nothing the pod's row shows, only in
// the node's ztdns_forward_upstream_queries_total{result="source_limited"}).
// The metrics say they were the pod's doing, as the chart's alerts read
// them: each is outcome="forward_limited", and a SERVFAIL of source "none",
// not one from an upstream (before: not forward_limited, and SERVFAILs of
// source "upstream", which the node's SERVFAIL alert counts).
func TestPodsShowBytesRefused(t *testing.T) {
	const queries, sent = 16, 60000
	dir, socket := t.TempDir(), filepath.Join(t.TempDir(), "ztdns.sock")
	pod := `apiVersion: v1
kind: Pod
metadata: {name: asker, namespace: default}
spec: {containers: [{name: c, image: c}]}
status: {phase: Running, podIP: 127.0.0.2, podIPs: [{ip: 127.0.0.2}]}
`
	for name, text := range map[string]string{"se.yaml": manifest, "pod.yaml": pod} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	up := dnstest.StartStalling(t, sent)
	listen := testenv.FreePort(t)
	reg := prometheus.NewRegistry()
	startTestAgent(t, dir, socket, listen, up.Addr, "", func(c *Config) {
		c.PodInflightBytes = resolver.MinPodInflightBytes
		c.ForwardTimeout = time.Minute // the stalled replies stay held
		c.Registry = reg
	})
	// ztdns_resolver_queries_total is the process's: this test counts what
	// it adds.
	limitedBefore := metricValue(t, reg, "ztdns_resolver_queries_total", map[string]string{"outcome": "forward_limited"})
	ctl := control.NewClient(socket, 2*time.Second)
	usage := func() quota.Usage { return podRow(t, ctl, "default", "asker").Resolver }

	c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).Dial("tcp4", listen.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range queries {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("n%d.stall.example.", i), dns.TypeTXT)
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if err := dnstest.WriteTCP(c, b); err != nil {
			t.Fatal(err)
		}
	}
	// Each query holds its stalled reply's bytes or was answered (refused
	// them); the pod may hold one.
	var u quota.Usage
	testenv.EventuallyNil(t, 5*time.Second, func() error {
		if u = usage(); up.Stalled() == queries && u.Forwarding <= 1 {
			return nil
		}
		return fmt.Errorf("%d of %d replies sent and stalled, ztdns pods shows %+v: want every query's reply sent and at most one forwarding", up.Stalled(), queries, u)
	})
	t.Logf("%d stalled replies: ztdns pods shows %+v", queries, u)
	refused := queries - u.Forwarding
	if int(u.BytesRefused) != refused {
		t.Errorf("ztdns pods counts %d replies refused for the pod's bytes, want the %d answered", u.BytesRefused, refused)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for range refused {
		b, err := dnstest.ReadTCP(c)
		if err != nil {
			t.Fatal(err)
		}
		if r := dnstest.Unpack(t, b); r.Rcode != dns.RcodeServerFailure {
			t.Errorf("%s: %s, want SERVFAIL", r.Question[0].Name, dns.RcodeToString[r.Rcode])
		}
	}
	if u.ForwardRefused != 0 || u.RateLimited != 0 || u.TCPRefused != 0 {
		t.Errorf("ztdns pods counts other refusals: %+v", u)
	}

	servfail := func(source string) float64 {
		return metricValue(t, reg, "ztdns_dns_requests_total", map[string]string{"rcode": "SERVFAIL", "source": source, "proto": "tcp", "type": "TXT"})
	}
	limited := metricValue(t, reg, "ztdns_resolver_queries_total", map[string]string{"outcome": "forward_limited"}) - limitedBefore
	if int(limited) != refused || int(servfail("none")) != refused || servfail("upstream") != 0 {
		t.Errorf("metrics: forward_limited rose by %v, SERVFAIL from none %v and from upstream %v; want %d, %d and 0",
			limited, servfail("none"), servfail("upstream"), refused, refused)
	}
}

// podRow is the row `ztdns pods` shows for the pod namespace/name.
func podRow(t *testing.T, ctl *control.Client, namespace, name string) control.PodRow {
	t.Helper()
	rows, err := ctl.Pods(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if r.Namespace == namespace && r.Name == name {
			return r
		}
	}
	t.Fatalf("ztdns pods has no row for %s/%s: %+v", namespace, name, rows)
	return control.PodRow{}
}

// metricValue is the value of the series of the counter or gauge name in
// reg with the labels want (others any, summed); 0 when there is none.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue series
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}
