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
	"maps"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

const (
	// linksDir holds one pinned bpf_link per hook.
	linksDir = "links"
	// programPrefix marks programs ztdns created: only links running such a
	// program are ever updated or detached.
	programPrefix = "ztdns_"
)

// Redirector holds the loaded programs, their links and maps.
type Redirector struct {
	cfg   Config
	log   *slog.Logger
	objs  ztdnsObjects
	links []attachedLink

	// unattached is set by a Load with KeepConfig until ApplyConfig has
	// attached the programs; replaced names the maps it loaded unpinned in
	// place of pinned ones of another layout or capacity.
	unattached bool
	replaced   []string
	// previous holds, by name, the pinned maps replaced for their capacity
	// alone: ApplyConfig copies their entries (copyPrevious). Kept open
	// until Close: the resolver may still be reading nameservers from one.
	previous map[string]*ebpf.Map
	// nameservers is the map the resolver's lookups read (nameserver):
	// until ApplyConfig attaches the programs, the pinned one the running
	// programs learn in when it was replaced for its capacity alone.
	nameservers atomic.Pointer[ebpf.Map]

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
// of another layout or capacity (given the entries of those of another
// capacity alone), attaches its programs and forgets the nameservers its
// capture list leaves out. (Load without KeepConfig does all this.)
func (r *Redirector) ApplyConfig() error {
	// The config first: a config map loaded afresh holds none until then.
	if err := r.writeConfig(); err != nil {
		return err
	}
	if r.unattached {
		// Before the programs that read them are attached: they find
		// every mark, slot and count from their first query on.
		r.copyPrevious(resizedMaps...)
		if err := r.pinReplaced(); err != nil {
			return err
		}
		if err := r.attachAll(); err != nil {
			return err
		}
		// What the old programs learned while they were swapped out.
		// (pods: they add no entries; pod_sockets: a count attachAll
		// forgot must stay forgotten, and one made meanwhile misses a
		// socket, which the pod may hold over the cap.)
		r.copyPrevious(ztdnsMapNameservers)
		r.nameservers.Store(r.objs.Nameservers)
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
// caller taking over writes the marks it knows before ApplyConfig. (One
// made in place of a pinned one of another capacity alone is given its
// entries by ApplyConfig.)
func (r *Redirector) ReplacingPods() bool {
	return slices.Contains(r.replaced, ztdnsMapPods) && r.previous[ztdnsMapPods] == nil
}

// loadObjects loads programs and maps, reusing pinned maps of this
// release's layout and capacity (pinned.go). A pinned map of another
// layout (an upgrade or a rollback changed ztdns.h) is replaced: marks in
// it are lost and the agent writes them again (a pods map, with
// KeepConfig, before ApplyConfig: ReplacingPods). One of another capacity
// alone (ZTDNS_MAX_PODS) is replaced too, and its entries copied by
// ApplyConfig; until then the resolver reads nameservers from it. With
// KeepConfig a replaced map's pin stays until ApplyConfig: the running
// programs, and the agent marking pods for them, still use it.
func (r *Redirector) loadObjects() (err error) {
	spec, err := loadZtdns()
	if err != nil {
		return err
	}
	changes, err := r.pinnedChanges(spec)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			r.closePrevious()
		}
	}()
	for _, name := range slices.Sorted(maps.Keys(changes)) { // logs that read the same each time
		ch, pin := changes[name], pinPath(r.cfg.BPFFS, name)
		if ch.resized {
			m, err := ebpf.LoadPinnedMap(pin, nil)
			if err != nil {
				return fmt.Errorf("open pinned map %s: %w", pin, err)
			}
			if r.previous == nil {
				r.previous = map[string]*ebpf.Map{}
			}
			r.previous[name] = m
			r.log.Warn("replacing pinned map: capacity changed, entries copied", "pin", pin, "change", ch.reason)
		} else if lost := layoutLoss[name]; lost != "" {
			r.log.Warn("replacing pinned map: layout changed, entries lost", "pin", pin, "change", ch.reason, "lost", lost)
		} else {
			r.log.Info("replacing pinned map: layout changed; the agent writes it afresh, nothing is lost", "pin", pin, "change", ch.reason,
				"written", rewritten[name])
		}
		if r.cfg.KeepConfig {
			spec.Maps[name].Pinning = ebpf.PinNone // pinned by ApplyConfig
			r.replaced = append(r.replaced, name)
		} else if err := r.removePin(name); err != nil {
			return err
		}
	}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: r.cfg.BPFFS}}
	if err := spec.LoadAndAssign(&r.objs, opts); err != nil {
		return fmt.Errorf("load ztdns programs: %w", err)
	}
	if ns := r.previous[ztdnsMapNameservers]; ns != nil {
		r.nameservers.Store(ns)
	} else {
		r.nameservers.Store(r.objs.Nameservers)
	}
	return nil
}

// layoutLoss says, of each map whose entries a Load that replaces it for
// its layout loses, what they held and what losing them does. The others
// hold state the agent writes in full (rewritten): nothing is lost there.
var layoutLoss = map[string]string{
	ztdnsMapPods: "the pods' marks and their counters (ztdns pods): the agent marks its recorded pods again before the new programs redirect " +
		"(taking over, before it switches to them; at a fresh start before its first beat); the counters start again from zero",
	ztdnsMapNameservers: "the nameservers pods addressed, learned again at their next query through a hook: " +
		"until then, the misses of a socket connected before (kept, as c-ares keeps one) go to the fallback upstreams",
	ztdnsMapSockets: "the records of the sockets redirected so far: replies on them no longer come back as from the nameserver the pod addressed " +
		"(clients that check drop them), and their pod's count (--capture-sockets-per-pod) keeps them after they close",
	ztdnsMapPodSockets: "the pods' counts of sockets redirected at once, which start again from zero: " +
		"a pod may hold the sockets open now over --capture-sockets-per-pod until they close",
	ztdnsMapCounters: "the programs' counters (ztdns_capture_events_total), which start again from zero",
}

// rewritten says, of each map the agent writes in full, when it does.
var rewritten = map[string]string{
	ztdnsMapConfig:      "as it starts capturing: the resolver's addresses, the staleness bound, the capture list and the socket bound",
	ztdnsMapConfigIndex: "with config",
	ztdnsMapHeartbeat:   "at its next beat (until then captured pods reach their own nameservers, as at every start)",
}

// closePrevious closes the pinned maps replaced for their capacity.
func (r *Redirector) closePrevious() error {
	var errs []error
	for _, m := range r.previous {
		errs = append(errs, m.Close())
	}
	r.previous = nil
	return errors.Join(errs...)
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
// pinned ones of another layout or capacity, replacing those pins.
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

// removePin removes the pin of a map of another layout or capacity, to
// replace it.
func (r *Redirector) removePin(name string) error {
	if err := os.Remove(pinPath(r.cfg.BPFFS, name)); err != nil {
		return fmt.Errorf("remove the pin of a map to replace: %w", err)
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
// runs in the node's.) A raw system call: it never blocks, and an ordinary
// one (unix.ClockGettime) wakes the runtime's sysmon thread every beat.
func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if _, _, e := unix.RawSyscall(unix.SYS_CLOCK_GETTIME, unix.CLOCK_MONOTONIC, uintptr(unsafe.Pointer(&ts)), 0); e != 0 {
		return 0, fmt.Errorf("read monotonic clock: %w", e)
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
	errs = append(errs, r.objs.Close(), r.closePrevious())
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
