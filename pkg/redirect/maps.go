//go:build linux

package redirect

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
)

// Address families as stored in struct endpoint (ZTDNS_AF_INET/6).
const (
	afInet  = 2
	afInet6 = 10
)

// nsUnconfirmed is ZTDNS_NS_UNCONFIRMED, a flag of nameserver.flags.
const nsUnconfirmed = 1 << 0

// PodFlags is pod_info.flags.
type PodFlags uint32

// PodPaused keeps a pod known (IPs, counters, nameservers) but stops
// redirecting its queries (ZTDNS_POD_PAUSED in bpf/ztdns.h).
const PodPaused PodFlags = 1 << 0

// PodInfo is what the agent records about a marked pod.
type PodInfo struct {
	IPv4  netip.Addr // zero if the pod has none
	IPv6  netip.Addr // zero if the pod has none
	Flags PodFlags
}

// PodCounters are a pod's share of the counters.
type PodCounters struct {
	Redirected   uint64
	Restored     uint64
	SkippedStale uint64
}

// MarkedPod is one entry of the pods map with what the programs learned.
type MarkedPod struct {
	NetnsCookie uint64
	PodInfo
	Counters PodCounters
	// Nameservers[i] is what the pod addressed through slot i; its Addr
	// is the zero AddrPort when the slot is free.
	Nameservers [Slots]LearnedNameserver
	// Sockets is how many of the pod's sockets hold a record of what they
	// addressed, at most Config.SocketsPerPod (plus a few), as the
	// programs count them (struct pod_socket_count in bpf/ztdns.h): the
	// sockets whose records programs before the count made (open at the
	// upgrade that brought it, or made after a rollback past it) are not
	// in it, nor, after the counts were forgotten (sock_release attached
	// anew), the sockets counted before that.
	Sockets int64
}

// LearnedNameserver is a destination the programs learned for a slot.
type LearnedNameserver struct {
	Addr netip.AddrPort
	// Idle is how long ago a query, a restored reply or a getpeername
	// last went through the slot; after SlotIdle (SlotUnconfirmedIdle
	// when Unconfirmed) the slot may be given to another destination.
	Idle time.Duration
	// Unconfirmed: only UDP connects and getpeername have gone through
	// the slot (ZTDNS_NS_UNCONFIRMED in bpf/ztdns.h).
	Unconfirmed bool
}

// Counters are the node-wide counters, summed over CPUs.
type Counters struct {
	Redirected          uint64 // destinations rewritten to a resolver
	Restored            uint64 // reply sources / peers set back
	SkippedStale        uint64 // not redirected: heartbeat stale or never written
	SkippedPaused       uint64 // not redirected: pod paused
	SkippedNoResolver   uint64 // not redirected: no resolver of that family
	SkippedSlotsFull    uint64 // not redirected: every slot busy with another server
	SkippedLocal        uint64 // not redirected: loopback, unspecified, IPv6 link-local, multicast or limited broadcast destination (PodLocal)
	NameserverLearned   uint64 // a destination took a free slot
	NameserverReplaced  uint64 // a destination took an idle slot
	NameserverFailed    uint64 // the nameservers map refused an update
	SocketStorageFailed uint64 // not redirected: no socket storage to restore from
	SkippedNotListed    uint64 // not redirected: destination outside Config.CaptureNameservers
	SkippedSocketsFull  uint64 // not redirected: the pod's sockets hold Config.SocketsPerPod records
}

func endpointFrom(ap netip.AddrPort) ztdnsEndpoint {
	var ep ztdnsEndpoint
	if !ap.IsValid() {
		return ep
	}
	a := ap.Addr().Unmap()
	if a.Is4() {
		b := a.As4()
		copy(ep.Addr[:], b[:])
		ep.Family = afInet
	} else {
		ep.Addr = a.As16()
		ep.Family = afInet6
	}
	ep.Port = ap.Port()
	return ep
}

// capturePrefixFrom stores p, unmapped (UnmapCaptureNameservers), for the
// programs.
func capturePrefixFrom(p netip.Prefix) ztdnsCapturePrefix {
	ep := endpointFrom(netip.AddrPortFrom(p.Addr(), 0))
	return ztdnsCapturePrefix{Addr: ep.Addr, Family: ep.Family, Len: uint8(p.Bits())}
}

func (ep ztdnsEndpoint) addrPort() (netip.AddrPort, bool) {
	switch ep.Family {
	case afInet:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(ep.Addr[:4])), ep.Port), true
	case afInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(ep.Addr), ep.Port), true
	}
	return netip.AddrPort{}, false
}

// writeConfig stores the resolver addresses, the staleness bound and the
// nameservers to capture, when they changed. An array map update copies
// over the value in place, and programs read the config all the time: a
// changed config is written whole
// into the config entry the programs do not read, and config_index then
// switches them to it (see struct active_config in bpf/ztdns.h). An
// unchanged one is not written at all.
func (r *Redirector) writeConfig() error {
	var want ztdnsRedirectConfig
	for i := range Slots {
		want.Resolver4[i] = endpointFrom(r.cfg.Resolver4[i])
		want.Resolver6[i] = endpointFrom(r.cfg.Resolver6[i])
	}
	want.StaleAfterNs = uint64(r.cfg.StaleAfter.Nanoseconds())
	want.SocketsPerPod = uint32(r.cfg.SocketsPerPod)
	for i, p := range r.cfg.CaptureNameservers {
		want.CaptureOnly[i] = capturePrefixFrom(p)
	}

	var active ztdnsActiveConfig
	if err := r.objs.ConfigIndex.Lookup(uint32(0), &active); err != nil {
		return fmt.Errorf("read config index: %w", err)
	}
	copies := r.objs.Config.MaxEntries() // ZTDNS_CONFIG_COPIES
	var have ztdnsRedirectConfig
	if active.Index < copies {
		if err := r.objs.Config.Lookup(active.Index, &have); err != nil {
			return fmt.Errorf("read config map: %w", err)
		}
		if have == want {
			return nil
		}
	}
	next := (active.Index + 1) % copies
	if err := r.objs.Config.Update(next, &want, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("write config map: %w", err)
	}
	if err := r.objs.ConfigIndex.Update(uint32(0), &ztdnsActiveConfig{Index: next}, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("switch to the new config: %w", err)
	}
	return nil
}

// Mark makes the programs redirect the DNS queries of the network namespace
// with this cookie (see netns.Cookie). Marking a marked pod updates its info
// and keeps its counters and learned nameservers.
//
// Re-marking a pod with the info it has writes nothing: a write replaces
// the counters with what Mark read, losing what the programs added since
// (BPF_F_LOCK would not order the read against their atomic adds).
func (r *Redirector) Mark(cookie uint64, pod PodInfo) error {
	if pod.IPv4.IsValid() && !pod.IPv4.Is4() {
		return fmt.Errorf("mark: %s is not an IPv4 address", pod.IPv4)
	}
	if pod.IPv6.IsValid() && (!pod.IPv6.Is6() || pod.IPv6.Is4In6()) {
		return fmt.Errorf("mark: %s is not an IPv6 address", pod.IPv6)
	}
	key := ztdnsPodKey{NetnsCookie: cookie}
	var val ztdnsPodInfo
	err := r.objs.Pods.Lookup(&key, &val)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("mark: read pod: %w", err)
	}
	marked := err == nil
	flags := uint32(pod.Flags)
	var ipv4 [4]byte
	var ipv6 [16]byte
	if pod.IPv4.IsValid() {
		ipv4 = pod.IPv4.As4()
	}
	if pod.IPv6.IsValid() {
		ipv6 = pod.IPv6.As16()
	}
	if marked && val.Flags == flags && val.Ipv4 == ipv4 && val.Ipv6 == ipv6 {
		return nil
	}
	val.Flags, val.Ipv4, val.Ipv6 = flags, ipv4, ipv6
	if err := r.objs.Pods.Update(&key, &val, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("mark netns cookie %d: %w", cookie, err)
	}
	return nil
}

// SlotIdle is ZTDNS_SLOT_IDLE_NS: a slot no query, restored reply or
// getpeername went through for this long may be given to another
// destination of its pod, and an unmarked pod's is forgotten
// (SweepNameservers).
const SlotIdle = 30 * time.Second

// SlotUnconfirmedIdle is ZTDNS_SLOT_UNCONFIRMED_IDLE_NS, SlotIdle for an
// unconfirmed slot (LearnedNameserver.Unconfirmed; why: ZTDNS_NS_UNCONFIRMED
// in bpf/ztdns.h).
const SlotUnconfirmedIdle = 2 * time.Second

// Unmark stops redirecting the network namespace. Unmarking an unmarked
// cookie is not an error.
//
// The nameservers learned for it stay until they are idle, when
// SweepNameservers forgets them: released pods keep their slots (why: struct
// nameserver in bpf/ztdns.h).
func (r *Redirector) Unmark(cookie uint64) error {
	if err := r.objs.Pods.Delete(&ztdnsPodKey{NetnsCookie: cookie}); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unmark netns cookie %d: %w", cookie, err)
	}
	return nil
}

// idleFor is how long a slot last used at last (its last_used_ns) has
// been idle at now, both CLOCK_MONOTONIC in nanoseconds. A last_used_ns a
// hair ahead of now (written by another CPU) is no idleness at all.
func idleFor(now, last uint64) time.Duration {
	if now <= last {
		return 0
	}
	return time.Duration(now - last)
}

// SweepNameservers forgets the nameservers learned for network namespaces
// that are not marked once they have been idle for SlotIdle, and returns
// how many slots it removed. Unmark leaves them for the sockets connected
// while the pod was captured (struct nameserver in bpf/ztdns.h); a program
// that found the pod marked just before Unmark removed it can learn one
// just after; and a pods map replaced for an incompatible layout (an
// upgrade) loses marks whose slots stay. Nothing else removes them, and
// once the nameservers map is full no pod learns a new nameserver
// (nameserver_failed counts it). A slot stays at most SlotIdle after its
// last use plus the time to the next sweep; a released pod keeps at most
// its Slots slots for as long as its sockets are answered through them.
//
// Callers do not Mark concurrently (the capture controller holds its lock):
// a slot learned by a pod marked between the sweep's look at the pods map
// and its delete would be forgotten, and learned again by its next query.
//
// It also removes the socket counts (struct pod_socket_count in
// bpf/ztdns.h) of network namespaces that are not marked and hold no
// socket with a record; they are not among the slots it returns. A count
// outlives the mark while such sockets stay open, so that their closing is
// still taken off it should the pod be marked again.
func (r *Redirector) SweepNameservers() (int, error) {
	now, err := monotonicNow()
	if err != nil {
		return 0, fmt.Errorf("sweep nameservers: %w", err)
	}
	marked := map[uint64]bool{}
	isMarked := func(cookie uint64) (bool, error) {
		m, seen := marked[cookie]
		if !seen {
			var err error
			if m, err = r.isMarked(cookie); err != nil {
				return false, fmt.Errorf("sweep nameservers: %w", err)
			}
			marked[cookie] = m
		}
		return m, nil
	}
	_, removed, err := r.forgetSlots("sweep nameservers", func(key ztdnsNameserverKey, val ztdnsNameserver) (bool, error) {
		if idleFor(now, val.LastUsedNs) <= SlotIdle {
			return false, nil
		}
		m, err := isMarked(key.NetnsCookie)
		return !m, err
	})
	if err != nil {
		return removed, err
	}
	return removed, r.forgetSocketCounts(isMarked)
}

// forgetSocketCounts removes the socket counts of network namespaces that
// are not marked and hold no socket with a record (deletePicked). A
// program that found the pod marked just before Unmark can count a socket
// between the look and the delete: that socket is then not counted, and
// taken off nothing when it closes (sock_release finds no count), one
// socket more the pod may hold until it closes.
func (r *Redirector) forgetSocketCounts(isMarked func(uint64) (bool, error)) error {
	_, _, err := deletePicked(r.objs.PodSockets, "sweep socket counts", func(key ztdnsPodKey, val ztdnsPodSocketCount) (bool, error) {
		if val.Held > 0 {
			return false, nil
		}
		m, err := isMarked(key.NetnsCookie)
		return !m, err
	}, func(k ztdnsPodKey) string { return fmt.Sprintf("netns cookie %d", k.NetnsCookie) })
	return err
}

// forgetAllSocketCounts removes every pod's socket count (struct
// pod_socket_count in bpf/ztdns.h), for attachHook when it has attached
// sock_release anew: the link was gone or defunct (`bpftool link detach`,
// an older release's uninstall after a rollback, which detaches every
// ztdns link but leaves the pins it does not know, a move to another
// cgroup), so sockets that closed meanwhile were never taken off, and the
// pinned counts may hold pods at sockets they no longer have for as long as
// they live. Forgotten, a pod's count starts again from its next socket:
// the sockets counted before that are still open are not in it, and each
// one takes one off it when it closes, so the pod may hold that many over
// the cap until they have closed (the undercount an upgrade from a release
// before the cap costs too). Called after sock_release is attached, so no
// socket closes uncounted between the two.
//
// A recount would be exact: a BPF iterator over the sockets map
// (bpf_iter__bpf_sk_storage_map) can count the records marked counted by
// the network namespace of their socket. It is not worth a program of its
// own for what only a detached link, or a rollback's uninstall, causes.
func (r *Redirector) forgetAllSocketCounts() error {
	var pods int
	var sockets int64
	_, removed, err := deletePicked(r.objs.PodSockets, "forget socket counts", func(_ ztdnsPodKey, val ztdnsPodSocketCount) (bool, error) {
		pods++
		sockets += max(val.Held, 0)
		return true, nil
	}, func(k ztdnsPodKey) string { return fmt.Sprintf("netns cookie %d", k.NetnsCookie) })
	if pods > 0 {
		r.log.Warn(socketCountsForgotten, "pods", pods, "removed", removed, "sockets", sockets)
	}
	return err
}

// socketCountsForgotten is forgetAllSocketCounts' warning.
const socketCountsForgotten = "forgot the socket counts of every pod: sock_release was not attached, so sockets closed meanwhile were never taken off; " +
	"until the sockets open now have closed, a pod may hold as many over the cap"

// forgetUnlisted removes the slots holding a nameserver outside
// Config.CaptureNameservers, when it is set. The programs check the list
// only when they learn a slot, and slots outlive the agent: one learned
// before the list was set (or shortened) would otherwise keep taking a
// pod's queries to that nameserver through the node, over a socket
// connected to the slot or sent to the slot's address directly.
func (r *Redirector) forgetUnlisted() error {
	if len(r.cfg.CaptureNameservers) == 0 {
		return nil
	}
	unlisted, _, err := r.forgetSlots("forget unlisted nameservers", func(_ ztdnsNameserverKey, val ztdnsNameserver) (bool, error) {
		ap, ok := val.Server.addrPort()
		return !ok || !Listed(r.cfg.CaptureNameservers, ap.Addr()), nil
	})
	if unlisted > 0 {
		r.log.Info("forgot learned nameservers outside the capture list", "slots", unlisted)
	}
	return err
}

// forgetSlots deletes the nameserver slots drop picks (deletePicked). It
// returns how many slots drop picked and how many it removed.
func (r *Redirector) forgetSlots(what string, drop func(ztdnsNameserverKey, ztdnsNameserver) (bool, error)) (picked, removed int, err error) {
	return deletePicked(r.objs.Nameservers, what, drop, func(k ztdnsNameserverKey) string {
		return fmt.Sprintf("netns cookie %d slot %d", k.NetnsCookie, k.Slot)
	})
}

// deletePicked deletes the entries of m that drop picks, after the walk:
// deleting during it can make a hash map's iteration start over. It returns
// how many entries drop picked and how many it removed (an entry already
// gone is not an error); what and name name the errors.
func deletePicked[K, V any](m *ebpf.Map, what string, drop func(K, V) (bool, error), name func(K) string) (picked, removed int, err error) {
	var (
		key   K
		val   V
		picks []K
	)
	it := m.Iterate()
	for it.Next(&key, &val) {
		d, err := drop(key, val)
		if err != nil {
			return 0, 0, err
		}
		if d {
			picks = append(picks, key)
		}
	}
	if err := it.Err(); err != nil {
		return 0, 0, fmt.Errorf("%s: list: %w", what, err)
	}
	var errs []error
	for _, k := range picks {
		err := m.Delete(&k)
		switch {
		case err == nil:
			removed++
		case !errors.Is(err, ebpf.ErrKeyNotExist):
			errs = append(errs, fmt.Errorf("%s: %s: %w", what, name(k), err))
		}
	}
	return len(picks), removed, errors.Join(errs...)
}

func (r *Redirector) isMarked(cookie uint64) (bool, error) {
	var val ztdnsPodInfo
	err := r.objs.Pods.Lookup(&ztdnsPodKey{NetnsCookie: cookie}, &val)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	return err == nil, err
}

// Nameserver returns the nameserver the pod with this netns cookie addressed
// through slot, i.e. where a query it sent to resolver address slot was
// meant to go.
func (r *Redirector) Nameserver(cookie uint64, slot int) (netip.AddrPort, bool) {
	ns, err := r.nameserver(cookie, slot)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return ns.Server.addrPort()
}

// ForwardedNameserver is Nameserver for a query the resolver forwards: it
// also reports whether the slot is still unconfirmed
// (LearnedNameserver.Unconfirmed), which ConfirmNameserver then clears.
func (r *Redirector) ForwardedNameserver(cookie uint64, slot int) (ns netip.AddrPort, unconfirmed, ok bool) {
	val, err := r.nameserver(cookie, slot)
	if err != nil {
		return netip.AddrPort{}, false, false
	}
	ns, ok = val.Server.addrPort()
	return ns, ok && val.Flags&nsUnconfirmed != 0, ok
}

// ConfirmNameserver clears the slot's ZTDNS_NS_UNCONFIRMED when it still
// holds server: a query that arrived on it is being forwarded there, so the
// slot is real DNS traffic, not an address-sorting probe. A socket
// connected once and kept (c-ares keeps one per nameserver) sends with
// send(), which no hook sees; the programs confirm its slot only when it
// reads a reply asking its source. Until then the slot could be given to
// another destination after SlotUnconfirmedIdle, and the kept socket's next
// queries forwarded there; a slow first reply (an upstream that takes
// seconds, a resolver retrying on the same socket) would take that long.
//
// It writes only when the flag is set and the slot holds server, and never
// creates a slot (BPF_F_EXIST). A lookup and an update are no
// compare-and-swap: a program may give the slot away, or touch it, between
// the two; the slot was just used by the forwarded query, so the window is
// a few microseconds in the rare case that it was idle anyway.
func (r *Redirector) ConfirmNameserver(cookie uint64, slot int, server netip.AddrPort) error {
	val, err := r.nameserver(cookie, slot)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("confirm netns cookie %d slot %d: %w", cookie, slot, err)
	}
	if ap, ok := val.Server.addrPort(); !ok || ap != netip.AddrPortFrom(server.Addr().Unmap(), server.Port()) || val.Flags&nsUnconfirmed == 0 {
		return nil
	}
	val.Flags &^= nsUnconfirmed
	key := ztdnsNameserverKey{NetnsCookie: cookie, Slot: uint32(slot)}
	if err := r.nameservers.Load().Update(&key, &val, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("confirm netns cookie %d slot %d: %w", cookie, slot, err)
	}
	return nil
}

func (r *Redirector) nameserver(cookie uint64, slot int) (ztdnsNameserver, error) {
	var ns ztdnsNameserver
	if slot < 0 || slot >= Slots {
		return ns, fmt.Errorf("slot %d out of range", slot)
	}
	key := ztdnsNameserverKey{NetnsCookie: cookie, Slot: uint32(slot)}
	return ns, r.nameservers.Load().Lookup(&key, &ns)
}

// Pods lists the marked pods, ordered by netns cookie.
func (r *Redirector) Pods() ([]MarkedPod, error) {
	var (
		key  ztdnsPodKey
		val  ztdnsPodInfo
		pods []MarkedPod
	)
	now, err := monotonicNow()
	if err != nil {
		return nil, err
	}
	it := r.objs.Pods.Iterate()
	for it.Next(&key, &val) {
		p := MarkedPod{
			NetnsCookie: key.NetnsCookie,
			PodInfo:     PodInfo{Flags: PodFlags(val.Flags)},
			Counters: PodCounters{
				Redirected:   val.Redirected,
				Restored:     val.Restored,
				SkippedStale: val.SkippedStale,
			},
		}
		if val.Ipv4 != ([4]byte{}) {
			p.IPv4 = netip.AddrFrom4(val.Ipv4)
		}
		if val.Ipv6 != ([16]byte{}) {
			p.IPv6 = netip.AddrFrom16(val.Ipv6)
		}
		var held ztdnsPodSocketCount
		if err := r.objs.PodSockets.Lookup(&key, &held); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, fmt.Errorf("read socket count: %w", err)
		}
		p.Sockets = held.Held
		for slot := range Slots {
			ns, err := r.nameserver(key.NetnsCookie, slot)
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("read nameserver: %w", err)
			}
			learned := &p.Nameservers[slot]
			learned.Addr, _ = ns.Server.addrPort()
			learned.Idle = idleFor(now, ns.LastUsedNs)
			learned.Unconfirmed = ns.Flags&nsUnconfirmed != 0
		}
		pods = append(pods, p)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	slices.SortFunc(pods, func(a, b MarkedPod) int { return cmp.Compare(a.NetnsCookie, b.NetnsCookie) })
	return pods, nil
}

// Counters returns the node-wide counters summed over all CPUs.
func (r *Redirector) Counters() (Counters, error) {
	var perCPU []ztdnsNodeCounters
	if err := r.objs.Counters.Lookup(uint32(0), &perCPU); err != nil {
		return Counters{}, fmt.Errorf("read counters: %w", err)
	}
	var c Counters
	for _, v := range perCPU {
		c.Redirected += v.Redirected
		c.Restored += v.Restored
		c.SkippedStale += v.SkippedStale
		c.SkippedPaused += v.SkippedPaused
		c.SkippedNoResolver += v.SkippedNoResolver
		c.SkippedSlotsFull += v.SkippedSlotsFull
		c.SkippedLocal += v.SkippedLocal
		c.NameserverLearned += v.NameserverLearned
		c.NameserverReplaced += v.NameserverReplaced
		c.NameserverFailed += v.NameserverFailed
		c.SocketStorageFailed += v.SocketStorageFailed
		c.SkippedNotListed += v.SkippedNotListed
		c.SkippedSocketsFull += v.SkippedSocketsFull
	}
	return c, nil
}
