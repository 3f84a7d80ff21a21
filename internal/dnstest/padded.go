package dnstest

import (
	"encoding/hex"

	"github.com/miekg/dns"
)

// PaddedNSEC is an NSEC record of owner, next name the root, whose type
// bitmap (A) comes with empty windows after its own, as no server sends
// it: 1 + 34 × (1 + empty) octets of data as it came, which miekg/dns
// reads and packs again in 4 (a hostile nameserver's record that shrinks
// decoded).
func PaddedNSEC(owner string, ttl uint32, empty int) dns.RR {
	data := append([]byte{0, 0, 32, 0x40}, make([]byte, 31)...)
	for w := range empty {
		data = append(append(data, byte(w+1), 32), make([]byte, 32)...)
	}
	return &dns.RFC3597{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeNSEC, Class: dns.ClassINET, Ttl: ttl}, Rdata: hex.EncodeToString(data)}
}
