//go:build linux

package redirect

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Attachment is what CheckAttachment found: whether the programs still
// capture as this Redirector attached them. Anyone with CAP_BPF or
// CAP_SYS_ADMIN can undo that behind the agent's back: `bpftool link
// detach`, a tool that cleans up cgroup programs, or removing a pin. The
// maps the agent reads (marked pods, counters) say nothing of it: a pod
// stays marked while its queries go straight to its own nameserver.
type Attachment struct {
	// Hooks is how many hooks the programs attach to; Attached how many of
	// them have this Redirector's link attached to the cgroup, running its
	// program.
	Hooks, Attached int
	// Problems says, one line each, what is not as this Redirector left
	// it: a link detached from the cgroup or running another program, a
	// pin gone or holding another link or map. Empty when all is well.
	Problems []string
}

// errNotAttached is CheckAttachment's answer before ApplyConfig attached
// the programs (a Load with KeepConfig): the running agent's are attached.
var errNotAttached = errors.New("the programs are not attached yet")

// CheckAttachment looks, changing nothing, whether each link this
// Redirector holds is still attached to its cgroup and runs its program,
// and whether each pin (the links' and the maps') still holds this
// Redirector's link or map. It costs a few dozen bpf system calls.
func (r *Redirector) CheckAttachment() (Attachment, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a, _, err := r.inspectLocked(false)
	return a, err
}

// RepairAttachment does what CheckAttachment does, and puts back what it
// finds broken and can put back, as Load would: a link detached from the
// cgroup is replaced by a new one, attached and pinned (attach: the
// defunct link's pin is removed first); a pin gone is made again for the
// link or map this Redirector holds. It repairs nothing that is someone
// else's: a link that runs another program (another agent updated it), a
// pin that holds another link or map. repaired says what it did, one line
// each; the Attachment is what is left after it.
//
// The caller must be the only agent using the pins: an agent handing over
// to a successor stops repairing before the successor attaches, or the two
// would each replace the other's links.
func (r *Redirector) RepairAttachment() (left Attachment, repaired []string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inspectLocked(true)
}

func (r *Redirector) inspectLocked(repair bool) (Attachment, []string, error) {
	if r.closed {
		return Attachment{}, nil, errors.New("redirector is closed")
	}
	if len(r.links) != len(hooks) {
		return Attachment{}, nil, errNotAttached
	}
	a := Attachment{Hooks: len(hooks)}
	var repaired []string
	for i, al := range r.links {
		ok, problem, fixed := r.inspectLink(i, al, repair)
		if ok {
			a.Attached++
		}
		if problem != "" {
			a.Problems = append(a.Problems, problem)
		}
		if fixed != "" {
			repaired = append(repaired, fixed)
		}
	}
	for _, name := range mapNames {
		problem, fixed := r.inspectMapPin(name, repair)
		if problem != "" {
			a.Problems = append(a.Problems, problem)
		}
		if fixed != "" {
			repaired = append(repaired, fixed)
		}
	}
	return a, repaired, nil
}

// inspectLink checks r.links[i] (al) and its pin, and with repair puts
// back what it can. ok: the link is attached (again) and runs this
// Redirector's program; problem: what is still wrong; fixed: what was put
// back.
func (r *Redirector) inspectLink(i int, al attachedLink, repair bool) (ok bool, problem, fixed string) {
	name, pin := al.hook.name, linkPinPath(r.cfg.BPFFS, al.hook.name)
	info, err := al.link.Info()
	if err != nil {
		return false, fmt.Sprintf("%s: link %d: %v", name, al.id, err), ""
	}
	var cg uint64
	if c := info.Cgroup(); c != nil {
		cg = c.CgroupId
	}
	pinned, pinErr := pinnedLinkID(pin)
	pinOurs := pinErr == nil && (pinned == 0 || pinned == al.id) // gone, or ours
	pinProblem := ""
	switch {
	case pinErr != nil:
		pinProblem = fmt.Sprintf("%s: pin %s: %v", name, pin, pinErr)
	case pinned == 0:
		pinProblem = fmt.Sprintf("%s: pin %s is gone (the next agent would attach the program a second time)", name, pin)
	case pinned != al.id:
		pinProblem = fmt.Sprintf("%s: pin %s holds link %d, not the attached link %d", name, pin, pinned, al.id)
	}

	switch {
	case info.Program != al.program: // detached or not: it is theirs now
		return false, fmt.Sprintf("%s: link %d runs program %d, not this agent's (%d): another agent replaced it", name, al.id, info.Program, al.program), ""
	case cg != r.cgroupID:
		problem = fmt.Sprintf("%s: link %d is detached from cgroup %s: pods' queries are not captured", name, al.id, r.cfg.CgroupPath)
		if !repair {
			return false, problem, ""
		}
		if !pinOurs { // someone else's pin: not ours to replace
			return false, problem + "; not re-attached: " + pinProblem, ""
		}
		if r.cfg.beforeReattach != nil {
			r.cfg.beforeReattach(al.hook.name)
		}
		// Another agent may pin its link meanwhile (one taking over while
		// this one still checks): attachHook then leaves it be, and
		// attaches nothing (attach, repairing).
		nl, _, err := r.attachHook(al.hook, al.id)
		if err != nil {
			return false, problem + "; re-attaching failed: " + err.Error(), ""
		}
		al.link.Close()
		r.links[i] = nl
		// attachHook goes by path: a cgroup removed and made again there
		// (`systemctl restart` of the service --cgroup names) is a new
		// cgroup, with another id. It is the one the links attach to now;
		// kept at the old id, every check would find them detached.
		if info, err := nl.link.Info(); err == nil && info.Cgroup() != nil && info.Cgroup().CgroupId != 0 {
			r.cgroupID = info.Cgroup().CgroupId
		}
		return true, "", fmt.Sprintf("%s: re-attached to cgroup %s as link %d (link %d had been detached)", name, r.cfg.CgroupPath, nl.id, al.id)
	case pinProblem == "":
		return true, "", ""
	case !repair || pinErr != nil || pinned != 0:
		return true, pinProblem, ""
	}
	if err := pinAgain(pin, func() (interface{ Pin(string) error }, func() error, error) {
		l, err := link.NewFromID(al.id)
		if err != nil {
			return nil, nil, err
		}
		return l, l.Close, nil
	}); err != nil {
		return true, pinProblem + "; pinning it again failed: " + err.Error(), ""
	}
	return true, "", fmt.Sprintf("%s: pinned link %d again at %s", name, al.id, pin)
}

// inspectMapPin checks that the pin of the map name holds the map this
// Redirector uses, and with repair pins it again when the pin is gone.
func (r *Redirector) inspectMapPin(name string, repair bool) (problem, fixed string) {
	want := r.mapIDs[name]
	pin := pinPath(r.cfg.BPFFS, name)
	got, err := pinnedMapID(pin)
	switch {
	case err != nil:
		return fmt.Sprintf("map %s: pin %s: %v", name, pin, err), ""
	case got == want:
		return "", ""
	case got != 0:
		return fmt.Sprintf("map %s: pin %s holds map %d, not this agent's map %d", name, pin, got, want), ""
	}
	problem = fmt.Sprintf("map %s: pin %s is gone (the next agent would start with an empty map)", name, pin)
	if !repair {
		return problem, ""
	}
	if err := pinAgain(pin, func() (interface{ Pin(string) error }, func() error, error) {
		m, err := ebpf.NewMapFromID(want)
		if err != nil {
			return nil, nil, err
		}
		return m, m.Close, nil
	}); err != nil {
		return problem + "; pinning it again failed: " + err.Error(), ""
	}
	return "", fmt.Sprintf("map %s: pinned map %d again at %s", name, want, pin)
}

// pinAgain pins at pin a fresh handle of an object this Redirector holds:
// its own handle believes it is pinned there still, and would not pin.
// The pin directory is made again if it went too.
func pinAgain(pin string, open func() (interface{ Pin(string) error }, func() error, error)) error {
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		return err
	}
	obj, closeObj, err := open()
	if err != nil {
		return err
	}
	defer closeObj()
	return obj.Pin(pin)
}

// pinnedLinkID is the id of the link pinned at pin, 0 when there is none.
func pinnedLinkID(pin string) (link.ID, error) {
	id, err := pinnedID(pin)
	return link.ID(id), err
}

// pinnedMapID is the id of the map pinned at pin, 0 when there is none.
func pinnedMapID(pin string) (ebpf.MapID, error) {
	id, err := pinnedID(pin)
	return ebpf.MapID(id), err
}

// pinnedID is the id of the map or link pinned at pin, 0 when there is
// none: BPF_OBJ_GET, and the head of the object's info, whose type and id
// lead both struct bpf_map_info and struct bpf_link_info (the kernel fills
// as much as it is given). By hand, as the attachment check asks this of
// every pin every few seconds: cilium/ebpf's LoadPinnedMap and
// LoadPinnedLink also read the object's /proc fdinfo and link, about a
// dozen more system calls a pin.
func pinnedID(pin string) (uint32, error) {
	path, err := unix.BytePtrFromString(pin)
	if err != nil {
		return 0, err
	}
	get := struct {
		Pathname         uint64
		BPFFD, FileFlags uint32 // flags 0: read-write, which links require
		PathFD, _        int32
	}{Pathname: uint64(uintptr(unsafe.Pointer(path)))}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_GET, uintptr(unsafe.Pointer(&get)), unsafe.Sizeof(get))
	runtime.KeepAlive(path)
	switch {
	case errno == unix.ENOENT:
		return 0, nil
	case errno != 0:
		return 0, &os.PathError{Op: "bpf obj get", Path: pin, Err: errno}
	}
	defer unix.Close(int(fd))
	var head struct{ Type, ID uint32 }
	if err := objectInfo(int(fd), unsafe.Pointer(&head), unsafe.Sizeof(head)); err != nil {
		return 0, fmt.Errorf("%s: object info: %w", pin, err)
	}
	return head.ID, nil
}

// objectInfo fills the size bytes at info with the head of the bpf
// object's info (BPF_OBJ_GET_INFO_BY_FD): the kernel fills as much of its
// struct as it is given, so a caller passes only the fields it reads.
func objectInfo(fd int, info unsafe.Pointer, size uintptr) error {
	attr := struct {
		FD, InfoLen uint32
		Info        uint64
	}{uint32(fd), uint32(size), uint64(uintptr(info))}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_GET_INFO_BY_FD, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(info)
	if errno != 0 {
		return errno
	}
	return nil
}

func mapID(m *ebpf.Map) (ebpf.MapID, error) {
	info, err := m.Info()
	if err != nil {
		return 0, err
	}
	id, ok := info.ID()
	if !ok {
		return 0, errors.New("the kernel reports no map id")
	}
	return id, nil
}

// loadedMapIDs are the ids of the maps this Redirector uses, by pin name.
func (r *Redirector) loadedMapIDs() (map[string]ebpf.MapID, error) {
	ids := make(map[string]ebpf.MapID, len(mapNames))
	for _, name := range mapNames {
		id, err := mapID(r.mapNamed(name))
		if err != nil {
			return nil, fmt.Errorf("map %s: %w", name, err)
		}
		ids[name] = id
	}
	return ids, nil
}
