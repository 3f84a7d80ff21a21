//go:build linux

package resolver

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

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
// Here the excess costs a map lookup on the sender's CPU, and the queue
// holds only what the rates allow.
//
// The rate is the resolver's (GCRA, quota.Rate), kept per source address
// in an LRU map. Concurrent updates from several CPUs are not atomic: a
// source sending from many CPUs at once may get a little more than its
// rate; the resolver's own check, per pod, catches that.
type kernelRate struct {
	sources      *ebpf.Map
	prog4, prog6 *ebpf.Program
}

// kernelRateSources bounds the source addresses the kernel remembers (the
// least recently seen is forgotten first, and starts again with a full
// burst when it returns).
const kernelRateSources = 4096

// kernelSource is the value of the sources map: the theoretical arrival
// time of the source's next query (CLOCK_MONOTONIC ns, bpf_ktime_get_ns's
// clock), and how many of its datagrams the filter dropped in all.
type kernelSource struct {
	TAT   uint64
	Drops uint64
}

func newKernelRate(r quota.Rate) (*kernelRate, error) {
	sources, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "ztdns_sources",
		Type:       ebpf.LRUHash,
		KeySize:    16,
		ValueSize:  16,
		MaxEntries: kernelRateSources,
	})
	if err != nil {
		return nil, fmt.Errorf("sources map: %w", err)
	}
	k := &kernelRate{sources: sources}
	interval, tolerance := r.Params()
	if k.prog4, err = loadRateFilter(sources, interval, tolerance, false); err == nil {
		k.prog6, err = loadRateFilter(sources, interval, tolerance, true)
	}
	if err != nil {
		k.Close()
		return nil, err
	}
	return k, nil
}

// loadRateFilter loads the socket filter for IPv4 or IPv6 sockets. In C:
//
//	key = source address (16 bytes, IPv4 as ::ffff:a.b.c.d)
//	now = bpf_ktime_get_ns()
//	v = sources[key]
//	if (!v) { sources[key] = {now + interval, 0}; keep }
//	next = max(v->tat, now)
//	if (next - now > tolerance) { v->drops += 1 (atomically); drop }
//	v->tat = next + interval; keep
func loadRateFilter(sources *ebpf.Map, interval, tolerance int64, v6 bool) (*ebpf.Program, error) {
	const (
		keyAt   = -16 // the key on the stack: fp-16 .. fp-1
		valueAt = -32 // a new value: fp-32 .. fp-17
	)
	srcOff, srcLen, loadTo := int32(12), int32(4), int32(keyAt+12) // IPv4 header: saddr at 12
	if v6 {
		srcOff, srcLen, loadTo = 8, 16, keyAt // IPv6 header: saddr at 8
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
	insns = append(insns,
		// bpf_skb_load_bytes_relative(skb, srcOff, fp+loadTo, srcLen, BPF_HDR_START_NET)
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, srcOff),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, loadTo),
		asm.Mov.Imm(asm.R4, srcLen),
		asm.Mov.Imm(asm.R5, 1),
		asm.FnSkbLoadBytesRelative.Call(),
		asm.JNE.Imm(asm.R0, 0, "keep"),
		// r8 = now
		asm.FnKtimeGetNs.Call(),
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
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
	)
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "ztdns_rate",
		Type:         ebpf.SocketFilter,
		License:      "Apache-2.0",
		Instructions: insns,
	})
}

// attach puts the filter on a resolver socket (also one inherited from a
// predecessor, whose filter it replaces).
func (k *kernelRate) attach(conn *net.UDPConn) error {
	prog := k.prog4
	if !addrPortOf(conn.LocalAddr()).Addr().Is4() {
		prog = k.prog6
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_BPF, prog.FD())
	}); err != nil {
		return err
	}
	return serr
}

// drops is how many of src's datagrams the filter dropped.
func (k *kernelRate) drops(src netip.Addr) uint64 {
	key := src.Unmap().As16()
	var v kernelSource
	if k.sources.Lookup(&key, &v) != nil {
		return 0
	}
	return v.Drops
}

// totalDrops is how many datagrams the filter dropped, from every source
// it still remembers.
func (k *kernelRate) totalDrops() uint64 {
	var (
		key   [16]byte
		v     kernelSource
		total uint64
	)
	it := k.sources.Iterate()
	for it.Next(&key, &v) {
		total += v.Drops
	}
	return total
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
	return errors.Join(append(errs, k.sources.Close())...)
}
