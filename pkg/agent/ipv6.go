// IPv6 on a node whose kernel refuses it: capture then serves on IPv4 only
// (dropIPv6); the node's setting is read again at each attachment check
// (checkIPv6) for the status warning (ipv6Warning).

package agent

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/ztdns/ztdns/pkg/redirect"
)

// dropIPv6 leaves every IPv6 address out of the resolver's (the slots' and
// any other --listen one), on a node whose kernel refuses IPv6 (why): they
// could be put neither on the resolver's interface nor bound, and the
// chart's default listen has one of each family, for every node of a
// cluster. An IPv4-mapped one goes too: it is bound with an IPv6 socket.
// The programs then redirect no IPv6 destination (a family with no
// resolver is left alone), so pods asking an IPv6 nameserver reach it
// themselves. With no IPv4 address to serve on, capture cannot start.
func (a *Agent) dropIPv6(why string) error {
	if !a.slot4[0].IsValid() {
		return fmt.Errorf("IPv6 is off on this node (%s), and the resolver has no IPv4 --listen address", why)
	}
	var dropped []string
	a.addrs = slices.DeleteFunc(a.addrs, func(ap netip.AddrPort) bool {
		if ap.Addr().Is6() {
			dropped = append(dropped, ap.String())
			return true
		}
		return false
	})
	a.slot6 = [redirect.Slots]netip.AddrPort{}
	a.mu.Lock()
	a.ipv6.atStart, a.ipv6.now, a.ipv6.dropped = why, why, dropped
	a.mu.Unlock()
	a.log.Warn("IPv6 is off on this node: serving on IPv4 only, without any IPv6 address; queries to IPv6 nameservers are not captured",
		"reason", why, "dropped", dropped)
	return nil
}

// resolverInterface is the interface capture puts the resolver's addresses
// on.
func (a *Agent) resolverInterface() string {
	return cmp.Or(a.cfg.Capture.Interface, redirect.DefaultInterface)
}

// checkIPv6 reads again, at each attachment check, whether the node takes
// IPv6, and when that changed since the last check, says so in the log and
// turns the status warning to what holds now. The addresses stay as
// capture started: IPv6 turned on after the start is served and captured
// from the next start on; turned off, the IPv6 addresses kept may no
// longer answer (from the node itself they do not, so /healthz fails and
// the liveness probe restarts the agent, which then leaves them out).
//
// The settings are those of the calling thread's network namespace
// (/proc/sys/net is the opener's): a check from another one than capture
// started in (a test starts the agent in a node's namespace, and runs its
// other goroutines in its own) reads nothing.
func (a *Agent) checkIPv6() {
	if a.ipv6.netns == 0 {
		return
	}
	if c, err := ownNetnsCookie(); err != nil || c != a.ipv6.netns {
		return
	}
	why := redirect.IPv6Off(a.resolverInterface())
	a.mu.Lock()
	if why == a.ipv6.now {
		a.mu.Unlock()
		return
	}
	a.ipv6.now = why
	a.mu.Unlock()
	switch {
	case why == "" && a.ipv6.atStart != "":
		a.log.Warn("IPv6 is on again on this node: the resolver still serves on IPv4 only until the agent restarts",
			"offAtStart", a.ipv6.atStart, "dropped", a.ipv6.dropped)
	case why == "":
		a.log.Info("IPv6 is on again on this node, as when the agent started")
	case a.ipv6.atStart != "":
		a.log.Warn("IPv6 is still off on this node, for another reason", "reason", why, "offAtStart", a.ipv6.atStart)
	default:
		a.log.Warn("IPv6 was turned off on this node after the agent started: its IPv6 addresses may no longer answer until it restarts and leaves them out",
			"reason", why, "addresses", a.ipv6.kept)
	}
}

// ipv6Warning is the status warning for what capture started with and the
// node's IPv6 setting now (a.ipv6.now), "" when IPv6 is on as at the start;
// under mu.
func (a *Agent) ipv6Warning() string {
	now, atStart := a.ipv6.now, a.ipv6.atStart
	switch {
	case now != "" && atStart != "":
		return fmt.Sprintf("IPv6 is off on this node (%s): the resolver serves on IPv4 only, without its IPv6 addresses %s; queries to IPv6 nameservers are not captured",
			now, strings.Join(a.ipv6.dropped, ", "))
	case atStart != "":
		return fmt.Sprintf("IPv6 is on again on this node, but was off when the agent started (%s): the resolver serves on IPv4 only, without its IPv6 addresses %s, and queries to IPv6 nameservers are not captured until the agent restarts",
			atStart, strings.Join(a.ipv6.dropped, ", "))
	case now != "":
		return fmt.Sprintf("IPv6 was turned off on this node after the agent started (%s): its IPv6 addresses %s may no longer answer (from the node itself they do not: /healthz fails) until the agent restarts and serves on IPv4 only",
			now, strings.Join(a.ipv6.kept, ", "))
	}
	return ""
}
