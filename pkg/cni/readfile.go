package cni

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/ztdns/ztdns/internal/regularfile"
)

// maxConfFileBytes bounds a file the agent reads from the CNI conf dir.
// Real network configurations weigh a few KiB (Calico's, Cilium's,
// flannel's, istio-cni's copy, Multus's with its delegates: 0.3–5 KiB); a
// MiB is hundreds of times the largest, and still little for the agent to
// hold while it reads each of the dir's files.
const maxConfFileBytes = 1 << 20

// refusedFileError says why a file was not read: it is not a regular
// file, it is larger than the bound, or it is a symbolic link not followed.
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

// readRegularFile reads the regular file at path, of at most limit bytes
// (regularfile.Read): a FIFO, a device or a file grown past limit in the
// dir may be another installer's or a broken tool's, and would block the
// agent or exhaust its memory. With follow false, a symbolic link is
// refused (regularfile.ReadNoFollow). A refusal is a *refusedFileError
// naming path and why.
func readRegularFile(path string, limit int64, follow bool) ([]byte, error) {
	read := regularfile.Read
	if !follow {
		read = regularfile.ReadNoFollow
	}
	data, err := read(path, limit)
	var (
		notRegular *regularfile.NotRegularError
		tooLarge   *regularfile.TooLargeError
		symlink    *regularfile.SymlinkError
	)
	switch {
	case errors.As(err, &notRegular) && notRegular.Mode == fs.ModeIrregular:
		return nil, &refusedFileError{path, "not a regular file"}
	case errors.As(err, &notRegular):
		return nil, &refusedFileError{path, notRegular.Kind() + ", not a regular file"}
	case errors.As(err, &tooLarge) && tooLarge.Grew:
		return nil, &refusedFileError{path, fmt.Sprintf("more than the limit of %d bytes (it grew while read)", limit)}
	case errors.As(err, &tooLarge):
		return nil, &refusedFileError{path, fmt.Sprintf("%d bytes, more than the limit of %d", tooLarge.Size, limit)}
	case errors.As(err, &symlink):
		return nil, &refusedFileError{path, "a symbolic link, not followed, not a regular file"}
	}
	return data, err
}
