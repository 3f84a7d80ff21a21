package control

import (
	"context"
	"errors"
	"fmt"
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

// OwnFiles are the names the agent keeps in its socket directory besides
// the socket: the hand-off socket, the record of captured pods, the
// plugin's pending events and the installed marker. A directory holding
// nothing else (or nothing) is the agent's own, and PrepareDir sets its
// mode.
func ownFiles(socket string) []string {
	base := filepath.Base(socket)
	return []string{base, base + ".handoff", "attachments.json", "attachments.json.tmp", "pending", InstalledFile}
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
		own := ownFiles(socket)
		for _, e := range entries {
			if !slices.Contains(own, e.Name()) {
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
	_, sockMode := access.modes()
	err = chgrp(path, access.Group)
	if err == nil {
		err = os.Chmod(path, sockMode)
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket permissions: %w", err)
	}
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
// members'. At the bound, a new connection takes the place of the oldest
// one that has no request in (see evictable): a kept-alive idle
// connection, a half-sent request (part of its headers, and nothing more
// waiting to be read), or a new connection that has sent nothing for
// newConnGrace. A request that has
// arrived, read or not, is never cut: its caller (a CNI ADD in a Job's
// fan-out) would take the agent for unreachable. So callers that send
// nothing cannot keep those that do waiting for long, and those that do
// never lose their call to them. A member's takes only a member's place,
// never root's. When no connection root's could take may be closed,
// Accept waits for one to end, to be answered, or to become evictable; a
// member's that finds no place is closed at once instead. So Accept never
// waits on a member: members can hold at most their own slots, and root
// always has the rest.
type guardedListener struct {
	*net.UnixListener
	access  Access
	refused ratelog.Limiter // refused callers, logged sparingly

	mu    sync.Mutex
	ended *sync.Cond // signalled when a connection ends, is answered, or may be closed to make room
	// waiting counts root connections waiting in admit (read without
	// the lock by a connection's reads, to wake them only then).
	waiting atomic.Int32
	conns   []*peerConn // open connections, oldest first
	closed  bool
}

// newConnGrace is how long a new connection may send nothing before it
// may be closed to make room. A caller writes its request as soon as it
// has connected; on a loaded node (150 CNI ADDs at once on two cores) the
// write can lag the connect by a scheduler's round, well under this.
const newConnGrace = time.Second

func newGuardedListener(ln *net.UnixListener, access Access) *guardedListener {
	l := &guardedListener{UnixListener: ln, access: access}
	l.ended = sync.NewCond(&l.mu)
	return l
}

func (l *guardedListener) Close() error {
	l.mu.Lock()
	l.closed = true
	l.ended.Broadcast()
	l.mu.Unlock()
	return l.UnixListener.Close()
}

// wake makes root connections waiting in admit look again.
func (l *guardedListener) wake() {
	l.mu.Lock()
	l.ended.Broadcast()
	l.mu.Unlock()
}

// errNoRoom is admit's answer to a member when no member's connection may
// be closed to make room.
var errNoRoom = errors.New("no room for another connection of the socket group")

func (l *guardedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		peer, err := PeerOf(c)
		if err != nil || !l.access.allowed(peer) {
			metricRefused.Inc()
			l.refused.Log(l.access.log(), slog.LevelWarn, "control socket: refused a caller that is not root", "uid", peer.UID, "gid", peer.GID, "pid", peer.PID, "err", err)
			c.Close()
			continue
		}
		pc := &peerConn{UnixConn: c, peer: peer, l: l}
		switch err := l.admit(pc); {
		case err == nil:
			return pc, nil
		case errors.Is(err, errNoRoom):
			metricTurnedAway.Inc()
			l.access.log().Debug("control socket: closed a socket-group member's connection: the group's connections all have requests in", "uid", peer.UID, "pid", peer.PID)
			c.Close()
		default:
			c.Close()
			return nil, err
		}
	}
}

// admit makes room for pc and records it. It fails with errNoRoom for a
// member's connection that finds no place, net.ErrClosed when the listener
// closed.
func (l *guardedListener) admit(pc *peerConn) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if pc.peer.root() {
		if len(l.conns) >= MaxConns {
			// Counted before the first look: a read that makes room after
			// it then wakes the wait.
			l.waiting.Add(1)
			defer l.waiting.Add(-1)
		}
		waited := false
		for len(l.conns) >= MaxConns && !l.closed {
			evicted, next := l.evictOldest(func(*peerConn) bool { return true })
			if evicted {
				continue
			}
			if !waited {
				waited = true
				metricWaited.Inc()
			}
			var timer *time.Timer
			if !next.IsZero() {
				timer = time.AfterFunc(time.Until(next), l.wake)
			}
			l.ended.Wait()
			if timer != nil {
				timer.Stop()
			}
		}
	} else if len(l.conns) >= MaxConns || l.members() >= MaxGroupConns {
		// A member's connection never waits for room: Accept is the one
		// loop that admits root's connections too (a CNI ADD, with its own
		// few seconds to be answered).
		if evicted, _ := l.evictOldest(func(c *peerConn) bool { return !c.peer.root() }); !evicted {
			return errNoRoom
		}
	}
	if l.closed {
		return net.ErrClosed
	}
	pc.admitted = time.Now()
	l.conns = append(l.conns, pc)
	metricConns.Set(float64(len(l.conns)))
	return nil
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
// (evictable), among those of which may holds. When there is none, next is
// the earliest time one of them will be (a new connection that goes on
// sending nothing), zero if none will by waiting alone.
func (l *guardedListener) evictOldest(may func(*peerConn) bool) (evicted bool, next time.Time) {
	now := time.Now()
	for i, c := range l.conns {
		if !may(c) {
			continue
		}
		ok, at := c.evictable(now)
		if !ok {
			if !at.IsZero() && (next.IsZero() || at.Before(next)) {
				next = at
			}
			continue
		}
		l.conns = slices.Delete(l.conns, i, i+1)
		c.UnixConn.Close() // the server's read fails, and it lets go of it
		metricEvicted.Inc()
		l.access.log().Debug("control socket: closed a connection that had no request in, to make room", "pid", c.peer.PID)
		return true, time.Time{}
	}
	return false, next
}

func (l *guardedListener) forget(pc *peerConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if i := slices.Index(l.conns, pc); i >= 0 {
		l.conns = slices.Delete(l.conns, i, i+1)
	}
	metricConns.Set(float64(len(l.conns)))
	l.ended.Broadcast()
}

// peerConn is an accepted connection with its caller.
type peerConn struct {
	*net.UnixConn
	peer Peer
	l    *guardedListener
	// answering is set from the moment a request's headers have been read
	// (the server calls the handler next) until its answer has been
	// written out (answered).
	answering atomic.Bool
	// received is set when the server has read part of a request's headers
	// and not the rest, until it is answered.
	received atomic.Bool
	// served is set once an answer was written: the connection is kept
	// alive.
	served atomic.Bool
	// admitted is when the listener took the connection, for
	// newConnGrace (under the listener's lock).
	admitted time.Time
	// newlines counts the line feeds at the end of what the server read
	// last: the blank line that ends a request's headers may straddle
	// reads. Reads on a connection follow one another (the server's own
	// goroutine, or its background read, which it waits for).
	newlines int
	once     sync.Once
}

// Read is the server's read: it follows how far a request has arrived.
func (c *peerConn) Read(b []byte) (int, error) {
	n, err := c.UnixConn.Read(b)
	if n > 0 && c.l != nil {
		if c.headersEnd(b[:n]) {
			c.answering.Store(true)
		} else if !c.answering.Load() {
			// Part of a request's headers, all that has come: if no more
			// is on its way, the connection may be closed to make room.
			c.received.Store(true)
			if c.l.waiting.Load() > 0 {
				c.l.wake()
			}
		}
	}
	return n, err
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

// evictable reports whether the connection may be closed to make room
// (the caller holds the listener's lock): not while a request is being
// answered, nor while bytes it sent wait unread (the server is behind, not
// the caller); a request's headers the server has read part of and no
// more arrived of (a stalled caller: one that sends a request writes its
// headers whole), or a kept-alive idle connection, at once; a new
// connection that has sent nothing, after newConnGrace, the time it may be
// closed being returned until then.
func (c *peerConn) evictable(now time.Time) (bool, time.Time) {
	if c.answering.Load() || c.unread() != 0 {
		return false, time.Time{}
	}
	if c.received.Load() || c.served.Load() {
		return true, time.Time{}
	}
	at := c.admitted.Add(newConnGrace)
	if now.Before(at) {
		return false, at
	}
	return true, time.Time{}
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
		pc.answering.Store(true)
	}
}

// answered says the connection's answer has been written out whole (the
// server is idle on it again, kept alive): it may now be closed to make
// room, and a root connection waiting in admit looks again (under the
// lock, so the wake-up cannot fall between its look and its wait). Not
// when the handler returns: the answer may still be in the server's buffer
// then, and closing the connection would cut it short.
func (c *peerConn) answered() {
	c.served.Store(true)
	c.received.Store(false)
	if !c.answering.Swap(false) || c.l == nil { // nil: a connection no listener admitted (tests)
		return
	}
	c.l.wake()
}
