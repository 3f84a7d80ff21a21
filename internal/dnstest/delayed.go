package dnstest

import (
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Delayed answers as r does, d after each query arrived: a slow upstream.
// Each query waits on its own (the server handles queries concurrently).
func Delayed(d time.Duration, r Responder) Responder { return delayed{d, r} }

type delayed struct {
	d time.Duration
	r Responder
}

func (s delayed) Reply(req *dns.Msg, local netip.AddrPort) *dns.Msg {
	time.Sleep(s.d)
	return s.r.Reply(req, local)
}

// Silent takes every query and answers none: an upstream that is down
// without refusing. Over TCP the connection stays open (until miekg's idle
// timeout), as a stalled server's would.
var Silent Responder = silent{}

type silent struct{}

func (silent) Reply(*dns.Msg, netip.AddrPort) *dns.Msg { return nil }

// LargeTXT answers every TXT question with size bytes of TXT data in one
// record (TTL 300), whatever the name: many unique large answers.
func LargeTXT(size int) Answerer {
	return func(q dns.Question, _ netip.AddrPort) []dns.RR {
		if q.Qtype != dns.TypeTXT {
			return nil
		}
		var txt []string
		for n := 0; n < size; n += 250 {
			txt = append(txt, strings.Repeat("x", min(250, size-n)))
		}
		hdr := dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 300}
		return []dns.RR{&dns.TXT{Hdr: hdr, Txt: txt}}
	}
}
