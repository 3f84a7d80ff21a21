package configdir

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/ztdns/ztdns/pkg/model"
)

// fileState is what the source knows about one manifest file.
type fileState struct {
	path string
	// digest identifies the content last parsed, so an unchanged file is not
	// parsed again on every scan; valid only when hasDigest.
	digest    [sha256.Size]byte
	hasDigest bool
	// latest is the newest content's objects when it parsed cleanly, nil when
	// it did not (problems says why).
	latest   *manifests
	problems []error
	// served is what the file contributes to snapshots: the newest content
	// that parsed cleanly and did not collide with objects of other files.
	// A broken edit leaves it alone, so nothing is lost.
	served *manifests
	// conflicts are the collisions that keep latest from being served.
	conflicts []error
}

// pending reports whether the file has a clean parse it does not serve yet.
func (f *fileState) pending() bool { return f.latest != nil && f.latest != f.served }

// state is the directory as last scanned.
type state struct {
	dir    string
	parser parser
	files  map[string]*fileState // by file name
	names  []string              // the manifest files present, sorted
}

func newState(dir string, p parser) *state {
	p.limits = p.limits.withDefaults()
	return &state{dir: dir, parser: p, files: make(map[string]*fileState)}
}

// scan reads the directory again and reports whether what it serves changed.
// Only an unreadable directory is an error; problems in files are recorded in
// their fileState. It stops between files when ctx is done.
func (st *state) scan(ctx context.Context) (changed bool, err error) {
	names, err := listManifests(st.dir)
	if err != nil {
		return false, err
	}
	present := make(map[string]bool, len(names))
	st.names = st.names[:0]
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		f := st.files[name]
		if f == nil {
			f = &fileState{path: filepath.Join(st.dir, name)}
			st.files[name] = f
		}
		if gone := st.refresh(f); gone {
			continue // deleted between listing and reading
		}
		present[name] = true
		st.names = append(st.names, name)
	}
	for name, f := range st.files {
		if !present[name] {
			changed = changed || f.served.len() > 0
			delete(st.files, name)
		}
	}
	return st.resolve() || changed, nil
}

// refresh reads f again and parses it if its content changed. It reports
// whether the file no longer exists.
func (st *state) refresh(f *fileState) (gone bool) {
	data, err := readManifest(f.path, st.parser.limits.FileBytes)
	if errors.Is(err, fs.ErrNotExist) {
		if _, lerr := os.Lstat(f.path); errors.Is(lerr, fs.ErrNotExist) {
			return true
		}
		err = fmt.Errorf("dangling symlink: %w", err)
	}
	if err != nil {
		f.hasDigest, f.latest = false, nil
		f.problems = []error{&FileError{Path: f.path, Err: err}}
		return false
	}
	digest := sha256.Sum256(data)
	if f.hasDigest && digest == f.digest {
		return false
	}
	f.digest, f.hasDigest = digest, true
	f.latest, f.problems = st.parser.parseFile(f.path, data)
	return false
}

// resolve decides which files serve their latest content. Objects are
// unique across the directory: a file whose new objects collide with objects
// another file serves keeps serving its previous ones, so the object that
// was there first stays. Files are tried in name order, repeatedly, because
// accepting one file's change can release objects another file now claims.
func (st *state) resolve() (changed bool) {
	type owner struct {
		file *fileState
		line int
	}
	owners := make(map[objectID]owner)
	total := 0 // objects served
	for _, name := range st.names {
		f := st.files[name]
		f.conflicts = nil
		if f.served != nil {
			for _, o := range f.served.placed {
				owners[o.id] = owner{f, o.line}
			}
		}
		total += f.served.len()
	}
	for progress := true; progress; {
		progress = false
		for _, name := range st.names {
			f := st.files[name]
			if !f.pending() {
				continue
			}
			var conflicts []error
			for _, o := range f.latest.placed {
				if other, ok := owners[o.id]; ok && other.file != f {
					conflicts = append(conflicts, &FileError{Path: f.path, Line: o.line,
						Err: fmt.Errorf("%s is already defined at %s:%d", o.id, other.file.path, other.line)})
				}
			}
			if n := total - f.served.len() + f.latest.len(); n > st.parser.limits.Objects {
				conflicts = append(conflicts, &FileError{Path: f.path, Err: fmt.Errorf(
					"serving its %d objects would make %d in the directory, more than the limit of %d (--config-max-objects)",
					f.latest.len(), n, st.parser.limits.Objects)})
			}
			f.conflicts = capProblems(f.path, conflicts)
			if len(conflicts) > 0 {
				continue
			}
			total += f.latest.len() - f.served.len()
			if f.served != nil {
				for _, o := range f.served.placed {
					delete(owners, o.id)
				}
			}
			for _, o := range f.latest.placed {
				owners[o.id] = owner{f, o.line}
			}
			changed = changed || !sameObjects(f.served, f.latest)
			f.served = f.latest
			progress = true
		}
	}
	return changed
}

// snapshot is everything the files serve, in file order then file position.
func (st *state) snapshot() *model.Snapshot {
	s := &model.Snapshot{}
	for _, name := range st.names {
		m := st.files[name].served
		if m == nil {
			continue
		}
		s.Namespaces = concat(s.Namespaces, m.namespaces)
		s.Services = concat(s.Services, m.services)
		s.EndpointSlices = concat(s.EndpointSlices, m.endpointSlices)
		s.ServiceEntries = concat(s.ServiceEntries, m.serviceEntries)
		s.Pods = concat(s.Pods, m.pods)
	}
	return s
}

// concat appends more to list. The first file's objects are shared rather
// than copied (manifests never change once parsed): with one file per kind,
// as in a large directory, a snapshot costs no copy of the objects.
func concat[T any](list, more []T) []T {
	if list == nil {
		return slices.Clip(more) // a later append copies
	}
	return append(list, more...)
}

// errors lists the current problems, file by file.
func (st *state) errors() []error {
	var errs []error
	for _, name := range st.names {
		f := st.files[name]
		errs = append(errs, f.problems...)
		errs = append(errs, f.conflicts...)
	}
	return errs
}

// listManifests returns the names of the manifest files in dir, sorted.
func listManifests(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading config dir: %w", err)
	}
	var names []string
	for _, e := range entries {
		if isManifestName(e.Name()) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// isManifestName accepts *.yaml and *.yml, but not hidden files: editors'
// swap and lock files (.x.yaml.swp, .#x.yaml) and the ..data machinery of a
// ConfigMap volume start with a dot.
func isManifestName(name string) bool {
	if strings.HasPrefix(name, ".") || strings.HasPrefix(name, "#") || strings.HasPrefix(name, "~") {
		return false
	}
	ext := filepath.Ext(name)
	return ext == ".yaml" || ext == ".yml"
}

// readManifest reads a regular file (following symlinks, as ConfigMap volumes
// need) of at most limit bytes. Anything else is refused before it is
// opened: opening a FIFO would block until someone writes to it, and a
// device may never end.
func readManifest(path string, limit int64) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file (%s): skipped", fi.Mode().Type())
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("file is %d bytes, more than the limit of %d (--config-max-file-bytes)", fi.Size(), limit)
	}
	// O_NONBLOCK, and the type checked again on the open file: the path may
	// have been replaced by a FIFO since the check above.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file (%s): skipped", fi.Mode().Type())
	}
	var buf bytes.Buffer
	buf.Grow(int(min(fi.Size(), limit)) + bytes.MinRead)
	// The file may grow while being read; read one byte past the limit to
	// notice.
	if _, err := buf.ReadFrom(io.LimitReader(f, limit+1)); err != nil {
		return nil, err
	}
	if int64(buf.Len()) > limit {
		return nil, fmt.Errorf("file is more than the limit of %d bytes (--config-max-file-bytes)", limit)
	}
	return buf.Bytes(), nil
}

// capProblems keeps the first maxProblemsPerFile problems of a file; the
// last one kept counts the rest.
func capProblems(path string, errs []error) []error {
	if len(errs) <= maxProblemsPerFile {
		return errs
	}
	more := len(errs) - maxProblemsPerFile + 1
	return append(errs[:maxProblemsPerFile-1:maxProblemsPerFile-1], &FileError{Path: path, Err: fmt.Errorf("%d more problems not listed", more)})
}
