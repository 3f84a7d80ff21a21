package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/redirect"
	"github.com/ztdns/ztdns/pkg/resolvconf"
)

// resolvedResolvConf is where systemd-resolved lists the nameservers it
// forwards to (its stub at 127.0.0.53 is what /etc/resolv.conf names).
const resolvedResolvConf = "/run/systemd/resolve/resolv.conf"

// netnsResolvConf returns the resolv.conf the processes of the network
// namespace at path read, and the one to write for them alone, as far as
// the path tells: for a namespace `ip netns` named (/run/netns/NAME),
// /etc/netns/NAME/resolv.conf, which `ip netns exec NAME` binds over
// /etc/resolv.conf, read when /etc/netns/NAME exists (else the node's);
// for /proc/PID/ns/net, that process's own /etc/resolv.conf. ok is false
// for any other path: who reads what there is not known.
func netnsResolvConf(path string) (read, write string, ok bool) {
	path = filepath.Clean(path)
	dir, name := filepath.Split(path)
	switch filepath.Clean(dir) {
	case "/run/netns", "/var/run/netns":
		own := filepath.Join("/etc/netns", name, "resolv.conf")
		if _, err := os.Stat(filepath.Dir(own)); err == nil {
			return own, own, true
		}
		return "/etc/resolv.conf", own, true
	}
	if pid, ok := strings.CutPrefix(path, "/proc/"); ok {
		if pid, ok := strings.CutSuffix(pid, "/ns/net"); ok && pid != "" && !strings.Contains(pid, "/") {
			own := filepath.Join("/proc", pid, "root/etc/resolv.conf")
			return own, own, true
		}
	}
	return "", "", false
}

// uncapturedWarning says why no query of the namespace at path reaches
// ztdns through capture, or "" when one does (or nothing can be said): its
// resolv.conf names only nameservers capture never redirects (loopback,
// which resolv.conf without a nameserver line means too; IPv6 link-local
// or multicast; outside --capture-nameservers), or the agent's own
// address, which answers while the agent runs and nothing does when it
// stops. st is the agent's status, nil when it could not be read: then
// only loopback, link-local and multicast are judged.
func uncapturedWarning(path string, st *control.Status) string {
	file, write, ok := netnsResolvConf(path)
	if !ok {
		return ""
	}
	conf, err := resolvconf.ReadFile(file)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "" // unreadable: its readers' behaviour is not ours to guess
	}
	servers := conf.Nameservers
	var why []string
	if len(servers) == 0 {
		// glibc, musl and Go ask 127.0.0.1 (and ::1) then.
		why = append(why, "no nameserver line, so resolvers ask 127.0.0.1: loopback, never captured")
	}
	for _, ns := range servers {
		reason := uncapturedReason(ns, st)
		if reason == "" {
			return ""
		}
		why = append(why, ns.String()+": "+reason)
	}
	return fmt.Sprintf("warning: no nameserver in %s is captured (%s); write in %s a nameserver the node itself uses (%s): capture redirects it to ztdns, and it still answers when the agent stops",
		file, strings.Join(why, "; "), write, upstreamSuggestion(st))
}

// uncapturedReason says why capture leaves queries to ns alone, or "". As
// in the programs, an IPv4-mapped ns counts as IPv4 and its zone is
// ignored.
func uncapturedReason(ns netip.Addr, st *control.Status) string {
	ns = ns.Unmap().WithZone("")
	switch {
	case ns.IsLoopback() || ns.IsUnspecified():
		return "loopback, never captured"
	case redirect.PodLocal(ns):
		return "on the pod's own link (IPv6 link-local, multicast, broadcast), never captured"
	case st == nil:
		return ""
	}
	for _, l := range st.Listen {
		if ap, err := netip.ParseAddrPort(l); err == nil && ap.Addr().Unmap() == ns {
			return "the agent's own address, answered while it runs, by nothing once it stops"
		}
	}
	var list []netip.Prefix
	for _, c := range st.CaptureNameservers {
		if p, err := redirect.ParseCaptureNameserver(c); err == nil {
			list = append(list, p)
		}
	}
	if !redirect.Listed(redirect.UnmapCaptureNameservers(list), ns) { // an empty list captures all
		return "outside --capture-nameservers, never captured"
	}
	return ""
}

// upstreamSuggestion names nameservers the node reaches and a namespace can
// address: the agent's upstreams that are not loopback, else those
// systemd-resolved forwards to.
func upstreamSuggestion(st *control.Status) string {
	var addrs []string
	if st != nil {
		for _, u := range st.FallbackUpstreams {
			if ap, err := netip.ParseAddrPort(u); err == nil && !ap.Addr().IsLoopback() && !slices.Contains(addrs, ap.Addr().String()) {
				addrs = append(addrs, ap.Addr().String())
			}
		}
	}
	if len(addrs) == 0 {
		if conf, err := resolvconf.ReadFile(resolvedResolvConf); err == nil {
			for _, ns := range conf.Nameservers {
				if !ns.IsLoopback() && !slices.Contains(addrs, ns.String()) {
					addrs = append(addrs, ns.String())
				}
			}
		}
	}
	if len(addrs) == 0 {
		return "on a systemd-resolved machine, those in " + resolvedResolvConf
	}
	return "nameserver " + strings.Join(addrs, ", nameserver ")
}
