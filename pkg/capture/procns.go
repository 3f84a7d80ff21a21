// ProcNamespaces: Namespaces as the kernel has them, through a proc
// filesystem: each process's ns/net is stat'ed, opened, and looked into
// (its cookie, owning user namespace and addresses). The package's only
// code that looks into namespaces itself; the rest goes through
// Namespaces.

package capture

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/pkg/netns"
)

// ProcNamespaces finds namespaces through a proc filesystem: the node's
// /proc, or the node's /proc mounted into the agent's container (e.g. at
// /host/proc, as istio-cni mounts it), so the agent needs no hostPID.
// Opening another process's ns/net needs ptrace read access to it
// (CAP_SYS_PTRACE unless it runs as the agent's user) and entering it needs
// CAP_SYS_ADMIN.
type ProcNamespaces struct {
	// Root is the proc filesystem's mount point; empty means /proc.
	Root string
	// inspected, when set, is called with each path Scan looks into
	// (tests count them).
	inspected func(path string)
}

// Cookie implements Namespaces. A /proc/PID/ns/net path is looked up
// under Root (NodePath).
func (p ProcNamespaces) Cookie(path string) (uint64, error) {
	return netns.Cookie(p.NodePath(path))
}

// NodePath maps a runtime's /proc/PID/ns/net path (dockershim and
// cri-dockerd name pods' namespaces so), which names the node's PIDs, into
// the node's proc filesystem at Root. Other paths, and any path when Root
// is the default, are left as they are.
func (p ProcNamespaces) NodePath(path string) string {
	if rest, ok := strings.CutPrefix(path, "/proc/"); ok && p.Root != "" && p.Root != "/proc" {
		return filepath.Join(p.Root, rest)
	}
	return path
}

// Addrs implements Namespaces. It reads through one open file, as a scan
// does (inspect): the process may exit, and its PID be reused, since the
// scan.
func (p ProcNamespaces) Addrs(n Netns) ([]netip.Addr, error) {
	m, err := inspect(n.Path, NsID{}, false)
	switch {
	case err != nil:
		return nil, err
	case m.Cookie != n.Cookie:
		return nil, fmt.Errorf("%s: %w: the process there now lives in another one", n.Path, netns.ErrNotFound)
	case m.TooManyAddrs:
		return nil, fmt.Errorf("%s: %w: more than %d", n.Path, netns.ErrTooManyAddrs, netns.MaxAddrs)
	}
	return m.Addrs, nil
}

// Scan implements Namespaces. Looking into a namespace (inspect: setns,
// a socket, a netlink dump) costs about half a millisecond, and a dense
// node runs thousands of processes in a few hundred namespaces: each
// process's ns/net is first stat'ed (its nsfs device and inode, one
// system call), and only a namespace neither known nor seen before in
// this scan is looked into.
func (p ProcNamespaces) Scan(known map[NsID]bool) (ScanResult, error) {
	root := p.Root
	if root == "" {
		root = "/proc"
	}
	// Each PID's ns/net is opened by name: listing a process's ns
	// directory would need read access to it (mode 0511, owned by the
	// process's user), which root without CAP_DAC_READ_SEARCH lacks.
	entries, err := os.ReadDir(root)
	if err != nil {
		return ScanResult{}, err
	}
	// The lowest PID of a namespace is kept: its first process (a pod's
	// pause), which lives as long as the pod, rather than whichever sorts
	// first by name (an exec probe's "123456" before the pause's "35000"),
	// which an adopted record would name until it exits.
	var pids []uint64
	for _, e := range entries {
		if pid, err := strconv.ParseUint(e.Name(), 10, 32); err == nil {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	var res ScanResult
	denied := func(err error) {
		res.Denied++
		if res.DeniedErr == nil {
			res.DeniedErr = err
		}
	}
	// A namespace is seen once looked into, or known.
	seen := map[NsID]bool{}
	seenCookie := map[uint64]bool{}
	initial, haveInitial := nsIDOf(filepath.Join(root, "1", "ns", "user"))
	if !haveInitial {
		initial, haveInitial = nsIDOf("/proc/self/ns/user")
	}
	for _, pid := range pids {
		path := filepath.Join(root, strconv.FormatUint(pid, 10), "ns", "net")
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			if errors.Is(err, fs.ErrPermission) {
				denied(&fs.PathError{Op: "stat", Path: path, Err: err})
			}
			continue // e.g. a process that exited since the listing
		}
		id := NsID{uint64(st.Dev), st.Ino}
		switch {
		case seen[id]:
			continue
		case known[id]:
			seen[id] = true
			res.Known = append(res.Known, Netns{Path: path, ID: id})
			continue
		}
		if p.inspected != nil {
			p.inspected(path)
		}
		n, err := inspect(path, initial, haveInitial)
		switch {
		case errors.Is(err, fs.ErrPermission):
			denied(err)
		case errors.Is(err, fs.ErrNotExist), errors.Is(err, unix.ESRCH):
			// The process exited since the stat: its namespace is tried
			// through its next process.
		case err != nil:
			seen[id] = true // no other process's path reads it better
		default:
			// The open file is what was looked into: the PID may have
			// moved to another namespace since the stat.
			seen[id], seen[n.ID] = true, true
			if !seenCookie[n.Cookie] {
				seenCookie[n.Cookie] = true
				res.Found = append(res.Found, n)
			}
		}
	}
	return res, nil
}

// nsIDOf returns the NsID of the namespace a /proc/PID/ns/* path names.
func nsIDOf(path string) (NsID, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return NsID{}, false
	}
	return NsID{uint64(st.Dev), st.Ino}, true
}

// nsGetUserns is NS_GET_USERNS, _IO(0xb7, 0x1): a file descriptor of the
// user namespace that owns a namespace.
const nsGetUserns = 0xb701

// inspect opens one process's network namespace and reads its identity,
// cookie, owning user namespace (unless !haveInitial) and, unless that is
// foreign, addresses through that one open file (the process may exit, and
// its PID be reused, between the listing and the reads).
func inspect(path string, initial NsID, haveInitial bool) (Netns, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Netns{}, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return Netns{}, &fs.PathError{Op: "fstat", Path: path, Err: err}
	}
	self := "/proc/self/fd/" + strconv.Itoa(fd)
	cookie, err := netns.Cookie(self)
	if err != nil {
		return Netns{}, err
	}
	n := Netns{Path: path, ID: NsID{uint64(st.Dev), st.Ino}, Cookie: cookie}
	if haveInitial {
		ufd, err := unix.IoctlRetInt(fd, nsGetUserns)
		if err != nil {
			return Netns{}, &fs.PathError{Op: "ioctl NS_GET_USERNS", Path: path, Err: err}
		}
		var st unix.Stat_t
		err = unix.Fstat(ufd, &st)
		unix.Close(ufd)
		if err != nil {
			return Netns{}, &fs.PathError{Op: "fstat user namespace", Path: path, Err: err}
		}
		n.ForeignUserns = (NsID{uint64(st.Dev), st.Ino} != initial)
	}
	if n.ForeignUserns {
		return n, nil
	}
	n.Addrs, err = netns.Addrs(self, netns.MaxAddrs)
	if errors.Is(err, netns.ErrTooManyAddrs) {
		n.TooManyAddrs = true
	} else if err != nil {
		return Netns{}, err
	}
	return n, nil
}
