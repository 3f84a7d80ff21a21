// Package regularfile reads a file the agent is given by path but does not
// own (a manifest, a CNI configuration, a record left by another process)
// only when it is a regular file, and only up to a bound. Anything else at
// the path may be another tool's or a broken one's: a FIFO blocks the open,
// and then the read, until someone writes to it, and a device such as
// /dev/zero never ends.
package regularfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// NotRegularError refuses a file that is not a regular file. It is not
// opened, unless the path was replaced between the look and the open.
type NotRegularError struct {
	Path string
	// Mode is the file's mode (its type and permissions), or
	// fs.ModeIrregular when only the open told: a socket the open refused.
	Mode fs.FileMode
}

func (e *NotRegularError) Error() string { return e.Path + ": " + e.Kind() + ", not a regular file" }

// Kind names what the file is: "a FIFO", "a character device", ….
func (e *NotRegularError) Kind() string {
	switch t := e.Mode.Type(); {
	case t&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case t&fs.ModeSocket != 0:
		return "a socket"
	case t&fs.ModeCharDevice != 0:
		return "a character device"
	case t&fs.ModeDevice != 0:
		return "a block device"
	case t&fs.ModeDir != 0:
		return "a directory"
	case t == fs.ModeIrregular:
		return "a special file"
	default:
		return fmt.Sprintf("of type %s", t)
	}
}

// TooLargeError refuses a regular file larger than the limit: Size bytes
// when it was seen before the read, or, when Grew, one that grew past the
// limit while it was read (Size is then unknown, 0).
type TooLargeError struct {
	Path  string
	Size  int64
	Limit int64
	Grew  bool
}

func (e *TooLargeError) Error() string {
	if e.Grew {
		return fmt.Sprintf("%s: more than the limit of %d bytes (it grew while read)", e.Path, e.Limit)
	}
	return fmt.Sprintf("%s: %d bytes, more than the limit of %d", e.Path, e.Size, e.Limit)
}

// SymlinkError refuses a symbolic link that ReadNoFollow does not follow.
type SymlinkError struct {
	Path string
}

func (e *SymlinkError) Error() string { return e.Path + ": a symbolic link, not followed" }

// Read reads the regular file at path, of at most limit bytes, following
// symbolic links. What is not a regular file is refused without being
// opened (*NotRegularError); and, since the path may be replaced between
// the look and the open, it is opened with O_NONBLOCK (a FIFO's open
// returns at once) and refused again on what was opened, before anything
// is read. A file larger than limit is refused too, and one that grows
// past it while read (*TooLargeError). Other errors, such as a missing
// file's, are those of the stat, the open or the read, as they are.
func Read(path string, limit int64) ([]byte, error) {
	return read(path, limit, true)
}

// ReadNoFollow is Read that refuses a symbolic link at path
// (*SymlinkError) instead of following it: for a file a process writes
// itself, where a link is none of its own.
func ReadNoFollow(path string, limit int64) ([]byte, error) {
	return read(path, limit, false)
}

func read(path string, limit int64, follow bool) ([]byte, error) {
	stat, flags := os.Stat, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC
	if !follow {
		stat, flags = os.Lstat, flags|syscall.O_NOFOLLOW
	}
	fi, err := stat(path)
	if err != nil {
		return nil, err
	}
	if err := check(path, fi, limit); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, flags, 0)
	switch {
	case errors.Is(err, syscall.ELOOP) && !follow: // a link, made since the look
		return nil, &SymlinkError{path}
	case errors.Is(err, syscall.ENXIO): // a socket, made since the look
		return nil, &NotRegularError{path, fs.ModeIrregular}
	case err != nil:
		return nil, err
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return nil, err
	}
	if err := check(path, fi, limit); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.Grow(int(fi.Size()) + bytes.MinRead)
	// One byte past the limit tells a file that grew while read.
	if _, err := buf.ReadFrom(io.LimitReader(f, limit+1)); err != nil {
		return nil, err
	}
	if int64(buf.Len()) > limit {
		return nil, &TooLargeError{Path: path, Limit: limit, Grew: true}
	}
	return buf.Bytes(), nil
}

// check refuses fi unless it is a regular file of at most limit bytes.
func check(path string, fi fs.FileInfo, limit int64) error {
	switch {
	case fi.Mode().Type() == fs.ModeSymlink: // only Lstat sees one
		return &SymlinkError{path}
	case !fi.Mode().IsRegular():
		return &NotRegularError{path, fi.Mode()}
	case fi.Size() > limit:
		return &TooLargeError{Path: path, Size: fi.Size(), Limit: limit}
	}
	return nil
}
