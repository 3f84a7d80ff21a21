//go:build linux

package redirect

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// What the programs are configured with (Config), its defaults and its
// checks, and the resolver addresses of each slot: plain values, no kernel
// call.

// Slots is how many nameservers a pod can address (MAXNS in glibc and musl)
// and how many resolver addresses per family the agent listens on.
const Slots = 3

// The generated config has exactly Slots resolvers per family (ZTDNS_SLOTS).
var _ [Slots]ztdnsEndpoint = ztdnsRedirectConfig{}.Resolver4

// MaxCaptureNameservers is how many prefixes Config.CaptureNameservers may
// hold (ZTDNS_MAX_CAPTURE_PREFIXES).
const MaxCaptureNameservers = 8

var _ [MaxCaptureNameservers]ztdnsCapturePrefix = ztdnsRedirectConfig{}.CaptureOnly

const (
	// DefaultBPFFS is where maps and links are pinned.
	DefaultBPFFS = "/sys/fs/bpf/ztdns"
	// DefaultStaleAfter is how old the heartbeat may get before the
	// programs stop redirecting (fail open).
	DefaultStaleAfter = 3 * time.Second
	// DefaultInterface is the interface EnsureInterface creates.
	DefaultInterface = "ztdns0"
	// DefaultSocketsPerPod is Config.SocketsPerPod's default: far above
	// what a stub resolver keeps open (one socket per query in flight,
	// c-ares one per nameserver), and about 450 KiB of the agent's memory
	// for a pod that holds them all.
	DefaultSocketsPerPod = 1024
	// MaxSocketsPerPod bounds Config.SocketsPerPod: a pod at it costs the
	// agent about 450 MiB of kernel memory (SocketRecordBytes each).
	MaxSocketsPerPod = 1 << 20
	// SocketRecordBytes is about what the kernel charges the agent's
	// memory cgroup for one socket's record (struct socket_destinations in
	// bpf/ztdns.h), measured: the storage the kernel allocates around it.
	SocketRecordBytes = 450
)

// DefaultPort is the port the resolver's slot addresses listen on, and so
// where redirected queries go. It is not 53 on purpose: the programs run
// before the pod's netfilter rules, and istio-cni's in-pod DNS capture (nat
// OUTPUT, destination port 53, REDIRECT to ztunnel's port 15053) would
// otherwise take a query ztdns redirected to ztunnel. Replies are restored
// to the original nameserver and port 53 either way.
const DefaultPort = 10053

// DefaultResolver4 returns the link-local IPv4 resolver endpoints, one per
// slot.
func DefaultResolver4() [Slots]netip.AddrPort {
	return [Slots]netip.AddrPort{
		netip.AddrPortFrom(netip.MustParseAddr("169.254.20.53"), DefaultPort),
		netip.AddrPortFrom(netip.MustParseAddr("169.254.20.54"), DefaultPort),
		netip.AddrPortFrom(netip.MustParseAddr("169.254.20.55"), DefaultPort),
	}
}

// DefaultResolver6 returns the IPv6 resolver endpoints, one per slot, from
// the ULA prefix fd00:7a74:646e::/48 ("ztdn").
func DefaultResolver6() [Slots]netip.AddrPort {
	return [Slots]netip.AddrPort{
		netip.AddrPortFrom(netip.MustParseAddr("fd00:7a74:646e::53"), DefaultPort),
		netip.AddrPortFrom(netip.MustParseAddr("fd00:7a74:646e::54"), DefaultPort),
		netip.AddrPortFrom(netip.MustParseAddr("fd00:7a74:646e::55"), DefaultPort),
	}
}

// Config says where to attach and where the resolver listens.
type Config struct {
	// BPFFS is the pin directory (default DefaultBPFFS). When it is not on
	// a bpf filesystem, one is mounted at its parent directory, unless
	// RequireBPFFS is set: Load then fails (in a container, a mount of its
	// own would vanish with it, and every pin in it).
	BPFFS        string
	RequireBPFFS bool
	// CgroupPath is the cgroup v2 directory to attach to. Default: the
	// pods' cgroup (kubepods.slice or kubepods) under CgroupRoot when it
	// has one, else CgroupRoot itself (cgroup.go says why).
	CgroupPath string
	// CgroupRoot is the cgroup2 hierarchy's root, where the default
	// CgroupPath is looked for (default: the first cgroup2 mount in
	// /proc/mounts, i.e. the whole node).
	CgroupRoot string
	// cgroupWhy says why CgroupPath is that one (withDefaults).
	cgroupWhy string
	// Resolver4 and Resolver6 are the resolver's addresses: a query to the
	// nameserver in slot i goes to Resolver4[i] (IPv4 and IPv4-mapped
	// nameservers) or Resolver6[i] (IPv6 nameservers). A family left all
	// zero is not redirected; at least one family must be set.
	Resolver4 [Slots]netip.AddrPort
	Resolver6 [Slots]netip.AddrPort
	// StaleAfter bounds the heartbeat's age (default DefaultStaleAfter).
	StaleAfter time.Duration
	// CaptureNameservers, when not empty, limits capture to queries whose
	// destination is inside one of these prefixes (at most
	// MaxCaptureNameservers, masked, IPv4-mapped ones count as IPv4): a
	// query to any other nameserver is left alone and leaves the pod under
	// its own network policy. Empty: every destination on port 53.
	CaptureNameservers []netip.Prefix
	// SocketsPerPod is how many sockets of one pod may hold a record of
	// what they addressed at once (default DefaultSocketsPerPod, at most
	// MaxSocketsPerPod). The kernel charges each record, about
	// SocketRecordBytes, to the agent's memory, not the pod's; a query on
	// any other socket of the pod is left alone (not redirected) and
	// counted as SkippedSocketsFull until some of them close. 0 means the
	// default.
	SocketsPerPod int
	// KeepConfig leaves the running programs, with their maps and config
	// (the resolver addresses, port, staleness bound and capture list a
	// running agent wrote), as they are until ApplyConfig: a new agent
	// taking over must not send pods to addresses it does not serve yet,
	// and one that stops before it takes over must leave the running agent
	// the programs and maps it marks pods in. Load then only loads: a
	// pinned map of another layout is left pinned, and one of this layout
	// loaded unpinned in its place; ApplyConfig pins it and attaches.
	KeepConfig bool
	// Logger defaults to slog.Default().
	Logger *slog.Logger

	// Seams for tests (nil otherwise). afterMoveStep runs after each step
	// (1, 2, 3) of finishMove for a hook; an error stops the move there,
	// as an agent dying would. beforeReattach runs when RepairAttachment
	// has found a hook's link detached and is about to attach a new one.
	afterMoveStep  func(hook string, step int) error
	beforeReattach func(hook string)
}

// withDefaults fills the zero fields.
func (c Config) withDefaults() (Config, error) {
	if c.BPFFS == "" {
		c.BPFFS = DefaultBPFFS
	}
	if c.StaleAfter == 0 {
		c.StaleAfter = DefaultStaleAfter
	}
	if c.SocketsPerPod == 0 {
		c.SocketsPerPod = DefaultSocketsPerPod
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	switch {
	case c.CgroupPath != "":
		c.cgroupWhy = "given (--cgroup)"
	case c.CgroupRoot != "":
		c.CgroupPath, c.cgroupWhy = chooseCgroup(c.CgroupRoot)
	default:
		root, err := cgroup2Root()
		if err != nil {
			return c, err
		}
		c.CgroupRoot = root
		c.CgroupPath, c.cgroupWhy = chooseCgroup(root)
	}
	return c, nil
}

func (c Config) validate() error {
	if c.StaleAfter < 0 {
		return fmt.Errorf("stale-after %s is negative", c.StaleAfter)
	}
	if c.SocketsPerPod < 0 || c.SocketsPerPod > MaxSocketsPerPod {
		return fmt.Errorf("sockets per pod %d: want 1 to %d", c.SocketsPerPod, MaxSocketsPerPod)
	}
	if err := validateResolvers("IPv4", c.Resolver4, netip.Addr.Is4); err != nil {
		return err
	}
	is6 := func(a netip.Addr) bool { return a.Is6() && !a.Is4In6() }
	if err := validateResolvers("IPv6", c.Resolver6, is6); err != nil {
		return err
	}
	if c.Resolver4 == ([Slots]netip.AddrPort{}) && c.Resolver6 == ([Slots]netip.AddrPort{}) {
		return errors.New("no resolver address configured")
	}
	if err := ValidateCaptureNameservers(c.CaptureNameservers); err != nil {
		return fmt.Errorf("capture nameservers: %w", err)
	}
	return nil
}

// ParseCaptureNameserver takes a CIDR or a bare address (as a /32 or
// /128), as --capture-nameservers and the chart's capture.nameservers give
// one. It only parses: ValidateCaptureNameservers checks the list whole.
func ParseCaptureNameserver(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q is not an address or CIDR", s)
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address or CIDR", s)
	}
	return p, nil
}

// ValidateCaptureNameservers checks a Config.CaptureNameservers list: at
// most MaxCaptureNameservers prefixes, each valid and masked (no bits set
// past its length), so that what the programs match is what the operator
// wrote: 10.96.0.10/16 is more likely a typo for 10.96.0.10/32 than a wish
// for all of 10.96.0.0/16. (A masked IPv4-mapped prefix is at least /96:
// its ffff is set.) Load checks it; the agent checks it before it makes
// anything, and its command line first, to refuse a bad flag as a usage
// error.
func ValidateCaptureNameservers(ps []netip.Prefix) error {
	if len(ps) > MaxCaptureNameservers {
		return fmt.Errorf("%d prefixes, want at most %d", len(ps), MaxCaptureNameservers)
	}
	for _, p := range ps {
		switch {
		case !p.IsValid():
			return fmt.Errorf("prefix %s is not valid", p)
		case p.Masked() != p:
			return fmt.Errorf("%s has bits set past /%d: give %s, or the address alone", p, p.Bits(), p.Masked())
		case neverCaptured(p):
			return fmt.Errorf("%s is on the pod's own host or link (loopback, IPv6 link-local, multicast, broadcast): queries there are never captured", p)
		}
	}
	return nil
}

// podLocal are the destinations the programs leave alone whatever the list
// says (is_local in the C).
var podLocal = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("0.0.0.0/32"),
	netip.MustParsePrefix("224.0.0.0/4"), netip.MustParsePrefix("255.255.255.255/32"),
	netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("::/128"), netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("ff00::/8"),
}

// PodLocal reports whether a is on the pod's own host or link, where the
// programs never redirect a query nor learn a nameserver (is_local in
// bpf/ztdns.c): loopback (127.0.0.0/8, ::1), unspecified (0.0.0.0, ::),
// IPv6 link-local (fe80::/10), or the address of many hosts, multicast
// (224.0.0.0/4, ff00::/8) or the limited broadcast (255.255.255.255): a
// query to those stays on the pod's link without ztdns, and forwarded it
// would leave from the node, onto the node's network. An IPv4-mapped
// address counts as IPv4, as in the programs; a zone is ignored.
func PodLocal(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	for _, l := range podLocal {
		if l.Contains(a) {
			return true
		}
	}
	return false
}

// neverCaptured reports whether every address of p is one the programs
// leave alone: listing it could only mislead.
func neverCaptured(p netip.Prefix) bool {
	p = UnmapCaptureNameservers([]netip.Prefix{p})[0]
	for _, l := range podLocal {
		if l.Addr().Is4() == p.Addr().Is4() && p.Bits() >= l.Bits() && l.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// UnmapCaptureNameservers returns a valid Config.CaptureNameservers list as
// the programs match it: an IPv4-mapped prefix (masked, so at least /96) as
// the IPv4 prefix it covers, since the programs see an IPv4-mapped
// destination as IPv4; any other as is. Listed takes its result.
func UnmapCaptureNameservers(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, len(ps))
	for i, p := range ps {
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out[i] = p
	}
	return out
}

// Listed reports whether the programs capture a query to a under the
// list prefixes, as UnmapCaptureNameservers gives them: always when it is
// empty, else when a (IPv4-mapped counts as IPv4) is inside one of them.
func Listed(prefixes []netip.Prefix, a netip.Addr) bool {
	if len(prefixes) == 0 {
		return true
	}
	a = a.Unmap()
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// validateResolvers accepts all-zero (family off) or Slots distinct
// addresses of the family with a port.
func validateResolvers(family string, rs [Slots]netip.AddrPort, ok func(netip.Addr) bool) error {
	if rs == ([Slots]netip.AddrPort{}) {
		return nil
	}
	seen := map[netip.Addr]bool{}
	for i, r := range rs {
		switch {
		case !r.IsValid():
			return fmt.Errorf("%s resolver for slot %d is missing: set all %d or none", family, i, Slots)
		case !ok(r.Addr()) || r.Addr().Zone() != "":
			return fmt.Errorf("%s resolver for slot %d: %s is not a plain %s address", family, i, r, family)
		case r.Port() == 0:
			return fmt.Errorf("%s resolver for slot %d: %s has no port", family, i, r)
		case seen[r.Addr()]:
			return fmt.Errorf("%s resolver for slot %d: %s is used by two slots", family, i, r.Addr())
		}
		seen[r.Addr()] = true
	}
	return nil
}

// slotPrefixes are where the resolver's slot addresses may lie: IPv4
// link-local and IPv6 unique local (the ULA half, fd00::/8). The agent puts
// them on its interface, which makes them local to the node, so an address
// from the node's or the pods' networks there (the node's own, say, in
// --listen) would take it, and the two after it, other nodes' or pods',
// off the network; no other host ever holds one of these.
var slotPrefixes = [2]netip.Prefix{netip.MustParsePrefix("169.254.0.0/16"), netip.MustParsePrefix("fd00::/8")}

// ResolverSlots derives the per-slot resolver endpoints from the first IPv4
// and the first IPv6 listen address: slot i is that address plus i, on port.
// The agent gives it its --listen addresses, and Config.Resolver4/6 the
// result. Every slot address must lie in slotPrefixes.
func ResolverSlots(listen []netip.AddrPort, port uint16) (r4, r6 [Slots]netip.AddrPort, err error) {
	var have4, have6 bool
	for _, l := range listen {
		switch {
		case l.Addr().Is4() && !have4:
			have4 = true
			r4, err = consecutive(l.Addr(), port)
		case l.Addr().Is6() && !have6:
			have6 = true
			r6, err = consecutive(l.Addr(), port)
		}
		if err != nil {
			return r4, r6, err
		}
	}
	if !have4 && !have6 {
		return r4, r6, errors.New("capture needs an IPv4 or IPv6 --listen address for the resolver")
	}
	return r4, r6, nil
}

func consecutive(base netip.Addr, port uint16) (out [Slots]netip.AddrPort, err error) {
	a := base
	for i := range out {
		if !a.IsValid() {
			return out, fmt.Errorf("resolver address %s: the %d addresses after it must exist too (one per nameserver slot)", base, Slots-1)
		}
		if !slices.ContainsFunc(slotPrefixes[:], func(p netip.Prefix) bool { return p.Contains(a) }) {
			return out, fmt.Errorf("resolver address %s (slot %d, from the --listen address %s) is neither IPv4 link-local (%s) nor IPv6 ULA (%s): "+
				"capture puts the slot addresses on its own interface, where an address of the node's or the pods' networks would stop reaching its owner; "+
				"give --listen such an address first, as the default 169.254.20.53:53 and [fd00:7a74:646e::53]:53", a, i, base, slotPrefixes[0], slotPrefixes[1])
		}
		out[i] = netip.AddrPortFrom(a, port)
		a = a.Next()
	}
	return out, nil
}
