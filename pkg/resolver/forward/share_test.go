package forward

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// Addresses the picky upstream answers with: the answer to a plain
// recursive query, one tailored to a client subnet, one from a
// non-recursive lookup (what RD=0 gets from a resolver's cache).
const (
	plainAddr     = dnstest.NoSubnetAddr
	subnetAddr    = dnstest.SubnetAddr
	nonRecursAddr = "198.51.100.66"
)

// pickyUpstream is a UDP upstream that answers as a miekg-based server
// (CoreDNS) with client-subnet support would, once hold is closed (nil:
// at once): FORMERR with
// the question echoed for a query it cannot unpack (a malformed option)
// or that has records in its answer or authority section; for a query
// with an ECS option, an answer tailored to the subnet, the option echoed
// with its scope; a client COOKIE echoed with a server cookie; for RD=0,
// what it holds without recursing. Every query it got is recorded.
type pickyUpstream struct {
	addr netip.AddrPort
	mu   sync.Mutex
	got  []*dns.Msg // unpacked as far as it went
	n    atomic.Int64
}

func startPickyUpstream(t *testing.T, hold <-chan struct{}) *pickyUpstream {
	t.Helper()
	u := &pickyUpstream{}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	// After rawUDPUpstream's cleanup (cleanups run last first), which ends
	// the loop that starts the replies.
	t.Cleanup(func() {
		close(stop)
		wg.Wait()
	})
	u.addr = rawUDPUpstream(t, func(pc net.PacketConn, from net.Addr, q []byte) {
		u.n.Add(1)
		wg.Go(func() {
			if hold != nil {
				select {
				case <-hold:
				case <-stop:
					return
				}
			}
			b, err := u.reply(q).Pack()
			if err != nil {
				t.Errorf("pack upstream reply: %v", err)
				return
			}
			_, _ = pc.WriteTo(b, from)
		})
	})
	return u
}

func (u *pickyUpstream) reply(q []byte) *dns.Msg {
	req := new(dns.Msg)
	err := req.Unpack(q)
	u.mu.Lock()
	u.got = append(u.got, req)
	u.mu.Unlock()
	if err != nil || len(req.Answer) > 0 || len(req.Ns) > 0 {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeFormatError) // as miekg's server: the question it read
		return m
	}
	addr := plainAddr
	if !req.RecursionDesired {
		addr = nonRecursAddr
	}
	m := dnstest.TailorToSubnet(req, addr)
	m.RecursionAvailable = true
	return m
}

func (u *pickyUpstream) received() []*dns.Msg {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*dns.Msg(nil), u.got...)
}

func withOption(e dns.EDNS0) func(*dns.Msg) {
	return func(m *dns.Msg) {
		o := m.IsEdns0()
		if o == nil {
			m.SetEdns0(4096, false)
			o = m.IsEdns0()
		}
		o.Option = append(o.Option, e)
	}
}

var (
	podASubnet = &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.ParseIP("203.0.113.0").To4()}
	podACookie = &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "a1a1a1a1a1a1a1a1"}
	// An ECS option of no address family: miekg's unpacking fails on it.
	badSubnet = &dns.EDNS0_LOCAL{Code: dns.EDNS0SUBNET, Data: []byte{0, 7, 24, 0, 203, 0, 113}}
)

// podAQueries are queries of one pod for the name another pod asks,
// under the same cache key (EDNS without DO, type A, class IN, the same
// name and upstream), that ask the upstream something else than the key
// says: the upstream's answer to them is no answer to the other pod.
var podAQueries = []struct {
	name string
	// shared: the query is asked as its key says, and its exchange shared
	// (shareable); otherwise forwarded as it is, for its pod alone.
	shared bool
	opts   []func(*dns.Msg)
}{
	{"client subnet and cookie", true, []func(*dns.Msg){withOption(podASubnet), withOption(podACookie)}},
	{"malformed option", true, []func(*dns.Msg){withOption(badSubnet)}},
	{"records in the authority section", false, []func(*dns.Msg){withEDNS(false), func(m *dns.Msg) {
		m.Ns = []dns.RR{
			&dns.NS{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: 60}, Ns: "ns1.example.com."},
			&dns.NS{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: 60}, Ns: "ns2.example.com."},
		}
	}}},
	{"no recursion desired", false, []func(*dns.Msg){withEDNS(false), func(m *dns.Msg) { m.RecursionDesired = false }}},
}

// checkPodB fails unless m is the answer pod B's plain query should get
// from the upstream: NOERROR, the address of a plain recursive query, B's
// ID, and an OPT record with no option of another pod's.
func checkPodB(t *testing.T, m *dns.Msg) {
	t.Helper()
	if m.Id != 0xB0B0 || m.Rcode != dns.RcodeSuccess || firstA(m) != plainAddr || !m.RecursionDesired {
		t.Errorf("pod B got ID %#x %s RD=%v answer %q, want its ID, NOERROR RD and %s", m.Id, dns.RcodeToString[m.Rcode], m.RecursionDesired, firstA(m), plainAddr)
	}
	o := m.IsEdns0()
	if o == nil {
		t.Errorf("pod B, which sent EDNS, got no OPT record")
		return
	}
	for _, e := range o.Option {
		switch e.Option() {
		case dns.EDNS0SUBNET, dns.EDNS0COOKIE:
			t.Errorf("pod B, which sent no options, got option %d: %s", e.Option(), e)
		}
	}
}

// forwardFrom forwards req over UDP to up for src, within 10 s, and fails
// the test unless it gets a reply. Only the test's goroutine may call it: a
// goroutine calls goForward.
func forwardFrom(t *testing.T, f *Forwarder, src *quota.Source, req []byte, up netip.AddrPort) *dns.Msg {
	t.Helper()
	return (<-goForward(f, src, req, up)).msg(t)
}

// forwarded is what Forward returned.
type forwarded struct {
	b   []byte
	err error
}

// goForward forwards req over UDP to up for src, within 10 s, in a
// goroutine of its own, which hands the result over and touches no
// testing.T: a failure is reported by the test's goroutine, never left
// waiting for a result that will not come.
func goForward(f *Forwarder, src *quota.Source, req []byte, up netip.AddrPort) <-chan forwarded {
	out := make(chan forwarded, 1)
	go func() {
		ctx, cancel := context.WithTimeout(quota.WithSource(context.Background(), src), 10*time.Second)
		defer cancel()
		b, err := f.Forward(ctx, req, false, []netip.AddrPort{up})
		out <- forwarded{b, err}
	}()
	return out
}

// msg is the reply, unpacked; a failed Forward fails the test.
func (r forwarded) msg(t *testing.T) *dns.Msg {
	t.Helper()
	if r.err != nil {
		t.Fatalf("Forward: %v", r.err)
	}
	return dnstest.Unpack(t, r.b)
}

// TestPodsShareOnlyWhatTheKeySays: pods that use the same nameserver share
// cache entries and exchanges in flight, under a key of what changes the
// answer (flags, type, class, name, upstreams). What one pod's query holds
// beyond the key (EDNS options, records, RD=0) must not reach another pod:
// a shared exchange asks the upstream only what the key says, and a query
// that cannot be put that way is forwarded as it is, for its pod alone.
// Pod A asks first, pod B then asks the same name plainly, once after A's
// reply (the cache) and once while A's exchange is in flight: the upstream
// holds its replies until B's forward has joined A's exchange (one query
// upstream), or for a query of A's that is not shared, sent its own.
func TestPodsShareOnlyWhatTheKeySays(t *testing.T) {
	t.Parallel()
	for _, tc := range podAQueries {
		for _, concurrent := range []bool{false, true} {
			mode := "cached"
			if concurrent {
				mode = "in flight"
			}
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				t.Parallel()
				var hold chan struct{}
				if concurrent {
					hold = make(chan struct{})
				}
				up := startPickyUpstream(t, hold)
				f := newForwarder(t)
				var podA, podB quota.Source
				qa := query(t, "www.example.com.", dns.TypeA, append([]func(*dns.Msg){withID(0xA0A0)}, tc.opts...)...)
				qb := query(t, "www.example.com.", dns.TypeA, withEDNS(false), withID(0xB0B0))

				a := goForward(f, &podA, qa, up.addr)
				var ra forwarded
				if !concurrent {
					ra = <-a
					checkPodB(t, forwardFrom(t, f, &podB, qb, up.addr))
				} else {
					testenv.Eventually(t, 30*time.Second, "A's exchange in flight", func() bool { return up.n.Load() == 1 })
					b := goForward(f, &podB, qb, up.addr)
					if tc.shared {
						testenv.Eventually(t, 30*time.Second, "B waiting on A's exchange", func() bool { return joined(f) == 1 })
					} else {
						testenv.Eventually(t, 30*time.Second, "B's own exchange in flight", func() bool { return up.n.Load() == 2 })
					}
					close(hold)
					checkPodB(t, (<-b).msg(t))
					if n := up.n.Load(); tc.shared && n != 1 {
						t.Errorf("the upstream got %d queries, want 1: B shares A's exchange", n)
					}
					ra = <-a
				}
				if m := ra.msg(t); m.Id != 0xA0A0 {
					t.Fatalf("pod A got %v", m)
				}
			})
		}
	}
}

// joined is how many queries wait on f's exchanges in flight.
func joined(f *Forwarder) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, fl := range f.flights {
		n += int(fl.joined.Load())
	}
	return n
}

// TestSharedExchangeAsksOnlyTheKey: what the upstream gets for a query that
// may be shared is made from the key: the question lower-cased, RD and AD,
// CD as asked, and for EDNS an OPT record of ztdns's own (its UDP size, DO
// as asked, no options), nothing else; the client's reply is fitted to it:
// its ID and question, AD only when it asked for DNSSEC (DO or AD).
func TestSharedExchangeAsksOnlyTheKey(t *testing.T) {
	t.Parallel()
	up := startPickyUpstream(t, nil)
	f := newForwarder(t, WithCacheSize(0))
	var pod quota.Source
	q := query(t, "WwW.Example.COM.", dns.TypeA, withOption(podASubnet), withOption(podACookie), withCD, withID(0x1234), func(m *dns.Msg) {
		m.IsEdns0().SetUDPSize(4096)
		m.IsEdns0().SetDo()
		m.Extra = append([]dns.RR{&dns.TXT{Hdr: dns.RR_Header{Name: "x.", Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: []string{"x"}}}, m.Extra...)
	})
	// A stray additional record: not the key's. Forwarded as is.
	forwardFrom(t, f, &pod, q, up.addr)
	q = query(t, "WwW.Example.COM.", dns.TypeA, withOption(podASubnet), withOption(podACookie), withCD, withID(0x1234), func(m *dns.Msg) {
		m.IsEdns0().SetUDPSize(4096)
		m.IsEdns0().SetDo()
		m.Zero = true
	})
	m := forwardFrom(t, f, &pod, q, up.addr)
	got := up.received()
	if len(got) != 2 {
		t.Fatalf("upstream got %d queries, want 2", len(got))
	}
	if asIs := got[0]; len(asIs.Extra) != 2 || asIs.IsEdns0() == nil || len(asIs.IsEdns0().Option) != 2 {
		t.Errorf("a query with a stray record reached the upstream as\n%v\nwant it as the client sent it", asIs)
	}
	s := got[1]
	o := s.IsEdns0()
	if s.Question[0].Name != "www.example.com." || !s.RecursionDesired || !s.AuthenticatedData || !s.CheckingDisabled || s.Zero ||
		len(s.Answer) != 0 || len(s.Ns) != 0 || len(s.Extra) != 1 || o == nil || o.UDPSize() != 1232 || !o.Do() || len(o.Option) != 0 {
		t.Errorf("the upstream got\n%v\nwant the key's question lower-cased, RD AD CD, and an OPT of 1232 octets with DO and no options", s)
	}
	if m.Id != 0x1234 || m.Question[0].Name != "WwW.Example.COM." || firstA(m) != plainAddr {
		t.Errorf("the client got ID %#x question %q answer %q", m.Id, m.Question[0].Name, firstA(m))
	}

	// AD: kept for a client that asked for DNSSEC, cleared for one that did not.
	ad := startUpstream(t, func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
		r := new(dns.Msg)
		r.SetReply(req)
		r.AuthenticatedData = req.AuthenticatedData
		_ = w.WriteMsg(r)
	})
	for _, tc := range []struct {
		name   string
		opts   []func(*dns.Msg)
		wantAD bool
	}{
		{"neither", nil, false},
		{"AD", []func(*dns.Msg){func(m *dns.Msg) { m.AuthenticatedData = true }}, true},
		{"DO", []func(*dns.Msg){withEDNS(true)}, true},
	} {
		m := forwardFrom(t, f, &pod, query(t, "ad.example.", dns.TypeA, tc.opts...), ad.addr)
		if m.AuthenticatedData != tc.wantAD {
			t.Errorf("%s: AD=%v, want %v", tc.name, m.AuthenticatedData, tc.wantAD)
		}
	}
}

// TestRelayedQueryLosesItsCookie: a query forwarded as it came (RD=0)
// reaches the upstream without the client's COOKIE, its other options
// kept, so the reply carries no server cookie of the upstream's, as no
// reply to a query ztdns asks itself does: a client that saw one from
// ztdns's address could take every later reply without one as spoofed.
func TestRelayedQueryLosesItsCookie(t *testing.T) {
	t.Parallel()
	up := startPickyUpstream(t, nil)
	f := newForwarder(t)
	var pod quota.Source
	noRD := func(m *dns.Msg) { m.RecursionDesired = false }
	m := forwardFrom(t, f, &pod, query(t, "www.example.com.", dns.TypeA, withOption(podACookie), withOption(podASubnet), noRD), up.addr)
	got := up.received()
	var options []uint16 // the codes of those the upstream got
	if len(got) == 1 && got[0].IsEdns0() != nil {
		for _, e := range got[0].IsEdns0().Option {
			options = append(options, e.Option())
		}
	}
	if len(got) != 1 || got[0].RecursionDesired || !slices.Equal(options, []uint16{dns.EDNS0SUBNET}) {
		t.Errorf("the upstream got\n%v\nwant the client's query with RD=0 and its client subnet, without its cookie", got)
	}
	o := m.IsEdns0()
	if o == nil || m.Rcode != dns.RcodeSuccess || firstA(m) != subnetAddr {
		t.Fatalf("the client got\n%v\nwant NOERROR with an OPT record and %s", m, subnetAddr)
	}
	for _, e := range o.Option {
		if e.Option() == dns.EDNS0COOKIE {
			t.Errorf("the client got a cookie: %s", e)
		}
	}
}
