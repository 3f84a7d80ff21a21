package table

import (
	"net/netip"
	"strconv"
	"strings"
)

// Reverse names (RFC 1035 3.5, RFC 3596 2.5): an address's name under
// in-addr.arpa or ip6.arpa, spelled as kube-dns and miekg's dns.ReverseAddr
// spell it (decimal octets without leading zeros; lower-case nibbles), last
// octet or nibble first. The table keeps no reverse names: a PTR query's
// name is parsed back into the address it looks up (parseReverse), and
// `ztdns table` writes the name of each address it lists
// (appendReverseName).

const (
	inAddrArpa = ".in-addr.arpa."
	ip6Arpa    = ".ip6.arpa."
)

// reverseNameMax is the length of the longest reverse name, an IPv6
// address's: 32 nibbles and their dots, then "ip6.arpa.".
const reverseNameMax = 64 + len("ip6.arpa.")

// reverseName returns the in-addr.arpa or ip6.arpa name of an address.
func reverseName(a netip.Addr) string {
	var b [reverseNameMax]byte
	return string(appendReverseName(b[:0], a))
}

// appendReverseName appends a's reverse name to b.
func appendReverseName(b []byte, a netip.Addr) []byte {
	const hex = "0123456789abcdef"
	if a.Is4() {
		o := a.As4()
		for i := 3; i >= 0; i-- {
			b = strconv.AppendUint(b, uint64(o[i]), 10)
			b = append(b, '.')
		}
		return append(b, inAddrArpa[1:]...)
	}
	o := a.As16()
	for i := 15; i >= 0; i-- {
		b = append(b, hex[o[i]&0xf], '.', hex[o[i]>>4], '.')
	}
	return append(b, ip6Arpa[1:]...)
}

// isReverse reports whether name is under in-addr.arpa or ip6.arpa.
func isReverse(name string) bool {
	return strings.HasSuffix(name, inAddrArpa) || strings.HasSuffix(name, ip6Arpa)
}

// parseReverse reads the address out of a full reverse name
// ("4.3.2.1.in-addr.arpa.", 32 nibbles then "ip6.arpa."), without
// allocating. Partial names (a /24's zone) are not addresses.
func parseReverse(name string) (netip.Addr, bool) {
	switch {
	case strings.HasSuffix(name, inAddrArpa):
		var b [4]byte
		rest := name[:len(name)-len(inAddrArpa)]
		for i := 3; i >= 0; i-- {
			label := rest
			if i > 0 {
				dot := strings.IndexByte(rest, '.')
				if dot < 0 {
					return netip.Addr{}, false
				}
				label, rest = rest[:dot], rest[dot+1:]
			}
			v, ok := octet(label)
			if !ok {
				return netip.Addr{}, false
			}
			b[i] = v
		}
		return netip.AddrFrom4(b), true
	case strings.HasSuffix(name, ip6Arpa):
		rest := name[:len(name)-len(ip6Arpa)]
		if len(rest) != 63 { // 32 nibbles and 31 dots
			return netip.Addr{}, false
		}
		var b [16]byte
		for i := range 32 {
			if i > 0 && rest[2*i-1] != '.' {
				return netip.Addr{}, false
			}
			v, ok := nibble(rest[2*i])
			if !ok {
				return netip.Addr{}, false
			}
			// The first label is the last nibble of the address.
			pos := 31 - i
			if pos%2 == 0 {
				b[pos/2] |= v << 4
			} else {
				b[pos/2] |= v
			}
		}
		return netip.AddrFrom16(b), true
	}
	return netip.Addr{}, false
}

// octet reads a decimal octet as appendReverseName writes it: no leading
// zero, at most 255.
func octet(s string) (byte, bool) {
	if len(s) == 0 || len(s) > 3 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	v := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		v = v*10 + int(s[i]-'0')
	}
	return byte(v), v <= 255
}

// nibble reads a lower-case hexadecimal digit.
func nibble(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
