//go:build linux

// Attaching to a cgroup, and why it is done this way.
//
// The programs are attached with bpf_link (BPF_LINK_CREATE, Linux 5.7), not
// with the older BPF_PROG_ATTACH:
//   - A link lives as long as something holds it: a file descriptor or a pin
//     on bpffs. ztdns pins one link per hook under <bpffs>/links, so capture
//     outlives the agent process; removing the pin (and closing every fd)
//     detaches the program.
//   - BPF_LINK_UPDATE (link.Update) swaps the program of a link in one step:
//     there is no moment during an agent upgrade where a hook runs no program
//     or two.
//   - A link whose cgroup was removed is "defunct": it still exists, but
//     updating it fails with ENOLINK. It is unpinned and a new one created.
//   - Links created with BPF_LINK_CREATE on a cgroup always allow other
//     programs on the same hook (BPF_F_ALLOW_MULTI semantics), so ztdns
//     coexists with Cilium's socket LB or anything else attached there, and
//     BPF_LINK_DETACH (Linux 5.9) detaches exactly one link, never someone
//     else's program.
//
// Before updating or detaching a link found at one of its pin paths, ztdns
// checks that the link runs a program whose name starts with "ztdns_"; a
// foreign program found there is left alone and reported.

package redirect

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

func pinPath(bpffs, name string) string { return filepath.Join(bpffs, name) }

func linkPinPath(bpffs, name string) string { return filepath.Join(bpffs, linksDir, name) }

// movingPinPath is where finishMove pins a hook's new link before renaming
// it over the old one's pin: beside it, on the same bpffs (rename(2)
// does not cross filesystems), and without a dot, which bpffs reserves in
// names.
func movingPinPath(bpffs, name string) string { return linkPinPath(bpffs, name+"-moving") }

// cgroupID returns the id the kernel reports for a cgroup in link info: the
// inode number of its cgroupfs directory.
func cgroupID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}

// attachAll attaches every hook's program to the configured cgroup.
//
// Links a previous agent pinned on another cgroup (it had another --cgroup,
// or attached at the cgroup2 root, the default before the pods' cgroup)
// are moved without a moment where no program captures: every hook is
// attached to the new cgroup first, then, in detach order, each new link
// takes the old one's pin and the old one is detached (finishMove). At
// every step each hook has a link attached and pinned or held: an agent
// dying at any step leaves the old links pinned (and the new ones, held
// only by its descriptors, go with it), or the new ones pinned in their
// place (and the old ones go), or, between, a new one pinned at a
// temporary path too, which the next agent removes first
// (removeMovingPins). Meanwhile a pod's
// socket runs both programs, harmlessly: the one on the pods' cgroup (a
// descendant of the root, so it runs first: cgroup.go) redirects a query
// to the resolver's address on --capture-port (10053), where the other
// finds no destination on port 53; it restores a reply's source to the
// nameserver's address, where the other finds no resolver address. The
// other way round (a rollback to the root, or a --cgroup above the old
// one), the old program, on the descendant, runs first and the same holds.
func (r *Redirector) attachAll() error {
	cgID, err := cgroupID(r.cfg.CgroupPath)
	if err != nil {
		return err
	}
	// Refuse before touching anything, rather than half way through.
	for _, h := range hooks {
		if err := checkPinnedLink(linkPinPath(r.cfg.BPFFS, h.name)); err != nil {
			return err
		}
	}
	if err := removeMovingPins(r.cfg.BPFFS); err != nil {
		return err
	}
	mapIDs, err := r.loadedMapIDs()
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.cgroupID, r.mapIDs = cgID, mapIDs
	r.mu.Unlock()
	var moves []*move
	defer func() {
		for _, m := range moves {
			m.old.Close()
		}
	}()
	for _, h := range hooks {
		al, m, err := r.attachHook(h, 0)
		if err != nil {
			return err
		}
		r.mu.Lock() // CheckAttachment may look meanwhile (a scrape)
		r.links = append(r.links, al)
		r.mu.Unlock()
		if m != nil {
			moves = append(moves, m)
		}
	}
	slices.SortStableFunc(moves, func(a, b *move) int { return cmp.Compare(detachRank(a.hook.attach), detachRank(b.hook.attach)) })
	for _, m := range moves {
		if err := r.finishMove(m); err != nil {
			return err
		}
	}
	return nil
}

// move is a hook's link a previous agent pinned on another cgroup, left
// attached while the new one (not pinned yet) is attached beside it.
type move struct {
	hook      hook
	old, new  link.Link
	oldCgroup uint64
}

// finishMove puts m's new link in the place of the old one, in three
// steps, each leaving the hook a link attached and pinned:
//  1. the new link is pinned at a temporary path beside the old one's pin;
//  2. that pin is renamed over the old one's: bpffs directories rename
//     (simple_rename, on every kernel with bpf_link), and a rename(2) onto
//     an existing name replaces it in one step, so the path holds the old
//     link, then the new one, never nothing. The old link, unpinned by
//     that, is held by this agent's descriptor alone;
//  3. the old link is detached (closing the descriptor would do, but not
//     while another process, a previous agent handing over, holds it).
//
// The new link is pinned through a handle of its own: m.new, kept in
// r.links, never believes it is pinned at the temporary path. m.old is not
// unpinned: its pin holds the new link now.
func (r *Redirector) finishMove(m *move) error {
	pin, tmp := linkPinPath(r.cfg.BPFFS, m.hook.name), movingPinPath(r.cfg.BPFFS, m.hook.name)
	info, err := m.new.Info()
	if err != nil {
		return fmt.Errorf("link info: %w", err)
	}
	if err := pinAgain(tmp, func() (interface{ Pin(string) error }, func() error, error) {
		l, err := link.NewFromID(info.ID)
		if err != nil {
			return nil, nil, err
		}
		return l, l.Close, nil
	}); err != nil {
		return fmt.Errorf("pin link %d at %s: %w", info.ID, tmp, err)
	}
	if err := r.moveStep(m.hook, 1); err != nil {
		return err
	}
	if err := os.Rename(tmp, pin); err != nil {
		return errors.Join(fmt.Errorf("put link %d in the place of the previous cgroup's at %s: %w", info.ID, pin, err), os.Remove(tmp))
	}
	if err := r.moveStep(m.hook, 2); err != nil {
		return err
	}
	if err := m.old.Detach(); err != nil && !errors.Is(err, unix.ENOLINK) {
		return fmt.Errorf("detach the link %s held from its previous cgroup: %w", pin, err)
	}
	if err := r.moveStep(m.hook, 3); err != nil {
		return err
	}
	r.log.Info("moved from previous cgroup", "program", m.hook.name, "previous_cgroup_id", m.oldCgroup, "cgroup", r.cfg.CgroupPath, "pin", pin)
	return nil
}

func (r *Redirector) moveStep(h hook, step int) error {
	if r.cfg.afterMoveStep == nil {
		return nil
	}
	return r.cfg.afterMoveStep(h.name, step)
}

// removeMovingPins removes the links an agent that died moving its links
// (finishMove) left pinned at a temporary path: each is a new link beside
// the old one, which is still pinned in its place and attached.
func removeMovingPins(bpffs string) error {
	var errs []error
	for _, h := range hooks {
		tmp := movingPinPath(bpffs, h.name)
		if _, err := os.Lstat(tmp); err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		errs = append(errs, removePinnedLink(tmp))
	}
	return errors.Join(errs...)
}

// attachHook attaches h (attach, repairing: see there) and notes which
// link and program that is.
// A sock_release attached anew (none was attached, or only a defunct link)
// makes the pinned socket counts untrustworthy: forgetAllSocketCounts. One
// moved from another cgroup does not: the old one ran until the new one
// did (a socket closing while both run is taken off twice, at most down
// to 0).
func (r *Redirector) attachHook(h hook, repairing link.ID) (attachedLink, *move, error) {
	l, created, m, err := r.attach(h, repairing)
	if err != nil {
		return attachedLink{}, nil, fmt.Errorf("attach %s to %s: %w", h.name, r.cfg.CgroupPath, err)
	}
	fail := func(err error) (attachedLink, *move, error) {
		errs := []error{fmt.Errorf("attach %s: %w", h.name, err), l.Close()}
		if m != nil {
			errs = append(errs, m.old.Close())
		}
		return attachedLink{}, nil, errors.Join(errs...)
	}
	info, err := l.Info()
	if err != nil {
		return fail(fmt.Errorf("link info: %w", err))
	}
	if created && h.attach == ebpf.AttachCgroupInetSockRelease {
		if err := r.forgetAllSocketCounts(); err != nil {
			return fail(err)
		}
	}
	return attachedLink{hook: h, link: l, id: info.ID, program: info.Program}, m, nil
}

// attach updates the pinned link of hook h to the newly loaded program, or
// creates and pins a link when there is none (or only a defunct one). A
// pinned link of ztdns's on another cgroup is left attached and pinned: a
// new link is attached, not pinned, and m holds both until finishMove.
// created: the link is a new one, and no ztdns program ran on the hook
// until now.
//
// repairing, when not 0, is the link of this Redirector's that was found
// detached (RepairAttachment): the pin must hold it, or nothing. Any other
// link found there, and one on another cgroup, is another agent's, come
// since: attach then fails before it attaches anything, leaving it be.
func (r *Redirector) attach(h hook, repairing link.ID) (l link.Link, created bool, m *move, err error) {
	prog := h.program(&r.objs.ztdnsPrograms)
	pin := linkPinPath(r.cfg.BPFFS, h.name)
	cgID, err := cgroupID(r.cfg.CgroupPath)
	if err != nil {
		return nil, false, nil, err
	}

	pinned, err := link.LoadPinnedLink(pin, nil)
	switch {
	case errors.Is(err, os.ErrNotExist):
		// First start.
	case err != nil:
		return nil, false, nil, fmt.Errorf("open pinned link %s: %w", pin, err)
	default:
		if repairing != 0 {
			if err := checkRepairing(pinned, repairing, cgID); err != nil {
				pinned.Close()
				return nil, false, nil, fmt.Errorf("pin %s: %w", pin, err)
			}
		}
		if other := elsewhere(pinned, cgID); other != 0 {
			nl, err := r.newLink(h, prog)
			if err != nil {
				pinned.Close()
				return nil, false, nil, err
			}
			r.log.Info("attached beside the previous cgroup's link", "program", h.name, "cgroup", r.cfg.CgroupPath, "previous_cgroup_id", other)
			return nl, false, &move{hook: h, old: pinned, new: nl, oldCgroup: other}, nil
		}
		updated, err := r.updatePinned(pinned, h, pin, prog)
		if err != nil || updated {
			if err != nil {
				pinned.Close()
				return nil, false, nil, err
			}
			return pinned, false, nil, nil
		}
		pinned.Close()
	}

	nl, err := r.newLink(h, prog)
	if err != nil {
		return nil, false, nil, err
	}
	if err := nl.Pin(pin); err != nil {
		return nil, false, nil, errors.Join(fmt.Errorf("pin link: %w", err), nl.Close())
	}
	r.log.Info("attached", "program", h.name, "cgroup", r.cfg.CgroupPath, "pin", pin)
	return nl, true, nil, nil
}

// checkRepairing fails unless l, found pinned where a repair of link own
// looks, is own, and not attached to a cgroup other than cgID: a repair
// never moves a link (finishMove), it replaces its own detached one.
func checkRepairing(l link.Link, own link.ID, cgID uint64) error {
	info, err := l.Info()
	if err != nil {
		return fmt.Errorf("link info: %w", err)
	}
	if info.ID != own {
		return fmt.Errorf("holds link %d, not the detached link %d: another agent's, left alone", info.ID, own)
	}
	if other := elsewhere(l, cgID); other != 0 {
		return fmt.Errorf("holds link %d, attached to cgroup %d: left alone", info.ID, other)
	}
	return nil
}

// elsewhere is the cgroup l (a pinned link of ztdns's: checkPinnedLink)
// attaches to when that is not cgID; 0 when it is, or when l is defunct.
func elsewhere(l link.Link, cgID uint64) uint64 {
	info, err := l.Info()
	if err != nil || info.Cgroup() == nil {
		return 0
	}
	if cg := info.Cgroup().CgroupId; cg != cgID {
		return cg
	}
	return 0
}

// newLink attaches prog to the configured cgroup through a new bpf_link,
// not pinned.
func (r *Redirector) newLink(h hook, prog *ebpf.Program) (link.Link, error) {
	cg, err := os.Open(r.cfg.CgroupPath)
	if err != nil {
		return nil, fmt.Errorf("open cgroup: %w", err)
	}
	defer cg.Close()
	raw, err := link.AttachRawLink(link.RawLinkOptions{
		Target:  int(cg.Fd()),
		Program: prog,
		Attach:  h.attach,
	})
	if err != nil {
		return nil, fmt.Errorf("create bpf_link (cgroup links need Linux 5.7+): %w", err)
	}
	defer raw.Close()
	// Reopen by id: that yields the cgroup link type, whose Info reports
	// the cgroup (a raw link's does not).
	info, err := raw.Info()
	if err != nil {
		return nil, fmt.Errorf("link info: %w", err)
	}
	typed, err := link.NewFromID(info.ID)
	if err != nil {
		return nil, fmt.Errorf("reopen link %d: %w", info.ID, err)
	}
	return typed, nil
}

// updatePinned swaps prog into the pinned link l, attached to the
// configured cgroup. It reports false when the link is defunct (its cgroup
// is gone, or it was detached: a detached link reports cgroup id 0): the
// link has then been unpinned and the caller creates a new one.
func (r *Redirector) updatePinned(l link.Link, h hook, pin string, prog *ebpf.Program) (bool, error) {
	info, err := ownedLinkInfo(l)
	if err != nil {
		return false, fmt.Errorf("pinned link %s: %w", pin, err)
	}
	linkCg := uint64(0)
	if cg := info.Cgroup(); cg != nil {
		linkCg = cg.CgroupId
	}

	switch {
	case linkCg == 0:
		// Defunct: its cgroup is gone, or it was detached from it.
	default:
		err := l.Update(prog)
		if err == nil {
			r.log.Info("updated", "program", h.name, "link_id", info.ID)
			return true, nil
		}
		if !errors.Is(err, unix.ENOLINK) {
			return false, fmt.Errorf("update link %s: %w", pin, err)
		}
	}
	if err := l.Unpin(); err != nil {
		return false, fmt.Errorf("unpin link %s: %w", pin, err)
	}
	r.log.Info("unpinned stale link", "program", h.name, "pin", pin)
	return false, nil
}

// checkPinnedLink fails if pin holds a link that is not ztdns's.
func checkPinnedLink(pin string) error {
	return withOwnedPinnedLink(pin, func(link.Link, *link.Info) error { return nil })
}

// withOwnedPinnedLink calls f with the link pinned at pin and its info, if
// there is one and it runs a ztdns program; a link of anyone else's is an
// error.
func withOwnedPinnedLink(pin string, f func(link.Link, *link.Info) error) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open pinned link %s: %w", pin, err)
	}
	defer l.Close()
	info, err := ownedLinkInfo(l)
	if err != nil {
		return fmt.Errorf("pinned link %s: %w", pin, err)
	}
	return f(l, info)
}

// ownedLinkInfo returns l's info if l is a cgroup link running a ztdns
// program, and an error naming what it found otherwise.
func ownedLinkInfo(l link.Link) (*link.Info, error) {
	info, err := l.Info()
	if err != nil {
		return nil, fmt.Errorf("link info: %w", err)
	}
	if info.Type != link.CgroupType {
		return nil, fmt.Errorf("link %d is a link of type %d, not a ztdns cgroup link: refusing to touch it", info.ID, info.Type)
	}
	name, err := programName(info.Program)
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(name, programPrefix) {
		return nil, fmt.Errorf("link %d runs program %q, not a ztdns program: refusing to touch it", info.ID, name)
	}
	return info, nil
}

func programName(id ebpf.ProgramID) (string, error) {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return "", fmt.Errorf("open program %d: %w", id, err)
	}
	defer p.Close()
	pi, err := p.Info()
	if err != nil {
		return "", fmt.Errorf("program %d info: %w", id, err)
	}
	return pi.Name, nil
}

// Link describes one attached hook.
type Link struct {
	Program   string          // C function name, e.g. "ztdns_connect4"
	LinkID    link.ID         // stays the same across agent restarts
	ProgramID ebpf.ProgramID  // changes with every Load
	Attach    ebpf.AttachType // the cgroup hook
	CgroupID  uint64          // 0 when the link is defunct
}

// Links reports the links this Redirector holds.
func (r *Redirector) Links() ([]Link, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Link, 0, len(r.links))
	for _, al := range r.links {
		info, err := al.link.Info()
		if err != nil {
			return nil, fmt.Errorf("link %s: %w", al.hook.name, err)
		}
		l := Link{Program: al.hook.name, LinkID: info.ID, ProgramID: info.Program, Attach: al.hook.attach}
		if cg := info.Cgroup(); cg != nil {
			l.CgroupID = cg.CgroupId
		}
		out = append(out, l)
	}
	return out, nil
}

// Uninstall detaches and removes what Load created: the ztdns links pinned
// under bpffs, any other link still attaching a ztdns program to cgroupPath
// (one held open by a running agent), the map pins, and the pin directories
// if that leaves them empty. Pins and programs ztdns did not create are left
// alone. Empty bpffs or cgroupPath mean the defaults of Config; the
// default cgroup also covers the cgroup2 root, where agents before the
// pods' cgroup was the default attached.
func Uninstall(bpffs, cgroupPath string) error {
	return uninstall(Config{BPFFS: bpffs, CgroupPath: cgroupPath})
}

func uninstall(c Config) error {
	cfg, err := c.withDefaults()
	if err != nil {
		return err
	}
	// The links an agent that died moving them left at a temporary path
	// first: beside each, the link it was moving from is still in place.
	errs := []error{removeMovingPins(cfg.BPFFS)}
	for _, h := range detachOrder() {
		errs = append(errs, removePinnedLink(linkPinPath(cfg.BPFFS, h.name)))
	}
	errs = append(errs, detachCgroupLinks(cfg.CgroupPath))
	if c.CgroupPath == "" && cfg.CgroupRoot != cfg.CgroupPath {
		errs = append(errs, detachCgroupLinks(cfg.CgroupRoot))
	}
	for _, name := range mapNames {
		errs = append(errs, removeMapPin(pinPath(cfg.BPFFS, name)))
	}
	for _, dir := range []string{filepath.Join(cfg.BPFFS, linksDir), cfg.BPFFS} {
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) {
			errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// detachOrder is hooks in the order they are detached: the reverse of the
// attach order, so that the hooks restoring replies (recvmsg, getpeername)
// go last. Detached first, they would leave connect and sendmsg redirecting
// queries whose replies then keep the resolver's address as their source,
// which glibc, musl and dig drop.
func detachOrder() []hook {
	order := slices.Clone(hooks)
	slices.Reverse(order)
	return order
}

// detachRank is the position of attach type at in detachOrder (len(hooks)
// for one ztdns does not use).
func detachRank(at ebpf.AttachType) int {
	if i := slices.IndexFunc(detachOrder(), func(h hook) bool { return h.attach == at }); i >= 0 {
		return i
	}
	return len(hooks)
}

func removePinnedLink(pin string) error {
	return withOwnedPinnedLink(pin, func(l link.Link, _ *link.Info) error {
		// Detach first: another process (a running agent) may hold the
		// link open, and unpinning alone would leave the program attached
		// until it exits. Defunct links have nothing to detach.
		if err := l.Detach(); err != nil && !errors.Is(err, unix.ENOLINK) {
			return fmt.Errorf("detach %s: %w", pin, err)
		}
		if err := l.Unpin(); err != nil {
			return fmt.Errorf("unpin %s: %w", pin, err)
		}
		return nil
	})
}

// detachCgroupLinks detaches every link that attaches a ztdns program to
// cgroupPath, pinned or not.
func detachCgroupLinks(cgroupPath string) error {
	cgID, err := cgroupID(cgroupPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	type owned struct {
		l    link.Link
		id   link.ID
		rank int
	}
	var (
		errs  []error
		links []owned
	)
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		l := it.Take()
		info, err := l.Info()
		if err == nil && info.Type == link.CgroupType && info.Cgroup() != nil && info.Cgroup().CgroupId == cgID {
			if _, err := ownedLinkInfo(l); err == nil {
				links = append(links, owned{l, info.ID, detachRank(ebpf.AttachType(info.Cgroup().AttachType))})
				continue
			}
		}
		l.Close()
	}
	if err := it.Err(); err != nil {
		errs = append(errs, fmt.Errorf("list links: %w", err))
	}
	// In detach order, not in the order of their ids (creation).
	slices.SortStableFunc(links, func(a, b owned) int { return cmp.Compare(a.rank, b.rank) })
	for _, o := range links {
		if err := o.l.Detach(); err != nil {
			errs = append(errs, fmt.Errorf("detach link %d: %w", o.id, err))
		}
		o.l.Close()
	}
	return errors.Join(errs...)
}

// removeMapPin removes pin if it is a BPF map (ztdns pins only maps there).
func removeMapPin(pin string) error {
	m, err := ebpf.LoadPinnedMap(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open pinned map %s: %w", pin, err)
	}
	m.Close()
	if err := os.Remove(pin); err != nil {
		return fmt.Errorf("remove %s: %w", pin, err)
	}
	return nil
}
