package control

// Opening the control socket (Listen), taking over one a previous agent
// handed on (Adopt, ListenerFile, KeepPathOnClose), and the peer at the
// other end of a connection (Peer, PeerOf).

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

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
