package configdir

import (
	"errors"
	"fmt"
	"strconv"
)

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
		return fmt.Sprintf("%s:%d: %v", quoted(e.Path), e.Line, e.Err)
	}
	return fmt.Sprintf("%s: %v", quoted(e.Path), e.Err)
}

// quoted is a string from the directory (a file's name, a manifest's
// kind) as a message shows it: as it is when %q would show it
// the same between its quotes, else as %q shows it. A name like
// "evil\n\x1b[1AReady: yes.yaml" then cannot put a line or a terminal
// escape into `ztdns status`, while "bad.yaml:7" stays as editors read it.
func quoted(s string) string {
	if q := strconv.Quote(s); q[1:len(q)-1] != s {
		return q
	}
	return s
}

func (e *FileError) Unwrap() error { return e.Err }

// moreProblems is a line that stands for n problems left out of a list (a
// file's "981 more problems not listed", "30 more files skipped"): a list
// that leaves out such a line in turn (fairShare) counts all n.
type moreProblems struct {
	n   int
	msg string
}

func (e *moreProblems) Error() string { return e.msg }

// moreProblemsf is a moreProblems of n, saying format.
func moreProblemsf(n int, format string, args ...any) error {
	return &moreProblems{n: n, msg: fmt.Sprintf(format, args...)}
}

// problemsIn is how many problems err stands for: one, or a moreProblems'
// count.
func problemsIn(err error) int {
	var m *moreProblems
	if errors.As(err, &m) {
		return m.n
	}
	return 1
}
