package cni

import (
	"bytes"
	"context"
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
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/ztdns/ztdns/internal/clock"
	"github.com/ztdns/ztdns/internal/testenv"
)

// logLines returns the lines log holds at level whose message starts with
// msg.
func logLines(log *testenv.Log, level slog.Level, msg string) []string {
	var out []string
	for line := range strings.Lines(log.String()) {
		if strings.Contains(line, "level="+level.String()+" msg=\""+msg) {
			out = append(out, line)
		}
	}
	return out
}

// logTo makes e's installs log at debug level into a Log.
func (e *installEnv) logTo() *testenv.Log {
	l := &testenv.Log{}
	e.cfg.Logger = slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return l
}

// runKeeper runs k until the test ends.
func runKeeper(t *testing.T, k *keeper) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- k.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("KeepInstalled: %v", err)
		}
	})
}

// hasZtdns reports whether the file at path holds a ztdns entry.
func hasZtdns(path string) bool {
	data, err := os.ReadFile(path)
	return err == nil && bytes.Contains(data, []byte(`"ztdns"`))
}

// writeAtomic writes the file at path as installers do: a temporary file
// renamed into place.
func writeAtomic(tb testing.TB, path, content string) {
	tb.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatal(err)
	}
}

// startReverter starts another installer that writes content to path
// again whenever the file holds a ztdns entry, at once, as Cilium's agent
// (cni.exclusive) writes its conflist again on any change in the conf dir.
// It returns how many times it did, and stop, which returns once it has
// stopped.
func startReverter(t *testing.T, path, content string) (reverts *atomic.Int32, stop func()) {
	t.Helper()
	w, err := fsnotify.NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Add(filepath.Dir(path)); err != nil {
		w.Close()
		t.Fatal(err)
	}
	reverts = &atomic.Int32{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if hasZtdns(path) {
				tmp := path + ".other.tmp"
				if err := os.WriteFile(tmp, []byte(content), 0o644); err == nil && os.Rename(tmp, path) == nil {
					reverts.Add(1)
				}
			}
			select {
			case _, ok := <-w.Events:
				if !ok {
					return
				}
			case _, ok := <-w.Errors:
				if !ok {
					return
				}
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { w.Close(); <-done }) }
	t.Cleanup(stop)
	return reverts, stop
}

// TestKeepInstalledPacesAContest: beside another installer that writes its
// conflist again, without ztdns's entry, whenever the conf dir changes (as
// Cilium's agent does with cni.exclusive, its default), ztdns puts its entry
// back at most once a second on KeepInstalled's clock, logs one warning
// that names the likely cause and how to fix it, reports the contest
// (OnContested), and keeps repairing at that pace; once the other installer
// stops, the contest is over. The binary is not read again for every
// repair. Nothing moves while the clock stands still. (Before: the two
// took turns without pause, each repair reading the agent's 35 MB binary
// twice, 73 repairs in 2 s with one log line each, no warning.)
func TestKeepInstalledPacesAContest(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t, Config{})
	logs := e.logTo()
	primary := e.write(t, "05-cilium.conflist", runtimeConflist)
	var repairs atomic.Int32
	var mu sync.Mutex
	var contested []bool
	e.cfg.OnRepair = func() { repairs.Add(1) }
	e.cfg.OnContested = func(on bool) { mu.Lock(); defer mu.Unlock(); contested = append(contested, on) }
	contests := func() []bool { mu.Lock(); defer mu.Unlock(); return slices.Clone(contested) }

	const interval = time.Hour
	clk := clock.NewFake(time.Now())
	k := newKeeper(e.cfg, interval, clk)
	runKeeper(t, k)
	testenv.Eventually(t, 30*time.Second, "ztdns chained into the primary configuration", func() bool { return hasZtdns(primary) })
	reverts, stopReverter := startReverter(t, primary, runtimeConflist)

	// Each step: the other installer has taken the entry out again, and
	// KeepInstalled waits for its pace (a timer short of the interval);
	// then the clock moves on a quarter of a second.
	const simulated = 30 * time.Second
	bound := int32(simulated/minInstallGap) + 1
	start := clk.Now()
	for clk.Now().Sub(start) < simulated {
		testenv.Eventually(t, 30*time.Second, "KeepInstalled waiting for its pace, the entry taken out again", func() bool {
			return repairs.Load() > bound || (!hasZtdns(primary) && clk.WaitingWithin(interval/2))
		})
		if n := repairs.Load(); n > bound {
			t.Fatalf("within %v on KeepInstalled's clock, against an installer that takes ztdns's entry out whenever it is back, "+
				"ztdns put it back %d times (the other installer took it out %d times); want at most %d, one a second",
				clk.Now().Sub(start), n, reverts.Load(), bound)
		}
		clk.Advance(250 * time.Millisecond)
	}
	n := repairs.Load()
	t.Logf("%d repairs, %d reverts over %v on KeepInstalled's clock; the binary compared in full %d times", n, reverts.Load(), simulated, k.bin.compared.Load())
	if n < bound/2 {
		t.Errorf("ztdns put its entry back %d times over %v of contest, want it kept repairing about once a second", n, simulated)
	}
	warnings := logLines(logs, slog.LevelWarn, "another installer writes the CNI network configuration again")
	if len(warnings) != 1 {
		t.Errorf("%d warnings of the contest, want 1:\n%s", len(warnings), strings.Join(warnings, ""))
	}
	for _, want := range []string{"cni.exclusive", "false", filepath.Base(primary), "uncaptured"} {
		if len(warnings) > 0 && !strings.Contains(warnings[0], want) {
			t.Errorf("the warning does not say %q: %s", want, warnings[0])
		}
	}
	if info := logLines(logs, slog.LevelInfo, "added ztdns to the primary CNI network configuration"); len(info) > contestedRepairs+1 {
		t.Errorf("%d info lines for repairs, want the first install's and those before the warning (%d); the rest at debug level", len(info), contestedRepairs+1)
	}
	if got := contests(); !slices.Equal(got, []bool{true}) {
		t.Errorf("OnContested calls during the contest %v, want [true]", got)
	}
	// The binary and its copy have not changed: read again only until
	// their stamps were old enough to trust, not for every repair.
	if c := k.bin.compared.Load(); c > 4 {
		t.Errorf("the binary compared in full %d times for %d repairs, want it remembered", c, n)
	}

	// The other installer stops: the entry is put back once more, and the
	// next look after a quiet contestedWindow ends the contest.
	// Each wait moves the clock on to KeepInstalled's latest timer, which a
	// loaded machine may set only after the test's first look.
	stopReverter()
	nextTimer := func() { _, due := clk.Calls(); clk.AdvanceTo(due) }
	testenv.Eventually(t, 30*time.Second, "ztdns back in the chain", func() bool { nextTimer(); return hasZtdns(primary) })
	testenv.Eventually(t, 30*time.Second, "the contest over", func() bool { nextTimer(); return len(contests()) == 2 })
	if got := contests(); !slices.Equal(got, []bool{true, false}) {
		t.Errorf("OnContested calls %v, want [true false]", got)
	}
	if got := logLines(logs, slog.LevelInfo, "the CNI network configuration is no longer written again"); len(got) != 1 {
		t.Errorf("%d lines saying the contest is over, want 1", len(got))
	}
}

// TestKeepInstalledRepairsARewrite: KeepInstalled chains ztdns in as soon
// as the primary plugin writes its configuration, and puts its entry back
// when the primary plugin writes it again without it, on the directory's
// change: the interval here is an hour, so nothing else could. A rewrite
// right after a repair is repaired a second (minInstallGap) after it.
// (Before the watch: the installer looked every 5 s, so a rewrite left
// ztdns out of the chain for up to 5 s, and new pods started uncaptured
// meanwhile.) The test logs how long each took.
func TestKeepInstalledRepairsARewrite(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t, Config{})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- KeepInstalled(ctx, e.cfg, time.Hour) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("KeepInstalled: %v", err)
		}
	})

	primary := filepath.Join(e.cfg.ConfDir, "10-containerd-net.conflist")
	// As a primary plugin writes it: a temporary file renamed into place.
	writePrimary := func() time.Time {
		start := time.Now()
		writeAtomic(t, primary, runtimeConflist)
		return start
	}
	waitChained := func(what string, start time.Time) {
		t.Helper()
		testenv.Eventually(t, 30*time.Second, "ztdns in the chain after "+what, func() bool { return hasZtdns(primary) })
		t.Logf("ztdns in the chain %v after %s", time.Since(start).Round(time.Millisecond), what)
	}

	time.Sleep(20 * time.Millisecond) // let it start waiting: passing does not depend on it
	waitChained("the primary plugin wrote its configuration", writePrimary())
	for i := range 3 {
		waitChained(fmt.Sprintf("the primary plugin wrote it again without ztdns (%d)", i+1), writePrimary())
	}
}

// TestKeepInstalledWaitsForANetworkConfig: on a node whose primary plugin
// has not written its configuration yet, KeepInstalled says it waits,
// installs nothing, not even the binary, and chains in once the
// configuration is there; ended before, it returns nil. A setting no
// look can mend (an entry not ztdns's, a conf dir that is a file) ends it
// at once.
func TestKeepInstalledWaitsForANetworkConfig(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t, Config{})
	logs := e.logTo()
	runKeeper(t, newKeeper(e.cfg, time.Hour, clock.System{}))
	testenv.Eventually(t, 30*time.Second, "KeepInstalled saying it waits", func() bool {
		return len(logLines(logs, slog.LevelInfo, "waiting for the primary network plugin")) == 1
	})
	if _, err := os.Stat(filepath.Join(e.cfg.BinDir, PluginType)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("binary installed without a configuration to chain into: %v", err)
	}
	primary := filepath.Join(e.cfg.ConfDir, "10-containerd-net.conflist")
	writeAtomic(t, primary, runtimeConflist)
	testenv.Eventually(t, 30*time.Second, "ztdns chained in", func() bool { return hasZtdns(primary) })

	empty := newInstallEnv(t, Config{})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := KeepInstalled(ctx, empty.cfg, 10*time.Millisecond); err != nil {
		t.Errorf("KeepInstalled without a configuration, ended = %v, want nil", err)
	}
	if _, err := os.Stat(filepath.Join(empty.cfg.BinDir, PluginType)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("binary installed without a configuration to chain into: %v", err)
	}

	bad := newInstallEnv(t, Config{})
	bad.write(t, "10-containerd-net.conflist", runtimeConflist)
	bad.cfg.PluginConf = []byte(`{"type": "other"}`)
	if err := KeepInstalled(t.Context(), bad.cfg, time.Hour); err == nil || !strings.Contains(err.Error(), `want "ztdns"`) {
		t.Errorf("KeepInstalled with another plugin's entry = %v, want Install's error", err)
	}
	file := newInstallEnv(t, Config{})
	file.cfg.ConfDir = file.write(t, "10-containerd-net.conflist", runtimeConflist)
	if err := KeepInstalled(t.Context(), file.cfg, time.Hour); err == nil || !strings.Contains(err.Error(), "is not a directory") {
		t.Errorf("KeepInstalled with a file for its conf dir = %v, want it to say so", err)
	}
}

// TestKeepInstalledLooksAgainAfterAnOverflow: an inotify queue that
// overflowed lost events, maybe the one of a rewrite without ztdns's
// entry: KeepInstalled looks again, as for a change. (Before: it logged the
// overflow, and the entry stayed out until the next interval.)
func TestKeepInstalledLooksAgainAfterAnOverflow(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t, Config{})
	primary := e.write(t, "10-containerd-net.conflist", runtimeConflist)
	errs := make(chan error, 1)
	clk := clock.NewFake(time.Now())
	k := newKeeper(e.cfg, time.Hour, clk)
	k.watch = func(string) (<-chan fsnotify.Event, <-chan error, func(), error) { return nil, errs, func() {}, nil }
	runKeeper(t, k)
	// Chained in, and the first Install over: its pace is set (on the
	// clock as it stood) once KeepInstalled asked for its second timer,
	// the interval's; a clock moved before that would put the pace out of
	// reach.
	testenv.Eventually(t, 30*time.Second, "ztdns chained in", func() bool {
		n, _ := clk.Calls()
		return hasZtdns(primary) && n == 2
	})

	writeAtomic(t, primary, runtimeConflist) // its event lost
	clk.Advance(minInstallGap)
	errs <- fsnotify.ErrEventOverflow
	testenv.Eventually(t, 30*time.Second, "ztdns back in the chain after the overflow", func() bool { return hasZtdns(primary) })
}

// TestKeepInstalledNoticesAChangedBinary: KeepInstalled does not read the
// binary and its installed copy again while neither changed, but puts the
// binary back when its copy was overwritten in place with other bytes of
// the same size and its modification time set back.
func TestKeepInstalledNoticesAChangedBinary(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t, Config{})
	e.write(t, "10-containerd-net.conflist", runtimeConflist)
	// Late enough for every file's stamp to be trusted.
	k := newKeeper(e.cfg, time.Hour, clock.NewFake(time.Now().Add(time.Hour)))
	installAgain := func(what string) {
		t.Helper()
		k.install()
		if k.failing != "" || k.waiting {
			t.Fatalf("Install %s: %s", what, k.failing)
		}
	}
	installAgain("first") // copies the binary
	installAgain("second")
	if c := k.bin.compared.Load(); c != 2 {
		t.Errorf("binary compared %d times by two installs, want 2", c)
	}
	for i := range 3 {
		installAgain(fmt.Sprintf("unchanged (%d)", i))
	}
	if c := k.bin.compared.Load(); c != 2 {
		t.Errorf("binary compared %d times after three more installs with nothing changed, want still 2", c)
	}

	dst := filepath.Join(e.cfg.BinDir, PluginType)
	info, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	other := bytes.Repeat([]byte{'x'}, len(e.bin))
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(other, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(dst, info.ModTime(), info.ModTime()); err != nil {
		t.Fatal(err)
	}
	installAgain("after the copy was overwritten")
	if got := readFile(t, dst); got != string(e.bin) {
		t.Errorf("installed binary %q after the copy was overwritten, want %q", got, e.bin)
	}
}

// TestKeepInstalledThroughAClash: a .conf beside a .conflist of the same
// name that ztdns did not write keeps the entry out (Install cannot turn
// the one into the other), at start as later. KeepInstalled goes on: it
// tells OnInstalled the error, which names the file and why, without a
// "cni install:" prefix (the agent adds its own); logs it once however
// many looks fail the same way; and once the clash is gone chains ztdns
// in, tells OnInstalled nil and logs that the plugin is installed.
// (Before: at start KeepInstalled returned the error, and the agent exited
// 1 with "cni install: cni install: …"; later it logged an error every
// look, 5 s apart, and nothing else said the plugin was out.)
func TestKeepInstalledThroughAClash(t *testing.T) {
	t.Parallel()
	for _, when := range []string{"at start", "later"} {
		t.Run(when, func(t *testing.T) {
			t.Parallel()
			e := newInstallEnv(t, Config{})
			logs := e.logTo()
			var mu sync.Mutex
			var results []error
			e.cfg.OnInstalled = func(err error) { mu.Lock(); defer mu.Unlock(); results = append(results, err) }
			last := func() (int, error) {
				mu.Lock()
				defer mu.Unlock()
				if len(results) == 0 {
					return 0, errors.New("no Install yet")
				}
				return len(results), results[len(results)-1]
			}
			const interval = 5 * time.Second
			// Looks come on the clock's timers, and the fsnotify
			// events of the files written, paced on the clock too:
			// while it stands still after a look, nothing is looked at.
			clk := clock.NewFake(time.Now())
			nextTimer := func() { _, due := clk.Calls(); clk.AdvanceTo(due) }
			list := filepath.Join(e.cfg.ConfDir, "10-mynet.conflist")
			clash := func() string {
				// Another installer's own conflist of that name, and
				// its .conf, which sorts first.
				writeAtomic(t, list, runtimeConflist)
				return e.write(t, "10-mynet.conf", runtimeConf)
			}
			var conf string
			if when == "later" {
				writeAtomic(t, list, runtimeConflist)
				runKeeper(t, newKeeper(e.cfg, interval, clk))
				testenv.Eventually(t, 30*time.Second, "ztdns chained in", func() bool { _, err := last(); return err == nil && hasZtdns(list) })
				conf = clash()
			} else {
				conf = clash()
				runKeeper(t, newKeeper(e.cfg, interval, clk))
			}

			// Several looks, each at the next timer, all failing.
			for range 4 {
				n0, _ := last()
				testenv.Eventually(t, 30*time.Second, "KeepInstalled looking again", func() bool {
					nextTimer()
					n, _ := last()
					return n > n0
				})
			}
			n, err := last()
			if err == nil {
				t.Fatal("OnInstalled told nil with the clash in place")
			}
			for _, want := range []string{conf, "cannot turn it into 10-mynet.conflist", "not one ztdns wrote"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("OnInstalled's error does not say %q: %v", want, err)
				}
			}
			if strings.Contains(err.Error(), "cni install:") {
				t.Errorf("OnInstalled's error has Install's prefix: %v", err)
			}
			if errs := logLines(logs, slog.LevelError, "the CNI plugin is not installed"); len(errs) != 1 {
				t.Errorf("%d error lines over %d looks, want 1:\n%s", len(errs), n, strings.Join(errs, ""))
			}

			// The other installer's conflist goes: ztdns turns the .conf
			// into its own, on the change.
			if err := os.Remove(list); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 30*time.Second, "ztdns chained in after the clash", func() bool {
				nextTimer()
				_, err := last()
				return err == nil && hasZtdns(list)
			})
			if got := logLines(logs, slog.LevelInfo, "the CNI plugin is installed"); len(got) != 1 {
				t.Errorf("%d lines saying the plugin is installed, want 1", len(got))
			}
		})
	}
}

// TestKeepInstalledLogsARecurringWriteFailureOnce: a failure to write the
// binary or a conflist reads the same at every look (it names the file,
// not the temporary file with a random name written for it), so
// KeepInstalled logs it once: here a bin dir that does not exist, which
// KeepInstalled waits for. (Before: each look's error named another
// temporary file, and each was logged as a new failure.)
func TestKeepInstalledLogsARecurringWriteFailureOnce(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t, Config{})
	e.write(t, "10-containerd-net.conflist", runtimeConflist)
	if err := os.Remove(e.cfg.BinDir); err != nil {
		t.Fatal(err)
	}
	logs := e.logTo()
	var errs []error
	e.cfg.OnInstalled = func(err error) { errs = append(errs, err) }
	k := newKeeper(e.cfg, time.Hour, clock.NewFake(time.Now()))
	for range 3 {
		k.install()
	}
	dst := filepath.Join(e.cfg.BinDir, PluginType)
	for i, err := range errs {
		if err == nil || !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), dst) || strings.Contains(err.Error(), ".tmp") {
			t.Errorf("look %d: OnInstalled told %v, want a missing directory, naming %s and no temporary file", i, err, dst)
		} else if err.Error() != errs[0].Error() {
			t.Errorf("look %d: %v, unlike look 0's %v", i, err, errs[0])
		}
	}
	if got := logLines(logs, slog.LevelError, "the CNI plugin is not installed"); len(got) != 1 {
		t.Errorf("%d error lines over 3 looks failing alike, want 1:\n%s", len(got), strings.Join(got, ""))
	}
}
