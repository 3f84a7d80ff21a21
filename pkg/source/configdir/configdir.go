// Package configdir is ztdns's standalone source: it reads Namespaces,
// Services, EndpointSlices, Pods and Istio ServiceEntries from a directory of
// YAML manifests (`ztdns agent --config-dir DIR`) and follows changes to it.
//
// Every *.yaml and *.yml file directly in the directory is read; a file may
// hold several documents and `kind: List` objects. Objects are reduced to
// pkg/model form as they are read, so memory holds only what DNS needs.
//
// A file with any problem (bad YAML, a missing name, an address that is not
// an IP, an object another file already defines) is reported with its path
// and line, through the log and Errors, and keeps serving what it served
// before the edit: nothing is lost while someone is halfway through editing.
// A file written within the last DefaultSettle is not read until it has
// been left alone that long, so that a writer's half-written file is not
// served (a writer that pauses longer still can be seen half-written: the
// safe way is to write a hidden file, which is not read, and rename it).
//
// Scans are paced: one starts no sooner after the last one ended than that
// one took, so a writer rewriting a large file over and over keeps parsing
// to about half a core, and a change to another file waits about two scans
// at most.
//
// A ServiceEntry without metadata.creationTimestamp is given the time of
// the scan that first read it, kept while the directory defines it (and
// lost with the process), so that one added later is younger and takes no
// VIP from it (vip.Allocate orders by creation).
//
// The directory is watched with inotify (fsnotify) and scanned again after
// any event in it, which covers editors that write a new file and rename it
// over the old one, and ConfigMap volumes, whose files are symlinks through a
// ..data link that kubelet swaps. A manifest that is a symlink to a file
// elsewhere is followed: the directories it resolves through (each symlink
// on the way, and its target's) are watched too, for events about those
// names, and again after every scan, so a repointed link moves the watch;
// for a dangling link, the nearest directory on its way that exists is
// watched, for the missing name to appear. The directory's own path is
// followed the same way (a symlink re-pointed at another release, the
// directory removed and made again). Past maxLinkDirs such directories,
// or where a watch cannot be added, the directory is also scanned every
// DefaultPollInterval; otherwise nothing runs until an event comes.
// Where inotify is not available the directory is polled.
package configdir

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ztdns/ztdns/internal/clock"
	"github.com/ztdns/ztdns/internal/ratelog"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/source"
)

const (
	// DefaultDebounce is how long the directory must be quiet after an event
	// before it is scanned: long enough to see a save's write-and-rename as
	// one change, short enough that nobody waits for it.
	DefaultDebounce = 50 * time.Millisecond
	// DefaultPollInterval is how often the directory is checked when inotify
	// is not available, or cannot watch all of what the directory's path and
	// its symlinked manifests resolve through.
	DefaultPollInterval = time.Second
	// maxDebounceRounds bounds how long a steady stream of events (a slow
	// copy) can hold back a scan, in debounce periods.
	maxDebounceRounds = 10
	// DefaultSettle is how long a file must have been left unwritten (its
	// modification and status change times that much in the past) before
	// it is read: a writer truncates and writes a file in place in steps,
	// and a read between them would serve part of it.
	DefaultSettle = 300 * time.Millisecond
	// maxStartSettle bounds how long the first snapshot waits for files
	// being written to settle; the files still being written then are
	// served once they do.
	maxStartSettle = 2 * time.Second
)

// Limits bound what the directory can make the agent read and keep: a stray
// dump or a generated file gone wrong costs a clear error, not the agent's
// memory. A zero field takes its default.
type Limits struct {
	// FileBytes bounds one file (default DefaultMaxFileBytes).
	FileBytes int64
	// ObjectsPerFile bounds the objects of one file, List items included
	// (default DefaultMaxObjectsPerFile). A file over it is not served.
	ObjectsPerFile int
	// Objects bounds the objects served from the whole directory (default
	// DefaultMaxObjects). A file whose objects would go over it is not
	// served; the files served before it stay.
	Objects int
	// Files bounds the manifest files read (default DefaultMaxFiles): past
	// it, files are skipped in name order, those read already kept first.
	Files int
}

// Default limits: several times what the benchmark's 10,000 Services and
// 10,000 ServiceEntries (two files of about 2.5 MB) need.
const (
	DefaultMaxFileBytes      = 8 << 20
	DefaultMaxObjectsPerFile = 25_000
	DefaultMaxObjects        = 50_000
	DefaultMaxFiles          = 1_000
)

// Bounds on the problems kept for Errors (and so for `ztdns status`): the
// first ones say what is wrong; the rest are counted. Every file with a
// problem gets one line before any file gets a second, and the line that
// counts the rest names up to maxNamedFiles of the files it covers.
const (
	maxProblemsPerFile = 20
	maxProblems        = 100
	maxNamedFiles      = 10
)

func (l Limits) withDefaults() Limits {
	if l.FileBytes <= 0 {
		l.FileBytes = DefaultMaxFileBytes
	}
	if l.ObjectsPerFile <= 0 {
		l.ObjectsPerFile = DefaultMaxObjectsPerFile
	}
	if l.Objects <= 0 {
		l.Objects = DefaultMaxObjects
	}
	if l.Files <= 0 {
		l.Files = DefaultMaxFiles
	}
	return l
}

// changesLogEvery is the least time between two INFO lines "manifests
// changed".
const changesLogEvery = time.Minute

// Source serves the manifests in one directory. It implements source.Source.
type Source struct {
	dir          string
	log          *slog.Logger
	debounce     time.Duration
	pollInterval time.Duration // 0: inotify, falling back to polling
	// startNotify starts an inotify watch; a field so a test can make it fail.
	startNotify func(dir string, log *slog.Logger, known func() []string, recheckEvery time.Duration) (watcher, error)
	// recheckEvery is how often an inotify-watched directory is scanned
	// while something it resolves through cannot be watched
	// (DefaultPollInterval; longer in tests that show nothing else is
	// needed).
	recheckEvery time.Duration
	limits       Limits
	// settle is how long a file must be left unwritten before it is read
	// (DefaultSettle; 0 in tests about parsing).
	settle time.Duration
	// clock paces and settles scans: the system's but in tests.
	clock clock.Clock
	// parsed, set by tests, is called after each file is parsed.
	parsed func(path string)

	// readyAt is when the next scan may start; lastScan is how long the
	// last one took. Only Run's goroutine uses them.
	readyAt  time.Time
	lastScan time.Duration

	// changes spaces the INFO lines of changes after the first snapshot
	// (manifests loaded): at most one per changesLogEvery, saying how many
	// went unlogged since (unloggedBefore); those are logged at DEBUG. A
	// directory that a tool rewrites all day must not fill the log.
	changes ratelog.Limiter

	mu    sync.Mutex
	errs  []error
	warns []error
	stats dirStats
	// unreadable is why the directory could not be read at the last scan
	// (removed, a symlink re-pointed at a directory not there yet), nil
	// while it can: the last snapshot is served meanwhile.
	unreadable error
}

var (
	_ source.Source          = (*Source)(nil)
	_ source.ErrorReporter   = (*Source)(nil)
	_ source.HealthReporter  = (*Source)(nil)
	_ source.WarningReporter = (*Source)(nil)
)

// Option configures a Source.
type Option func(*Source)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(s *Source) { s.log = l } }

// WithDebounce sets how long the directory must be quiet before a scan
// (default DefaultDebounce).
func WithDebounce(d time.Duration) Option { return func(s *Source) { s.debounce = d } }

// WithLimits bounds what the directory can make the source read and keep.
func WithLimits(l Limits) Option { return func(s *Source) { s.limits = l } }

// WithPolling checks the directory every interval instead of using inotify,
// for file systems that do not deliver inotify events (some network and
// FUSE mounts).
func WithPolling(interval time.Duration) Option {
	return func(s *Source) { s.pollInterval = interval }
}

// New returns a source for the manifests in dir. Nothing is read until Run.
func New(dir string, opts ...Option) *Source {
	s := &Source{dir: dir, log: slog.Default(), debounce: DefaultDebounce, startNotify: startNotify,
		recheckEvery: DefaultPollInterval, settle: DefaultSettle, clock: clock.System{}}
	for _, o := range opts {
		o(s)
	}
	s.changes.Interval = changesLogEvery
	s.changes.Now = func() time.Time { return s.clock.Now() } // a test may set the clock after New
	s.limits = s.limits.withDefaults()
	s.log = s.log.With("source", "configdir", "dir", dir)
	return s
}

// Errors returns the problems in the directory as of the last scan, each a
// *FileError, for health endpoints and metrics: first, while the directory
// cannot be read, that. It is safe to call at any time, also while Run is
// running.
func (s *Source) Errors() []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unreadable != nil {
		gone := fmt.Errorf("%w: serving the manifests last read until it is back", s.unreadable)
		return append([]error{&FileError{Path: s.dir, Err: gone}}, s.errs...)
	}
	return slices.Clone(s.errs)
}

// Warnings returns what the directory's files serve other than as
// written, as of the last scan, each a *FileError on the line it is about:
// fields ztdns does not know (a misspelt one silently changes the answer),
// values skipped, objects that look like a kind ztdns reads but are not.
// At most maxProblems of them, kept as Errors keeps problems. It is safe to
// call at any time, also while Run is running.
func (s *Source) Warnings() []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.warns)
}

// Healthy is nil while the directory can be read, and says why not
// otherwise: the agent then serves the last snapshot, and says so in
// /readyz and `ztdns status`. It implements source.HealthReporter.
func (s *Source) Healthy() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unreadable
}

// Check reports whether the directory is there to read, as Run requires
// at the start: for the agent to refuse a --config-dir that is not before
// it starts anything, rather than have Run end at once.
func (s *Source) Check() error {
	fi, err := os.Stat(s.dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", quoted(s.dir))
	}
	d, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	return d.Close()
}

// Run reads the directory, delivers the first snapshot (even when some files
// are broken), then watches the directory and delivers a new snapshot after
// every change to what it serves, until ctx is done. It returns an error when
// the directory does not exist or cannot be read at the start; one that goes
// later (removed and made again, a symlink re-pointed at a directory not
// there yet) keeps the last snapshot served, reported by Errors and
// Healthy, until it is back. Run must not be called again before it
// returns.
//
// Snapshots share the objects' inner slices and maps with the source and with
// each other: receivers must treat them as read-only.
func (s *Source) Run(ctx context.Context, deliver func(*model.Snapshot)) error {
	if err := s.Check(); err != nil {
		return fmt.Errorf("config dir: %w", err)
	}
	// Watch before the first scan, so that no change after it is missed.
	st := newState(s.dir, parser{log: s.log, limits: s.limits})
	st.now, st.settle, st.parsed = s.clock.Now, s.settle, s.parsed
	w := s.startWatching(st.lastRead)
	defer w.close()

	// The first snapshot waits a moment for files being written, rather
	// than start with them missing.
	start := s.clock.Now()
	for {
		if _, err := s.scan(ctx, st); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if st.settleAt.IsZero() || st.settleAt.Sub(start) > maxStartSettle {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.clock.After(st.settleAt.Sub(s.clock.Now())):
		}
	}
	w.rearm() // watches what symlinked manifests point at
	s.record(st)
	snap := st.snapshot()
	s.log.Info("manifests loaded", counts(snap)...)
	deliver(snap)
	return s.follow(ctx, w, st, deliver)
}

// startWatching watches the directory; known is the names of the files the
// last scan read, for the poller.
func (s *Source) startWatching(known func() []string) watcher {
	if s.pollInterval > 0 {
		return startPolling(s.dir, s.pollInterval, s.limits.Files, known)
	}
	w, err := s.startNotify(s.dir, s.log, known, s.recheckEvery)
	if err != nil {
		s.log.Warn("cannot watch the config dir with inotify; polling it instead",
			"interval", DefaultPollInterval, "error", err)
		return startPolling(s.dir, DefaultPollInterval, s.limits.Files, known)
	}
	return w
}

// follow scans the directory after each burst of events, and when a file
// being written has settled. A scan starts no sooner after the last one
// ended than that one took (the files a rewrite storm makes it parse are
// parsed at most half the time), and at most maxDebounceRounds debounce
// periods after the first event of a burst otherwise.
func (s *Source) follow(ctx context.Context, w watcher, st *state, deliver func(*model.Snapshot)) error {
	var due <-chan time.Time
	var burstStart time.Time // the first event since the last scan
	schedule := func(at time.Time) {
		at = clock.Later(at, s.readyAt)
		due = s.clock.After(max(at.Sub(s.clock.Now()), 0))
	}
	if !st.settleAt.IsZero() {
		schedule(st.settleAt)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.changes():
			now := s.clock.Now()
			if burstStart.IsZero() {
				burstStart = now
			}
			at := minTime(now.Add(s.debounce), burstStart.Add(maxDebounceRounds*s.debounce))
			schedule(at)
		case <-due:
			due, burstStart = nil, time.Time{}
			changed, err := s.scan(ctx, st)
			if ctx.Err() != nil {
				return nil
			}
			// After a failed scan too: what the path resolves through
			// now (a symlink re-pointed at a release not there yet) is
			// watched, and signals when it leads to a directory again.
			w.rearm()
			if s.setUnreadable(err); err != nil {
				continue
			}
			s.record(st)
			if changed {
				snap := st.snapshot()
				s.changes.InfoElseDebug(s.log, "manifests changed", counts(snap)...)
				deliver(snap)
			}
			if !st.settleAt.IsZero() {
				schedule(st.settleAt)
			}
		}
	}
}

// scan scans st and sets when the next scan may start: as long after this
// one ends as this one took.
func (s *Source) scan(ctx context.Context, st *state) (changed bool, err error) {
	start := s.clock.Now()
	changed, err = st.scan(ctx)
	end := s.clock.Now()
	s.lastScan = max(end.Sub(start), 0)
	s.readyAt = end.Add(s.lastScan)
	return changed, err
}

// setUnreadable records why the directory could not be read (nil: it
// could), logging once when it goes and once when it is back.
func (s *Source) setUnreadable(err error) {
	s.mu.Lock()
	was := s.unreadable
	s.unreadable = err
	s.mu.Unlock()
	switch {
	case err != nil && was == nil:
		s.log.Warn("cannot read the config dir; serving the last manifests read until it is back", "error", err)
	case err == nil && was != nil:
		s.log.Info("the config dir is back; reading it again")
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// record publishes the state's problems and warnings and logs those that
// are new. At most maxProblems of each are kept (see fairShare).
func (s *Source) record(st *state) {
	errs := fairShare(s.dir, st.errors(), maxProblems, "problems")
	warns := fairShare(s.dir, st.warnings(), maxProblems, "warnings")
	stats := st.stats()
	stats.scan = s.lastScan
	s.mu.Lock()
	old, oldWarns := s.errs, s.warns
	s.errs, s.warns = errs, warns
	s.stats = stats
	s.mu.Unlock()

	for _, w := range newSince(oldWarns, warns) {
		s.log.Warn("manifest warning: served, but not as written", "warning", w)
	}
	for _, err := range newSince(old, errs) {
		var fe *FileError
		switch serves, ok := st.serves(err); {
		case errors.As(err, &fe) && fe.Path == s.dir:
			s.log.Error("manifest problems", "error", err)
		case ok && serves:
			s.log.Error("manifest problem; the file keeps serving its last good objects", "error", err)
		default:
			s.log.Error("manifest problem; the file serves nothing", "error", err)
		}
	}
	if len(old) > 0 && len(errs) == 0 {
		s.log.Info("all manifest problems are fixed")
	}
}

// newSince returns those of errs whose text none of old has: what record
// logs, each once.
func newSince(old, errs []error) []error {
	seen := make(map[string]bool, len(old))
	for _, err := range old {
		seen[err.Error()] = true
	}
	var out []error
	for _, err := range errs {
		if !seen[err.Error()] {
			out = append(out, err)
		}
	}
	return out
}

// fairShare keeps at most limit of errs (what they are: problems,
// warnings), in their order: first the first
// problem of every file, then the others in order, so that many problems
// in the first files do not hide that a later file is broken. When there
// are more, the last one kept counts the rest (a line left out that counts
// problems itself, such as a file's "981 more problems not listed", counts
// as those) and names (up to maxNamedFiles of) the files they are in.
func fairShare(dir string, errs []error, limit int, what string) []error {
	if len(errs) <= limit {
		return errs
	}
	keep := make([]bool, len(errs))
	kept := 0
	first := map[string]bool{}
	for i, err := range errs {
		if kept == limit-1 {
			break
		}
		if p := pathOf(err); !first[p] {
			first[p], keep[i] = true, true
			kept++
		}
	}
	for i := range errs {
		if kept == limit-1 {
			break
		}
		if !keep[i] {
			keep[i] = true
			kept++
		}
	}
	out := make([]error, 0, limit)
	var files []string
	named := map[string]bool{}
	left := 0 // problems left out
	for i, err := range errs {
		if keep[i] {
			out = append(out, err)
			continue
		}
		left += problemsIn(err)
		if p := pathOf(err); !named[p] {
			named[p] = true
			files = append(files, quoted(relTo(dir, p)))
		}
	}
	in := strings.Join(files[:min(len(files), maxNamedFiles)], ", ")
	if len(files) > maxNamedFiles {
		in += fmt.Sprintf(" and %d more files", len(files)-maxNamedFiles)
	}
	return append(out, &FileError{Path: dir, Err: moreProblemsf(left, "%d more %s not listed, in %s", left, what, in)})
}

// pathOf is the file a problem is in.
func pathOf(err error) string {
	var fe *FileError
	if errors.As(err, &fe) {
		return fe.Path
	}
	return ""
}

// relTo names path relative to dir when it is in dir.
func relTo(dir, path string) string {
	if rel, err := filepath.Rel(dir, path); err == nil && !strings.HasPrefix(rel, "..") {
		return rel
	}
	return path
}

func counts(s *model.Snapshot) []any {
	return []any{
		"namespaces", len(s.Namespaces), "services", len(s.Services),
		"endpointSlices", len(s.EndpointSlices), "serviceEntries", len(s.ServiceEntries), "pods", len(s.Pods),
	}
}
