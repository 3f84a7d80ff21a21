package cni

import (
	"errors"

	"github.com/ztdns/ztdns/internal/regularfile"
)

// maxConfFileBytes bounds a file the agent reads from the CNI conf dir.
// Real network configurations weigh a few KiB (Calico's, Cilium's,
// flannel's, istio-cni's copy, Multus's with its delegates: 0.3–5 KiB); a
// MiB is hundreds of times the largest, and still little for the agent to
// hold while it reads each of the dir's files.
const maxConfFileBytes = 1 << 20

// refusedFileError is regularfile's refusal of a file, which names its
// path and says why: it is not a regular file, it is larger than the
// bound, or it is a symbolic link not followed.
type refusedFileError struct {
	err error
}

func (e *refusedFileError) Error() string { return "refused " + e.err.Error() }
func (e *refusedFileError) Unwrap() error { return e.err }

// readConfFile reads a file of the CNI conf dir (see asRefused), following
// symbolic links as a runtime does: installers link their configuration
// there.
func readConfFile(path string) ([]byte, error) {
	return asRefused(regularfile.Read(path, maxConfFileBytes))
}

// asRefused returns what regularfile read, its refusal as a
// *refusedFileError: a FIFO, a device or a file grown past the bound in a
// dir the agent reads may be another installer's or a broken tool's, and
// would block the agent or exhaust its memory.
func asRefused(data []byte, err error) ([]byte, error) {
	var (
		notRegular *regularfile.NotRegularError
		tooLarge   *regularfile.TooLargeError
		symlink    *regularfile.SymlinkError
	)
	if errors.As(err, &notRegular) || errors.As(err, &tooLarge) || errors.As(err, &symlink) {
		return nil, &refusedFileError{err}
	}
	return data, err
}
