//go:build linux

package resolver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// kernelRate applies the per-source query rate to UDP in the kernel: a
// socket filter on the resolver's UDP sockets drops a datagram from a
// source over its rate before it takes a place in the receive queue.
//
// Dropping it in the resolver is not enough. Reading a datagram costs the
// kernel more than sending one costs the sender, so one pod at full speed
// (~100,000 queries a second) overflows the queue whenever the reader
// waits for a CPU, and the kernel then drops every pod's queries alike.
// Here the excess costs two map lookups on the sender's CPU, and the queue
// holds only what the rates allow.
//
// The rate is the resolver's (GCRA, quota.Rate), kept per key in an LRU
// map: a known pod's key for each of its addresses (so a dual-stack pod
// has one rate, as over TCP) and for the link it is behind (so its
// link-local addresses are the pod too), the source address itself for
// any other source, and for a link-local one its link's key (so a client
// on a link gets one rate however many fe80:: addresses it takes).
// Concurrent updates from several CPUs are not atomic: a source
// sending from several CPUs at once may get a little more than its rate,
// one query for each update lost to another CPU's (the resolver does not
// check again on a socket the filter is on).
type kernelRate struct {
	sources      *ebpf.Map
	dropped      *ebpf.Map // one entry: every datagram the filter dropped
	podAddrs     *ebpf.Map // a known pod's address or link key -> the pod's key
	prog4, prog6 *ebpf.Program
	log          *slog.Logger

	mu      sync.Mutex                     // serialises followPods; guards the fields below
	addrs   map[netip.Addr][16]byte        // what podAddrs holds (a link as its key, linkKey)
	keys    map[*quota.Source][16]byte     // each known pod's key, by its quota: the pod's identity while it is known
	links   map[*quota.Source][]netip.Addr // the link keys of each pod's links (podDrops)
	lastKey uint64                         // keys are never reused
	left    int                            // addresses podAddrs had no room for
}

// kernelRateSources bounds the keys the kernel remembers (the least
// recently seen is forgotten first, and starts again with a full burst
// when it returns).
const kernelRateSources = 4096

// lruLocalFree is how many free entries each CPU of a common LRU map may
// hold back for itself (LOCAL_FREE_TARGET in the kernel's bpf_lru_list.c).
// Before Linux 6.16 ("bpf: Adjust free target to avoid global starvation
// of LRU map") a CPU took free entries in batches of this many whatever the
// map's size, so on a node with many CPUs a map of kernelRateSources began
// forgetting keys (each back with a full burst) long before it held that
// many.
const lruLocalFree = 128

// kernelRateSourcesMax is the sources map's size: kernelRateSources keys
// with room besides for what the CPUs hold back (on 96 CPUs 12,288 entries
// more, about 1.2 MB preallocated).
func kernelRateSourcesMax() (uint32, error) {
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return 0, fmt.Errorf("counting CPUs: %w", err)
	}
	return uint32(kernelRateSources + lruLocalFree*cpus), nil
}

// maxPods is how many pods capture can mark: bpf/ztdns.h's ZTDNS_MAX_PODS
// (TestMaxPodsMatchesTheHeader).
const maxPods = 16384

// kernelRatePodAddrs bounds the pod addresses and links with their pod's
// key: three (IPv4, IPv6 and its veth) for each pod capture can mark. The
// map is not preallocated: it takes memory for the pods there are. An
// address or link past it keeps a key of its own. A variable: tests fill a
// smaller map.
var kernelRatePodAddrs = 3 * maxPods

// podKeyPrefix starts every pod key: 100::/64 (RFC 6666, discard only) is
// no source a datagram comes from, so no address's own key is a pod's. A
// dump of ztdns_sources shows pods as 100::1, 100::2, …
var podKeyPrefix = [8]byte{0x01}

func podKey(n uint64) [16]byte {
	var k [16]byte
	copy(k[:], podKeyPrefix[:])
	binary.BigEndian.PutUint64(k[8:], n)
	return k
}

// linkKey is the key the filter charges a link-local source (fe80::/10)
// to: fe80:0:IFINDEX:: (the interface index in bytes 4 to 7, big-endian;
// index 7 is fe80:0:0:7::), the link it came in on, whatever its address.
// The filter looks it up in podAddrs as it does an address, so the link a
// pod is behind has the pod's key. No source's own key is one: every
// fe80::/10 source is charged to its link's.
func linkKey(ifindex uint32) netip.Addr {
	var k [16]byte
	k[0], k[1] = 0xfe, 0x80
	binary.BigEndian.PutUint32(k[4:], ifindex)
	return netip.AddrFrom16(k)
}

// kernelSource is the value of the sources map: the theoretical arrival
// time of the source's next query (CLOCK_MONOTONIC ns, bpf_ktime_get_ns's
// clock), and how many of its datagrams the filter dropped in all.
type kernelSource struct {
	TAT   uint64
	Drops uint64
}

func newKernelRate(r quota.Rate, log *slog.Logger) (*kernelRate, error) {
	size, err := kernelRateSourcesMax()
	if err != nil {
		return nil, err
	}
	sources, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "ztdns_sources",
		Type:       ebpf.LRUHash,
		KeySize:    16,
		ValueSize:  16,
		MaxEntries: size,
	})
	if err != nil {
		return nil, fmt.Errorf("sources map: %w", err)
	}
	// The sum of the sources' drops is no counter: a key the LRU map
	// forgets takes its drops with it. So the filter counts each drop
	// here too.
	dropped, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "ztdns_drops",
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  8,
		MaxEntries: 1,
	})
	if err != nil {
		sources.Close()
		return nil, fmt.Errorf("drops map: %w", err)
	}
	podAddrs, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "ztdns_pod_addrs",
		Type:       ebpf.Hash,
		KeySize:    16,
		ValueSize:  16,
		MaxEntries: uint32(kernelRatePodAddrs),
		Flags:      unix.BPF_F_NO_PREALLOC,
	})
	if err != nil {
		sources.Close()
		dropped.Close()
		return nil, fmt.Errorf("pod addresses map: %w", err)
	}
	k := &kernelRate{sources: sources, dropped: dropped, podAddrs: podAddrs, log: log, addrs: map[netip.Addr][16]byte{}, keys: map[*quota.Source][16]byte{}}
	interval, tolerance := r.Params()
	if k.prog4, err = loadRateFilter(sources, dropped, podAddrs, interval, tolerance, false); err == nil {
		k.prog6, err = loadRateFilter(sources, dropped, podAddrs, interval, tolerance, true)
	}
	if err != nil {
		k.Close()
		return nil, err
	}
	return k, nil
}

// isLinkLocal6 reports whether ip is in fe80::/10, the sources the IPv6
// filter charges to their link (IPv4's 169.254.0.0/16 are not: each
// address is a source of its own there).
func isLinkLocal6(ip netip.Addr) bool { return ip.Is6() && ip.IsLinkLocalUnicast() }

// skbIngressIfindex is offsetof(struct __sk_buff, ingress_ifindex): the
// interface the datagram was received on (skb->skb_iif). For a pod's
// datagram that is the node's end of its veth, whose transmit hands it to
// the node's stack as received there; the resolver's zone of a link-local
// client is the same index (inet6_iif: IP6CB(skb)->iif, set from that
// device as the datagram enters IPv6, or skb_iif under a VRF). Not
// __sk_buff.ifindex: that is skb->dev, the device the datagram is on now,
// which a VRF replaces with itself while skb_iif changes with it, and
// which the kernel may have cleared (then 0).
const skbIngressIfindex = 36

// loopbackIfindex is the loopback's interface index in every network
// namespace (LOOPBACK_IFINDEX).
const loopbackIfindex = 1

// loadRateFilter loads the socket filter for IPv4 or IPv6 sockets. A key
// (of sources and pod_addrs, 16 bytes) is a source address (IPv4 as
// ::ffff:a.b.c.d), a link, fe80:0:IFINDEX:: (linkKey), or a pod, 100::N
// (podKey). In C:
//
//	key = source address (16 bytes, IPv4 as ::ffff:a.b.c.d)
//	if (skb->ingress_ifindex == 1 (lo) && udp source port < 1024 &&
//	    source address == destination address)
//		keep (the node's own health probe: isNodeProbe)
//	if (v6 && key in fe80::/10)
//		key = fe80:0:IFINDEX:: (linkKey: skb->ingress_ifindex, big-endian)
//	pod = pod_addrs[key]
//	if (pod) key = *pod (the pod's key: one rate for all its addresses)
//	now = bpf_ktime_get_ns()
//	v = sources[key]
//	if (!v) { sources[key] = {now + interval, 0}; keep }
//	next = max(v->tat, now)
//	if (next - now > tolerance) {
//		v->drops += 1; dropped[0] += 1 (both atomically)
//		drop
//	}
//	v->tat = next + interval; keep
func loadRateFilter(sources, dropped, podAddrs *ebpf.Map, interval, tolerance int64, v6 bool) (*ebpf.Program, error) {
	const (
		keyAt     = -16 // the key on the stack: fp-16 .. fp-1
		valueAt   = -32 // a new value: fp-32 .. fp-17
		droppedAt = -40 // dropped's key, 0: fp-40 .. fp-37
		portAt    = -48 // the UDP source port: fp-48 .. fp-47
		dstAt     = -64 // the destination address: fp-64 .. fp-65+srcLen
	)
	srcOff, srcLen, loadTo, dstOff := int32(12), int32(4), int32(keyAt+12), int32(16) // IPv4 header: saddr at 12, daddr at 16
	afterProbe := "pods"
	if v6 {
		srcOff, srcLen, loadTo, dstOff = 8, 16, keyAt, 24 // IPv6 header: saddr at 8, daddr at 24
		afterProbe = "linklocal"
	}
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // r6 = skb
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.RFP, keyAt, asm.R1, asm.DWord),
		asm.StoreMem(asm.RFP, keyAt+8, asm.R1, asm.DWord),
	}
	if !v6 {
		insns = append(insns, asm.StoreImm(asm.RFP, keyAt+10, 0xffff, asm.Half)) // ::ffff:
	}
	insns = append(insns, loadNet(srcOff, loadTo, srcLen)...) // the source address into the key
	insns = append(insns,
		asm.JNE.Imm(asm.R0, 0, "keep"),
		// The node's own health probe (isNodeProbe): from a privileged
		// port, from the address it was sent to, through the loopback (a
		// datagram from the node to itself comes in there). Not from
		// another link: a pod can send IPv6 from the node's address (the
		// node takes it; IPv4 it drops as martian), and from a privileged
		// port of its own network namespace. The datagram starts at its
		// UDP header here (udp_queue_rcv_one_skb filters it so):
		// bpf_skb_load_bytes(skb, 0, fp+portAt, 2).
		asm.LoadMem(asm.R1, asm.R6, skbIngressIfindex, asm.Word),
		asm.JNE.Imm(asm.R1, loopbackIfindex, afterProbe),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, portAt),
		asm.Mov.Imm(asm.R4, 2),
		asm.FnSkbLoadBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, afterProbe),
		asm.LoadMem(asm.R1, asm.RFP, portAt, asm.Half),
		asm.HostTo(asm.BE, asm.R1, asm.Half),
		asm.JGE.Imm(asm.R1, privilegedPorts, afterProbe),
	)
	insns = append(insns, loadNet(dstOff, dstAt, srcLen)...) // the destination address
	insns = append(insns, asm.JNE.Imm(asm.R0, 0, afterProbe))
	if v6 {
		insns = append(insns,
			asm.LoadMem(asm.R1, asm.RFP, keyAt, asm.DWord),
			asm.LoadMem(asm.R2, asm.RFP, dstAt, asm.DWord),
			asm.JNE.Reg(asm.R1, asm.R2, afterProbe),
			asm.LoadMem(asm.R1, asm.RFP, keyAt+8, asm.DWord),
			asm.LoadMem(asm.R2, asm.RFP, dstAt+8, asm.DWord),
			asm.JNE.Reg(asm.R1, asm.R2, afterProbe),
		)
	} else {
		insns = append(insns,
			asm.LoadMem(asm.R1, asm.RFP, keyAt+12, asm.Word),
			asm.LoadMem(asm.R2, asm.RFP, dstAt, asm.Word),
			asm.JNE.Reg(asm.R1, asm.R2, afterProbe),
		)
	}
	insns = append(insns, asm.Ja.Label("keep"))
	if v6 {
		insns = append(insns,
			// fe80::/10, a link-local source: key = its link's (linkKey),
			// or one client would have a rate for each address it takes.
			asm.LoadMem(asm.R1, asm.RFP, keyAt, asm.Byte).WithSymbol("linklocal"),
			asm.JNE.Imm(asm.R1, 0xfe, "pods"),
			asm.LoadMem(asm.R1, asm.RFP, keyAt+1, asm.Byte),
			asm.And.Imm(asm.R1, 0xc0),
			asm.JNE.Imm(asm.R1, 0x80, "pods"),
			asm.StoreImm(asm.RFP, keyAt+1, 0x80, asm.Byte),
			asm.StoreImm(asm.RFP, keyAt+2, 0, asm.Half),
			asm.LoadMem(asm.R1, asm.R6, skbIngressIfindex, asm.Word),
			asm.HostTo(asm.BE, asm.R1, asm.Word),
			asm.StoreMem(asm.RFP, keyAt+4, asm.R1, asm.Word),
			asm.Mov.Imm(asm.R1, 0),
			asm.StoreMem(asm.RFP, keyAt+8, asm.R1, asm.DWord),
		)
	}
	insns = append(insns,
		// A known pod's address or link: key = pod_addrs[key], copied to
		// the stack (the agent may replace the value meanwhile).
		asm.LoadMapPtr(asm.R1, podAddrs.FD()).WithSymbol("pods"),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, keyAt),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "charge"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.StoreMem(asm.RFP, keyAt, asm.R1, asm.DWord),
		asm.LoadMem(asm.R1, asm.R0, 8, asm.DWord),
		asm.StoreMem(asm.RFP, keyAt+8, asm.R1, asm.DWord),
		// r8 = now
		asm.FnKtimeGetNs.Call().WithSymbol("charge"),
		asm.Mov.Reg(asm.R8, asm.R0),
		// r7 = sources[key]
		asm.LoadMapPtr(asm.R1, sources.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, keyAt),
		asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(asm.R0, 0, "found"),
		// A new source: sources[key] = {now + interval, 0}
		asm.LoadImm(asm.R1, interval, asm.DWord),
		asm.Add.Reg(asm.R1, asm.R8),
		asm.StoreMem(asm.RFP, valueAt, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.RFP, valueAt+8, asm.R1, asm.DWord),
		asm.LoadMapPtr(asm.R1, sources.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, keyAt),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, valueAt),
		asm.Mov.Imm(asm.R4, 0), // BPF_ANY
		asm.FnMapUpdateElem.Call(),
		asm.Ja.Label("keep"),
		// next = max(tat, now)
		asm.Mov.Reg(asm.R7, asm.R0).WithSymbol("found"),
		asm.LoadMem(asm.R1, asm.R7, 0, asm.DWord),
		asm.JGE.Reg(asm.R1, asm.R8, "later"),
		asm.Mov.Reg(asm.R1, asm.R8),
		// over the burst: next - now > tolerance
		asm.Mov.Reg(asm.R2, asm.R1).WithSymbol("later"),
		asm.Sub.Reg(asm.R2, asm.R8),
		asm.LoadImm(asm.R3, tolerance, asm.DWord),
		asm.JGT.Reg(asm.R2, asm.R3, "drop"),
		asm.LoadImm(asm.R3, interval, asm.DWord),
		asm.Add.Reg(asm.R1, asm.R3),
		asm.StoreMem(asm.R7, 0, asm.R1, asm.DWord),
		// Keep the whole datagram (the return value is the bytes kept).
		asm.Mov.Imm(asm.R0, -1).WithSymbol("keep"),
		asm.Return(),
		asm.Mov.Imm(asm.R1, 1).WithSymbol("drop"),
		asm.AddAtomic.Mem(asm.R7, asm.R1, asm.DWord, 8),
		// dropped[0] += 1
		asm.StoreImm(asm.RFP, droppedAt, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, dropped.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, droppedAt),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "dropped"),
		asm.Mov.Imm(asm.R1, 1),
		asm.AddAtomic.Mem(asm.R0, asm.R1, asm.DWord, 0),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("dropped"),
		asm.Return(),
	)
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "ztdns_rate",
		Type:         ebpf.SocketFilter,
		License:      "Apache-2.0",
		Instructions: insns,
	})
}

// loadNet is bpf_skb_load_bytes_relative(skb, off, fp+to, n,
// BPF_HDR_START_NET), skb in r6: n bytes of the network header from off
// onto the stack; r0 is 0 once loaded.
func loadNet(off, to, n int32) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, off),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, to),
		asm.Mov.Imm(asm.R4, n),
		asm.Mov.Imm(asm.R5, 1), // BPF_HDR_START_NET
		asm.FnSkbLoadBytesRelative.Call(),
	}
}

// attach puts the filter on a resolver socket (also one inherited from a
// predecessor, whose filter it replaces).
func (k *kernelRate) attach(conn *net.UDPConn) error {
	prog := k.prog4
	if !addrPortOf(conn.LocalAddr()).Addr().Is4() {
		prog = k.prog6
	}
	return setsockoptInt(conn, unix.SOL_SOCKET, unix.SO_ATTACH_BPF, prog.FD())
}

// followPods syncs podAddrs with the pod registry's owners and the pods
// behind the node's links as they are now: read under mu, so that of two
// syncs at once (the first at start-up, a change's) the one that runs last
// has the newest view.
func (k *kernelRate) followPods(owners func() map[netip.Addr]*podcache.Pod, links func() map[uint32]*podcache.Pod) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.sync(owners(), links())
}

// sync, with mu held, makes podAddrs give each address of owners, and the
// link key of each interface of links, its pod's key, and forgets the
// addresses and links no pod owns any longer: they keep their own key
// again. A pod keeps its key while it is known: while the registry keeps
// its quota.Source (by namespace/name). A pod known again later gets a key
// never used before, with a full burst, and an address or link that moves
// to another pod that pod's. A link-local address among owners is left
// out: the filter charges such a source to its link, never looks its
// address up.
func (k *kernelRate) sync(owners map[netip.Addr]*podcache.Pod, links map[uint32]*podcache.Pod) {
	keys := make(map[*quota.Source][16]byte, len(k.keys))
	want := make(map[netip.Addr][16]byte, len(owners)+len(links))
	keyOf := func(p *podcache.Pod) [16]byte {
		key, ok := keys[p.Quota]
		if !ok {
			if key, ok = k.keys[p.Quota]; !ok {
				k.lastKey++
				key = podKey(k.lastKey)
			}
			keys[p.Quota] = key
		}
		return key
	}
	for ip, p := range owners {
		if ip = ip.Unmap(); !isLinkLocal6(ip) {
			want[ip] = keyOf(p)
		}
	}
	podLinks := make(map[*quota.Source][]netip.Addr, len(links))
	for ifindex, p := range links {
		ip := linkKey(ifindex)
		want[ip] = keyOf(p)
		podLinks[p.Quota] = append(podLinks[p.Quota], ip)
	}
	k.links = podLinks
	k.keys = keys
	var errs []error
	// Deletions first: they make room for the new addresses.
	for ip := range k.addrs {
		if _, ok := want[ip]; !ok {
			if err := k.podAddrs.Delete(ip.As16()); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, err)
				continue
			}
			delete(k.addrs, ip)
		}
	}
	left := 0
	for ip, key := range want {
		if old, ok := k.addrs[ip]; ok && old == key {
			continue
		}
		if err := k.podAddrs.Put(ip.As16(), key); err != nil {
			// Never leave the address with another pod's key.
			if derr := k.podAddrs.Delete(ip.As16()); derr == nil || errors.Is(derr, ebpf.ErrKeyNotExist) {
				delete(k.addrs, ip)
			}
			if errors.Is(err, unix.E2BIG) {
				left++
				continue
			}
			errs = append(errs, err)
			continue
		}
		k.addrs[ip] = key
	}
	if left != k.left {
		k.left = left
		if left > 0 {
			k.log.Warn("the kernel's rate filter has no room for every pod address: these keep a rate of their own", "addresses", left, "room", kernelRatePodAddrs)
		}
	}
	if err := errors.Join(errs...); err != nil {
		k.log.Warn("cannot give every pod address its pod's rate in the kernel", "err", err)
	}
}

// keyOf is the key src's datagrams are charged to, and whether it is a
// pod's: a link-local src's is its link's, the interface its zone names
// (a link key, linkKey). Callers hold mu.
func (k *kernelRate) keyOf(src netip.Addr) ([16]byte, bool) {
	if src = src.Unmap(); isLinkLocal6(src) {
		ifindex, _ := strconv.ParseUint(src.Zone(), 10, 32)
		src = linkKey(uint32(ifindex))
	}
	return k.keyAt(src)
}

// keyAt is the key the filter charges for ip, an address or a link key as
// podAddrs has them: its pod's, or its own. Callers hold mu.
func (k *kernelRate) keyAt(ip netip.Addr) ([16]byte, bool) {
	if key, ok := k.addrs[ip]; ok {
		return key, true
	}
	return ip.As16(), false
}

// dropsOf is how many datagrams charged to key the filter dropped.
func (k *kernelRate) dropsOf(key [16]byte) uint64 {
	var v kernelSource
	if k.sources.Lookup(&key, &v) != nil {
		return 0
	}
	return v.Drops
}

// podDrops is how many of p's datagrams the filter dropped: those charged
// to its key, and to each of its addresses and links that has none
// (another pod's key is not p's), each key once.
func (k *kernelRate) podDrops(p *podcache.Pod) uint64 {
	k.mu.Lock()
	own, known := k.keys[p.Quota]
	links := k.links[p.Quota]
	keys := make([][16]byte, 0, len(p.IPs)+len(links))
	add := func(key [16]byte, pods bool) {
		if (!pods || known && key == own) && !slices.Contains(keys, key) {
			keys = append(keys, key)
		}
	}
	for _, ip := range p.IPs {
		add(k.keyOf(ip))
	}
	for _, link := range links {
		add(k.keyAt(link)) // a link key already: keyOf would take it for a link-local address without a zone
	}
	k.mu.Unlock()
	var total uint64
	for _, key := range keys {
		total += k.dropsOf(key)
	}
	return total
}

// totalDrops is how many datagrams the filter dropped since it was
// loaded.
func (k *kernelRate) totalDrops() uint64 {
	var n uint64
	if k.dropped.Lookup(uint32(0), &n) != nil {
		return 0
	}
	return n
}

// Close releases the map and programs; sockets keep the filter they have
// until they close or get another.
func (k *kernelRate) Close() error {
	var errs []error
	for _, p := range []*ebpf.Program{k.prog4, k.prog6} {
		if p != nil {
			errs = append(errs, p.Close())
		}
	}
	return errors.Join(append(errs, k.sources.Close(), k.dropped.Close(), k.podAddrs.Close())...)
}
