// Package rootowned checks that a directory the agent acts on (where it
// listens, keeps its state, pins its BPF maps) is one nobody but root could
// have planted anything in: owned by root (or the agent's own user), not
// writable by others, and so is every directory on the way to it and every
// symbolic link followed. Whoever can write in one of them, or re-point one
// of the links, can swap in a directory of their own.
package rootowned

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// Dir is Resolve followed by Check of the directory it names, with sticky
// no excuse there: the directory the caller creates its own files in. It
// returns that directory, and whether Resolve created it (mode).
func Dir(dir string, mode os.FileMode) (real string, created bool, err error) {
	real, created, err = Resolve(dir, mode)
	if err == nil {
		err = Check(real, false)
	}
	if err != nil {
		return "", false, err
	}
	return real, created, nil
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

// maxLinks bounds the symbolic links Resolve follows, as the kernel
// does (MAXSYMLINKS is 40).
const maxLinks = 40

// Resolve resolves dir one component at a time, as the kernel does,
// and returns the directory it names. Every directory it passes through
// (from / down, the last one included) must pass Check as an ancestor,
// and every symbolic link it follows checkLink, before anything below it is
// looked at; a missing directory is created there, mode (the last one) or
// 0755. created reports whether the last one was.
func Resolve(dir string, mode os.FileMode) (real string, created bool, err error) {
	dir, err = filepath.Abs(dir)
	if err != nil {
		return "", false, err
	}
	real = "/"
	if err := Check(real, true); err != nil {
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
			if err := checkInfo(next, fi, true); err != nil {
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
// Resolve has checked already.)
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

// Check refuses a directory that neither root nor the agent's own user
// owns, or that others can write in (with stickyOK, sticky allows it, for a
// directory above the one the caller uses, like /tmp: nobody can then move
// root's entries).
func Check(path string, stickyOK bool) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	return checkInfo(path, fi, stickyOK)
}

// checkInfo is Check for a caller that has stat'ed path already.
func checkInfo(path string, fi os.FileInfo, stickyOK bool) error {
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
