package configdir

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/ztdns/ztdns/internal/clock"
)

// watcher tells the scan loop that the directory may have changed. It does
// not say what changed: the loop scans the whole directory, which is the only
// way to follow ConfigMap volumes, where the files themselves never change
// and a symlink next to them does.
type watcher interface {
	// changes receives a value after changes. Bursts coalesce into one value.
	changes() <-chan struct{}
	// rearm makes sure the directory now at the path is the one watched, after
	// it was replaced (renamed away, a new one moved in), and that what the
	// path and the last scan's symlinked manifests resolve through is.
	rearm()
	close()
}

// signal records a change without ever blocking the sender.
func signal(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// notifyWatcher watches the directory with inotify, and the directories
// that hold what its symlinked manifests point at: an edit there changes
// what a manifest reads, with no event in the directory.
type notifyWatcher struct {
	dir     string
	log     *slog.Logger
	fw      *fsnotify.Watcher
	watched atomic.Pointer[fileID] // the directory the watch is on
	ch      chan struct{}
	done    chan struct{}
	// known returns the names of the files the last scan read.
	known func() []string

	// links are the other directories watched, each with the names in it
	// that manifests resolve through (a symlink, or the file one ends at).
	mu    sync.Mutex
	links map[string]map[string]bool
	// unwatched: some of those could not be watched (past maxLinkDirs, or
	// not there to watch): the directory is then also scanned every
	// recheckEvery (DefaultPollInterval), and only then: while everything
	// is watched, an idle agent's watcher does not wake.
	unwatched    atomic.Bool
	recheckEvery time.Duration
	recheck      *time.Ticker // running while unwatched
	warned       bool         // about maxLinkDirs, once
}

// Bounds on following symlinked manifests: the symlinks followed to
// resolve one (as the kernel's), and the directories watched for them all
// (an inotify watch each, from the user's limited number).
const (
	maxLinkHops = 40
	maxLinkDirs = 128
)

// startNotify watches dir with inotify; recheckEvery is how often it is
// scanned while some of what it resolves through cannot be watched.
func startNotify(dir string, log *slog.Logger, known func() []string, recheckEvery time.Duration) (watcher, error) {
	// Absolute, as what it resolves through is followed from the root.
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	w := &notifyWatcher{dir: dir, log: log, fw: fw, ch: make(chan struct{}, 1), done: make(chan struct{}),
		known: known, links: map[string]map[string]bool{}, recheckEvery: recheckEvery,
		recheck: time.NewTicker(recheckEvery)}
	w.recheck.Stop() // until something cannot be watched
	if err := w.add(); err != nil {
		fw.Close()
		return nil, err
	}
	// The path's own links, before the first scan: watches added then
	// leave no change unseen, so there is nothing to signal, and the
	// first scan's rearm (which would) finds them there.
	w.followLinks()
	select {
	case <-w.ch:
	default:
	}
	go w.run()
	return w, nil
}

func (w *notifyWatcher) add() error {
	id, err := identify(w.dir)
	if err != nil {
		return err
	}
	if err := w.fw.Add(w.dir); err != nil {
		return fmt.Errorf("watching %s: %w", w.dir, err)
	}
	w.watched.Store(&id)
	return nil
}

func (w *notifyWatcher) run() {
	defer close(w.done)
	defer w.recheck.Stop()
	for {
		select {
		case <-w.recheck.C:
			signal(w.ch)
		case ev, ok := <-w.fw.Events:
			if !ok {
				return
			}
			// Chmod too: a file made readable is read at last. Unchanged
			// files cost a stat, and their digest spares the parse.
			if w.matters(ev) {
				signal(w.ch)
			}
		case err, ok := <-w.fw.Errors:
			if !ok {
				return
			}
			// An overflowed queue lost events; scanning again catches up.
			if !errors.Is(err, fsnotify.ErrEventOverflow) {
				w.log.Warn("watching the config dir", "error", err)
			}
			signal(w.ch)
		}
	}
}

func (w *notifyWatcher) changes() <-chan struct{} { return w.ch }

// matters reports whether ev can change what a scan reads: in a
// directory watched for links only, an event about a name a manifest
// resolves through, or about that directory itself (then no longer
// watched: followLinks watches it again if it is back); any other event
// (in the directory, or the directory's own).
func (w *notifyWatcher) matters(ev fsnotify.Event) bool {
	if ev.Name == w.dir { // absolute, so clean (startNotify)
		if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
			// The watch is gone with it, or on it elsewhere. A directory
			// made again at the path may get the removed one's inode
			// number: forget it, so that rearm tells any directory there
			// from it, and watches it.
			w.watched.Store(&fileID{})
		}
		return true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.links[ev.Name]; ok {
		if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
			_ = w.fw.Remove(ev.Name) // gone already if it was removed
			delete(w.links, ev.Name)
		}
		return true
	}
	dir, name := filepath.Split(ev.Name)
	if names, ok := w.links[filepath.Clean(dir)]; ok {
		return names[name]
	}
	return true
}

func (w *notifyWatcher) rearm() {
	defer w.followLinks()
	id, err := identify(w.dir)
	if err != nil || id == *w.watched.Load() {
		return
	}
	_ = w.fw.Remove(w.dir) // gone already when inotify saw the old one move
	if err := w.add(); err != nil {
		w.log.Warn("the config dir was replaced and cannot be watched again", "error", err)
		return
	}
	w.log.Info("the config dir was replaced; watching the new one")
	signal(w.ch) // changes between the last scan and the new watch
}

// followLinks watches the directories that the path itself and the last
// scan's symlinked manifests resolve through, and only those: the path's
// own (a symlink re-pointed, the directory removed or made again: no event
// reaches the watch on the directory for those), and at most maxLinkDirs
// for manifests; past that, or where one is not there to watch, the
// directory is scanned every recheckEvery as well.
func (w *notifyWatcher) followLinks() {
	want := map[string]map[string]bool{}
	watch := func(l link) {
		if want[l.dir] == nil {
			want[l.dir] = map[string]bool{}
		}
		want[l.dir][l.name] = true
	}
	for _, l := range resolvesThrough(w.dir) {
		watch(l)
	}
	pathDirs, over := len(want), false
	self, err := filepath.EvalSymlinks(w.dir)
	var known []string
	if err == nil { // else gone: its manifests' links are followed once it is back (rearm)
		known = w.known()
	}
	for _, name := range known {
		path := filepath.Join(self, name)
		if fi, err := os.Lstat(path); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			continue // in the directory itself, which is watched
		}
		for _, l := range resolvesThrough(path) {
			switch {
			case l.dir == self:
			case want[l.dir] == nil && len(want)-pathDirs >= maxLinkDirs:
				over = true
			default:
				watch(l)
			}
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	unwatched, added := over, false
	for dir := range w.links {
		if want[dir] == nil {
			_ = w.fw.Remove(dir) // gone already if the directory was
			delete(w.links, dir)
		}
	}
	for dir, names := range want {
		if _, ok := w.links[dir]; !ok {
			if err := w.fw.Add(dir); err != nil {
				unwatched = true
				continue
			}
			added = true
		}
		w.links[dir] = names
	}
	if over && !w.warned {
		w.warned = true
		w.log.Warn("symlinked manifests resolve through more directories than are watched; scanning every interval as well",
			"directories", maxLinkDirs, "interval", w.recheckEvery)
	}
	if w.unwatched.Swap(unwatched) != unwatched {
		if unwatched {
			w.recheck.Reset(w.recheckEvery)
		} else {
			w.recheck.Stop()
		}
	}
	if added {
		signal(w.ch) // changes between the last scan and the new watches
	}
}

// link is a name in a directory (its real path) that a path resolves
// through.
type link struct{ dir, name string }

// resolvesThrough returns what a change to can change the file path
// opens: every symlink met resolving it, and the file it ends at (or the
// first name along the way that does not exist), each in its directory's
// real path. At most maxLinkHops symlinks are followed.
func resolvesThrough(path string) []link {
	var out []link
	resolved := "/"
	rest := strings.Split(filepath.Clean(path), "/")
	for hops := 0; len(rest) > 0; {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			resolved = filepath.Dir(resolved)
			continue
		}
		next := filepath.Join(resolved, c)
		fi, err := os.Lstat(next)
		if err != nil {
			return append(out, link{resolved, c}) // its creation matters
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			if len(rest) == 0 {
				out = append(out, link{resolved, c})
			}
			resolved = next
			continue
		}
		out = append(out, link{resolved, c})
		target, err := os.Readlink(next)
		if hops++; err != nil || hops > maxLinkHops {
			return out
		}
		if filepath.IsAbs(target) {
			resolved = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return out
}

func (w *notifyWatcher) close() {
	w.fw.Close()
	<-w.done
}

// pollWatcher checks the directory's files' sizes, times and inodes at an
// interval.
type pollWatcher struct {
	dir  string
	ch   chan struct{}
	stop chan struct{}
	done chan struct{}
}

// startPolling polls dir. known returns the names of the files the last
// scan read (it is called from the poller's goroutine): past maxFiles, they
// are the files scan reads, and so the ones to watch.
func startPolling(dir string, interval time.Duration, maxFiles int, known func() []string) *pollWatcher {
	w := &pollWatcher{dir: dir, ch: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	last, _ := fingerprint(dir, maxFiles, known(), time.Now())
	go func() {
		defer close(w.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-t.C:
				// After a scan that read other files than the last, this
				// changes once, and the scan it causes changes nothing.
				// While a file's times are too recent to trust, a
				// same-size write in the same tick leaves the fingerprint
				// as it was: scan anyway (the digest spares the parse).
				fp, racy := fingerprint(dir, maxFiles, known(), time.Now())
				if fp != last || racy {
					last = fp
					signal(w.ch)
				}
			}
		}
	}()
	return w
}

func (w *pollWatcher) changes() <-chan struct{} { return w.ch }
func (w *pollWatcher) rearm()                   {} // polling goes by path
func (w *pollWatcher) close()                   { close(w.stop); <-w.done }

// fingerprint summarises what a scan of dir would read, following symlinks;
// it changes when a file is added, removed, rewritten or replaced, its
// status change time included (cp -p and rsync -t set the modification
// time back). racy reports a file whose status change time is too recent,
// at now, to change with a write in the same timestamp tick. Files past
// maxFiles, chosen as scan chooses them (those in known, sorted, first), are
// only counted.
func fingerprint(dir string, maxFiles int, known []string, now time.Time) (fp string, racy bool) {
	names, skipped, _, err := listManifests(dir, maxFiles, func(name string) bool {
		_, ok := slices.BinarySearch(known, name)
		return ok
	})
	if err != nil {
		return "error: " + err.Error(), false
	}
	var b strings.Builder
	for _, err := range skipped {
		fmt.Fprintln(&b, err)
	}
	for _, name := range names {
		st, err := statOf(filepath.Join(dir, name))
		if err != nil {
			fmt.Fprintf(&b, "%s error %v\n", name, err)
			continue
		}
		racy = racy || !st.trustedAt(now)
		fmt.Fprintf(&b, "%s %d %d %d %d %d\n", name, st.size, st.mtime, st.ctime, st.id.dev, st.id.ino)
	}
	return b.String(), racy
}

// fileID tells apart two files, or two directories, at the same path.
type fileID struct{ dev, ino uint64 }

func identify(path string) (fileID, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileID{}, err
	}
	return idOf(fi), nil
}

// fileStat is what tells that a file's content may have changed without
// reading it: which file is at the path, its size, and its modification and
// status change times. The status change time moves on every write and
// cannot be set back (a write that keeps the size, followed by setting the
// modification time back, still changes it).
type fileStat struct {
	id           fileID
	size         int64
	mtime, ctime int64 // ns
}

// racyWindow is how much older than the read a stat's times must be for
// the stat to tell later that the file has not changed. Timestamps tick
// coarsely on some file systems and kernels (a jiffy, a second, two on
// FAT): a write just after the read can get the same times as the stat
// before it, and when it keeps the size, the stat stays the same while the
// content changed (git's "racy clean" files).
const racyWindow = 2 * time.Second

// trustedAt reports whether s, taken at now, can be trusted to change with
// the next write: its status change time is older than now by racyWindow,
// so a later write's differs. Every write sets it, and only the kernel
// does: the modification time, which anyone can set (ahead, touch -d
// tomorrow, or back), says nothing here. One after now (a clock that moved
// back) is not trusted.
func (s fileStat) trustedAt(now time.Time) bool {
	return s.ctime < now.Add(-racyWindow).UnixNano()
}

// settledAt reports whether, at now, the file has been left unwritten for
// settle: neither its modification nor its status change time (which
// writes, renames and mode changes set) is within settle of now. A time
// further ahead (a clock set back, a modification time set ahead) says
// nothing of a writer.
func (s fileStat) settledAt(now time.Time, settle time.Duration) bool {
	return s.settlesAt(now, settle).IsZero()
}

// settlesAt is when a file not settled at now will be, if left alone;
// zero when it is settled.
func (s fileStat) settlesAt(now time.Time, settle time.Duration) time.Time {
	var at time.Time
	for _, t := range []int64{s.mtime, s.ctime} {
		if d := now.Sub(time.Unix(0, t)); d < settle && d > -settle {
			at = clock.Later(at, time.Unix(0, t).Add(settle))
		}
	}
	return at
}

// statOf stats path, following symlinks as readManifest does.
func statOf(path string) (fileStat, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStat{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileStat{}, fmt.Errorf("%s: no stat_t", path)
	}
	return fileStat{
		id:    idOf(fi),
		size:  fi.Size(),
		mtime: fi.ModTime().UnixNano(),
		ctime: st.Ctim.Nano(),
	}, nil
}

func idOf(fi os.FileInfo) fileID {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return fileID{dev: uint64(st.Dev), ino: st.Ino}
	}
	return fileID{}
}
