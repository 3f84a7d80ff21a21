//go:build linux

// Package redirect loads the ztdns eBPF programs (bpf/ztdns.c), attaches
// them to a cgroup v2 directory, and owns their pinned maps: which pod
// network namespaces are marked, which nameservers those pods addressed, the
// resolver's addresses, the agent's heartbeat and the counters.
//
// Everything lives under one bpffs directory (default /sys/fs/bpf/ztdns):
// maps by name, links under links/. Close leaves the pins, so capture keeps
// working while the agent restarts; the next Load reopens them, keeps the
// marks and swaps in its programs. Uninstall removes them.
package redirect

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

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

	// linksDir holds one pinned bpf_link per hook.
	linksDir = "links"
	// programPrefix marks programs ztdns created: only links running such a
	// program are ever updated or detached.
	programPrefix = "ztdns_"
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
	// CgroupPath is the cgroup v2 directory to attach to (default: the
	// first cgroup2 mount in /proc/mounts, i.e. the whole node).
	CgroupPath string
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
	if c.CgroupPath == "" {
		mounts, err := Cgroup2Mounts()
		if err != nil {
			return c, err
		}
		if len(mounts) == 0 {
			return c, errors.New("no cgroup2 filesystem is mounted (none in /proc/mounts), and ztdns attaches to cgroup v2")
		}
		c.CgroupPath = mounts[0]
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

// Redirector holds the loaded programs, their links and maps.
type Redirector struct {
	cfg   Config
	log   *slog.Logger
	objs  ztdnsObjects
	links []attachedLink

	// unattached is set by a Load with KeepConfig until ApplyConfig has
	// attached the programs; replaced names the maps it loaded unpinned in
	// place of pinned ones of another layout.
	unattached bool
	replaced   []string

	// mu guards closed and the heartbeat mapping against Close, and links,
	// cgroupID and mapIDs against CheckAttachment and RepairAttachment.
	mu        sync.Mutex
	closed    bool
	cgroupID  uint64                // the cgroup the links attach to
	mapIDs    map[string]ebpf.MapID // the maps this Redirector uses, by pin name
	heartbeat []byte                // mmap of the heartbeat map
	beat      *uint64               // &heartbeat[0]
}

type attachedLink struct {
	hook    hook
	link    link.Link
	id      link.ID        // the link's, as attached
	program ebpf.ProgramID // the program it ran then: this Redirector's
}

// mapNames are the maps ztdns pins, by name.
var mapNames = []string{ztdnsMapPods, ztdnsMapNameservers, ztdnsMapSockets, ztdnsMapPodSockets, ztdnsMapConfig, ztdnsMapConfigIndex, ztdnsMapHeartbeat, ztdnsMapCounters}

// Load checks the kernel, loads the programs, reopens or creates the pinned
// maps, writes the resolver addresses, and attaches the programs to
// cfg.CgroupPath, replacing the programs of links a previous run pinned.
// Until the first Heartbeat (or after StaleAfter without one) the programs
// redirect nothing.
func Load(cfg Config) (*Redirector, error) {
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones
	// to the cgroup, where this is a no-op.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raising the memlock limit for BPF maps: %w", err)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	// Unmapped once, here: writeConfig and forgetUnlisted compare as is.
	cfg.CaptureNameservers = UnmapCaptureNameservers(cfg.CaptureNameservers)
	if err := checkHost(cfg.CgroupPath); err != nil {
		return nil, err
	}
	if err := ensureBPFFS(cfg.Logger, cfg.BPFFS, !cfg.RequireBPFFS); err != nil {
		return nil, err
	}

	r := &Redirector{cfg: cfg, log: cfg.Logger}
	if err := r.loadObjects(); err != nil {
		return nil, err
	}
	if err := r.setup(); err != nil {
		return nil, errors.Join(err, r.Close())
	}
	return r, nil
}

func (r *Redirector) setup() error {
	if err := r.mapHeartbeat(); err != nil {
		return err
	}
	r.unattached = true
	if r.cfg.KeepConfig {
		return nil
	}
	return r.ApplyConfig()
}

// ApplyConfig, after a Load with KeepConfig, writes this Redirector's
// config for the programs, pins the maps it loaded in place of pinned ones
// of another layout, attaches its programs and forgets the nameservers its
// capture list leaves out. (Load without KeepConfig does all this.)
func (r *Redirector) ApplyConfig() error {
	// The config first: a config map loaded afresh holds none until then.
	if err := r.writeConfig(); err != nil {
		return err
	}
	if r.unattached {
		if err := r.pinReplaced(); err != nil {
			return err
		}
		if err := r.attachAll(); err != nil {
			return err
		}
		r.unattached = false
	}
	// After attachAll: until then the previous programs, which may have
	// had no list or a longer one, can still learn.
	return r.forgetUnlisted()
}

// ReplacingPods reports whether ApplyConfig is to pin and attach a pods
// map this Load (with KeepConfig) made in place of a pinned one of another
// layout. It holds no mark until written one: Mark writes to it, and the
// programs ApplyConfig attaches read it from their first query on, so a
// caller taking over writes the marks it knows before ApplyConfig.
func (r *Redirector) ReplacingPods() bool {
	return slices.Contains(r.replaced, ztdnsMapPods)
}

// loadObjects loads programs and maps, reusing pinned maps. A pinned map
// whose layout no longer matches (an upgrade changed ztdns.h) is replaced:
// marks in it are lost and the agent writes them again (a pods map, with
// KeepConfig, before ApplyConfig: ReplacingPods). With KeepConfig its pin
// stays until ApplyConfig: the running programs, and the agent marking
// pods for them, still use it.
func (r *Redirector) loadObjects() error {
	spec, err := loadZtdns()
	if err != nil {
		return err
	}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: r.cfg.BPFFS}}
	err = spec.LoadAndAssign(&r.objs, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		replace, rerr := r.incompatiblePins(spec)
		if rerr != nil {
			return errors.Join(err, rerr)
		}
		for _, name := range replace {
			if r.cfg.KeepConfig {
				spec.Maps[name].Pinning = ebpf.PinNone // pinned by ApplyConfig
			} else if rerr := r.removePin(name); rerr != nil {
				return errors.Join(err, rerr)
			}
		}
		if err = spec.LoadAndAssign(&r.objs, opts); err == nil && r.cfg.KeepConfig {
			r.replaced = replace
		}
	}
	if err != nil {
		return fmt.Errorf("load ztdns programs: %w", err)
	}
	return nil
}

// mapNamed is the loaded map of that name.
func (r *Redirector) mapNamed(name string) *ebpf.Map {
	return map[string]*ebpf.Map{
		ztdnsMapConfig: r.objs.Config, ztdnsMapConfigIndex: r.objs.ConfigIndex, ztdnsMapCounters: r.objs.Counters,
		ztdnsMapHeartbeat: r.objs.Heartbeat, ztdnsMapNameservers: r.objs.Nameservers, ztdnsMapPods: r.objs.Pods,
		ztdnsMapSockets: r.objs.Sockets, ztdnsMapPodSockets: r.objs.PodSockets,
	}[name]
}

// pinReplaced pins the maps a Load with KeepConfig loaded in place of
// pinned ones of another layout, replacing those pins.
func (r *Redirector) pinReplaced() error {
	for len(r.replaced) > 0 {
		name := r.replaced[0]
		if err := r.removePin(name); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		pin := pinPath(r.cfg.BPFFS, name)
		if err := r.mapNamed(name).Pin(pin); err != nil {
			return fmt.Errorf("pin map %s: %w", pin, err)
		}
		r.replaced = r.replaced[1:]
	}
	return nil
}

// incompatiblePins names the pinned maps to replace: those whose layout no
// longer matches spec. config and config_index are replaced together: the
// programs read them as one, config_index naming an entry of config. A
// replaced map's pin goes, but the programs attached until attachAll keep
// the map they were loaded with; a partner kept would be shared by old and
// new programs, each reading it with its own other half. Kept config_index
// with a new config: writeConfig switches the index to an entry of the new
// config, and the old programs read that entry of their old config, never
// written (all zeros: no resolver, so capture is off and replies of
// redirected queries are not restored), until attachAll swaps them, or for
// good if it fails. Replaced as a pair, the old programs go on reading their
// old pair untouched.
//
// The other maps are read on their own and may be replaced alone: a new
// counters map only misses what the old programs count before attachAll,
// and the heartbeat is meant to be shared (old programs stay fresh).
func (r *Redirector) incompatiblePins(spec *ebpf.CollectionSpec) ([]string, error) {
	replace := map[string]bool{} // by name, for the maps pinned
	for name, ms := range spec.Maps {
		pin := pinPath(r.cfg.BPFFS, name)
		m, err := ebpf.LoadPinnedMap(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("open pinned map %s: %w", pin, err)
		}
		replace[name] = ms.Compatible(m) != nil
		m.Close()
	}
	if replace[ztdnsMapConfig] || replace[ztdnsMapConfigIndex] {
		for _, name := range []string{ztdnsMapConfig, ztdnsMapConfigIndex} {
			if _, pinned := replace[name]; pinned {
				replace[name] = true
			}
		}
	}
	var names []string
	for name, incompatible := range replace {
		if incompatible {
			names = append(names, name)
		}
	}
	return names, nil
}

// removePin removes the pin of a map of another layout, to replace it.
func (r *Redirector) removePin(name string) error {
	pin := pinPath(r.cfg.BPFFS, name)
	r.log.Warn("replacing pinned map with an incompatible layout (or read with one)", "pin", pin)
	if err := os.Remove(pin); err != nil {
		return fmt.Errorf("remove incompatible map pin: %w", err)
	}
	return nil
}

// mapHeartbeat mmaps the heartbeat map so Heartbeat can store it with one
// atomic 64-bit write; see struct agent_heartbeat in bpf/ztdns.h.
func (r *Redirector) mapHeartbeat() error {
	mem, err := unix.Mmap(r.objs.Heartbeat.FD(), 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap heartbeat map: %w", err)
	}
	r.heartbeat = mem
	r.beat = (*uint64)(unsafe.Pointer(&mem[unsafe.Offsetof(ztdnsAgentHeartbeat{}.MonoNs)]))
	return nil
}

// CaptureNameservers returns Config.CaptureNameservers as the programs
// match it (UnmapCaptureNameservers); callers must not modify it.
func (r *Redirector) CaptureNameservers() []netip.Prefix {
	return r.cfg.CaptureNameservers
}

// Heartbeat tells the programs the resolver is alive: they redirect only
// while the last heartbeat is younger than Config.StaleAfter. The agent
// calls it every second while its resolver serves.
func (r *Redirector) Heartbeat() error {
	now, err := monotonicNow()
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("heartbeat: redirector is closed")
	}
	atomic.StoreUint64(r.beat, now)
	return nil
}

// StopHeartbeat makes the heartbeat stale at once: the programs stop
// redirecting and pods reach their own nameservers directly. An agent that
// stops without a successor calls it rather than leaving pods to time out
// against a resolver that is gone until the heartbeat ages out.
func (r *Redirector) StopHeartbeat() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		atomic.StoreUint64(r.beat, 0)
	}
}

// monotonicNow reads CLOCK_MONOTONIC in ns, the clock bpf_ktime_get_ns
// reads. (A time namespace would offset it for this process only; the agent
// runs in the node's.)
func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("read monotonic clock: %w", err)
	}
	return uint64(ts.Nano()), nil
}

// Close releases the programs, maps and links held by this process. The
// pins stay: the programs keep running and the marks stay until the next
// Load or Uninstall.
func (r *Redirector) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	var errs []error
	if r.heartbeat != nil {
		errs = append(errs, unix.Munmap(r.heartbeat))
		r.heartbeat, r.beat = nil, nil
	}
	for _, l := range r.links {
		errs = append(errs, l.link.Close())
	}
	r.links = nil
	errs = append(errs, r.objs.Close())
	return errors.Join(errs...)
}

// CheckHost checks, changing nothing, that Load can attach to cgroupPath
// (empty: the cgroup v2 root) on this kernel: callers that set the node up
// for the programs first (the resolver's interface) ask before they do.
func CheckHost(cgroupPath string) error {
	cfg, err := Config{CgroupPath: cgroupPath}.withDefaults()
	if err != nil {
		return err
	}
	return checkHost(cfg.CgroupPath)
}

func checkHost(cgroupPath string) error {
	if err := checkCgroup(cgroupPath); err != nil {
		return err
	}
	return checkKernel()
}
