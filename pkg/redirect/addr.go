package redirect

import "net/netip"

// PodAddr reports whether ip is an address of a pod's own: not loopback,
// link-local, multicast or unspecified, which any pod may have the same of.
// NetnsAddrs lists only such addresses, so the agent refuses a CNI ADD that
// claims another; the plugin leaves them out of what it claims.
func PodAddr(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsValid() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() && !ip.IsMulticast() && !ip.IsUnspecified()
}
