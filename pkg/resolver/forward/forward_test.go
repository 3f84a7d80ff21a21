package forward

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/dnswire"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

var protocols = []struct {
	name string
	tcp  bool
}{{"udp", false}, {"tcp", true}}

// rawReply answers with build(req) packed by the test itself and written as
// raw bytes, and remembers those bytes and the protocol they went out on.
func rawReply(tb testing.TB, build func(req *dns.Msg) *dns.Msg, sent *atomic.Pointer[[]byte], proto *atomic.Value) handlerFunc {
	return func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
		b, err := build(req).Pack()
		if err != nil {
			tb.Errorf("pack upstream reply: %v", err)
			return
		}
		sent.Store(&b)
		proto.Store(w.LocalAddr().Network())
		_, _ = w.Write(b)
	}
}

func TestRelayKeepsUpstreamBytes(t *testing.T) {
	t.Parallel()
	lowerQuestion := func(req *dns.Msg) *dns.Msg {
		m := new(dns.Msg)
		m.SetReply(req)
		// Echo the question lower-cased, so the test sees the client's case restored.
		m.Question[0].Name = "www.example.com."
		return m
	}
	cases := []struct {
		name  string
		build func(req *dns.Msg) *dns.Msg
	}{
		{"nxdomain with SOA, flags, EDNS and EDE, uncompressed", func(req *dns.Msg) *dns.Msg {
			m := lowerQuestion(req)
			m.Rcode = dns.RcodeNameError
			m.Authoritative, m.RecursionAvailable, m.AuthenticatedData = true, true, true
			m.Ns = []dns.RR{testSOA(3600, 300)}
			o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
			o.SetUDPSize(4096)
			o.SetDo()
			o.Option = []dns.EDNS0{
				&dns.EDNS0_NSID{Code: dns.EDNS0NSID, Nsid: "7570737472656170"},
				&dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeNSECMissing, ExtraText: "upstream says so"},
			}
			m.Extra = []dns.RR{o}
			return m
		}},
		{"noerror with CNAME chain, compressed", func(req *dns.Msg) *dns.Msg {
			m := lowerQuestion(req)
			m.Compress = true
			m.RecursionAvailable = true
			m.Answer = []dns.RR{
				&dns.CNAME{Hdr: dns.RR_Header{Name: "www.example.com.", Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 60}, Target: "cdn.example.com."},
				&dns.A{Hdr: dns.RR_Header{Name: "cdn.example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 20}, A: net.ParseIP("198.51.100.1")},
				&dns.A{Hdr: dns.RR_Header{Name: "cdn.example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 20}, A: net.ParseIP("198.51.100.2")},
			}
			return m
		}},
		{"servfail with EDNS", func(req *dns.Msg) *dns.Msg {
			m := lowerQuestion(req)
			m.Rcode = dns.RcodeServerFailure
			m.SetEdns0(1232, false)
			return m
		}},
		{"refused without a question", func(req *dns.Msg) *dns.Msg {
			m := new(dns.Msg)
			m.SetRcode(req, dns.RcodeRefused)
			m.Question = nil
			return m
		}},
	}
	for _, tc := range cases {
		for _, p := range protocols {
			t.Run(tc.name+"/"+p.name, func(t *testing.T) {
				t.Parallel()
				var sent atomic.Pointer[[]byte]
				var proto atomic.Value
				up := startUpstream(t, rawReply(t, tc.build, &sent, &proto))
				f := newForwarder(t, WithCacheSize(0))
				req := query(t, "WwW.ExAmple.COM.", dns.TypeA, withEDNS(true), withID(0x1234))

				got, err := f.Forward(context.Background(), req, p.tcp, []netip.AddrPort{up.addr})
				if err != nil {
					t.Fatalf("Forward: %v", err)
				}
				if proto.Load() != p.name {
					t.Errorf("upstream asked over %v, want %s", proto.Load(), p.name)
				}
				want := slices.Clone(*sent.Load())
				copy(want, req[:2]) // the client's ID
				if binary.BigEndian.Uint16(want[4:]) == 1 {
					copy(want[dnswire.HeaderLen:], req[dnswire.HeaderLen:len("WwW.ExAmple.COM.")+1+4+dnswire.HeaderLen])
				}
				if !bytes.Equal(got, want) {
					t.Errorf("reply differs from the upstream's bytes\n got % x\nwant % x", got, want)
				}
				m := dnstest.Unpack(t, got)
				if m.Id != 0x1234 {
					t.Errorf("ID = %#x, want 0x1234", m.Id)
				}
				if len(m.Question) == 1 && m.Question[0].Name != "WwW.ExAmple.COM." {
					t.Errorf("question = %q, want the client's case", m.Question[0].Name)
				}
			})
		}
	}
}

func TestTruncatedUDPReplyIsRelayed(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
		if w.LocalAddr().Network() == "udp" {
			m := new(dns.Msg)
			m.SetReply(req)
			m.Truncated = true
			_ = w.WriteMsg(m)
			return
		}
		answerA(300, "198.51.100.1", "198.51.100.2", "198.51.100.3")(u, w, req)
	})
	f := newForwarder(t)
	req := query(t, "big.example.com.", dns.TypeA)

	for range 2 { // twice: a truncated reply must not be cached
		m := forward(t, f, req, false, up.addr)
		if !m.Truncated || len(m.Answer) != 0 {
			t.Fatalf("UDP reply: TC=%v with %d answers, want the upstream's truncated reply", m.Truncated, len(m.Answer))
		}
	}
	if n := up.queries.Load(); n != 2 {
		t.Errorf("upstream got %d queries, want 2 (TC replies are not cached)", n)
	}
	m := forward(t, f, req, true, up.addr)
	if m.Truncated || len(m.Answer) != 3 {
		t.Errorf("TCP reply: TC=%v with %d answers, want the whole answer", m.Truncated, len(m.Answer))
	}
}

func TestUpstreamSelection(t *testing.T) {
	t.Parallel()
	type upstreamKind func(t *testing.T) netip.AddrPort
	serving := func(h handlerFunc) upstreamKind {
		return func(t *testing.T) netip.AddrPort { return startUpstream(t, h).addr }
	}
	dead := func(t *testing.T) netip.AddrPort { return testenv.DeadAddr(t) }
	silent := func(t *testing.T) netip.AddrPort { return silentUpstream(t).addr }

	// The Forwarder's timeout is a minute and each Forward runs under a
	// guard of half that (forwardGuarded): a good answer that waited for
	// a dead, silent or slow upstream would show as the guard firing.
	// A slow upstream answers only after the guard.
	const slow = 2 * guard
	cases := []struct {
		name      string
		upstreams []upstreamKind
		wantRcode int
		wantA     string
	}{
		{"dead then good", []upstreamKind{dead, serving(answerA(60, "198.51.100.1"))}, dns.RcodeSuccess, "198.51.100.1"},
		{"silent then good", []upstreamKind{silent, serving(answerA(60, "198.51.100.1"))}, dns.RcodeSuccess, "198.51.100.1"},
		{"slow and fast: fast wins", []upstreamKind{
			serving(delayed(slow, answerA(60, "198.51.100.1"))),
			serving(answerA(60, "198.51.100.2")),
		}, dns.RcodeSuccess, "198.51.100.2"},
		{"fast servfail loses to slower good", []upstreamKind{
			serving(answerRcode(dns.RcodeServerFailure)),
			serving(delayed(200*time.Millisecond, answerA(60, "198.51.100.3"))),
		}, dns.RcodeSuccess, "198.51.100.3"},
		{"nxdomain is a good answer", []upstreamKind{
			serving(answerNegative(dns.RcodeNameError, 60, 60)),
			serving(delayed(slow, answerA(60, "198.51.100.1"))),
		}, dns.RcodeNameError, ""},
		{"only refused: relayed", []upstreamKind{dead, serving(answerRcode(dns.RcodeRefused))}, dns.RcodeRefused, ""},
		{"all dead: servfail at once", []upstreamKind{dead, dead}, dns.RcodeServerFailure, ""},
	}
	for _, tc := range cases {
		for _, p := range protocols {
			t.Run(tc.name+"/"+p.name, func(t *testing.T) {
				t.Parallel()
				var ups []netip.AddrPort
				for _, k := range tc.upstreams {
					ups = append(ups, k(t))
				}
				f := newForwarder(t, WithTimeout(time.Minute), WithCacheSize(0))
				m := forwardGuarded(t, f, query(t, "www.example.com.", dns.TypeA), p.tcp, ups...)
				if m.Rcode != tc.wantRcode {
					t.Errorf("rcode = %s, want %s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tc.wantRcode])
				}
				if got := firstA(m); got != tc.wantA {
					t.Errorf("answer = %q, want %q", got, tc.wantA)
				}
			})
		}
	}
}

// TestNoUpstreamAnswersServfailWithinBound: when no upstream answers, the
// client gets a SERVFAIL once the Forwarder's timeout bounds the wait: the
// silent upstreams were asked and timed out, the dead one failed.
func TestNoUpstreamAnswersServfailWithinBound(t *testing.T) {
	t.Parallel()
	// The silent upstreams time out at this bound, long enough for the
	// dead upstream's refusal to come first (its result is error, not
	// timeout). How long Forward took is logged, not asserted: it runs
	// under a guard, for a Forwarder that would never give up.
	const timeout = time.Second
	for _, p := range protocols {
		for _, edns := range []bool{false, true} {
			name := p.name + "/plain"
			if edns {
				name = p.name + "/edns"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				dead := testenv.DeadAddr(t)
				silent := []*testUpstream{silentUpstream(t), silentUpstream(t)}
				ups := []netip.AddrPort{dead, silent[0].addr, silent[1].addr}
				f := newForwarder(t, WithTimeout(timeout))
				var opts []func(*dns.Msg)
				if edns {
					opts = append(opts, withEDNS(true))
				}
				req := query(t, "Down.Example.COM.", dns.TypeAAAA, append(opts, withCD, withID(0x4242))...)

				m := forwardGuarded(t, f, req, p.tcp, ups...)

				for _, u := range silent {
					// The upstream reads the query on its own time: it was
					// sent, but may not have been read yet.
					testenv.Eventually(t, guard, "silent upstream "+u.addr.String()+" asked", func() bool { return u.asked.Load() != nil })
					if q := *u.asked.Load(); q.Name != "down.example.com." || q.Qtype != dns.TypeAAAA {
						t.Errorf("silent upstream %s asked %v, want down.example.com. AAAA", u.addr, q)
					}
				}
				// All three ended before Forward returned: it waits for
				// every upstream when none answers well.
				want := map[[2]string]float64{
					{dead.String(), resultError}:             1,
					{silent[0].addr.String(), resultTimeout}: 1,
					{silent[1].addr.String(), resultTimeout}: 1,
				}
				if got := upstreamCounts(t, f); !maps.Equal(got, want) {
					t.Errorf("upstream queries %v, want %v", got, want)
				}
				if m.Rcode != dns.RcodeServerFailure || !m.Response || m.Id != 0x4242 || !m.CheckingDisabled || !m.RecursionDesired {
					t.Errorf("reply header = %+v, want a SERVFAIL response with the query's ID, RD and CD", m.MsgHdr)
				}
				if len(m.Question) != 1 || m.Question[0].Name != "Down.Example.COM." || m.Question[0].Qtype != dns.TypeAAAA {
					t.Errorf("question = %v, want the client's", m.Question)
				}
				opt := m.IsEdns0()
				if (opt != nil) != edns {
					t.Fatalf("reply has OPT = %v, want %v", opt != nil, edns)
				}
				if edns {
					if !opt.Do() {
						t.Error("DO bit not copied into the SERVFAIL's OPT")
					}
					if len(opt.Option) != 1 || opt.Option[0].(*dns.EDNS0_EDE).InfoCode != dns.ExtendedErrorCodeNoReachableAuthority {
						t.Errorf("OPT options = %v, want EDE No Reachable Authority", opt.Option)
					}
				}
			})
		}
	}
}

func TestNoUpstreamsServfail(t *testing.T) {
	t.Parallel()
	f := newForwarder(t)
	m := forward(t, f, query(t, "www.example.com.", dns.TypeA), false)
	if m.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode = %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
	}
}

func TestStrayUDPPacketsIgnored(t *testing.T) {
	t.Parallel()
	spoofer, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { spoofer.Close() })

	up := rawUDPUpstream(t, func(pc net.PacketConn, from net.Addr, q []byte) {
		req := new(dns.Msg)
		if err := req.Unpack(q); err != nil {
			t.Errorf("upstream got a bad query: %v", err)
			return
		}
		reply := func(addr string, tweak func(*dns.Msg)) []byte {
			m := new(dns.Msg)
			m.SetReply(req)
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP(addr)}}
			tweak(m)
			b, err := m.Pack()
			if err != nil {
				t.Errorf("pack: %v", err)
			}
			return b
		}
		send := func(c net.PacketConn, b []byte) {
			if _, err := c.WriteTo(b, from); err != nil {
				t.Errorf("send: %v", err)
			}
		}
		// A perfect answer from the wrong address, then wrong answers from
		// the right one, then the real answer.
		send(spoofer, reply("203.0.113.1", func(*dns.Msg) {}))
		send(pc, reply("203.0.113.2", func(m *dns.Msg) { m.Id++ }))
		send(pc, reply("203.0.113.3", func(m *dns.Msg) { m.Question[0].Name = "other.example.com." }))
		send(pc, reply("203.0.113.4", func(m *dns.Msg) { m.Question[0].Qtype = dns.TypeAAAA }))
		send(pc, reply("203.0.113.5", func(m *dns.Msg) { m.Response = false }))
		send(pc, reply("203.0.113.6", func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }))
		send(pc, []byte{1, 2, 3})
		send(pc, reply("198.51.100.9", func(*dns.Msg) {}))
	})
	f := newForwarder(t, WithTimeout(2*time.Second))
	m := forward(t, f, query(t, "www.example.com.", dns.TypeA), false, up)
	if got := firstA(m); got != "198.51.100.9" {
		t.Errorf("answer = %q, want the upstream's real answer 198.51.100.9", got)
	}
}

func TestUpstreamQueryIDIsRandom(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	ids := map[uint16]bool{}
	up := startUpstream(t, func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
		mu.Lock()
		ids[req.Id] = true
		mu.Unlock()
		answerA(60, "198.51.100.1")(u, w, req)
	})
	f := newForwarder(t, WithCacheSize(0))
	for range 20 {
		forward(t, f, query(t, "www.example.com.", dns.TypeA, withID(7)), false, up.addr)
	}
	mu.Lock()
	defer mu.Unlock()
	if ids[7] || len(ids) < 15 {
		t.Errorf("upstream saw IDs %v, want fresh random IDs, not the client's 7", ids)
	}
}

func TestTCPFraming(t *testing.T) {
	t.Parallel()
	// frame answers q with one A record, length-prefixed.
	frame := func(t *testing.T, q []byte) []byte {
		req := new(dns.Msg)
		if err := req.Unpack(q); err != nil {
			t.Errorf("upstream got a bad query: %v", err)
			return nil
		}
		m := new(dns.Msg)
		m.SetReply(req)
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP("198.51.100.8")}}
		b, err := m.Pack()
		if err != nil {
			t.Errorf("pack: %v", err)
		}
		return append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...)
	}
	cases := []struct {
		name  string
		serve func(t *testing.T, c net.Conn, frame []byte)
		wantA string
	}{
		{"reply dribbled a byte at a time", func(t *testing.T, c net.Conn, frame []byte) {
			for i := range frame {
				if _, err := c.Write(frame[i : i+1]); err != nil {
					t.Errorf("write: %v", err)
					return
				}
				if i%16 == 0 {
					time.Sleep(time.Millisecond)
				}
			}
		}, "198.51.100.8"},
		{"frame cut short", func(t *testing.T, c net.Conn, frame []byte) {
			_, _ = c.Write(frame[:len(frame)-3])
		}, ""},
		{"length shorter than a header", func(t *testing.T, c net.Conn, frame []byte) {
			_, _ = c.Write([]byte{0, 5, 1, 2, 3, 4, 5})
		}, ""},
		{"reply to another ID", func(t *testing.T, c net.Conn, frame []byte) {
			frame[2] ^= 0xFF
			_, _ = c.Write(frame)
		}, ""},
		{"closed without a reply", func(t *testing.T, c net.Conn, frame []byte) {}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := rawTCPUpstream(t, func(c net.Conn) {
				q, err := dnstest.ReadTCP(c)
				if err != nil {
					t.Errorf("read query: %v", err)
					return
				}
				tc.serve(t, c, frame(t, q))
			})
			// A broken TCP reply must fail at once, not at the timeout: a
			// minute, beyond forwardGuarded's guard.
			f := newForwarder(t, WithTimeout(time.Minute))
			m := forwardGuarded(t, f, query(t, "www.example.com.", dns.TypeA), true, up)
			wantRcode, wantResult := dns.RcodeSuccess, resultOK
			if tc.wantA == "" {
				wantRcode, wantResult = dns.RcodeServerFailure, resultError
			}
			if m.Rcode != wantRcode || firstA(m) != tc.wantA {
				t.Errorf("reply %s %q, want %s %q", dns.RcodeToString[m.Rcode], firstA(m), dns.RcodeToString[wantRcode], tc.wantA)
			}
			want := map[[2]string]float64{{up.String(), wantResult}: 1}
			if got := upstreamCounts(t, f); !maps.Equal(got, want) {
				t.Errorf("upstream queries %v, want %v", got, want)
			}
		})
	}
}

func TestNonQueryOpcodesForwardedNotCached(t *testing.T) {
	t.Parallel()
	for _, op := range []int{dns.OpcodeNotify, dns.OpcodeUpdate} {
		for _, p := range protocols {
			t.Run(dns.OpcodeToString[op]+"/"+p.name, func(t *testing.T) {
				t.Parallel()
				up := startUpstream(t, func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
					m := new(dns.Msg)
					m.SetReply(req) // keeps the opcode
					m.Authoritative = true
					_ = w.WriteMsg(m)
				})
				f := newForwarder(t)
				// A cached standard answer for the same name must not answer the opcode.
				forward(t, f, query(t, "example.com.", dns.TypeSOA), p.tcp, up.addr)
				for i := range 2 {
					m := forward(t, f, query(t, "example.com.", dns.TypeSOA, withOpcode(op)), p.tcp, up.addr)
					if m.Opcode != op || m.Rcode != dns.RcodeSuccess || !m.Authoritative {
						t.Errorf("reply %d: opcode %s rcode %s AA=%v, want the upstream's %s NOERROR AA",
							i, dns.OpcodeToString[m.Opcode], dns.RcodeToString[m.Rcode], m.Authoritative, dns.OpcodeToString[op])
					}
				}
				if n := up.queries.Load(); n != 3 {
					t.Errorf("upstream got %d queries, want 3 (one QUERY, two %s)", n, dns.OpcodeToString[op])
				}
			})
		}
	}
}

func TestConcurrentIdenticalQueriesShareOneExchange(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, delayed(300*time.Millisecond, answerA(60, "198.51.100.1")))
	f := newForwarder(t)
	const callers = 20
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			name := "www.example.com."
			if i%2 == 1 {
				name = "WWW.Example.Com."
			}
			m := forward(t, f, query(t, name, dns.TypeA, withID(uint16(i))), false, up.addr)
			if m.Id != uint16(i) || m.Question[0].Name != name || firstA(m) != "198.51.100.1" {
				t.Errorf("caller %d got ID %d question %q answer %q", i, m.Id, m.Question[0].Name, firstA(m))
			}
		})
	}
	wg.Wait()
	if n := up.queries.Load(); n != 1 {
		t.Errorf("upstream got %d queries, want 1", n)
	}
}

// TestWaiterAnsweredWhenTheLeaderIsOverItsBytes: identical queries share
// one exchange, whose reply's bytes are charged to the query that started
// it. When that pod holds its own bound of bytes already, the reply is
// refused it; another pod that joined the exchange, within every bound,
// does not take that failure: it is answered by an exchange of its own.
func TestWaiterAnsweredWhenTheLeaderIsOverItsBytes(t *testing.T) {
	// Not parallel: the coalesced counter says when the waiter joined.
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			const perSource = 4096
			var asked atomic.Int64
			release := make(chan struct{})
			up := startUpstream(t, func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
				if asked.Add(1) == 1 { // the leader's: held until the waiter joined
					select {
					case <-release:
					case <-u.stop:
						return
					}
				}
				answerA(60, "198.51.100.1")(u, w, req)
			})
			b := quota.NewBudget(1<<20, perSource)
			f := newForwarder(t, WithBudget(b), WithCacheSize(0))
			var a, other quota.Source
			if b.TryTake(&a, perSource) != quota.Taken { // a holds its bound: other replies, say
				t.Fatal("could not fill the leader's bound")
			}
			ask := func(src *quota.Source) *dns.Msg {
				ctx, cancel := context.WithTimeout(quota.WithSource(context.Background(), src), 10*time.Second)
				defer cancel()
				reply, err := f.Forward(ctx, query(t, "www.example.com.", dns.TypeA), p.tcp, []netip.AddrPort{up.addr})
				if err != nil {
					t.Error(err)
					return new(dns.Msg)
				}
				return dnstest.Unpack(t, reply)
			}
			leader, waiter := make(chan *dns.Msg, 1), make(chan *dns.Msg, 1)
			go func() { leader <- ask(&a) }()
			testenv.Eventually(t, 5*time.Second, "the leader's query reaches the upstream", func() bool { return up.queries.Load() == 1 })
			joined := counterValue(t, coalesced)
			go func() { waiter <- ask(&other) }()
			testenv.Eventually(t, 5*time.Second, "the waiter joins the leader's exchange", func() bool { return counterValue(t, coalesced) > joined })
			close(release)
			m := <-waiter
			if m.Rcode != dns.RcodeSuccess || firstA(m) != "198.51.100.1" {
				t.Errorf("the waiter within its bounds: %s %q, want the upstream's answer", dns.RcodeToString[m.Rcode], firstA(m))
			}
			if m := <-leader; m.Rcode != dns.RcodeServerFailure {
				t.Errorf("the leader over its bound: %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
			}
			if n := up.queries.Load(); n != 2 {
				t.Errorf("upstream got %d queries, want 2 (the leader's, then the waiter's own)", n)
			}
			if b.Used() != perSource || other.Usage().InflightBytes != 0 {
				t.Errorf("budget used %d, the waiter holds %d; want only the leader's %d", b.Used(), other.Usage().InflightBytes, perSource)
			}
		})
	}
}

// TestWaiterAnsweredWhenTheLeaderIsCancelled: identical queries share one
// exchange, run under the context of the query that started it. When that
// query is cancelled (the resolver ends a forward to give its slot to a
// pod under its share), the exchange ends with it; another pod's query
// that joined it does not take that failure: it is answered by an
// exchange of its own.
func TestWaiterAnsweredWhenTheLeaderIsCancelled(t *testing.T) {
	// Not parallel: the coalesced counter says when the waiter joined.
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			var asked atomic.Int64
			up := startUpstream(t, func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
				if asked.Add(1) == 1 { // the leader's: never answered
					if p.tcp {
						<-u.stop
					}
					return
				}
				answerA(60, "198.51.100.1")(u, w, req)
			})
			// The timeout is an hour: the leader, whose query the upstream
			// never answers and whose context has no deadline, returns only
			// by its cancellation.
			f := newForwarder(t, WithTimeout(time.Hour), WithCacheSize(0))
			var leaderSrc, waiterSrc quota.Source
			type result struct {
				reply []byte
				err   error
			}
			ask := func(ctx context.Context, out chan<- result) {
				q := query(t, "www.example.com.", dns.TypeA)
				go func() {
					reply, err := f.Forward(ctx, q, p.tcp, []netip.AddrPort{up.addr})
					out <- result{reply, err}
				}()
			}
			// receive is ask's result, read by the test's goroutine.
			receive := func(who string, in <-chan result) *dns.Msg {
				t.Helper()
				select {
				case r := <-in:
					if r.err != nil {
						t.Fatalf("%s: %v", who, r.err)
					}
					return dnstest.Unpack(t, r.reply)
				case <-time.After(30 * time.Second):
					t.Fatalf("%s: no reply in 30 s (the forward timeout is an hour)", who)
					return nil
				}
			}
			lctx, cancelLeader := context.WithCancel(quota.WithSource(context.Background(), &leaderSrc))
			defer cancelLeader()
			wctx, cancelWaiter := context.WithCancel(quota.WithSource(context.Background(), &waiterSrc))
			defer cancelWaiter()
			leader, waiter := make(chan result, 1), make(chan result, 1)
			ask(lctx, leader)
			testenv.Eventually(t, 5*time.Second, "the leader's query reaches the upstream", func() bool { return up.queries.Load() == 1 })
			joined := counterValue(t, coalesced)
			ask(wctx, waiter)
			testenv.Eventually(t, 5*time.Second, "the waiter joins the leader's exchange", func() bool { return counterValue(t, coalesced) > joined })
			cancelLeader()
			if m := receive("the cancelled leader", leader); m.Rcode != dns.RcodeServerFailure {
				t.Errorf("the cancelled leader: %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
			}
			if m := receive("the waiter", waiter); m.Rcode != dns.RcodeSuccess || firstA(m) != "198.51.100.1" {
				t.Errorf("the waiter: %s %q, want the upstream's answer", dns.RcodeToString[m.Rcode], firstA(m))
			}
			if n := up.queries.Load(); n != 2 {
				t.Errorf("upstream got %d queries, want 2 (the leader's, then the waiter's own)", n)
			}
		})
	}
}

// TestWaiterAnsweredWhenTheLeadersBytesAreTakenBack: the leader's TCP
// reply stalls halfway, holding most of the budget, and a source within
// its share that finds the budget spent takes those bytes back. The
// leader gets SERVFAIL at once, as over its source's bytes (which the
// resolver counts as the pod's), given back once; the waiter, of another
// source, asks again under its own and is answered.
func TestWaiterAnsweredWhenTheLeadersBytesAreTakenBack(t *testing.T) {
	// Not parallel: the coalesced counter says when the waiter joined.
	const budget, announced, sent = 4096, 4000, 3000
	var conns atomic.Int64
	stalled := make(chan struct{})
	up := rawTCPUpstream(t, func(c net.Conn) {
		q, err := dnstest.ReadTCP(c)
		if err != nil || len(q) < 2 {
			return
		}
		if conns.Add(1) == 1 { // the leader's: most of a reply, then nothing until the test ends
			frame := append([]byte{announced >> 8, announced & 0xFF, q[0], q[1], 0x80}, make([]byte, sent-3)...)
			if _, err := c.Write(frame); err == nil {
				<-stalled
			}
			return
		}
		req := new(dns.Msg)
		if req.Unpack(q) != nil {
			return
		}
		m := new(dns.Msg)
		m.SetReply(req)
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP("198.51.100.1")}}
		reply, _ := m.Pack()
		_ = dnstest.WriteTCP(c, reply)
	})
	t.Cleanup(func() { close(stalled) }) // before the upstream's, which waits for it
	b := quota.NewBudget(budget, 0)
	// The timeout is an hour, the queries' contexts have no deadline, and
	// the upstream holds the leader's connection until the test ends: the
	// leader returns only by the take-back.
	f := newForwarder(t, WithTimeout(time.Hour), WithCacheSize(0), WithBudget(b))
	var leaderSrc, waiterSrc, asking quota.Source
	type result struct {
		reply []byte
		from  Origin
		err   error
	}
	ask := func(src *quota.Source, out chan<- result) {
		ctx, cancel := context.WithCancel(quota.WithSource(context.Background(), src))
		t.Cleanup(cancel)
		q := query(t, "www.example.com.", dns.TypeA)
		go func() {
			reply, from, err := f.ForwardFrom(ctx, q, true, []netip.AddrPort{up})
			out <- result{reply, from, err}
		}()
	}
	// receive is ask's result, read by the test's goroutine.
	receive := func(who string, in <-chan result) (*dns.Msg, Origin) {
		t.Helper()
		select {
		case r := <-in:
			if r.err != nil {
				t.Fatalf("%s: %v", who, r.err)
			}
			return dnstest.Unpack(t, r.reply), r.from
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: no reply in 30 s (the forward timeout is an hour)", who)
			return nil, Origin{}
		}
	}
	leader, waiter := make(chan result, 1), make(chan result, 1)
	ask(&leaderSrc, leader)
	testenv.Eventually(t, 5*time.Second, "the leader's reply stalls, its buffer grown to the whole reply", func() bool { return b.Used() == announced })
	joined := counterValue(t, coalesced)
	ask(&waiterSrc, waiter)
	testenv.Eventually(t, 5*time.Second, "the waiter joins the leader's exchange", func() bool { return counterValue(t, coalesced) > joined })
	if v := b.TryTake(&asking, 200); v != quota.Taken {
		t.Fatalf("a source within its share, the budget spent: %v, want Taken", v)
	}
	// Its source's refusal: the resolver counts BytesRefused as such.
	if m, from := receive("the leader whose bytes were taken back", leader); m.Rcode != dns.RcodeServerFailure || !from.BytesRefused {
		t.Errorf("the leader whose bytes were taken back: %s (bytes refused: %v), want SERVFAIL, its bytes refused", dns.RcodeToString[m.Rcode], from.BytesRefused)
	}
	if m, from := receive("the waiter", waiter); m.Rcode != dns.RcodeSuccess || firstA(m) != "198.51.100.1" || from.BytesRefused {
		t.Errorf("the waiter: %s %q (bytes refused: %v), want the upstream's answer", dns.RcodeToString[m.Rcode], firstA(m), from.BytesRefused)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("upstream got %d queries, want 2 (the leader's, then the waiter's own)", n)
	}
	if u := leaderSrc.Usage(); u.InflightBytes != 0 {
		t.Errorf("the leader's source holds %d bytes, want 0", u.InflightBytes)
	}
	if b.Used() != 200 {
		t.Errorf("%d bytes held, want the 200 the asking source took: the leader's given back once", b.Used())
	}
	b.Give(&asking, 200)
}

func TestManyConcurrentCallers(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, func(u *testUpstream, w dns.ResponseWriter, req *dns.Msg) {
		answerA(1, "198.51.100."+req.Question[0].Name[1:2])(u, w, req)
	})
	f := newForwarder(t, WithCacheSize(4)) // small, to churn evictions
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			d := byte('0' + i%8)
			name := "h" + string(d) + ".example.com."
			m := forward(t, f, query(t, name, dns.TypeA, withID(uint16(i))), i%3 == 0, up.addr)
			if m.Id != uint16(i) || firstA(m) != "198.51.100."+string(d) {
				t.Errorf("query %d for %s: ID %d answer %q", i, name, m.Id, firstA(m))
			}
		})
	}
	wg.Wait()
}

func TestCloseStopsExchanges(t *testing.T) {
	t.Parallel()
	up := silentUpstream(t)
	// Only Close can end the exchange before the guard: its timeout is
	// longer.
	f := New(WithTimeout(time.Minute))
	t.Cleanup(func() { f.Close() }) // should the test fail before it does
	done := startForward(context.Background(), f, query(t, "www.example.com.", dns.TypeA), false, []netip.AddrPort{up.addr})
	testenv.Eventually(t, guard, "the silent upstream got the query", func() bool { return up.queries.Load() > 0 })
	closed := make(chan error, 1)
	go func() { closed <- f.Close() }()
	if m := awaitForward(t, done, "Close"); m.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode = %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(guard):
		t.Fatalf("Close has not returned after %v", guard)
	}
	// Close waited for the exchange, which it stopped.
	want := map[[2]string]float64{{up.addr.String(), resultCanceled}: 1}
	if got := upstreamCounts(t, f); !maps.Equal(got, want) {
		t.Errorf("upstream queries %v, want %v", got, want)
	}
	m := forwardGuarded(t, f, query(t, "www.example.com.", dns.TypeA), false, up.addr)
	if m.Rcode != dns.RcodeServerFailure {
		t.Errorf("after Close: rcode = %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
	}
	if n := up.queries.Load(); n != 1 {
		t.Errorf("upstream got %d queries, want 1: none after Close", n)
	}
}

func TestCallerContextEndsWait(t *testing.T) {
	t.Parallel()
	up := silentUpstream(t)
	// Only the caller's context can end the wait before the guard: the
	// Forwarder's timeout is longer.
	f := newForwarder(t, WithTimeout(time.Minute))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := startForward(ctx, f, query(t, "www.example.com.", dns.TypeA), false, []netip.AddrPort{up.addr})
	testenv.Eventually(t, guard, "the silent upstream got the query", func() bool { return up.queries.Load() > 0 })
	cancel()
	if m := awaitForward(t, done, "the caller's context ended"); m.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode = %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
	}
}

func TestForwardRejectsUnparsableRequests(t *testing.T) {
	t.Parallel()
	good := query(t, "www.example.com.", dns.TypeA, withEDNS(false))
	twoQuestions := func() []byte {
		m := new(dns.Msg)
		m.Question = []dns.Question{{Name: "a.", Qtype: dns.TypeA, Qclass: dns.ClassINET}, {Name: "b.", Qtype: dns.TypeA, Qclass: dns.ClassINET}}
		b, _ := m.Pack()
		return b
	}()
	pointerQuestion := append(slices.Clone(good[:dnswire.HeaderLen]), 0xC0, 0x00, 0, 1, 0, 1)
	cases := []struct {
		name string
		req  []byte
	}{
		{"empty", nil},
		{"short header", good[:11]},
		{"no question", good[:dnswire.HeaderLen]},
		{"two questions", twoQuestions},
		{"question cut short", good[:dnswire.HeaderLen+5]},
		{"pointer in question", pointerQuestion},
		{"OPT cut short", good[:len(good)-2]},
	}
	f := newForwarder(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := f.Forward(context.Background(), tc.req, false, nil); err == nil {
				t.Error("Forward accepted an unparsable request")
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	// Not parallel: it reads the package-level cache counters, which other
	// tests running at the same time would move. Subtests of parallel tests
	// only start after this returns.
	up := startUpstream(t, answerA(60, "198.51.100.1"))
	dead := testenv.DeadAddr(t)
	clock := newFakeClock()
	f := newForwarder(t, WithNow(clock.Now), WithTimeout(time.Second))

	before := func() map[string]float64 {
		return map[string]float64{
			"hits":   counterValue(t, cacheHits),
			"misses": counterValue(t, cacheMisses),
		}
	}
	b := before()
	// One at a time: with both upstreams in one query the dead one's refusal
	// might be counted as an error or as canceled, depending on timing.
	forward(t, f, query(t, "www.example.com.", dns.TypeA), false, dead)
	forward(t, f, query(t, "www.example.com.", dns.TypeA), false, up.addr)
	forward(t, f, query(t, "www.example.com.", dns.TypeA), false, up.addr)
	a := before()
	// Two misses and a hit: the SERVFAIL for the dead upstream is not cached.
	want := map[string]float64{"hits": 1, "misses": 2}
	for k, w := range want {
		if got := a[k] - b[k]; got != w {
			t.Errorf("%s moved by %v, want %v", k, got, w)
		}
	}
	// Each upstream counts under its own address: the hit asked nobody.
	wantQueries := map[[2]string]float64{{dead.String(), resultError}: 1, {up.addr.String(), resultOK}: 1}
	if got := upstreamCounts(t, f); !maps.Equal(got, wantQueries) {
		t.Errorf("upstream queries %v, want %v", got, wantQueries)
	}
	if n := histogramCount(t, f.upstreams.duration.WithLabelValues(up.addr.String(), "udp")); n != 1 {
		t.Errorf("upstream latency histogram of %s/udp has %d samples, want 1", up.addr, n)
	}

	// An upstream that loses the race is stopped at once, not left to the timeout.
	silent := silentUpstream(t)
	f2 := newForwarder(t, WithTimeout(10*time.Second))
	forward(t, f2, query(t, "www.example.com.", dns.TypeA), false, silent.addr, up.addr)
	deadline := time.Now().Add(2 * time.Second)
	for counterValue(t, f2.upstreams.queries.WithLabelValues(silent.addr.String(), resultCanceled)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the silent upstream's exchange was not canceled within 2s of the answer")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestUpstreamSeriesAreBounded: past WithMaxUpstreamSeries distinct
// upstreams, the rest share the label "other" (pods choose their
// nameservers, so their number is not ours to trust).
func TestUpstreamSeriesAreBounded(t *testing.T) {
	t.Parallel()
	first := startUpstream(t, answerA(60, "198.51.100.1"))
	second := startUpstream(t, answerA(60, "198.51.100.2"))
	third := startUpstream(t, answerA(60, "198.51.100.3"))
	f := newForwarder(t, WithMaxUpstreamSeries(2), WithCacheSize(0))
	for _, u := range []netip.AddrPort{first.addr, second.addr, third.addr, third.addr, first.addr} {
		forward(t, f, query(t, "www.example.com.", dns.TypeA), false, u)
	}
	want := map[[2]string]float64{
		{first.addr.String(), resultOK}:  2,
		{second.addr.String(), resultOK}: 1,
		{otherUpstreams, resultOK}:       2,
	}
	if got := upstreamCounts(t, f); !maps.Equal(got, want) {
		t.Errorf("upstream queries %v, want %v", got, want)
	}
}

// TestKnownUpstreamsKeepTheirLabel: upstreams the operator configured
// (WithKnownUpstreams) are counted under their own address even after
// addresses pods chose took every other label, so the nameserver every pod
// uses does not vanish into "other" when a pod asks many addresses first.
func TestKnownUpstreamsKeepTheirLabel(t *testing.T) {
	t.Parallel()
	known := startUpstream(t, answerA(60, "198.51.100.1"))
	mapped := startUpstream(t, answerA(60, "198.51.100.2"))
	chosen := startUpstream(t, answerA(60, "198.51.100.3"))
	extra := startUpstream(t, answerA(60, "198.51.100.4"))
	// The second known upstream is configured IPv4-mapped, as it is asked
	// for IPv4: it is the same upstream.
	mappedAddr := netip.AddrPortFrom(netip.AddrFrom16(mapped.addr.Addr().As16()), mapped.addr.Port())
	f := newForwarder(t, WithMaxUpstreamSeries(1), WithKnownUpstreams(known.addr, mappedAddr), WithCacheSize(0))
	for _, u := range []netip.AddrPort{chosen.addr, extra.addr, known.addr, mapped.addr, known.addr} {
		forward(t, f, query(t, "www.example.com.", dns.TypeA), false, u)
	}
	want := map[[2]string]float64{
		{chosen.addr.String(), resultOK}: 1,
		{otherUpstreams, resultOK}:       1,
		{known.addr.String(), resultOK}:  2,
		{mapped.addr.String(), resultOK}: 1,
	}
	if got := upstreamCounts(t, f); !maps.Equal(got, want) {
		t.Errorf("upstream queries %v, want %v", got, want)
	}
}

// TestRefusedReplyBytesSayWhose: a reply that does not fit what its
// source may hold counts as the result source_limited; one that does not
// fit the node's budget as no_memory.
func TestRefusedReplyBytesSayWhose(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, answerA(60, "198.51.100.1"))
	for _, tc := range []struct {
		name   string
		budget *quota.Budget
		want   string
	}{
		{"source", quota.NewBudget(1<<20, 10), resultSourceLimited},
		{"node", quota.NewBudget(10, 0), resultNoMemory},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newForwarder(t, WithBudget(tc.budget), WithCacheSize(0))
			for _, tcp := range []bool{false, true} {
				ctx := quota.WithSource(context.Background(), new(quota.Source))
				b, err := f.Forward(ctx, query(t, "www.example.com.", dns.TypeA), tcp, []netip.AddrPort{up.addr})
				if err != nil {
					t.Fatal(err)
				}
				if m := dnstest.Unpack(t, b); m.Rcode != dns.RcodeServerFailure {
					t.Errorf("tcp=%v: %s, want SERVFAIL", tcp, dns.RcodeToString[m.Rcode])
				}
			}
			want := map[[2]string]float64{{up.addr.String(), tc.want}: 2}
			if got := upstreamCounts(t, f); !maps.Equal(got, want) {
				t.Errorf("upstream queries %v, want %v", got, want)
			}
			if used := tc.budget.Used(); used != 0 {
				t.Errorf("%d bytes left taken", used)
			}
		})
	}
}

// TestForwardFromSaysWhereTheReplyCameFrom: the upstream that answered, and
// whether the cache did; when none did, the one asked (of several, the
// first given) and how its exchange ended.
func TestForwardFromSaysWhereTheReplyCameFrom(t *testing.T) {
	t.Parallel()
	up := startUpstream(t, answerA(60, "198.51.100.1"))
	dead := testenv.DeadAddr(t)
	silent := silentUpstream(t).addr
	f := newForwarder(t, WithTimeout(time.Second))
	ask := func(upstreams ...netip.AddrPort) Origin {
		t.Helper()
		_, from, err := f.ForwardFrom(context.Background(), query(t, "www.example.com.", dns.TypeA), false, upstreams)
		if err != nil {
			t.Fatal(err)
		}
		return from
	}
	for _, tc := range []struct {
		name      string
		upstreams []netip.AddrPort
		want      Origin
	}{
		{"refused", []netip.AddrPort{dead}, Origin{Upstream: dead, Failure: FailureRefused}},
		{"silent", []netip.AddrPort{silent}, Origin{Upstream: silent, Failure: FailureTimeout}},
		{"neither of two, the first given", []netip.AddrPort{silent, dead}, Origin{Upstream: silent, Failure: FailureTimeout}},
		{"the live one of two", []netip.AddrPort{dead, up.addr}, Origin{Upstream: up.addr}},
		{"the cache, keyed by the same upstreams", []netip.AddrPort{up.addr, dead}, Origin{Cached: true, Upstream: up.addr}},
	} {
		if got := ask(tc.upstreams...); got != tc.want {
			t.Errorf("%s: origin %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// upstreamCounts reads f's upstream query counter: value by (to, result).
func upstreamCounts(t *testing.T, f *Forwarder) map[[2]string]float64 {
	t.Helper()
	return counterVecValues(t, f.upstreams.queries, "to", "result")
}

// counterVecValues reads a counter vector of two labels: value by the
// values of first and second.
func counterVecValues(t *testing.T, vec *prometheus.CounterVec, first, second string) map[[2]string]float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 100)
	vec.Collect(ch)
	close(ch)
	got := map[[2]string]float64{}
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			t.Fatal(err)
		}
		var key [2]string
		for _, l := range d.GetLabel() {
			switch l.GetName() {
			case first:
				key[0] = l.GetValue()
			case second:
				key[1] = l.GetValue()
			}
		}
		got[key] = d.GetCounter().GetValue()
	}
	return got
}

func histogramCount(t *testing.T, o prometheus.Observer) uint64 {
	t.Helper()
	var h dto.Metric
	if err := o.(prometheus.Histogram).Write(&h); err != nil {
		t.Fatalf("read histogram: %v", err)
	}
	return h.GetHistogram().GetSampleCount()
}

func counterValue(tb testing.TB, c prometheus.Counter) float64 {
	tb.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		tb.Fatalf("read counter: %v", err)
	}
	return m.GetCounter().GetValue()
}

// TestWaitingExchangesHoldNoReplyBuffer: queries waiting for a silent
// upstream hold no buffer for the reply they have not got (a UDP reply may
// be 64 KiB: a buffer of that size per query in flight was how a flood of
// unique names took hundreds of MB).
func TestWaitingExchangesHoldNoReplyBuffer(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes memory cost more than it does")
	}
	const waiting = 1000
	var received atomic.Int64
	silent := rawUDPUpstream(t, func(net.PacketConn, net.Addr, []byte) { received.Add(1) })
	f := newForwarder(t, WithTimeout(time.Minute))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for batch := range waiting / 100 { // in batches the silent upstream's socket can hold
		for i := range 100 {
			wg.Go(func() {
				q := query(t, fmt.Sprintf("n%d-%d.example.", batch, i), dns.TypeA)
				_, _ = f.Forward(ctx, q, false, []netip.AddrPort{silent})
			})
		}
		for received.Load() < int64(batch+1)*100 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	cancel()
	wg.Wait()
	heap := (int64(after.HeapInuse) - int64(before.HeapInuse)) / waiting
	stacks := (int64(after.StackInuse) - int64(before.StackInuse)) / waiting
	perQuery := heap + stacks
	t.Logf("%d bytes per forwarded query waiting for its upstream: %d of heap, %d of stacks (the caller's goroutine included)", perQuery, heap, stacks)
	if perQuery > 32<<10 {
		t.Errorf("%d bytes per query waiting for an upstream, want well under the 64 KiB a reply buffer takes", perQuery)
	}
}

// TestReadReplyHoldsAtMostTheReply: a TCP reply is read into a buffer that
// grows as it arrives, and the budget holds no more than the reply's size
// at any time, so a source bound to one reply of the largest size gets it
// (the old buffer and the new, both taken while one was copied into the
// other, were 96 KiB for a 64 KiB reply).
func TestReadReplyHoldsAtMostTheReply(t *testing.T) {
	t.Parallel()
	for _, n := range []int{100, 512, 513, 40000, 0xFFFF} {
		reply := bytes.Repeat([]byte{0xAB}, n)
		b := quota.NewBudget(1<<20, int64(n))
		var src quota.Source
		got, err := readReply(iotest.HalfReader(bytes.NewReader(reply)), n, b, &src, nil)
		if err != nil || !bytes.Equal(got, reply) {
			t.Errorf("%d octets with a bound of %d: %d read, %v", n, n, len(got), err)
			continue
		}
		if b.Peak() > int64(n) || b.Used() != int64(n) || src.Usage().InflightBytes != int64(n) {
			t.Errorf("%d octets: peak %d, held %d (the source %d), want no more than the reply", n, b.Peak(), b.Used(), src.Usage().InflightBytes)
		}
		b.Give(&src, len(got))
	}
	// A reply cut short gives back what it took.
	b := quota.NewBudget(1<<20, 0)
	if _, err := readReply(bytes.NewReader(make([]byte, 3000)), 5000, b, nil, nil); !errors.Is(err, io.ErrUnexpectedEOF) || b.Used() != 0 {
		t.Errorf("a reply cut short: %v, %d bytes left taken", err, b.Used())
	}
}

// TestTrailingBytesNotRelayed: octets after the query's last record are not
// part of the message; the upstream gets the message alone.
func TestTrailingBytesNotRelayed(t *testing.T) {
	t.Parallel()
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			got := make(chan []byte, 1)
			answer := func(q []byte) []byte {
				select {
				case got <- slices.Clone(q):
				default:
				}
				m := new(dns.Msg)
				if err := m.Unpack(q); err != nil {
					t.Errorf("upstream cannot read the query: %v", err)
					return nil
				}
				r := new(dns.Msg)
				r.SetReply(m)
				b, _ := r.Pack()
				return b
			}
			var up netip.AddrPort
			if p.tcp {
				up = rawTCPUpstream(t, func(c net.Conn) {
					if q, err := dnstest.ReadTCP(c); err == nil {
						_ = dnstest.WriteTCP(c, answer(q))
					}
				})
			} else {
				up = rawUDPUpstream(t, func(pc net.PacketConn, from net.Addr, q []byte) { _, _ = pc.WriteTo(answer(q), from) })
			}
			q := query(t, "trailing.example.", dns.TypeA, withEDNS(false))
			m := forward(t, newForwarder(t), append(slices.Clone(q), bytes.Repeat([]byte{0xEE}, 1000)...), p.tcp, up)
			if m.Rcode != dns.RcodeSuccess {
				t.Errorf("reply %s, want NOERROR", dns.RcodeToString[m.Rcode])
			}
			if sent := <-got; len(sent) != len(q) {
				t.Errorf("the upstream got %d octets, want the %d of the message without what followed it", len(sent), len(q))
			}
		})
	}
}
