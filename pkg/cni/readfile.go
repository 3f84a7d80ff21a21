package cni

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// maxConfFileBytes bounds a file the agent reads from the CNI conf dir.
// Real network configurations weigh a few KiB (Calico's, Cilium's,
// flannel's, istio-cni's copy, Multus's with its delegates: 0.3–5 KiB); a
// MiB is hundreds of times the largest, and still little for the agent to
// hold while it reads each of the dir's files.
const maxConfFileBytes = 1 << 20

// refusedFileError says why a file was not read: it is not a regular
// file, or it is larger than the bound.
type refusedFileError struct {
	path string
	why  string
}

func (e *refusedFileError) Error() string { return "refused " + e.path + ": " + e.why }

// readConfFile reads a file of the CNI conf dir (see readRegularFile),
// following symbolic links as a runtime does: installers link their
// configuration there.
func readConfFile(path string) ([]byte, error) {
	return readRegularFile(path, maxConfFileBytes, true)
}

// readRegularFile reads the regular file at path, of at most limit bytes.
// Anything else in the dir may be another installer's or a broken tool's:
// a FIFO would block the open, and then the read, until someone writes to
// it, and a device such as /dev/zero never ends. So what is not a regular
// file is refused without being opened, and, since the path may be
// replaced between the look and the open, opened with O_NONBLOCK (a FIFO's
// open returns at once) and refused again on what was opened before
// anything is read. A file larger than limit is refused too, and one that
// grows past it while read. With follow false, a symbolic link is refused
// (O_NOFOLLOW). The error is a *refusedFileError naming path and why.
func readRegularFile(path string, limit int64, follow bool) ([]byte, error) {
	stat, flags := os.Stat, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC
	if !follow {
		stat, flags = os.Lstat, flags|syscall.O_NOFOLLOW
	}
	fi, err := stat(path)
	if err != nil {
		return nil, err
	}
	if err := checkRegular(path, fi, limit); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, flags, 0)
	if errors.Is(err, syscall.ELOOP) && !follow {
		return nil, &refusedFileError{path, "a symbolic link, not followed"}
	}
	if errors.Is(err, syscall.ENXIO) { // a socket, replaced since the look
		return nil, &refusedFileError{path, "not a regular file"}
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return nil, err
	}
	if err := checkRegular(path, fi, limit); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.Grow(int(fi.Size()) + bytes.MinRead)
	// One byte past the limit tells a file that grew while read.
	if _, err := buf.ReadFrom(io.LimitReader(f, limit+1)); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(buf.Len()) > limit {
		return nil, &refusedFileError{path, fmt.Sprintf("more than the limit of %d bytes (it grew while read)", limit)}
	}
	return buf.Bytes(), nil
}

// checkRegular refuses fi unless it is a regular file of at most limit
// bytes.
func checkRegular(path string, fi fs.FileInfo, limit int64) error {
	if !fi.Mode().IsRegular() {
		return &refusedFileError{path, fileKind(fi.Mode()) + ", not a regular file"}
	}
	if fi.Size() > limit {
		return &refusedFileError{path, fmt.Sprintf("%d bytes, more than the limit of %d", fi.Size(), limit)}
	}
	return nil
}

// fileKind names what a file that is not a regular one is.
func fileKind(m fs.FileMode) string {
	switch t := m.Type(); {
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
	case t&fs.ModeSymlink != 0:
		return "a symbolic link, not followed"
	default:
		return fmt.Sprintf("of type %s", t)
	}
}
