package dnswire

import "encoding/binary"

// OptionCookie is the DNS COOKIE option (RFC 7873).
const OptionCookie = 10

// optionHeaderLen is what precedes an option's data: its code and length.
const optionHeaderLen = 4

// RemoveOption removes every option code from the OPT record of msg, a
// message ParseQuery read (msg[:q.Len]), in place, and returns msg
// shortened by what it removed. Only an OPT record that ends the message
// is changed, as it does when it is the only additional record: no record
// after it has offsets to move. msg is returned as it was when it has no
// such OPT record, no such option, or OPT data that is not a sequence of
// options.
func RemoveOption(msg []byte, code uint16) []byte {
	h, err := ReadHeader(msg)
	if err != nil || h.ARCount == 0 {
		return msg
	}
	off, err := skipQuestions(msg, HeaderLen, int(h.QDCount))
	if err != nil {
		return msg
	}
	for range int(h.ANCount) + int(h.NSCount) + int(h.ARCount) - 1 {
		if _, off, err = skipRR(msg, off); err != nil {
			return msg
		}
	}
	fixed, end, err := skipRR(msg, off)
	if err != nil || end != len(msg) || !isOPT(msg, off, fixed) {
		return msg
	}
	start := fixed + rrFixedLen
	found := false
	for o := start; o < end; {
		if o+optionHeaderLen > end {
			return msg
		}
		found = found || binary.BigEndian.Uint16(msg[o:]) == code
		if o += optionHeaderLen + int(binary.BigEndian.Uint16(msg[o+2:])); o > end {
			return msg
		}
	}
	if !found {
		return msg
	}
	w := start
	for o := start; o < end; {
		n := optionHeaderLen + int(binary.BigEndian.Uint16(msg[o+2:]))
		if binary.BigEndian.Uint16(msg[o:]) != code {
			w += copy(msg[w:], msg[o:o+n])
		}
		o += n
	}
	binary.BigEndian.PutUint16(msg[fixed+8:], uint16(w-start))
	return msg[:w]
}
