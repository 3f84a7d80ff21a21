package cni

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/ztdns/ztdns/internal/clock"
)

// Pacing of KeepInstalled.
const (
	// minInstallGap is the least time from the end of one of
	// KeepInstalled's Installs to the start of the next; when the last one
	// took longer, the gap is as long as it took. Changes in the conf dir
	// meanwhile make one Install at the end of the gap. So another
	// installer that writes its configuration again whenever something
	// changes it (Cilium's agent with cni.exclusive, as its conf dir
	// watcher does) and ztdns take turns at most once a gap, not without
	// pause; istio-cni caps its own repairs the same way, at one a second
	// (istio/istio#52623).
	minInstallGap = time.Second
	// contestedRepairs repairs (KeepInstalled putting back what something
	// removed) within contestedWindow mean that another installer takes
	// ztdns's entry out whenever it is back: KeepInstalled warns once, and
	// keeps repairing at its pace. The contest is over once
	// contestedWindow passes without a repair.
	contestedRepairs = 5
	contestedWindow  = 10 * time.Second
)

// KeepInstalled calls Install, and keeps the plugin installed until ctx
// ends. While ConfDir has no network configuration, it waits (istio-cni
// waits the same way: on a new node the primary plugin's agent may start
// after ztdns's). Then it calls Install again whenever a network
// configuration in ConfDir is written, renamed or removed (inotify), so a
// conflist another installer writes again without ztdns's entry (a primary
// plugin regenerating its own, istio-cni its copy) has it back, and every
// interval besides (the binary; a ConfDir that could not be watched).
//
// Any Install starts no sooner than minInstallGap after the last one ended,
// or as long as that one took when it took longer; the changes in between
// make one Install. A rewrite has ztdns's entry back within milliseconds
// when the last Install was a gap or more before, and within a gap
// otherwise. Against an installer that writes its configuration again
// whenever ztdns changes it, the two take turns once a gap: after
// contestedRepairs repairs within contestedWindow, KeepInstalled logs one
// warning naming the likely cause, calls cfg.OnContested, and logs the
// repairs that follow at debug level until the contest is over.
//
// An Install that fails (a .conf beside a .conflist ztdns did not write,
// say) is tried again on every change and every interval, at start as
// later: the agent serves DNS meanwhile, and pods that start uncaptured are
// found by its scan. Each failure is told to cfg.OnInstalled; the log has
// an error when the failure starts or its message changes, and a line when
// the plugin is installed again.
//
// It returns nil when ctx ends, or at once what no later look can mend:
// an empty setting, an entry not ztdns's, a dir that is not a directory.
func KeepInstalled(ctx context.Context, cfg InstallConfig, interval time.Duration) error {
	return newKeeper(cfg, interval, clock.System{}).run(ctx)
}

// keeper is KeepInstalled's state; only its run's goroutine uses it.
type keeper struct {
	cfg      InstallConfig
	log      *slog.Logger
	clock    clock.Clock
	interval time.Duration
	bin      binCache
	// watch starts watching the conf dir: watchConfDir but in tests.
	watch func(dir string) (changes <-chan fsnotify.Event, errs <-chan error, stop func(), err error)

	installed bool      // an Install succeeded
	waiting   bool      // for a network configuration, logged
	failing   string    // the last failure's message, logged; "" while installed or waiting
	failSince time.Time // the first failed look since the plugin was in (or since start)
	refused   string    // the files refused unread at the last look, logged; "" for none
	readyAt   time.Time // when the next Install may start
	// repairs are the times of the last contestedRepairs repairs, oldest
	// first; contested is set while they come as fast as a contest's.
	repairs   []time.Time
	contested bool
}

func newKeeper(cfg InstallConfig, interval time.Duration, clk clock.Clock) *keeper {
	k := &keeper{cfg: cfg, log: cfg.logger(), clock: clk, interval: interval, watch: watchConfDir}
	k.bin.now = clk.Now
	return k
}

func (k *keeper) run(ctx context.Context) error {
	if err := k.cfg.check(); err != nil {
		return err
	}
	defer k.setContested(false)
	changes, errs, stop, err := k.watch(k.cfg.ConfDir)
	if err != nil {
		k.log.Warn("cannot watch the CNI conf dir: looking again only every interval", "dir", k.cfg.ConfDir, "interval", k.interval, "err", err)
	} else {
		defer stop()
	}
	next := k.clock.Now() // when due fires
	due := k.clock.After(0)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-due:
			k.install()
			// The interval's look, paced as well.
			now := k.clock.Now()
			next = clock.Later(now.Add(k.interval), k.readyAt)
			due = k.clock.After(next.Sub(now))
			continue
		case ev, ok := <-changes:
			if !ok {
				changes = nil // closed: the interval remains
				continue
			}
			if !confChange(ev) {
				continue
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			// An overflowed queue lost events, changes among them maybe:
			// look again, as for one.
			if !errors.Is(err, fsnotify.ErrEventOverflow) {
				k.log.Warn("watching the CNI conf dir", "dir", k.cfg.ConfDir, "err", err)
				continue
			}
		}
		// A change: Install as soon as the pace allows, once for all the
		// changes until then.
		now := k.clock.Now()
		if at := clock.Later(k.readyAt, now); at.Before(next) {
			next, due = at, k.clock.After(at.Sub(now))
		}
	}
}

// install calls Install, sets when the next may start, and tells and logs
// how it went.
func (k *keeper) install() {
	start := k.clock.Now()
	r, err := install(k.cfg, &k.bin)
	end := k.clock.Now()
	k.readyAt = end.Add(max(end.Sub(start), minInstallGap))
	if f := k.cfg.OnInstalled; f != nil {
		f(err)
	}
	// Refused files are logged when they change, not at every look; while
	// there is no configuration, the error names them.
	if !errors.Is(err, ErrNoNetworkConfig) {
		var refused string
		if err := errors.Join(r.refused...); err != nil {
			refused = err.Error()
		}
		if refused != k.refused {
			k.refused = refused
			r.logRefused(k.log)
		}
	}
	if err != nil {
		r.log(k.log, slog.LevelInfo) // the binary, maybe
		k.failed(err, end)
		return
	}
	if k.waiting || k.failing != "" {
		k.log.Info("the CNI plugin is installed", "file", r.conflist, "notInstalledFor", end.Sub(k.failSince).Round(time.Millisecond))
		k.waiting, k.failing = false, ""
	}
	k.tellChain(r.conflist)
	if !k.installed {
		k.installed = true
		r.log(k.log, slog.LevelInfo)
		return
	}
	k.track(r, end)
}

// tellChain tells cfg.OnChain the chain of the conflist at path.
func (k *keeper) tellChain(path string) {
	f := k.cfg.OnChain
	if f == nil {
		return
	}
	c, err := chainOf(path)
	if err != nil { // removed or rewritten since: the next look tells
		k.log.Debug("cannot read the CNI network configuration just installed into", "file", path, "err", err)
		return
	}
	f(c)
}

// failed logs a failed Install: the wait for a network configuration
// once, another failure when it starts or its message changes, at debug
// level while it stays the same.
func (k *keeper) failed(err error, now time.Time) {
	if !k.waiting && k.failing == "" {
		k.failSince = now
	}
	if errors.Is(err, ErrNoNetworkConfig) {
		if !k.waiting {
			k.log.Info("waiting for the primary network plugin to write its configuration", "dir", k.cfg.ConfDir, "err", err)
			k.waiting = true
		}
		k.failing = ""
		return
	}
	k.waiting = false
	if msg := err.Error(); msg != k.failing {
		k.failing = msg
		k.log.Error("the CNI plugin is not installed: pods that start meanwhile are not captured until the agent finds them; "+
			"trying again on every change in the conf dir and every interval", "dir", k.cfg.ConfDir, "interval", k.interval, "err", err)
		return
	}
	k.log.Debug("the CNI plugin is still not installed", "err", err)
}

// track counts an Install after the first that wrote as a repair, and
// tells whether they come as fast as in a contest.
func (k *keeper) track(r installResult, now time.Time) {
	if k.contested && now.Sub(k.repairs[len(k.repairs)-1]) > contestedWindow {
		k.setContested(false)
		k.log.Info("the CNI network configuration is no longer written again without ztdns", "file", r.conflist,
			"quietFor", contestedWindow)
	}
	if !r.wrote() {
		r.log(k.log, slog.LevelInfo) // only says, at debug level, that nothing changed
		return
	}
	if f := k.cfg.OnRepair; f != nil {
		f()
	}
	k.repairs = append(k.repairs, now)
	if n := len(k.repairs); n > contestedRepairs {
		k.repairs = slices.Delete(k.repairs, 0, n-contestedRepairs)
	}
	if k.contested {
		r.log(k.log, slog.LevelDebug)
		return
	}
	r.log(k.log, slog.LevelInfo)
	if within := now.Sub(k.repairs[0]); len(k.repairs) == contestedRepairs && within <= contestedWindow {
		k.setContested(true)
		k.log.Warn("another installer writes the CNI network configuration again without ztdns whenever ztdns puts its entry back: "+
			"ztdns goes on putting it back, at most once a second, and pods created while it is out start uncaptured. "+
			"Cilium's agent does so unless its Helm value cni.exclusive is false (true by default; Istio's ambient prerequisites "+
			"ask for false too, for istio-cni's entry): set it so, or the like setting of the installer that writes this file",
			"file", r.conflist, "repairs", contestedRepairs, "within", within.Round(time.Millisecond))
	}
}

func (k *keeper) setContested(on bool) {
	if k.contested == on {
		return
	}
	k.contested = on
	if f := k.cfg.OnContested; f != nil {
		f(on)
	}
}

// watchConfDir watches dir for changes to the files a runtime loads (see
// confChange), until stop.
func watchConfDir(dir string) (changes <-chan fsnotify.Event, errs <-chan error, stop func(), err error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, nil, nil, err
	}
	if err := w.Add(dir); err != nil {
		w.Close()
		return nil, nil, nil, err
	}
	return w.Events, w.Errors, func() { w.Close() }, nil
}

// confChange reports whether ev changes a file a runtime loads: not a
// temporary file (ours end in .tmp), not a mode change.
func confChange(ev fsnotify.Event) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	return slices.Contains(confExtensions, filepath.Ext(ev.Name))
}

// binCache remembers the plugin binary and its installed copy as they were
// when last found to hold the same bytes, so that KeepInstalled, which
// calls Install on every change in the conf dir, need not read the two in
// full (the agent's binary is tens of MB) while neither changed since. A
// write changes a file's status change time, which nobody can set back;
// but a write within the same timestamp tick as the stat before the
// comparison leaves it as it was, so a stamp is kept only when its status
// change time was racyWindow older than the comparison (git's "racy clean"
// files). Its zero value, with now set, is ready; a nil one remembers
// nothing.
type binCache struct {
	now    func() time.Time
	stamps [2]fileStamp // the binary's, the installed copy's
	ok     bool
	// compared counts the comparisons of the two in full (tests).
	compared atomic.Int64
}

// racyWindow is how much older than a comparison a file's status change
// time must be for its stamp to tell later that it has not changed.
// Timestamps tick coarsely on some file systems and kernels (a jiffy, a
// second, two on FAT).
const racyWindow = 2 * time.Second

// unchanged reports whether src and dst are as they were when last found
// the same.
func (c *binCache) unchanged(src, dst string) bool {
	if c == nil || !c.ok {
		return false
	}
	for i, path := range []string{src, dst} {
		fi, err := os.Stat(path)
		if err != nil || stampOf(fi) != c.stamps[i] {
			return false
		}
	}
	return true
}

// verified records that the files with stamps, taken before the
// comparison, held the same bytes.
func (c *binCache) verified(stamps [2]fileStamp) {
	if c == nil {
		return
	}
	limit := c.now().Add(-racyWindow).UnixNano()
	c.stamps = stamps
	c.ok = true
	for _, s := range stamps {
		c.ok = c.ok && s.ino != 0 && s.ctime < limit
	}
}

// forget drops what it remembers: the two differ.
func (c *binCache) forget() {
	if c != nil {
		c.ok = false
	}
}

// fileStamp is what tells that a file may have changed without reading
// it: which file is at the path, its size and mode, and its modification
// and status change times.
type fileStamp struct {
	dev, ino     uint64
	size         int64
	mode         os.FileMode
	mtime, ctime int64 // ns
}

func stampOf(fi os.FileInfo) fileStamp {
	s := fileStamp{size: fi.Size(), mode: fi.Mode(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.dev, s.ino, s.ctime = uint64(st.Dev), st.Ino, st.Ctim.Nano()
	}
	return s
}
