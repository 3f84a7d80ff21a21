package configdir

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ztdns/ztdns/internal/regularfile"
	"github.com/ztdns/ztdns/pkg/model"
)

// fileState is what the source knows about one manifest file.
type fileState struct {
	path string
	// digest identifies the content last parsed, so an unchanged file is not
	// parsed again on every scan; valid only when hasDigest.
	digest    [sha256.Size]byte
	hasDigest bool
	// stat is the file's identity and times when it was last read: while
	// they stay the same, its content has not changed and it is not read
	// again (a scan follows every event in the directory, and may find up
	// to limits.Files files of limits.FileBytes each). It is zero, so the
	// file is read again, when the stat could not tell a later write (see
	// fileStat.trustedAt).
	stat fileStat
	// latest is the newest content's objects when it parsed cleanly, nil when
	// it did not (problems says why).
	latest   *manifests
	problems []error
	// warnings are what the content last parsed serves other than as
	// written (fields ignored, values skipped).
	warnings []error
	// served is what the file contributes to snapshots: the newest content
	// that parsed cleanly and did not collide with objects of other files.
	// A broken edit leaves it alone, so nothing is lost.
	served *manifests
	// conflicts are the collisions that keep latest from being served.
	conflicts []error
	// servedGen is the state's gen when served last changed.
	servedGen uint64
	// blocked: the content parsed cleanly but could not be served, and its
	// objects were let go (N copies of a big file must not cost N times its
	// objects). It is parsed again once it could be served, or its
	// conflicts are out of date: when a file in blockedBy has changed what
	// it serves (or is gone) since blockedAt, or, blocked by no file, when
	// the directory has room for its latestLen objects.
	blocked   bool
	blockedAt uint64
	blockedBy []string
	latestLen int
	// unsettled: the last scan left the file unread, as it was written
	// within the state's settle time; it is read once it has settled.
	unsettled bool
}

// pending reports whether the file has a clean parse it does not serve yet.
func (f *fileState) pending() bool { return f.latest != nil && f.latest != f.served }

// state is the directory as last scanned.
type state struct {
	dir    string
	parser parser
	files  map[string]*fileState // by file name
	names  []string              // the manifest files present, sorted
	// skipped are the problems of files past limits.Files, skippedFiles
	// how many files those are.
	skipped      []error
	skippedFiles int
	// gen counts changes to what files serve.
	gen uint64
	// reads counts the files read, for tests.
	reads int
	// read is the names of the files the last scan read, sorted, for the
	// poller (another goroutine): it must watch the files scan reads.
	read atomic.Pointer[[]string]
	// firstSeen is when the directory first defined each ServiceEntry that
	// has no creationTimestamp, by key, for as long as some file defines
	// it: its Created, as the API server would have stamped it. Without
	// it, all such entries would be created at the zero time, and an entry
	// added later whose name sorts first would take a host's VIP from the
	// entry that had it (vip.Allocate). It lives with the process: after a
	// restart, all are first seen by the first scan.
	firstSeen map[string]time.Time
	// scanAt is when the current scan began: the first-seen time of what
	// it finds new. seenDirty: a file was parsed or dropped since
	// firstSeen last forgot what no file defines.
	scanAt    time.Time
	seenDirty bool
	// now and stat are time.Now and statOf but in tests.
	now  func() time.Time
	stat func(path string) (fileStat, error)
	// settle is how long a file must have been left unwritten before it
	// is read (0: read at once). settleAt is when the first file the last
	// scan left unread for it has settled; zero when it left none.
	settle   time.Duration
	settleAt time.Time
	// parsed, set by tests, is called after a file is parsed.
	parsed func(path string)
	// beforeRetry, set by tests, is called before a blocked file is read
	// again, to change the directory at that moment.
	beforeRetry func(name string)
}

func newState(dir string, p parser) *state {
	p.limits = p.limits.withDefaults()
	return &state{dir: dir, parser: p, files: make(map[string]*fileState), firstSeen: map[string]time.Time{}, now: time.Now, stat: statOf}
}

// scan reads the directory again and reports whether what it serves changed.
// Only an unreadable directory is an error; problems in files are recorded in
// their fileState. It stops between files when ctx is done.
func (st *state) scan(ctx context.Context) (changed bool, err error) {
	st.scanAt = st.now().Round(0) // no monotonic reading: it is an object's time
	st.settleAt = time.Time{}
	names, skipped, over, err := listManifests(st.dir, st.parser.limits.Files, func(name string) bool {
		_, ok := st.files[name]
		return ok
	})
	if err != nil {
		return false, err
	}
	st.skipped, st.skippedFiles = skipped, over
	present := make(map[string]bool, len(names))
	st.names = st.names[:0]
	pending := 0 // objects parsed and not served yet
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		f := st.files[name]
		if f == nil {
			f = &fileState{path: filepath.Join(st.dir, name)}
			st.files[name] = f
		}
		if gone := st.refresh(f, false); gone {
			continue // deleted between listing and reading
		}
		present[name] = true
		st.names = append(st.names, name)
		if f.pending() {
			if pending+f.latest.len() > st.parser.limits.Objects {
				// More than the directory may serve is waiting: let this
				// one go, to be parsed again on its own below.
				st.block(f, nil)
			} else {
				pending += f.latest.len()
			}
		}
	}
	for name := range st.files {
		if !present[name] {
			changed = st.drop(name) || changed
		}
	}
	changed = st.resolve() || changed
	// Files let go of may be servable now; one at a time, so that at most
	// one of them holds its objects unserved.
	for progress := true; progress; {
		progress = false
		for i, name := range st.names {
			if err := ctx.Err(); err != nil {
				return false, err
			}
			f := st.files[name]
			if !f.blocked || f.unsettled || !st.couldServe(f) {
				continue
			}
			if st.beforeRetry != nil {
				st.beforeRetry(name)
			}
			if gone := st.refresh(f, true); gone {
				// Deleted since it was listed: it would stay blocked and
				// servable, and be tried again forever.
				changed = st.drop(name) || changed
				st.names = slices.Delete(st.names, i, i+1)
				changed = st.resolve() || changed
				progress = true
				break // st.names changed under the range
			}
			changed = st.resolve() || changed
			progress = true // an unsettled one is not tried again this scan
		}
	}
	st.forgetUnseen()
	st.publishNames()
	return changed, nil
}

// stamp gives the ServiceEntries of m that have no creationTimestamp the
// time the directory first defined them.
func (st *state) stamp(m *manifests) {
	for i := range m.serviceEntries {
		se := &m.serviceEntries[i]
		if !se.Created.IsZero() {
			continue
		}
		key := se.Key()
		t, ok := st.firstSeen[key]
		if !ok {
			t = st.scanAt
			st.firstSeen[key] = t
		}
		se.Created = t
	}
}

// forgetUnseen drops the first-seen times of ServiceEntries no file
// defines any more (served, or parsed and waiting to be): one defined
// again is new.
func (st *state) forgetUnseen() {
	if !st.seenDirty || len(st.firstSeen) == 0 {
		return
	}
	st.seenDirty = false
	defined := make(map[string]bool, len(st.firstSeen))
	for _, f := range st.files {
		for _, m := range []*manifests{f.served, f.latest} {
			if m == nil {
				continue
			}
			for i := range m.serviceEntries {
				defined[m.serviceEntries[i].Key()] = true
			}
		}
	}
	for key := range st.firstSeen {
		if !defined[key] {
			delete(st.firstSeen, key)
		}
	}
}

// publishNames makes the names of the files read those lastRead returns.
func (st *state) publishNames() {
	if old := st.read.Load(); old == nil || !slices.Equal(*old, st.names) {
		names := slices.Clone(st.names)
		st.read.Store(&names)
	}
}

// lastRead returns the names of the files the last scan read, sorted. It
// may be called from any goroutine; the slice must not be changed.
func (st *state) lastRead() []string {
	if names := st.read.Load(); names != nil {
		return *names
	}
	return nil
}

// drop forgets a file that is gone (but not its name in st.names), and
// reports whether that changes what the directory serves.
func (st *state) drop(name string) (changed bool) {
	f := st.files[name]
	if f.served != nil {
		st.gen++ // files it blocked may be served now
	}
	delete(st.files, name)
	st.seenDirty = true
	return f.served.len() > 0
}

// block lets go of f's unserved objects, remembering what keeps them out.
func (st *state) block(f *fileState, blockedBy []string) {
	f.blocked, f.blockedAt, f.blockedBy, f.latestLen = true, st.gen, blockedBy, f.latest.len()
	f.latest = nil
}

// couldServe reports whether a blocked file is worth parsing again: a file
// that served objects it also defines has changed what it serves (or is
// gone), or it collided with none and there is room for its objects. A file
// blocked before it was checked (blockedBy nil, no conflicts) is always
// worth a try. One collision changed is enough, with or without room: the
// file's problems name every file it collided with, and are out of date
// once one of those changed; its objects were let go, so only parsing it
// again says what keeps it out now (once per change, as it is then blocked
// by what serves now), or serves it when nothing does.
func (st *state) couldServe(f *fileState) bool {
	if f.blockedBy == nil && f.conflicts == nil {
		return true
	}
	for _, name := range f.blockedBy {
		if g := st.files[name]; g == nil || g.servedGen > f.blockedAt {
			return true
		}
	}
	if len(f.blockedBy) > 0 {
		return false
	}
	total := 0
	for _, name := range st.names {
		total += st.files[name].served.len()
	}
	return total-f.served.len()+f.latestLen <= st.parser.limits.Objects
}

// refresh reads f again and parses it if its content changed, or if force
// (a blocked file whose objects were let go). It reports whether the file
// no longer exists.
func (st *state) refresh(f *fileState, force bool) (gone bool) {
	// Stated before reading: a change after this makes the next scan's
	// stat differ, so it is read then, if the stat is trusted.
	now := st.now()
	stat, statErr := st.stat(f.path)
	if statErr == nil && f.hasDigest && stat == f.stat && !force {
		f.unsettled = false
		return false
	}
	// Written a moment ago: the writer may be halfway through (a shell's
	// `cat saved > f` truncates, then writes in steps). Read it once it has
	// been left alone for st.settle; until then it serves what it did.
	if statErr == nil && st.settle > 0 && !stat.settledAt(now, st.settle) {
		f.unsettled = true
		if at := stat.settlesAt(now, st.settle); st.settleAt.IsZero() || at.Before(st.settleAt) {
			st.settleAt = at
		}
		return false
	}
	f.unsettled = false
	st.reads++
	data, err := readManifest(f.path, st.parser.limits.FileBytes)
	if errors.Is(err, fs.ErrNotExist) {
		if _, lerr := os.Lstat(f.path); errors.Is(lerr, fs.ErrNotExist) {
			return true
		}
		err = fmt.Errorf("dangling symlink: %w", err)
	}
	if err != nil {
		f.hasDigest, f.latest, f.blocked, f.conflicts = false, nil, false, nil
		f.problems, f.warnings = []error{&FileError{Path: f.path, Err: err}}, nil
		return false
	}
	digest := sha256.Sum256(data)
	if statErr != nil || !stat.trustedAt(now) {
		// Never equal to a later stat: read again (the digest spares the
		// parse).
		stat = fileStat{}
	}
	f.stat = stat
	if f.hasDigest && digest == f.digest && !force {
		return false
	}
	f.digest, f.hasDigest = digest, true
	f.blocked, f.blockedBy, f.conflicts = false, nil, nil
	f.latest, f.problems, f.warnings = st.parser.parseFile(f.path, data)
	if st.parsed != nil {
		st.parsed(f.path)
	}
	if f.latest != nil {
		st.stamp(f.latest)
	}
	st.seenDirty = true
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
		if !f.blocked {
			f.conflicts = nil
		}
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
			conflicts := &problems{path: f.path}
			blockers := map[string]bool{}
			for _, o := range f.latest.placed {
				if other, ok := owners[o.id]; ok && other.file != f {
					blockers[filepath.Base(other.file.path)] = true
					conflicts.addWith(func() (int, error) {
						return o.line, fmt.Errorf("%s is already defined at %s:%d", o.id, quoted(other.file.path), other.line)
					})
				}
			}
			f.blockedBy = slices.Sorted(maps.Keys(blockers))
			if n := total - f.served.len() + f.latest.len(); n > st.parser.limits.Objects {
				conflicts.add(0, fmt.Errorf(
					"serving its %d objects would make %d in the directory, more than the limit of %d (--config-max-objects)",
					f.latest.len(), n, st.parser.limits.Objects))
			}
			f.conflicts = conflicts.list()
			if conflicts.count() > 0 {
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
			f.served, f.blockedBy = f.latest, nil
			st.gen++
			f.servedGen = st.gen
			progress = true
		}
	}
	// What is still pending cannot be served: let its objects go.
	for _, name := range st.names {
		if f := st.files[name]; f.pending() {
			st.block(f, f.blockedBy)
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

// dirStats counts the manifest files by what they serve, for metrics.
type dirStats struct {
	// served: files that serve their content as it is. refused: files
	// whose content has problems (they serve their last good objects, if
	// any). blocked: files whose content is valid but collides with
	// objects other files serve, or would go past --config-max-objects.
	// skipped: files past --config-max-files. unsettled: new files not read
	// yet, written within the settle time.
	served, refused, blocked, skipped, unsettled int
	// scan is how long the last scan took.
	scan time.Duration
}

// stats counts the files by state.
func (st *state) stats() dirStats {
	d := dirStats{skipped: st.skippedFiles}
	for _, name := range st.names {
		f := st.files[name]
		switch {
		case len(f.problems) > 0:
			d.refused++
		case f.blocked || len(f.conflicts) > 0:
			d.blocked++
		case f.served == nil:
			d.unsettled++
		default:
			d.served++
		}
	}
	return d
}

// serves reports whether the file a problem is in serves objects; ok is
// false when the problem is in no file read.
func (st *state) serves(err error) (serves, ok bool) {
	p := pathOf(err)
	if filepath.Dir(p) != filepath.Clean(st.dir) {
		return false, false
	}
	f := st.files[filepath.Base(p)]
	if f == nil {
		return false, false
	}
	return f.served.len() > 0, true
}

// errors lists the current problems, file by file.
func (st *state) errors() []error {
	var errs []error
	for _, name := range st.names {
		f := st.files[name]
		errs = append(errs, f.problems...)
		errs = append(errs, f.conflicts...)
	}
	return append(errs, st.skipped...)
}

// warnings lists the current warnings, file by file.
func (st *state) warnings() []error {
	var out []error
	for _, name := range st.names {
		out = append(out, st.files[name].warnings...)
	}
	return out
}

// listManifests returns the names of the manifest files in dir to read,
// sorted: at most limit of them, those known already first, so that a new
// file does not push out one that serves (known may be nil). The rest are skipped, each a
// problem (the first few named, the others counted). Names are read in
// batches and trimmed as they come, so a directory of millions of files
// costs no more memory than a few times limit names.
func listManifests(dir string, limit int, known func(name string) bool) (names []string, skipped []error, over int, err error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("reading config dir: %w", err)
	}
	defer d.Close()
	const named = maxProblemsPerFile // skipped files named in problems
	keep := limit + named
	if known == nil {
		known = func(string) bool { return false }
	}
	less := func(a, b string) int {
		ka, kb := known(a), known(b)
		if ka != kb {
			if ka {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	}
	total := 0
	for {
		batch, err := d.ReadDir(1024)
		for _, e := range batch {
			if isManifestName(e.Name()) {
				names = append(names, e.Name())
				total++
			}
		}
		if len(names) > 2*keep {
			slices.SortFunc(names, less)
			names = slices.Clip(names[:keep])
		}
		if errors.Is(err, io.EOF) || (err == nil && len(batch) == 0) {
			break
		}
		if err != nil {
			return nil, nil, 0, fmt.Errorf("reading config dir: %w", err)
		}
	}
	if len(names) <= limit { // the usual case: no file to choose against
		slices.Sort(names)
		return names, nil, 0, nil
	}
	slices.SortFunc(names, less)
	rest := names[limit:]
	names = slices.Sorted(slices.Values(names[:limit]))
	for i, name := range rest {
		if i == named-1 && total-limit > named {
			skipped = append(skipped, &FileError{Path: dir, Err: moreProblemsf(total-limit-i,
				"%d more files skipped: more than %d manifest files (--config-max-files)", total-limit-i, limit)})
			break
		}
		skipped = append(skipped, &FileError{Path: filepath.Join(dir, name), Err: fmt.Errorf(
			"skipped: the directory has %d manifest files, more than the limit of %d (--config-max-files)", total, limit)})
	}
	return names, skipped, total - limit, nil
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
// need) of at most limit bytes (regularfile.Read): opening a FIFO would block
// until someone writes to it, and a device may never end.
func readManifest(path string, limit int64) ([]byte, error) {
	data, err := regularfile.Read(path, limit)
	var (
		notRegular *regularfile.NotRegularError
		tooLarge   *regularfile.TooLargeError
	)
	switch {
	case errors.As(err, &notRegular):
		return nil, fmt.Errorf("not a regular file (%s): skipped", notRegular.Mode.Type())
	case errors.As(err, &tooLarge) && tooLarge.Grew:
		return nil, fmt.Errorf("file is more than the limit of %d bytes (--config-max-file-bytes)", limit)
	case errors.As(err, &tooLarge):
		return nil, fmt.Errorf("file is %d bytes, more than the limit of %d (--config-max-file-bytes)", tooLarge.Size, limit)
	}
	return data, err
}
