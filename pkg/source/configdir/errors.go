package configdir

import "fmt"

// FileError is a problem found in one manifest file, located by line so an
// operator can jump to it.
type FileError struct {
	// Path is the file's path: the configured directory joined with its name.
	Path string
	// Line is 1-based; 0 when the problem concerns the whole file (unreadable,
	// too large).
	Line int
	Err  error
}

func (e *FileError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %v", e.Path, e.Line, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Path, e.Err)
}

func (e *FileError) Unwrap() error { return e.Err }
