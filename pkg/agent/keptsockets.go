// The sockets captured pods keep connected to the resolver, aborted when
// capture ends for good: the agent stops with no successor.

package agent

import (
	"net/netip"

	"github.com/ztdns/ztdns/pkg/capture"
)

// abortKeptSockets aborts, in the captured pods' network namespaces, the
// UDP sockets connected to a resolver address and the TCP connections
// with one (capture.AbortKeptSockets). A client that connected its socket
// while captured (c-ares keeps one per nameserver) sends on it through no
// hook: with the heartbeat stale it would still send to the resolver's
// address, where nothing answers once the agent is gone. Told at once
// (ECONNABORTED), it opens a new socket, which the programs, failing open,
// leave to the pod's own nameserver. Called only with no successor: one
// serves on the same addresses.
func (a *Agent) abortKeptSockets() {
	procs := capture.ProcNamespaces{Root: a.cfg.ProcRoot}
	var spaces []capture.Netns
	seen := map[uint64]bool{}
	for _, att := range a.pods.Attachments() {
		if !att.Captured || att.NetnsCookie == 0 || att.NetnsPath == "" || seen[att.NetnsCookie] {
			continue
		}
		seen[att.NetnsCookie] = true
		spaces = append(spaces, capture.Netns{Path: procs.NodePath(att.NetnsPath), Cookie: att.NetnsCookie})
	}
	c := a.dataplane
	resolvers := make([]netip.Addr, 0, len(c.prefixes))
	for _, p := range c.prefixes {
		resolvers = append(resolvers, p.Addr())
	}
	capture.AbortKeptSockets(a.log, spaces, resolvers)
}
