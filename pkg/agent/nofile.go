package agent

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/resolver"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
)

// descriptorsBesides is what the agent holds beside its bounded pools and
// its DNS sockets: stdio, the metrics and hand-off sockets, the netpoller,
// the capture programs' maps, programs and links, the source's watches and
// connections, files it reads (about 20 without capture).
const descriptorsBesides = 128

// descriptorBudget is the most file descriptors the configured bounds let
// the agent hold (the README's descriptor budget, in Limits and
// protections): a TCP connection of a client each, a socket per upstream
// exchange (a forwarded query asks each of its upstreams at once), the
// control socket's connections, open and queued, and the DNS sockets.
func (a *Agent) descriptorBudget() descriptors {
	return descriptors{
		tcp:        positiveOr(a.cfg.TCPMaxConns, resolver.DefaultTCPMaxConns),
		forwarding: positiveOr(a.cfg.MaxForwarding, resolver.DefaultMaxInflight),
		upstreams:  min(max(len(a.cfg.Upstreams), 1), forward.MaxUpstreams),
		control:    control.MaxConns + control.MaxQueued,
		sockets:    len(a.addrs) * (a.cfg.SocketsPerAddr + 1),
	}
}

type descriptors struct {
	tcp, forwarding, upstreams, control, sockets int
}

func (d descriptors) total() int {
	return d.tcp + d.forwarding*d.upstreams + d.control + d.sockets + descriptorsBesides
}

// positiveOr is n, or def when n is not positive: a bound of the
// resolver's options as resolver.New applies it (memoryBound and
// descriptorBudget count the same ones).
func positiveOr(n, def int) int {
	if n <= 0 {
		return def
	}
	return n
}

// nofileLimit is the process's open-file limit (RLIMIT_NOFILE's soft
// limit, which Go raised to the hard one at start); ok is false when it
// cannot be read.
func nofileLimit() (limit uint64, ok bool) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0, false
	}
	return rl.Cur, true
}

// nofileWarning is the warning, logged at start and listed by `ztdns
// status`, of an open-file limit below the descriptor budget; "" when
// the limit is enough (or unknown).
func nofileWarning(limit uint64, ok bool, d descriptors) string {
	need := d.total()
	if !ok || limit >= uint64(need) {
		return ""
	}
	return fmt.Sprintf("the open-file limit (RLIMIT_NOFILE) is %d, below the %d descriptors the agent may hold at its bounds "+
		"(--max-tcp %d, --max-forwarding %d × %d (the upstreams one query asks at once), %d control connections open and queued, %d DNS sockets, %d more): "+
		"past it, new connections wait and forwarded queries get SERVFAIL; "+
		"raise the container's nofile limit, or lower --max-tcp and --max-forwarding",
		limit, need, d.tcp, d.forwarding, d.upstreams, d.control, d.sockets, descriptorsBesides)
}
