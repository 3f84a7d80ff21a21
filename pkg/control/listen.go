package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/acceptretry"
	"github.com/ztdns/ztdns/internal/ratelog"
)

// Access says who may connect besides root.
type Access struct {
	// Group is a gid whose members may connect and call the read-only
	// routes; 0 means nobody but root. (Group 0 itself cannot be given: its
	// members are not root, and the socket is for root.)
	Group int
	// Logger reports refused callers (default slog.Default()).
	Logger *slog.Logger
}

func (a Access) modes() (dir, socket os.FileMode) {
	if a.Group > 0 {
		return 0o750, 0o660
	}
	return 0o700, 0o600
}

func (a Access) log() *slog.Logger {
	if a.Logger == nil {
		return slog.Default()
	}
	return a.Logger
}

// allowed reports whether a peer may connect: root, the agent's own user
// (the same as root but for an agent run without root, as in the
// standalone demo), or a member of the group.
func (a Access) allowed(p Peer) bool {
	return p.root() || (a.Group > 0 && p.GID == uint32(a.Group))
}

// ownFile reports whether name is one the agent keeps in its socket
// directory besides the socket: the hand-off socket, the record of whom the
// agent took over from, the record of captured pods (and unreadable ones set
// aside, attachments.json.corrupt-TIME: see capture's keepAside), the
// plugin's pending events and the installed marker. A directory holding
// nothing else (or nothing) is the agent's own, and PrepareDir sets its
// mode.
func ownFile(socket, name string) bool {
	base := filepath.Base(socket)
	switch name {
	case base, base + ".handoff", base + ".predecessor", base + ".predecessor.tmp", "attachments.json", "attachments.json.tmp", "pending", InstalledFile:
		return true
	}
	return strings.HasPrefix(name, "attachments.json.corrupt-")
}

// InstalledFile is the name of the marker the agent keeps beside its
// socket (see MarkInstalled).
const InstalledFile = "installed"

// InstalledMarker returns the path of the marker beside socket.
func InstalledMarker(socket string) string {
	return filepath.Join(filepath.Dir(socket), InstalledFile)
}

// MarkInstalled writes the marker that says an agent serves at socket, or
// will again once it restarts: the CNI plugin records the events the agent
// misses, for it to replay, only while the marker is there. The agent
// writes it at every start; only an uninstall removes it (`ztdns
// remove-state`, the chart's cleanup). The directory itself is no such
// sign: a hostPath volume, the cleanup pod's for one, makes it again.
func MarkInstalled(socket string) error {
	const text = "The ztdns agent serves at this directory's socket: while this file exists, its CNI plugin records the events the agent misses, for it to replay.\n"
	if err := os.WriteFile(InstalledMarker(socket), []byte(text), 0o644); err != nil {
		return fmt.Errorf("marking ztdns installed: %w", err)
	}
	return nil
}

// PrepareDir makes the socket's directory safe to listen in, before the
// agent connects to or creates anything there. The directory must belong to
// root and nobody else may write in it. The same holds for every directory
// passed through on the way to it, the path as written and the targets of
// its symbolic links alike (except that those may be sticky, like /tmp:
// nobody can then move root's entries), and every symbolic link followed
// must belong to root: whoever can write in one of them, or re-point one of
// the links, can swap in a directory of their own and plant a socket the
// agent or its clients would talk to. (A root-owned link in root's
// directories, such as /var/run -> /run, is fine.) A missing directory is
// created, once its parent has passed, 0700 (0750 root:Group with a group),
// and one that holds only the agent's own files is set to that mode; a
// directory shared with other files keeps its mode (the socket's own mode
// and the peer check still hold) and is reported.
func PrepareDir(socket string, access Access) error {
	if err := CheckNoDotDot(socket); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	dir := filepath.Dir(socket)
	dirMode, _ := access.modes()
	real, created, err := resolveChecked(dir, dirMode)
	if err != nil {
		return fmt.Errorf("control socket directory %s: %w", dir, err)
	}
	if err := checkOwned(real, false); err != nil {
		return fmt.Errorf("control socket directory %s: %w", dir, err)
	}
	if !created {
		entries, err := os.ReadDir(real)
		if err != nil {
			return fmt.Errorf("control socket directory: %w", err)
		}
		for _, e := range entries {
			if !ownFile(socket, e.Name()) {
				fi, _ := os.Stat(real)
				if fi != nil && fi.Mode().Perm() != dirMode {
					access.log().Warn("the control socket's directory holds other files, so its mode is left alone; give the socket a directory of its own",
						"dir", dir, "mode", fi.Mode().Perm(), "other", e.Name())
				}
				return nil
			}
		}
	}
	if err := chgrp(real, access.Group); err != nil {
		return fmt.Errorf("control socket directory: %w", err)
	}
	if err := os.Chmod(real, dirMode); err != nil {
		return fmt.Errorf("control socket directory: %w", err)
	}
	return nil
}

// PrepareStateDir makes dir (created 0750 when missing) a directory only
// root can write in, by PrepareDir's rules for the socket's: the agent acts
// on what it reads back from there (which pods it captured).
func PrepareStateDir(dir string) error {
	if err := CheckNoDotDot(dir); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	real, _, err := resolveChecked(dir, 0o750)
	if err == nil {
		err = checkOwned(real, false)
	}
	if err != nil {
		return fmt.Errorf("state directory %s: %w", dir, err)
	}
	return nil
}

// CheckNoDotDot refuses a path with a ".." component. The checks walk the
// path with ".." taken textually, but the kernel takes it after following
// the symbolic link before it (/tmp/l/../z is the parent of where l points,
// not /tmp/z), which may be a directory another user owns.
func CheckNoDotDot(path string) error {
	if slices.Contains(strings.Split(path, "/"), "..") {
		return fmt.Errorf("%s has a \"..\" component, which symbolic links before it may send elsewhere: give the path without it", path)
	}
	return nil
}

// maxLinks bounds the symbolic links resolveChecked follows, as the kernel
// does (MAXSYMLINKS is 40).
const maxLinks = 40

// resolveChecked resolves dir one component at a time, as the kernel does,
// and returns the directory it names. Every directory it passes through
// (from / down, the last one included) must pass checkOwned as an ancestor,
// and every symbolic link it follows checkLink, before anything below it is
// looked at; a missing directory is created there, mode (the last one) or
// 0755. created reports whether the last one was.
func resolveChecked(dir string, mode os.FileMode) (real string, created bool, err error) {
	dir, err = filepath.Abs(dir)
	if err != nil {
		return "", false, err
	}
	real = "/"
	if err := checkOwned(real, true); err != nil {
		return "", false, err
	}
	rest := strings.Split(dir, "/")
	for links := 0; len(rest) > 0; {
		name := rest[0]
		rest = rest[1:]
		switch name {
		case "", ".":
			continue
		case "..":
			real, created = filepath.Dir(real), false // checked on the way down
			continue
		}
		next := filepath.Join(real, name)
		fi, err := os.Lstat(next)
		created = false
		if errors.Is(err, os.ErrNotExist) {
			m := os.FileMode(0o755)
			if len(rest) == 0 {
				m = mode
			}
			if err := os.Mkdir(next, m); err != nil && !errors.Is(err, os.ErrExist) {
				return "", false, err
			}
			created = true
			fi, err = os.Lstat(next)
		}
		if err != nil {
			return "", false, err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			if !fi.IsDir() {
				return "", false, fmt.Errorf("%s is not a directory", next)
			}
			if err := checkOwnedInfo(next, fi, true); err != nil {
				return "", false, err
			}
			real = next
			continue
		}
		if err := checkLink(next, fi); err != nil {
			return "", false, err
		}
		if links++; links > maxLinks {
			return "", false, fmt.Errorf("%s: too many levels of symbolic links", dir)
		}
		target, err := os.Readlink(next)
		if err != nil {
			return "", false, err
		}
		if filepath.IsAbs(target) {
			real = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return real, created, nil
}

// checkLink refuses a symbolic link that neither root nor the agent's own
// user owns: its owner could re-point it at a directory of their own. (Who
// else could replace the link depends on the directory holding it, which
// resolveChecked has checked already.)
func checkLink(path string, fi os.FileInfo) error {
	uid, foreign, err := foreignOwner(path, fi)
	if err != nil {
		return err
	}
	if foreign {
		return fmt.Errorf("%s is a symbolic link belonging to uid %d, not root: refusing to follow a link another user can re-point", path, uid)
	}
	return nil
}

// foreignOwner returns the uid owning the file fi describes, and whether
// that is neither root nor the agent's own user.
func foreignOwner(path string, fi os.FileInfo) (uid uint32, foreign bool, err error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false, fmt.Errorf("%s: no owner", path)
	}
	return st.Uid, st.Uid != 0 && st.Uid != uint32(os.Geteuid()), nil
}

// chgrp gives path to the socket group, if there is one.
func chgrp(path string, group int) error {
	if group <= 0 {
		return nil
	}
	return os.Chown(path, -1, group)
}

// checkOwned refuses a directory that neither root nor the agent's own user
// owns, or that others can write in (sticky allows it for a directory above
// the socket's: nobody can then move root's entries).
func checkOwned(path string, stickyOK bool) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	return checkOwnedInfo(path, fi, stickyOK)
}

// checkOwnedInfo is checkOwned for a caller that has stat'ed path already.
func checkOwnedInfo(path string, fi os.FileInfo, stickyOK bool) error {
	uid, foreign, err := foreignOwner(path, fi)
	if err != nil {
		return err
	}
	if foreign {
		return fmt.Errorf("%s belongs to uid %d, not root: another user could plant files there", path, uid)
	}
	sticky := fi.Mode()&os.ModeSticky != 0
	if fi.Mode().Perm()&0o022 != 0 && !(stickyOK && sticky) {
		return fmt.Errorf("%s is writable by others (mode %s): another user could plant files there", path, fi.Mode())
	}
	return nil
}

// Listen opens the control socket at path (after PrepareDir), replacing a
// stale one left by an agent that died and refusing to steal one a live
// agent still serves. Every connection's peer is checked (SO_PEERCRED)
// before it is served, refused callers are logged and counted, and at most
// MaxConns connections are open at once (see guardedListener).
func Listen(path string, access Access) (net.Listener, error) {
	if err := PrepareDir(path, access); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s is in use by a running agent", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale control socket: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := setSocketModes(path, access); err != nil {
		ln.Close()
		return nil, err
	}
	return newGuardedListener(ln, access), nil
}

// setSocketModes gives the socket at path access's group and mode.
func setSocketModes(path string, access Access) error {
	_, sockMode := access.modes()
	err := chgrp(path, access.Group)
	if err == nil {
		err = os.Chmod(path, sockMode)
	}
	if err != nil {
		return fmt.Errorf("control socket permissions: %w", err)
	}
	return nil
}

// An agent that takes over from a running one takes its control socket
// too (the agent's hand-over): the listening socket itself, passed between
// the agents, so the path never goes missing and a connection made
// meanwhile waits in the socket's backlog for the agent that serves next.

// ListenerFile returns a duplicate of the socket of ln, a listener of
// Listen or Adopt, to hand to the agent that takes over.
func ListenerFile(ln net.Listener) (*os.File, error) {
	l, ok := ln.(*guardedListener)
	if !ok {
		return nil, fmt.Errorf("%T is not a control listener", ln)
	}
	return l.UnixListener.File()
}

// KeepPathOnClose makes closing ln, a listener of Listen or Adopt, leave
// its path in place: the agent it was handed to serves the same socket
// there.
func KeepPathOnClose(ln net.Listener) {
	if l, ok := ln.(*guardedListener); ok {
		l.SetUnlinkOnClose(false)
	}
}

// Adopt serves the control socket at path (after PrepareDir) on ln, the
// listener a running agent handed over, with access's checks and modes as
// Listen gives them. Closed, it removes the path, as one of Listen does,
// unless KeepPathOnClose says otherwise. A listener bound elsewhere, or one
// whose path is no longer a socket, is refused (and left open).
func Adopt(path string, ln *net.UnixListener, access Access) (net.Listener, error) {
	if err := PrepareDir(path, access); err != nil {
		return nil, err
	}
	if got := ln.Addr().String(); got != path {
		return nil, fmt.Errorf("the control socket handed over is bound at %q, not %s", got, path)
	}
	if fi, err := os.Lstat(path); err != nil {
		return nil, fmt.Errorf("the control socket handed over: %w", err)
	} else if fi.Mode().Type() != os.ModeSocket {
		return nil, fmt.Errorf("the control socket handed over: %s is no longer a socket (mode %s)", path, fi.Mode())
	}
	if err := setSocketModes(path, access); err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(true)
	return newGuardedListener(ln, access), nil
}

// Peer is the process at the other end of a unix socket, as the kernel
// recorded it when that process connected (or listened).
type Peer struct {
	PID      int32
	UID, GID uint32
}

// root reports whether the peer is root, or the agent's own user (the same
// as root for an agent run without root); any other peer the socket admits
// is a member of the socket group.
func (p Peer) root() bool {
	return p.UID == 0 || p.UID == uint32(os.Geteuid())
}

// PeerOf returns the credentials of the process at the other end of c.
func PeerOf(c *net.UnixConn) (Peer, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, err
	}
	if credErr != nil {
		return Peer{}, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	return Peer{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}

// guardedListener hands out only connections of allowed peers, at most
// MaxConns at a time, of which at most MaxGroupConns are socket-group
// members'. Its own goroutine accepts (acceptLoop) and never waits for
// room, so the kernel's backlog never fills behind a full house, whoever
// connects. At the bound, a new connection takes the place of the oldest
// one that has no request in (see tryEvict): a kept-alive idle
// connection, or a half-sent request (part of its headers, and nothing
// more waiting to be read), either only while the server waits on its
// socket. A new connection that has sent nothing yet is
// never closed for another: its caller is between its connect and its
// write, and on a busy node that gap can be long; the server's header
// timeout (ReadTimeout) bounds one that never writes. A request that has
// arrived, read or not, is never cut either: its caller (a CNI ADD in a
// Job's fan-out) would take the agent for unreachable. A member's takes
// only a member's place, never root's, and one that finds none is closed
// at once. Root's that finds none waits in the listener's queue (its peer
// checked), at most MaxQueued of them, and the queue is admitted in order
// as connections end or become closable (their server waits on them, with
// no request in). So members can hold at most their own slots, and root
// always has the rest.
type guardedListener struct {
	*net.UnixListener
	access  Access
	refused ratelog.Limiter // refused callers, logged sparingly
	full    ratelog.Limiter // root's turned away with the queue full

	// ready holds the admitted connections Accept has yet to hand out: at
	// most MaxConns, being admitted, so a send never blocks.
	ready chan *peerConn
	done  chan struct{} // closed when acceptLoop has stopped, err saying why
	err   error
	// emptied is closed once acceptLoop has stopped and the queue is
	// empty: Accept has nothing more to wait for than what ready holds.
	emptied chan struct{}
	// draining is set when the server stops (drain): acceptLoop takes no
	// more connections from the kernel's backlog, and answers say that
	// their connection closes.
	draining atomic.Bool
	// refusing is set when a stopping server gives up waiting for
	// requests (see drain): from then on a request that arrives on a
	// connection is left unread and the connection closed, which its
	// caller sees reset.
	refusing atomic.Bool

	mu        sync.Mutex
	conns     []*peerConn // admitted connections, oldest first
	queue     []*peerConn // root's waiting for room, oldest first
	closed    bool
	stopped   bool // acceptLoop has stopped (see emptied)
	emptyOnce sync.Once
	stats     listenerStats
	// pruned is when a full queue was last looked through for callers
	// that hung up (pruneQueue).
	pruned time.Time
}

// listenerStats counts what one listener did, for its tests (the metrics
// are the process's).
type listenerStats struct {
	evicted, queued, turnedAway int
}

func newGuardedListener(ln *net.UnixListener, access Access) *guardedListener {
	l := &guardedListener{
		UnixListener: ln,
		access:       access,
		ready:        make(chan *peerConn, MaxConns),
		done:         make(chan struct{}),
		emptied:      make(chan struct{}),
	}
	go l.acceptLoop()
	return l
}

// Close stops accepting and closes the connections queued or admitted
// that Accept never handed out. (Serve drains the listener first, so that
// none is left: see drain.)
func (l *guardedListener) Close() error {
	l.mu.Lock()
	l.closed = true
	queue := l.queue
	l.queue = nil
	l.checkEmptied()
	l.mu.Unlock()
	for _, pc := range queue {
		pc.UnixConn.Close()
	}
	err := l.UnixListener.Close()
	<-l.done
	for {
		select {
		case pc := <-l.ready:
			pc.Close()
		default:
			return err
		}
	}
}

// Accept hands out the next connection admitted. Once the listener has
// stopped accepting (drained or closed), it still hands out those admitted
// and, as they are admitted, those queued, and fails only then.
func (l *guardedListener) Accept() (net.Conn, error) {
	select {
	case pc := <-l.ready:
		return pc, nil
	case <-l.emptied:
	}
	select {
	case pc := <-l.ready: // admitted before the queue emptied
		return pc, nil
	default:
		return nil, l.err
	}
}

// checkEmptied closes emptied once acceptLoop has stopped and no
// connection waits in the queue (the caller holds l.mu): from then on
// nothing is admitted any more.
func (l *guardedListener) checkEmptied() {
	if l.stopped && len(l.queue) == 0 {
		l.emptyOnce.Do(func() { close(l.emptied) })
	}
}

// drain is how a stopping server lets go of the listener (see Serve): it
// takes no more connections from the kernel's backlog, where those made
// from then on wait for whoever serves the socket next (the agent it was
// handed to; one that binds the path anew finds them reset), and it waits,
// until deadline at most, for every connection it took to be answered and
// closed: those admitted and queued are handed out to the server as ever,
// which answers each request that arrives on them with its connection
// closed after it. Kept-alive connections with no request in are closed
// as they become idle. At deadline, it gives the rest up: from then on a
// request arriving on one of them is left unread and its connection
// closed, which the caller sees reset (and the CNI plugin sends again, to
// the socket's next server); a connection that was never handed out is
// closed that way too. Never is a request read and then dropped: its
// caller would see the connection end with no answer (EOF), which it
// cannot tell from an agent that took the request and died.
func (l *guardedListener) drain(deadline time.Time) {
	l.draining.Store(true)
	// An accept past its deadline fails without taking a connection from
	// the backlog; acceptLoop stops on that.
	l.UnixListener.SetDeadline(time.Unix(1, 0))
	<-l.done
	for pause := time.Millisecond; !l.quiet(); pause = min(2*pause, 50*time.Millisecond) {
		left := time.Until(deadline)
		if left <= 0 {
			l.abandon()
			return
		}
		time.Sleep(min(pause, left))
	}
}

// quiet reports whether every connection the listener took is closed,
// after closing those kept alive that wait with no request in.
func (l *guardedListener) quiet() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.conns = slices.DeleteFunc(l.conns, func(c *peerConn) bool {
		if !c.tryCloseIdle() {
			return false
		}
		metricConns.Dec()
		c.UnixConn.Close()
		return true
	})
	return len(l.conns) == 0 && len(l.queue) == 0
}

// abandon gives up the connections a draining listener still holds (see
// drain): requests arriving on them are refused, and those never handed
// out are closed as soon as their request has arrived (or their caller
// hung up, or ReadTimeout passed).
func (l *guardedListener) abandon() {
	l.refusing.Store(true)
	l.mu.Lock()
	left := l.queue
	l.queue = nil
	l.checkEmptied()
	l.mu.Unlock()
	for {
		select {
		case pc := <-l.ready:
			left = append(left, pc)
			continue
		default:
		}
		break
	}
	for _, pc := range left {
		go pc.refuse()
	}
}

// acceptLoop accepts connections until the listener closes: it checks
// each one's peer and admits, queues, or closes it (arrive), never
// waiting for room.
func (l *guardedListener) acceptLoop() {
	backoff := acceptretry.New(acceptretry.Control)
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if l.draining.Load() {
				l.stop(&net.OpError{Op: "accept", Net: "unix", Addr: l.Addr(), Err: net.ErrClosed})
				return
			}
			if backoff.Wait(l.access.log(), err) { // out of descriptors, say
				continue
			}
			l.stop(err)
			return
		}
		backoff.Accepted()
		peer, err := PeerOf(c)
		if err != nil || !l.access.allowed(peer) {
			metricRefused.Inc()
			l.refused.Log(l.access.log(), slog.LevelWarn, "control socket: refused a caller that is not root", "uid", peer.UID, "gid", peer.GID, "pid", peer.PID, "err", err)
			c.Close()
			continue
		}
		l.arrive(&peerConn{UnixConn: c, peer: peer, l: l})
	}
}

// stop records why acceptLoop stopped, and that it did.
func (l *guardedListener) stop(err error) {
	l.err = err
	close(l.done)
	l.mu.Lock()
	l.stopped = true
	l.checkEmptied()
	l.mu.Unlock()
}

// arrive admits pc, queues it (root's), or closes it (a member's that
// finds no place, root's when MaxQueued already wait).
func (l *guardedListener) arrive(pc *peerConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.closed:
		pc.UnixConn.Close()
	case pc.peer.root():
		if len(l.queue) >= MaxQueued && time.Since(l.pruned) >= pruneEvery {
			l.pruneQueue()
		}
		if len(l.queue) >= MaxQueued {
			l.turnAway(pc)
			l.full.Log(l.access.log(), slog.LevelWarn, "control socket: closed a root connection: as many as the queue holds already wait for room", "queued", len(l.queue), "pid", pc.peer.PID)
			return
		}
		l.queue = append(l.queue, pc)
		l.admitQueued()
		if len(l.queue) > 0 && l.queue[len(l.queue)-1] == pc {
			l.stats.queued++
			metricWaited.Inc()
		}
	case len(l.queue) > 0:
		// Root's are waiting: what room there is goes to them.
		l.turnAway(pc)
	case len(l.conns) < MaxConns && l.members() < MaxGroupConns:
		l.admit(pc)
	default:
		if !l.evictOldest(func(c *peerConn) bool { return !c.peer.root() }) {
			l.turnAway(pc)
			return
		}
		l.admit(pc)
	}
}

// turnAway closes a connection for want of room (the caller holds l.mu).
func (l *guardedListener) turnAway(pc *peerConn) {
	l.stats.turnedAway++
	metricTurnedAway.Inc()
	if !pc.peer.root() {
		l.access.log().Debug("control socket: closed a socket-group member's connection: the group's connections all have requests in or are new", "uid", pc.peer.UID, "pid", pc.peer.PID)
	}
	pc.UnixConn.Close()
}

// admitQueued admits root's queued connections in order, while there is
// room or a connection may be closed to make it (the caller holds l.mu).
func (l *guardedListener) admitQueued() {
	for len(l.queue) > 0 && !l.closed {
		if len(l.conns) >= MaxConns && !l.evictOldest(func(*peerConn) bool { return true }) {
			return
		}
		pc := l.queue[0]
		l.queue[0] = nil
		l.queue = l.queue[1:]
		l.admit(pc)
	}
	l.checkEmptied()
}

// pruneEvery bounds how often a full queue is looked through (one poll
// per connection, under the listener's lock): not on every one of root's
// connects while it stays full.
const pruneEvery = 100 * time.Millisecond

// pruneQueue drops the queued connections whose callers have gone (hung
// up while waiting), for a full queue to hold only live ones (the caller
// holds l.mu).
func (l *guardedListener) pruneQueue() {
	l.pruned = time.Now()
	l.queue = slices.DeleteFunc(l.queue, func(pc *peerConn) bool {
		if pc.hungUp() {
			pc.UnixConn.Close()
			return true
		}
		return false
	})
}

// admit records pc and hands it to Accept (the caller holds l.mu).
func (l *guardedListener) admit(pc *peerConn) {
	l.conns = append(l.conns, pc)
	metricConns.Inc()
	l.ready <- pc
}

// members counts the open connections of socket-group members.
func (l *guardedListener) members() int {
	n := 0
	for _, c := range l.conns {
		if !c.peer.root() {
			n++
		}
	}
	return n
}

// evictOldest closes the oldest connection that may be closed to make room
// (tryEvict), among those of which may holds (the caller holds l.mu).
func (l *guardedListener) evictOldest(may func(*peerConn) bool) bool {
	for i, c := range l.conns {
		if !may(c) || !c.tryEvict() {
			continue
		}
		l.conns = slices.Delete(l.conns, i, i+1)
		metricConns.Dec()
		c.UnixConn.Close() // the server's read fails, and it lets go of it
		l.stats.evicted++
		metricEvicted.Inc()
		l.access.log().Debug("control socket: closed a connection that had no request in, to make room", "pid", c.peer.PID)
		return true
	}
	return false
}

// kick admits queued connections, if any: a connection's server has
// started waiting on it, and it may be closable.
func (l *guardedListener) kick() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.admitQueued()
}

func (l *guardedListener) forget(pc *peerConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if i := slices.Index(l.conns, pc); i >= 0 {
		l.conns = slices.Delete(l.conns, i, i+1)
		metricConns.Dec()
	}
	l.admitQueued()
}

// peerConn is an accepted connection with its caller.
type peerConn struct {
	*net.UnixConn
	peer Peer
	l    *guardedListener

	// mu makes a read (its receive and what it records) and tryEvict's
	// look and verdict exclusive: a connection is never closed for room
	// between the moment its request is received and the moment that is
	// recorded. A read does not hold it while it waits for data, and
	// nothing holds it while it takes the listener's lock.
	mu sync.Mutex
	// waiting is set when a read found nothing in the socket, and the
	// server waits on it, until a read takes bytes or fails: only then may
	// the connection be closed for room. Not when the server has let go of
	// its answer (answered): the next request may be in its buffer already,
	// sent along with the last one, and read without the socket.
	waiting bool
	// answering is set from the moment a request's headers have been read
	// (the server calls the handler next) until its answer has been
	// written out (answered).
	answering bool
	// received is set when the server has read part of a request's headers
	// and not the rest, until it is answered.
	received bool
	// served is set once an answer was written: the connection is kept
	// alive.
	served bool
	// evicted is set when tryEvict chose the connection: reads from then
	// on fail, as on a closed connection.
	evicted bool
	// newlines counts the line feeds at the end of what the server read
	// last: the blank line that ends a request's headers may straddle
	// reads. Reads on a connection follow one another (the server's own
	// goroutine, or its background read, which it waits for).
	newlines int
	once     sync.Once
}

// Read is the server's read: it follows how far a request has arrived,
// and whether the server waits on the socket. The receive itself and what
// it records happen under mu, so tryEvict sees a connection either before
// the bytes were taken (still waiting in the socket) or after they were
// recorded, never in between. When a read starts waiting on a connection
// that may be closed for room, it kicks the queue first (outside mu and
// the descriptor: the kick may close the connection).
func (c *peerConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return c.UnixConn.Read(b)
	}
	raw, err := c.UnixConn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	kick, refused := false, false
	read := func(fd uintptr) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.evicted {
			rerr = net.ErrClosed
			return true
		}
		if !c.answering && c.l.refusing.Load() {
			// Given up by a stopped server (see drain): a request that
			// arrives now is left unread; an end or an error is read as
			// ever.
			switch peekRead(fd) {
			case unix.EAGAIN:
				return false // nothing yet: wait
			case nil:
				refused = true
				return true
			}
		}
		for {
			n, rerr = unix.Read(int(fd), b)
			if rerr != unix.EINTR {
				break
			}
		}
		if rerr == unix.EAGAIN {
			if !c.waiting {
				c.waiting = true
				kick = c.closable()
				return kick // out to kick, then back to wait
			}
			return false // nothing yet: wait, without mu
		}
		c.waiting = false
		switch {
		case rerr != nil:
			n = 0
		case n == 0:
			rerr = io.EOF
		case c.headersEnd(b[:n]):
			c.answering = true
		case !c.answering:
			// Part of a request's headers, all that has come: if no more
			// is on its way, the connection may be closed to make room.
			c.received = true
		}
		return true
	}
	err = raw.Read(read)
	if err == nil && kick {
		c.l.kick()
		err = raw.Read(read)
	}
	if err == nil && refused {
		c.Close() // with the request unread: the caller reads ECONNRESET
		return 0, c.readError(net.ErrClosed)
	}
	if err != nil {
		// Closed (for room, say), or past the deadline: as a read of the
		// net package's fails, for the server to take it as one, not as a
		// malformed request it would answer 400.
		c.mu.Lock()
		c.waiting = false
		c.mu.Unlock()
		if oe, ok := err.(*net.OpError); ok {
			err = oe.Err
		}
		return 0, c.readError(err)
	}
	switch {
	case rerr == net.ErrClosed:
		return 0, c.readError(rerr)
	case rerr != nil && rerr != io.EOF:
		return 0, c.readError(os.NewSyscallError("read", rerr))
	}
	return n, rerr
}

// peekRead looks at what the socket fd holds without taking it: nil when
// there are bytes to read, EAGAIN when there is nothing yet, another error
// (io.EOF when the caller hung up) otherwise.
func peekRead(fd uintptr) error {
	var b [1]byte
	for {
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return err
		case n == 0:
			return io.EOF
		}
		return nil
	}
}

// refuse closes a connection a draining listener gave up before the
// server took it (see drain): once its request has arrived, unread, so
// that its caller reads a reset; or when its caller hangs up, or after
// ReadTimeout.
func (c *peerConn) refuse() {
	c.SetReadDeadline(time.Now().Add(ReadTimeout))
	var b [1]byte
	c.Read(b[:]) // refusing: takes nothing of a request
	c.Close()
}

// readError is a failed read of c, as the net package reports one.
func (c *peerConn) readError(err error) error {
	return &net.OpError{Op: "read", Net: "unix", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// headersEnd reports whether b, following what was read before, holds the
// blank line that ends a request's headers: two line feeds, carriage
// returns aside. (One in a body counts too: it only keeps that connection
// from being closed for room, which its request being answered does
// already.)
func (c *peerConn) headersEnd(b []byte) bool {
	found := false
	for _, x := range b {
		switch x {
		case '\n':
			if c.newlines++; c.newlines == 2 {
				found, c.newlines = true, 0
			}
		case '\r':
		default:
			c.newlines = 0
		}
	}
	return found
}

// tryEvict reports whether the connection may be closed to make room, and
// if so marks it so its reads fail from then on (the caller, holding the
// listener's lock, closes it): a kept-alive idle connection, or a
// request's headers the server has read part of and no more arrived of (a
// stalled caller: one that sends a request writes its headers whole),
// either only while the server waits on the socket (not while a read
// takes bytes: it waits for mu), with nothing in it (bytes it sent wait
// unread: the server is behind, not the caller). Never while a request is
// being answered, nor a new connection that has sent nothing (its caller
// may not have had the CPU to write yet).
func (c *peerConn) tryEvict() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.waiting || !c.closable() || c.unread() != 0 {
		return false
	}
	c.evicted = true
	return true
}

// tryCloseIdle is tryEvict for a draining listener: it lets go of a
// kept-alive connection that waits with no request in, not of a half-sent
// request (at the deadline, the rest of it is refused unread).
func (c *peerConn) tryCloseIdle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.waiting || !c.served || c.answering || c.received || c.unread() != 0 {
		return false
	}
	c.evicted = true
	return true
}

// closable reports whether the connection has no request in, and has
// sent something (the caller holds mu): once its server waits on it with
// nothing unread, it may be closed for room.
func (c *peerConn) closable() bool {
	return !c.answering && (c.received || c.served)
}

// unread returns how many bytes the caller sent that the server has not
// read yet (SIOCINQ); -1 when that cannot be told (the connection is being
// closed).
func (c *peerConn) unread() int {
	raw, err := c.UnixConn.SyscallConn()
	if err != nil {
		return -1
	}
	n := -1
	if err := raw.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil {
			n = v
		}
	}); err != nil {
		return -1
	}
	return n
}

// hungUp reports whether the caller of a queued connection has closed its
// end.
func (c *peerConn) hungUp() bool {
	raw, err := c.UnixConn.SyscallConn()
	if err != nil {
		return true
	}
	hup := false
	raw.Control(func(fd uintptr) {
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(p, 0); err == nil && n > 0 {
			hup = p[0].Revents&unix.POLLHUP != 0
		}
	})
	return hup
}

func (c *peerConn) Close() error {
	err := c.UnixConn.Close()
	c.once.Do(func() { c.l.forget(c) })
	return err
}

type connKey struct{}

// PeerFrom returns the caller of a request served by Serve on a listener
// from Listen.
func PeerFrom(ctx context.Context) (Peer, bool) {
	if pc, ok := ctx.Value(connKey{}).(*peerConn); ok {
		return pc.peer, true
	}
	return Peer{}, false
}

// markAnswering marks the request's connection as being answered: it is
// not closed to make room until its answer has been written (answered).
// (Its reads have marked it already, once they held the whole headers.)
func markAnswering(ctx context.Context) {
	if pc, ok := ctx.Value(connKey{}).(*peerConn); ok {
		pc.mu.Lock()
		pc.answering = true
		pc.mu.Unlock()
	}
}

// answered says the connection's answer has been written out whole (the
// server is idle on it again, kept alive): it may be closed to make room
// once the server waits on it (its next read kicks root's queue then).
// Not when the handler returns: the answer may still be in the server's
// buffer then, and closing the connection would cut it short.
func (c *peerConn) answered() {
	c.mu.Lock()
	c.served, c.received, c.answering = true, false, false
	c.mu.Unlock()
}
