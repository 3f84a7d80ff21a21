package control

// The control socket's directory and what lives in it: who may connect
// (Access), the installed marker, and the checks that no one but root could
// have planted anything on the way to it (PrepareDir, PrepareStateDir, by
// internal/rootowned's rules).

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/ztdns/ztdns/internal/rootowned"
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
	if err := rootowned.CheckNoDotDot(socket); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	dir := filepath.Dir(socket)
	dirMode, _ := access.modes()
	real, created, err := rootowned.Dir(dir, dirMode)
	if err != nil {
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
	if err := rootowned.CheckNoDotDot(dir); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if _, _, err := rootowned.Dir(dir, 0o750); err != nil {
		return fmt.Errorf("state directory %s: %w", dir, err)
	}
	return nil
}

// chgrp gives path to the socket group, if there is one.
func chgrp(path string, group int) error {
	if group <= 0 {
		return nil
	}
	return os.Chown(path, -1, group)
}
