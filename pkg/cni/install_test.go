package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
)

// runtimeConflist is a primary network configuration as containerd ships
// it: bridge with host-local IPAM (dual stack), then portmap.
const runtimeConflist = `{
  "cniVersion": "1.0.0",
  "name": "containerd-net",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "promiscMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [
          [{"subnet": "10.88.0.0/16"}],
          [{"subnet": "2001:db8:88::/64"}]
        ],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
      }
    },
    {
      "type": "portmap",
      "capabilities": {"portMappings": true}
    }
  ]
}
`

// runtimeConf is a single-plugin network configuration (the .conf format).
const runtimeConf = `{
	"cniVersion": "0.4.0",
	"name": "mynet",
	"type": "bridge",
	"bridge": "cni0",
	"ipam": {"type": "host-local", "subnet": "10.22.0.0/16", "zeta": 1, "alpha": 2}
}
`

// installEnv is a node's CNI directories in a temporary directory, and a
// binary to install.
type installEnv struct {
	cfg InstallConfig
	bin []byte
}

func newInstallEnv(tb testing.TB, conf Config) *installEnv {
	tb.Helper()
	dir := tb.TempDir()
	e := &installEnv{bin: []byte("#!/bin/sh\necho ztdns plugin v1\n")}
	e.cfg = InstallConfig{
		BinDir:  filepath.Join(dir, "opt-cni-bin"),
		ConfDir: filepath.Join(dir, "etc-cni-net.d"),
		Binary:  filepath.Join(dir, "ztdns-build"),
	}
	for _, d := range []string{e.cfg.BinDir, e.cfg.ConfDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	if err := os.WriteFile(e.cfg.Binary, e.bin, 0o755); err != nil {
		tb.Fatal(err)
	}
	entry, err := conf.Entry()
	if err != nil {
		tb.Fatal(err)
	}
	e.cfg.PluginConf = entry
	return e
}

func (e *installEnv) write(tb testing.TB, name, content string) string {
	tb.Helper()
	path := filepath.Join(e.cfg.ConfDir, name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		tb.Fatal(err)
	}
	return path
}

func (e *installEnv) install(tb testing.TB) {
	tb.Helper()
	if err := Install(e.cfg); err != nil {
		tb.Fatalf("Install: %v", err)
	}
}

func (e *installEnv) uninstall(tb testing.TB) {
	tb.Helper()
	if err := Uninstall(e.cfg); err != nil {
		tb.Fatalf("Uninstall: %v", err)
	}
}

// snapshot records every file under the env's directories with its bytes
// and modification time, to prove a run wrote nothing.
func (e *installEnv) snapshot(tb testing.TB) map[string]string {
	tb.Helper()
	out := map[string]string{}
	for _, dir := range []string{e.cfg.BinDir, e.cfg.ConfDir} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			tb.Fatal(err)
		}
		for _, ent := range entries {
			path := filepath.Join(dir, ent.Name())
			data, err := os.ReadFile(path)
			if err != nil {
				tb.Fatal(err)
			}
			info, err := os.Stat(path)
			if err != nil {
				tb.Fatal(err)
			}
			out[path] = info.ModTime().String() + " " + info.Mode().String() + "\n" + string(data)
		}
	}
	return out
}

func readFile(tb testing.TB, path string) string {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return string(data)
}

// pluginTypes loads the conflist at path the way a runtime does.
func pluginTypes(tb testing.TB, path string) []string {
	tb.Helper()
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		tb.Fatalf("runtime cannot load %s: %v", path, err)
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, p.Network.Type)
	}
	return types
}

// ztdnsEntry returns the ztdns entry of the conflist at path, decoded.
func ztdnsEntry(tb testing.TB, path string) map[string]any {
	tb.Helper()
	var list struct{ Plugins []map[string]any }
	if err := json.Unmarshal([]byte(readFile(tb, path)), &list); err != nil {
		tb.Fatal(err)
	}
	for _, p := range list.Plugins {
		if p["type"] == PluginType {
			return p
		}
	}
	tb.Fatalf("%s has no ztdns entry", path)
	return nil
}

func TestInstallIntoConflist(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t, Config{SocketPath: "/run/ztdns/ztdns.sock", OnAgentUnreachable: PolicyFail})
	path := e.write(t, "10-containerd-net.conflist", runtimeConflist)
	e.install(t)

	if got, want := pluginTypes(t, path), []string{"bridge", "portmap", "ztdns"}; !slices.Equal(got, want) {
		t.Errorf("plugins = %v, want %v", got, want)
	}
	entry := ztdnsEntry(t, path)
	if entry["socketPath"] != "/run/ztdns/ztdns.sock" || entry["onAgentUnreachable"] != "fail" || len(entry) != 3 {
		t.Errorf("entry = %v", entry)
	}
	// Everything before the new entry is the original, byte for byte,
	// and the file still ends as the original did.
	got := readFile(t, path)
	before := strings.TrimSuffix(runtimeConflist, "\n  ]\n}\n")
	if !strings.HasPrefix(got, before+",\n    {\n      \"type\": \"ztdns\",") || !strings.HasSuffix(got, "}\n  ]\n}\n") {
		t.Errorf("conflist not edited in place:\n%s", got)
	}

	bin := filepath.Join(e.cfg.BinDir, "ztdns")
	if data := readFile(t, bin); data != string(e.bin) {
		t.Errorf("installed binary = %q", data)
	}
	if info, err := os.Stat(bin); err != nil || info.Mode().Perm() != 0o755 {
		t.Errorf("installed binary: %v, %v", info.Mode(), err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(e.cfg.ConfDir, ".*")); len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
}

func TestInstallTwiceChangesNothing(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t, Config{})
	e.write(t, "10-containerd-net.conflist", runtimeConflist)
	e.install(t)
	first := e.snapshot(t)
	time.Sleep(10 * time.Millisecond) // a rewrite would show in the mtime
	e.install(t)
	if second := e.snapshot(t); !mapsEqual(first, second) {
		t.Errorf("second install changed files:\nbefore %v\nafter  %v", first, second)
	}
}

func TestUninstallRestoresTheOriginal(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t, Config{})
	path := e.write(t, "10-containerd-net.conflist", runtimeConflist)
	e.install(t)
	e.uninstall(t)
	if got := readFile(t, path); got != runtimeConflist {
		t.Errorf("after uninstall:\n%s\nwant the original:\n%s", got, runtimeConflist)
	}
	// The binary stays: pods created under ztdns run it at their DEL.
	if got, err := os.ReadFile(filepath.Join(e.cfg.BinDir, "ztdns")); err != nil || !bytes.Equal(got, e.bin) {
		t.Errorf("binary after uninstall: %q, %v; want it left as installed", got, err)
	}
	snap := e.snapshot(t)
	e.uninstall(t)
	if again := e.snapshot(t); !mapsEqual(snap, again) {
		t.Errorf("second uninstall changed files")
	}
}

// TestDelWithTheCachedConfigAfterUninstall: a runtime that tears a pod down
// with the configuration cached at its ADD (CRI-O, Multus) still lists
// ztdns, last, after the uninstall. libcni runs DEL in reverse order and
// stops at the first plugin it cannot find or that fails: ztdns's DEL must
// run and succeed (no agent, its directory gone), so that the primary
// plugins release the pod's veth and addresses.
func TestDelWithTheCachedConfigAfterUninstall(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	runDir := filepath.Join(dir, "var-run-ztdns") // the agent's, gone with ztdns
	e := newInstallEnv(t, Config{SocketPath: filepath.Join(runDir, "ztdns.sock"), Timeout: "200ms"})
	// The installed plugin is this test binary acting as the plugin.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e.bin = []byte("#!/bin/sh\nexec env " + asPluginEnv + "=1 " + self + " \"$@\"\n")
	if err := os.WriteFile(e.cfg.Binary, e.bin, 0o755); err != nil {
		t.Fatal(err)
	}
	// The primary plugins record their DELs.
	calls := filepath.Join(dir, "calls")
	for _, name := range []string{"bridge", "portmap"} {
		script := "#!/bin/sh\necho \"$CNI_COMMAND " + name + "\" >>" + calls + "\n"
		if err := os.WriteFile(filepath.Join(e.cfg.BinDir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	path := e.write(t, "10-containerd-net.conflist", runtimeConflist)
	e.install(t)
	cached, err := libcni.ConfListFromFile(path) // what the runtime cached at the pod's ADD
	if err != nil {
		t.Fatal(err)
	}
	if got := cached.Plugins[len(cached.Plugins)-1].Network.Type; got != PluginType {
		t.Fatalf("last plugin of the cached config %q, want ztdns", got)
	}
	e.uninstall(t)
	if got, want := pluginTypes(t, path), []string{"bridge", "portmap"}; !slices.Equal(got, want) {
		t.Fatalf("plugins after uninstall = %v, want %v", got, want)
	}

	var stderr bytes.Buffer // the plugins' logs
	cniConf := libcni.NewCNIConfigWithCacheDir([]string{e.cfg.BinDir}, filepath.Join(dir, "cache"), &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: &stderr}})
	rt := &libcni.RuntimeConf{
		ContainerID: "c0ffee",
		NetNS:       "/var/run/netns/gone",
		IfName:      "eth0",
		Args:        [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "shop"}, {"K8S_POD_NAME", "web-0"}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cniConf.DelNetworkList(ctx, cached, rt); err != nil {
		t.Fatalf("DEL with the cached config after uninstall: %v\n%s", err, stderr.String())
	}
	if got, err := os.ReadFile(calls); err != nil || string(got) != "DEL portmap\nDEL bridge\n" {
		t.Errorf("primary plugins' DELs: %q, %v; want portmap's then bridge's", got, err)
	}
	// Nothing recorded for an agent that will never come.
	if _, err := os.Stat(runDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the DEL made the agent's directory: %v", err)
	}
}

func TestInstallUpdatesAnOlderEntryInPlace(t *testing.T) {
	t.Parallel()
	// An older ztdns entry sits between bridge and portmap (e.g. another
	// installer appended itself later): it is updated where it stands, and
	// nothing else in the file moves.
	head := `{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.88.0.0/16"}},
    `
	old := `{"type": "ztdns", "socketPath": "/old/ztdns.sock", "timeout": "1s"}`
	tail := `,
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`
	e := newInstallEnv(t, Config{SocketPath: "/new/ztdns.sock"})
	path := e.write(t, "10-net.conflist", head+old+tail)
	e.install(t)

	got := readFile(t, path)
	if !strings.HasPrefix(got, head) || !strings.HasSuffix(got, tail) {
		t.Fatalf("bytes outside the entry changed:\n%s", got)
	}
	if got, want := pluginTypes(t, path), []string{"bridge", "ztdns", "portmap"}; !slices.Equal(got, want) {
		t.Errorf("plugins = %v, want %v", got, want)
	}
	entry := ztdnsEntry(t, path)
	if entry["socketPath"] != "/new/ztdns.sock" || entry["timeout"] != nil {
		t.Errorf("entry not replaced: %v", entry)
	}
	e.uninstall(t)
	// The entry leaves with the separator before it.
	if got, want := readFile(t, path), strings.TrimSuffix(head, ",\n    ")+tail; got != want {
		t.Errorf("after uninstall:\n%s\nwant:\n%s", got, want)
	}
}

func TestInstallWithoutNetworkConfig(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t, Config{})
	e.write(t, "05-broken.conflist", `{"name": "x", "plugins": [`)
	e.write(t, "README", "not a config")
	err := Install(e.cfg)
	if !errors.Is(err, ErrNoNetworkConfig) {
		t.Fatalf("Install = %v, want ErrNoNetworkConfig", err)
	}
	for _, want := range []string{e.cfg.ConfDir, "primary network plugin", "05-broken.conflist"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(e.cfg.BinDir, "ztdns")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("binary installed without a config to chain into: %v", err)
	}
}

func TestInstallChoosesThePrimaryConfig(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t, Config{})
	e.write(t, "00-broken.conflist", `not json`)
	e.write(t, "01-empty.conflist", `{"cniVersion": "1.0.0", "name": "empty", "plugins": []}`)
	e.write(t, "02-notype.conf", `{"cniVersion": "1.0.0", "name": "notype"}`)
	primary := e.write(t, "10-primary.conflist", runtimeConflist)
	other := e.write(t, "20-other.conflist", runtimeConflist)
	e.install(t)

	if got := pluginTypes(t, primary); !slices.Contains(got, "ztdns") {
		t.Errorf("primary plugins = %v, want ztdns among them", got)
	}
	for _, name := range []string{"00-broken.conflist", "01-empty.conflist", "02-notype.conf", "20-other.conflist"} {
		path := filepath.Join(e.cfg.ConfDir, name)
		if strings.Contains(readFile(t, path), "ztdns") {
			t.Errorf("%s changed", name)
		}
	}
	// Uninstall cleans every conflist, also one the primary no longer is.
	if err := os.WriteFile(other, []byte(readFile(t, primary)), 0o644); err != nil {
		t.Fatal(err)
	}
	e.uninstall(t)
	for _, path := range []string{primary, other} {
		if got := readFile(t, path); got != runtimeConflist {
			t.Errorf("%s after uninstall:\n%s", path, got)
		}
	}
}

func TestInstallConvertsAConf(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t, Config{})
	conf := e.write(t, "10-mynet.conf", runtimeConf)
	e.install(t)

	if _, err := os.Stat(conf); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the .conf is still there (a runtime would prefer it): %v", err)
	}
	list := filepath.Join(e.cfg.ConfDir, "10-mynet.conflist")
	loaded, err := libcni.ConfListFromFile(list)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Name != "mynet" || loaded.CNIVersion != "0.4.0" {
		t.Errorf("conflist is %q version %q, want the conf's mynet 0.4.0", loaded.Name, loaded.CNIVersion)
	}
	if got, want := pluginTypes(t, list), []string{"bridge", "ztdns"}; !slices.Equal(got, want) {
		t.Errorf("plugins = %v, want %v", got, want)
	}
	// The original plugin is kept whole, key order included.
	var raw struct{ Plugins []json.RawMessage }
	if err := json.Unmarshal([]byte(readFile(t, list)), &raw); err != nil {
		t.Fatal(err)
	}
	var compactConf, first bytes.Buffer
	if err := json.Compact(&compactConf, []byte(runtimeConf)); err != nil {
		t.Fatal(err)
	}
	if err := json.Compact(&first, raw.Plugins[0]); err != nil {
		t.Fatal(err)
	}
	if first.String() != compactConf.String() {
		t.Errorf("first plugin = %s, want the original %s", first.String(), compactConf.String())
	}

	snap := e.snapshot(t)
	e.install(t)
	if !mapsEqual(snap, e.snapshot(t)) {
		t.Errorf("second install changed files")
	}
	e.uninstall(t)
	if got, want := pluginTypes(t, list), []string{"bridge"}; !slices.Equal(got, want) {
		t.Errorf("after uninstall plugins = %v, want %v", got, want)
	}
}

// TestInstallConvertsAConfWrittenAgain: the primary plugin writes its .conf
// again after Install turned it into a .conflist (it regenerates its
// configuration); the .conf sorts first and lacks ztdns. Install converts
// it over the .conflist, so ztdns is back in the chain the runtime uses.
// (Before, every Install failed: "cannot turn it into 10-mynet.conflist,
// which exists".)
func TestInstallConvertsAConfWrittenAgain(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t, Config{})
	conf := e.write(t, "10-mynet.conf", runtimeConf)
	e.install(t)
	list := filepath.Join(e.cfg.ConfDir, "10-mynet.conflist")

	rewritten := strings.Replace(runtimeConf, "10.22.0.0/16", "10.23.0.0/16", 1)
	e.write(t, "10-mynet.conf", rewritten)
	e.install(t)
	if _, err := os.Stat(conf); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the .conf is still there (a runtime would prefer it): %v", err)
	}
	if got, want := pluginTypes(t, list), []string{"bridge", "ztdns"}; !slices.Equal(got, want) {
		t.Errorf("plugins = %v, want %v", got, want)
	}
	if got := readFile(t, list); !strings.Contains(got, "10.23.0.0/16") {
		t.Errorf("the conflist is not the rewritten .conf's:\n%s", got)
	}
	primary, _, err := primaryConfFile(e.cfg.ConfDir)
	if err != nil || primary != list {
		t.Errorf("the runtime would use %q (%v), want %s", primary, err, list)
	}
}

// TestInstallLeavesAnotherConflist: a .conf whose .conflist of the same
// name is not one ztdns wrote (an operator's, or one that does not parse)
// is not converted over it: Install says why and changes neither file.
// (TestInstallConvertsAConfWrittenAgain replaces one ztdns wrote.)
func TestInstallLeavesAnotherConflist(t *testing.T) {
	t.Parallel()
	for _, existing := range []string{runtimeConflist, "{not json"} {
		e := newInstallEnv(t, Config{})
		conf := e.write(t, "10-mynet.conf", runtimeConf)
		list := e.write(t, "10-mynet.conflist", existing)
		err := Install(e.cfg)
		if err == nil || !strings.Contains(err.Error(), "not one ztdns wrote") {
			t.Errorf("Install beside another %s = %v, want refused", filepath.Base(list), err)
		}
		if got := readFile(t, list); got != existing {
			t.Errorf("%s changed:\n%s", list, got)
		}
		if got := readFile(t, conf); got != runtimeConf {
			t.Errorf("%s changed:\n%s", conf, got)
		}
	}
}

// TestInstallRemovesStaleTempFiles: an Install killed between writing a
// temporary file and renaming it leaves the file in the conf dir or the
// bin dir; the next Install removes it once it is over a minute old, and
// leaves a fresh one (an Install writing now) and other files.
func TestInstallRemovesStaleTempFiles(t *testing.T) {
	t.Parallel()
	e := newInstallEnv(t, Config{})
	e.write(t, "10-mynet.conflist", runtimeConflist)
	staleConf := filepath.Join(e.cfg.ConfDir, ".10-mynet.conflist.123.tmp")
	staleBin := filepath.Join(e.cfg.BinDir, ".ztdns.456.tmp")
	fresh := filepath.Join(e.cfg.ConfDir, ".10-mynet.conflist.789.tmp")
	otherConf := filepath.Join(e.cfg.ConfDir, ".other.tmp")
	otherBin := filepath.Join(e.cfg.BinDir, ".bridge.123.tmp")
	for _, p := range []string{staleConf, staleBin, otherConf, otherBin} {
		mustWriteAged(t, p, 2*time.Minute)
	}
	mustWriteAged(t, fresh, 0)
	e.install(t)
	requireFiles(t, map[string]bool{staleConf: false, staleBin: false, fresh: true, otherConf: true, otherBin: true})
}

func TestInstallRejectsABadEntry(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		entry string
		want  string
	}{
		{"empty", ``, "empty"},
		{"not an object", `[1]`, "not a JSON object"},
		{"another type", `{"type": "bridge"}`, `type "bridge"`},
		{"no type", `{"socketPath": "/x"}`, `type ""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newInstallEnv(t, Config{})
			path := e.write(t, "10-containerd-net.conflist", runtimeConflist)
			e.cfg.PluginConf = json.RawMessage(tt.entry)
			err := Install(e.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Install = %v, want an error containing %q", err, tt.want)
			}
			if readFile(t, path) != runtimeConflist {
				t.Error("conflist changed")
			}
		})
	}
}

// TestConflistEditsKeepFormatting drives the byte-level editor over
// conflists formatted in different styles: installing renders the entry in
// the file's style, and removing gives back the input exactly.
func TestConflistEditsKeepFormatting(t *testing.T) {
	t.Parallel()
	entry := []byte(`{"type":"ztdns","socketPath":"/run/z.sock"}`)
	tests := []struct {
		name string
		in   string
		want string // after upsertEntry
	}{
		{
			name: "compact",
			in:   `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"portmap"}]}`,
			want: `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"portmap"},{"type":"ztdns","socketPath":"/run/z.sock"}]}`,
		},
		{
			name: "one plugin, tabs",
			in:   "{\n\t\"name\": \"n\",\n\t\"plugins\": [\n\t\t{\n\t\t\t\"type\": \"bridge\"\n\t\t}\n\t]\n}",
			want: "{\n\t\"name\": \"n\",\n\t\"plugins\": [\n\t\t{\n\t\t\t\"type\": \"bridge\"\n\t\t},\n\t\t{\n\t\t\t\"type\": \"ztdns\",\n\t\t\t\"socketPath\": \"/run/z.sock\"\n\t\t}\n\t]\n}",
		},
		{
			name: "one-line entries on their own lines",
			in:   "{\"name\": \"n\", \"plugins\": [\n  {\"type\": \"bridge\"},\n  {\"type\": \"portmap\"}\n]}\n",
			want: "{\"name\": \"n\", \"plugins\": [\n  {\"type\": \"bridge\"},\n  {\"type\": \"portmap\"},\n  {\"type\":\"ztdns\",\"socketPath\":\"/run/z.sock\"}\n]}\n",
		},
		{
			name: "plugins before other keys, with escapes",
			in:   `{"plugins": [{"type": "bridge", "note": "a \"]\" in a string"}], "name": "n\u00e9"}`,
			want: `{"plugins": [{"type": "bridge", "note": "a \"]\" in a string"},{"type":"ztdns","socketPath":"/run/z.sock"}], "name": "n\u00e9"}`,
		},
		{
			name: "empty plugins",
			in:   `{"name": "n", "plugins": [ ]}`,
			want: `{"name": "n", "plugins": [{"type":"ztdns","socketPath":"/run/z.sock"}]}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, changed, _, err := upsertEntry([]byte(tt.in), entry, PluginType, istioCNIType)
			if err != nil || !changed || string(got) != tt.want {
				t.Fatalf("upsertEntry = %t, %v:\n%s\nwant:\n%s", changed, err, got, tt.want)
			}
			again, changed, _, err := upsertEntry(got, entry, PluginType, istioCNIType)
			if err != nil || changed || !bytes.Equal(again, got) {
				t.Errorf("second upsertEntry = %t, %v", changed, err)
			}
			back, removed, err := removeEntries(got, PluginType)
			wantBack := tt.in
			if tt.name == "empty plugins" {
				wantBack = `{"name": "n", "plugins": []}`
			}
			if err != nil || !removed || string(back) != wantBack {
				t.Errorf("removeEntries = %t, %v:\n%s\nwant:\n%s", removed, err, back, wantBack)
			}
		})
	}
}

func TestRemoveEntriesAnywhere(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
	}{
		{"first", `{"plugins": [{"type":"ztdns"}, {"type":"bridge"}]}`, `{"plugins": [{"type":"bridge"}]}`},
		{"middle", `{"plugins": [{"type":"bridge"}, {"type":"ztdns"}, {"type":"portmap"}]}`, `{"plugins": [{"type":"bridge"}, {"type":"portmap"}]}`},
		{"twice", `{"plugins": [{"type":"ztdns"}, {"type":"bridge"}, {"type":"ztdns", "x": 1}]}`, `{"plugins": [{"type":"bridge"}]}`},
		{"none", `{"plugins": [{"type":"bridge"}]}`, `{"plugins": [{"type":"bridge"}]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, removed, err := removeEntries([]byte(tt.in), PluginType)
			if err != nil || string(got) != tt.want || removed != (tt.in != tt.want) {
				t.Errorf("removeEntries = %q, %t, %v; want %q", got, removed, err, tt.want)
			}
		})
	}
}

func TestParsePluginListErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
	}{
		{"not an object", `[]`, "not a JSON object"},
		{"no plugins", `{"name": "n"}`, `no "plugins"`},
		{"plugins twice", `{"plugins": [], "plugins": []}`, "twice"},
		{"plugins not a list", `{"plugins": {}}`, "not a JSON array"},
		{"entry not an object", `{"plugins": [1]}`, "entry 0"},
		{"truncated", `{"plugins": [{"type": "bridge"}`, "EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := parsePluginList([]byte(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("parsePluginList = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestIstioOwnedConfigKeepsZtdns: with istio-cni's istioOwnedCNIConfig on,
// the runtime's configuration is istio-cni's own 02-istio-cni.conflist, a
// copy of the primary plugin's with istio-cni appended, which istio-cni
// writes again from the primary's at every restart of its pod (a
// `helm upgrade` of istio-cni, say). ztdns's entry goes into the primary's
// too, so the copy istio-cni writes again still has it: no pod starts
// uncaptured while ztdns's installer has not looked again. (Before: the
// copy lost ztdns at each istio-cni restart.) Removing istio-cni's file
// leaves the primary's, which the runtime then uses, with ztdns in it, and
// Uninstall gives back both files without it.
func TestIstioOwnedConfigKeepsZtdns(t *testing.T) {
	for _, tc := range []struct{ name, primary, content string }{
		{"conflist", "10-containerd-net.conflist", runtimeConflist},
		{"conf", "10-mynet.conf", runtimeConf},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newInstallEnv(t, Config{})
			dir := e.cfg.ConfDir
			e.write(t, tc.primary, tc.content)
			// Another network of the node's, not the one istio-cni copied.
			other := e.write(t, "20-other.conflist", `{"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "macvlan", "master": "eth1"}]}`)
			istioOwnedConfig(t, dir, tc.primary, "02-istio-cni.conflist")
			owned := filepath.Join(dir, "02-istio-cni.conflist")
			e.install(t)
			if got := pluginTypes(t, owned); !slices.Contains(got, "ztdns") {
				t.Fatalf("istio-cni's file after Install: plugins %v, want ztdns among them", got)
			}

			istioOwnedConfig(t, dir, tc.primary, "02-istio-cni.conflist") // istio-cni's pod restarts
			got := pluginTypes(t, owned)
			if !slices.Contains(got, "ztdns") || got[len(got)-1] != "istio-cni" {
				t.Fatalf("istio-cni's file written again from the primary's: plugins %v, want ztdns's entry kept, and istio-cni's", got)
			}
			e.install(t) // ztdns's moves after istio-cni's (TestInstallPutsZtdnsAfterIstioCNI)
			before := e.snapshot(t)
			e.install(t)
			if after := e.snapshot(t); !mapsEqual(before, after) {
				t.Errorf("a second Install after istio-cni's rewrite wrote again")
			}
			if strings.Contains(readFile(t, other), "ztdns") {
				t.Errorf("%s, which istio-cni did not copy, changed", filepath.Base(other))
			}

			// istio-cni uninstalled: its file goes, the primary's is used.
			if err := os.Remove(owned); err != nil {
				t.Fatal(err)
			}
			primary, _, err := primaryConfFile(dir)
			if err != nil {
				t.Fatal(err)
			}
			if got := pluginTypes(t, primary); !slices.Contains(got, "ztdns") {
				t.Errorf("the primary's %s once istio-cni's file is gone: plugins %v, want ztdns among them", filepath.Base(primary), got)
			}
			istioOwnedConfig(t, dir, tc.primary, "02-istio-cni.conflist") // and reinstalled
			e.uninstall(t)
			for _, path := range []string{owned, primary} {
				if got := pluginTypes(t, path); slices.Contains(got, "ztdns") {
					t.Errorf("%s after Uninstall: plugins %v", filepath.Base(path), got)
				}
			}
			if tc.primary == filepath.Base(primary) && readFile(t, primary) != tc.content {
				t.Errorf("%s after Uninstall is not the original:\n%s", filepath.Base(primary), readFile(t, primary))
			}
		})
	}
}
