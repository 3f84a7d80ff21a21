package resolver

import "github.com/ztdns/ztdns/pkg/dnswire"

// maxQuery is the largest query we take, over UDP or TCP. Queries are
// tiny; 4096 is generous. A longer datagram is truncated by the kernel
// (MSG_TRUNC) and dropped; a longer TCP message gets FORMERR, and is never
// read into memory.
const maxQuery = 4096

// request is a parsed query. It points into the packet and a name buffer
// owned by the caller; nothing is allocated.
type request = dnswire.Query

// verdict says what the resolver makes of a packet.
type verdict uint8

const (
	// verdictOK: a well-formed standard query with one question.
	verdictOK verdict = iota
	// verdictDrop: not worth an answer (too short to carry an ID, or a
	// response rather than a query): answering could feed a loop.
	verdictDrop
	// verdictFormErr: a query we can name the ID of but not parse.
	verdictFormErr
	// verdictOther: a well-formed header with an opcode other than QUERY;
	// forwarded as it is.
	verdictOther
	// verdictBadVers: a query of an EDNS version other than 0 that parsed
	// but for its question count, which may be anything: BADVERS
	// (RFC 6891 6.1.3), as BIND reads the OPT record first.
	verdictBadVers
)

// parse reads msg into r (its question name into buf) and judges it.
func parse(msg []byte, r *request, buf *nameBuf) verdict {
	err := dnswire.ParseQuery(msg, r, buf)
	switch {
	case len(msg) < dnswire.HeaderLen || r.Flags&dnswire.FlagQR != 0:
		return verdictDrop
	case r.Opcode() != dnswire.OpcodeQuery:
		return verdictOther
	case err != nil && (err != dnswire.ErrQDCount || r.EDNSVersion == 0):
		return verdictFormErr
	case r.EDNSVersion != 0:
		return verdictBadVers
	}
	return verdictOK
}
