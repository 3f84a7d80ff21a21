package cni

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/clock"
	"github.com/ztdns/ztdns/pkg/control"
)

// refusedFile is a file that another installer or a broken tool may leave
// where the agent reads, and that it must not read: made at path, it is
// refused with the error want gives.
type refusedFile struct {
	name string
	make func(tb testing.TB, path string, limit int64)
	want func(path string, limit int64) string
}

var refusedFiles = []refusedFile{
	{
		// Opening one blocks until a writer comes, and reading it until
		// the writer closes it.
		name: "FIFO",
		make: func(tb testing.TB, path string, _ int64) {
			if err := syscall.Mkfifo(path, 0o644); err != nil {
				tb.Fatal(err)
			}
		},
		want: func(path string, _ int64) string { return "refused " + path + ": a FIFO, not a regular file" },
	},
	{
		// Valid, but past the bound: read whole, it would be used.
		name: "oversized",
		make: func(tb testing.TB, path string, limit int64) {
			mustWrite(tb, path, paddedJSON(tb, limit+1))
		},
		want: func(path string, limit int64) string {
			return fmt.Sprintf("refused %s: %d bytes, more than the limit of %d", path, limit+1, limit)
		},
	},
	{
		// Never ends: read whole, it takes all the memory there is.
		name: "symlink to /dev/zero",
		make: func(tb testing.TB, path string, _ int64) {
			if err := os.Symlink("/dev/zero", path); err != nil {
				tb.Fatal(err)
			}
		},
		want: func(path string, _ int64) string {
			return "refused " + path + ": a character device, not a regular file"
		},
	},
}

// paddedJSON is a conflist of size bytes that libcni loads, or a pending
// ADD record of container "big": spaces pad it.
func paddedJSON(tb testing.TB, size int64) string {
	tb.Helper()
	const doc = `{"cniVersion": "1.0.0", "name": "big", "ContainerID": "big", "plugins": [{"type": "bridge"}]}`
	if size < int64(len(doc)) {
		tb.Fatalf("%d bytes is too few for %s", size, doc)
	}
	return doc + strings.Repeat(" ", int(size)-len(doc))
}

// TestInstallSkipsARefusedConfiguration: a network configuration that is
// not a regular file, or past maxConfFileBytes, sorting before the
// runtime's: the installer reads none of it, says which file it refused
// and why, and chains into the next valid one, as it skips one that does
// not parse. Alone in the dir, it is named in the error. Uninstall still
// takes ztdns out of the others, and names it. (Before: a FIFO, or a
// conflist whose plugin directory held one, blocked the installer for
// good, /dev/zero took memory until the agent was killed, and a valid
// conflist of any size was read whole and chained into.)
func TestInstallSkipsARefusedConfiguration(t *testing.T) {
	cases := slices.Clone(refusedFiles)
	cases = append(cases, refusedFile{
		// A plugin configuration libcni appends to the list
		// (<dir>/<name>/*.conf): a runtime reads it with the list.
		name: "FIFO in the conflist's plugin directory",
		make: func(tb testing.TB, path string, _ int64) {
			mustWrite(tb, path, `{"cniVersion": "1.0.0", "name": "withdir", "plugins": [{"type": "bridge"}]}`)
			dir := filepath.Join(filepath.Dir(path), "withdir")
			if err := os.Mkdir(dir, 0o755); err != nil {
				tb.Fatal(err)
			}
			if err := syscall.Mkfifo(filepath.Join(dir, "10-tuning.conf"), 0o644); err != nil {
				tb.Fatal(err)
			}
		},
		want: func(path string, _ int64) string {
			return "refused " + filepath.Join(filepath.Dir(path), "withdir", "10-tuning.conf") + ": a FIFO, not a regular file"
		},
	})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newInstallEnv(t, Config{})
			logs := e.logTo()
			bad := filepath.Join(e.cfg.ConfDir, "00-bad.conflist")
			tc.make(t, bad, maxConfFileBytes)
			badBefore, err := os.Lstat(bad)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.want(bad, maxConfFileBytes)

			err = Install(e.cfg)
			if !errors.Is(err, ErrNoNetworkConfig) || !strings.Contains(err.Error(), "skipped 00-bad.conflist ("+want+")") {
				t.Errorf("Install with only the refused file = %v, want %v saying %q", err, ErrNoNetworkConfig, want)
			}
			if _, err := os.Stat(filepath.Join(e.cfg.BinDir, PluginType)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("binary installed without a configuration to chain into: %v", err)
			}

			primary := e.write(t, "10-containerd-net.conflist", runtimeConflist)
			e.install(t)
			if got, want := pluginTypes(t, primary), []string{"bridge", "portmap", "ztdns"}; !slices.Equal(got, want) {
				t.Errorf("%s: plugins %v, want %v", filepath.Base(primary), got, want)
			}
			if got := logLines(logs, slog.LevelWarn, "skipped a CNI network configuration the installer does not read"); len(got) != 1 || !strings.Contains(got[0], want) {
				t.Errorf("warnings of the refused file: %q, want one saying %q", got, want)
			}
			if c, err := ReadChain(e.cfg.ConfDir); err != nil || c.File != primary {
				t.Errorf("ReadChain = %+v, %v; want %s", c, err, primary)
			}

			// Uninstall reads the conflists, not their plugin directories.
			err = Uninstall(e.cfg)
			if refusesList := strings.HasPrefix(want, "refused "+bad+":"); refusesList && (err == nil || !strings.Contains(err.Error(), want)) {
				t.Errorf("Uninstall = %v, want it to say %q", err, want)
			} else if !refusesList && err != nil {
				t.Errorf("Uninstall = %v", err)
			}
			if got := readFile(t, primary); got != runtimeConflist {
				t.Errorf("%s after Uninstall:\n%s\nwant the original", filepath.Base(primary), got)
			}
			if badAfter, err := os.Lstat(bad); err != nil || badAfter.Mode() != badBefore.Mode() || badAfter.Size() != badBefore.Size() ||
				!badAfter.ModTime().Equal(badBefore.ModTime()) {
				t.Errorf("the refused file changed: %v, %v", badAfter, err)
			}
		})
	}
}

// TestInstallRefusesAConflistBesideTheConf: the runtime's configuration
// is a .conf, which Install turns into the .conflist of the same name,
// and a FIFO has that name: Install says it refused it, and does not
// block.
func TestInstallRefusesAConflistBesideTheConf(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t, Config{})
	conf := e.write(t, "10-mynet.conf", runtimeConf)
	list := filepath.Join(e.cfg.ConfDir, "10-mynet.conflist")
	if err := syscall.Mkfifo(list, 0o644); err != nil {
		t.Fatal(err)
	}
	want := "refused " + list + ": a FIFO, not a regular file"
	if err := Install(e.cfg); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Install = %v, want it to say %q", err, want)
	}
	if got := readFile(t, conf); got != runtimeConf {
		t.Errorf("the .conf changed:\n%s", got)
	}
}

// TestKeepInstalledWarnsOfARefusedFileOnce: the installer looks at every
// change and every interval; a refused file alone is named in the wait for
// a configuration, and once the runtime's comes after it, warned of once,
// not at every look, and the plugin stays installed.
func TestKeepInstalledWarnsOfARefusedFileOnce(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t, Config{})
	bad := filepath.Join(e.cfg.ConfDir, "00-bad.conflist")
	if err := syscall.Mkfifo(bad, 0o644); err != nil {
		t.Fatal(err)
	}
	logs := e.logTo()
	var errs []error
	e.cfg.OnInstalled = func(err error) { errs = append(errs, err) }
	k := newKeeper(e.cfg, time.Hour, clock.NewFake(time.Now()))
	k.install()
	want := "refused " + bad + ": a FIFO, not a regular file"
	if got := logLines(logs, slog.LevelInfo, "waiting for the primary network plugin"); len(got) != 1 || !strings.Contains(got[0], want) {
		t.Errorf("the wait for a configuration: %q, want it to say %q", got, want)
	}
	primary := e.write(t, "10-containerd-net.conflist", runtimeConflist)
	for range 3 {
		k.install()
	}
	if errs = errs[1:]; slices.ContainsFunc(errs, func(err error) bool { return err != nil }) || len(errs) != 3 {
		t.Errorf("OnInstalled told %v, want 3 successes", errs)
	}
	if !hasZtdns(primary) {
		t.Errorf("%s has no ztdns entry", primary)
	}
	if got := logLines(logs, slog.LevelWarn, "skipped a CNI network configuration"); len(got) != 1 {
		t.Errorf("%d warnings over 3 looks with the same refused file, want 1:\n%s", len(got), strings.Join(got, ""))
	}
}

// TestInstallReplacesAFIFOForTheBinary: a FIFO where the plugin binary
// goes does not block the installer's comparison of the two: the binary
// replaces it.
func TestInstallReplacesAFIFOForTheBinary(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t, Config{})
	e.write(t, "10-containerd-net.conflist", runtimeConflist)
	bin := filepath.Join(e.cfg.BinDir, PluginType)
	if err := syscall.Mkfifo(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	e.install(t)
	if got := readFile(t, bin); got != string(e.bin) {
		t.Errorf("installed binary = %q, want %q", got, e.bin)
	}
}

// TestPendingRecordsRefused: a pending record that is not a regular file,
// or past maxPendingRecordBytes, is not read: the error names it and says
// why, and the other records are returned. A symbolic link is none of the
// plugin's records and is not followed. (Before: a FIFO blocked the
// agent's replay for good, before its control socket listened.)
func TestPendingRecordsRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	del := control.CNIDelRequest{ContainerID: "c1", Netns: "/var/run/netns/c1"}
	if err := recordPending(dir, pendingDelDir, del.ContainerID, del, 0); err != nil {
		t.Fatal(err)
	}
	add := control.CNIAddRequest{ContainerID: "c1", Netns: "/var/run/netns/c1", PodNamespace: "shop", PodName: "web"}
	if err := recordPending(dir, pendingAddDir, add.ContainerID, add, 0); err != nil {
		t.Fatal(err)
	}
	var wants []string
	for i, rf := range refusedFiles {
		for _, kind := range []string{pendingDelDir, pendingAddDir} {
			path := filepath.Join(dir, kind, fmt.Sprintf("r%d.json", i))
			rf.make(t, path, maxPendingRecordBytes)
			want := rf.want(path, maxPendingRecordBytes)
			if rf.name == "symlink to /dev/zero" {
				want = "refused " + path + ": a symbolic link, not followed"
			}
			wants = append(wants, "pending "+kind+": "+want)
		}
	}

	dels, errDel := PendingDeletes(dir)
	if !reflect.DeepEqual(dels, []control.CNIDelRequest{del}) {
		t.Errorf("PendingDeletes = %+v, want %+v", dels, del)
	}
	adds, errAdd := PendingAdds(dir)
	if !reflect.DeepEqual(adds, []control.CNIAddRequest{add}) {
		t.Errorf("PendingAdds = %+v, want %+v", adds, add)
	}
	got := fmt.Sprint(errDel, "\n", errAdd)
	for _, want := range wants {
		if !strings.Contains(got, want) {
			t.Errorf("errors:\n%s\nwant one saying %q", got, want)
		}
	}
}
