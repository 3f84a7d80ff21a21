// Capture ending for good (the agent stopping with no successor, `ztdns
// uninstall`): a socket a pod connected while captured keeps the
// resolver's address as its peer in the kernel, and its sends go through
// no hook that could send them elsewhere. Its stub resolver (c-ares keeps
// one per nameserver) would wait on it until its timeout, every query,
// once nothing answers there. AbortKeptSockets aborts such sockets
// (pkg/sockdiag): the client is told at once, opens a new socket, and
// that one reaches the pod's own nameserver.

package capture

import (
	"errors"
	"log/slog"
	"net/netip"

	"github.com/ztdns/ztdns/pkg/netns"
	"github.com/ztdns/ztdns/pkg/sockdiag"
)

// AbortKeptSockets aborts, in each of spaces (by Path, checked against
// Cookie), the UDP sockets connected to one of resolvers and the TCP
// connections with one, and returns how many. Nothing else is touched: no
// other namespace, no socket with another peer. A namespace gone is passed
// over; other failures are logged, once for all; a kernel that cannot
// destroy sockets is logged and the rest are not tried.
func AbortKeptSockets(log *slog.Logger, spaces []Netns, resolvers []netip.Addr) int {
	if len(spaces) == 0 || len(resolvers) == 0 {
		return 0
	}
	aborted, failed := 0, 0
	var firstErr error
	for _, n := range spaces {
		got, err := sockdiag.Abort(n.Path, n.Cookie, resolvers)
		aborted += got
		switch {
		case err == nil, errors.Is(err, netns.ErrNotFound), errors.Is(err, sockdiag.ErrOtherNamespace):
		case errors.Is(err, sockdiag.ErrUnsupported):
			log.Warn("cannot abort the sockets pods connected to the resolver while captured: their clients wait on them until they open new ones",
				"err", err)
			return aborted
		default:
			failed++
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	if failed > 0 {
		log.Warn("could not abort the sockets some pods connected to the resolver while captured: their clients wait on them until they open new ones",
			"namespaces", failed, "first", firstErr)
	}
	if aborted > 0 {
		log.Info("aborted the sockets pods connected to the resolver while captured: their clients open new ones, to their own nameservers",
			"sockets", aborted, "resolvers", resolvers)
	}
	return aborted
}

// AbortKeptSockets is AbortKeptSockets for the pods marked with cookies
// (read from the pinned pods map: `ztdns uninstall` has no agent's
// record), whose namespaces it finds by a scan of the proc filesystem
// (Scan): one that no process lives in holds no socket a client waits on.
func (p ProcNamespaces) AbortKeptSockets(log *slog.Logger, cookies []uint64, resolvers []netip.Addr) int {
	if len(cookies) == 0 || len(resolvers) == 0 {
		return 0
	}
	want := make(map[uint64]bool, len(cookies))
	for _, c := range cookies {
		want[c] = true
	}
	res, err := p.Scan(nil)
	if err != nil {
		log.Warn("cannot look for the marked pods' network namespaces: the sockets they connected to the resolver while captured stay until their clients open new ones",
			"err", err)
		return 0
	}
	var found []Netns
	for _, n := range res.Found {
		if want[n.Cookie] {
			found = append(found, n)
		}
	}
	return AbortKeptSockets(log, found, resolvers)
}
