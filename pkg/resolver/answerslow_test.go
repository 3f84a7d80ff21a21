package resolver

// answerSlow, for FuzzAnswer (fuzz_test.go): the slow path's answer to a
// query, asking upstreams at once, without what Server.slow adds: the
// bounds on forwarded work, the hold of the reply's bytes, the request
// counted and logged (finishing).

import (
	"context"
	"net/netip"
)

// answerSlow produces the reply for a query the fast path handed over, or nil
// to drop it.
func (s *Server) answerSlow(ctx context.Context, msg []byte, src, local netip.AddrPort, tcp bool) []byte {
	q := &slowQuery{s: s, msg: msg, src: src, local: local, tcp: tcp}
	return q.answer(ctx)
}
