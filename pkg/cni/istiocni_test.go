package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

// istioCNIEntry is istio-cni's conflist entry as its installer writes it
// (cni/pkg/install/cniconfig.go: createCNIConfigFile).
const istioCNIEntry = `{"name": "istio-cni", "type": "istio-cni", "plugin_log_level": "info",
	"cni_agent_run_dir": "/var/run/istio-cni", "ambient_enabled": true,
	"enablement_selectors": [{"podSelector": {"matchLabels": {"istio.io/dataplane-mode": "ambient"}}}],
	"exclude_namespaces": ["kube-system"], "pod_namespace": "istio-system"}`

// istioInstaller is istio-cni's installer as far as the CNI conf dir goes,
// chained, as its chart runs it (istio's cni/pkg/install: installAll's
// checkValidCNIConfig, then createCNIConfigFile's writeCNIConfig and
// insertCNIConfig when the check fails). A new one is istio-cni's pod
// starting: cniConfigFilepath is empty then, so its first check fails and
// it writes its entry again, last.
type istioInstaller struct {
	dir string
	// owned is IstioOwnedCNIConfigFilename with istioOwnedCNIConfig on,
	// "" with it off.
	owned string
	// confName (CNIConfName) and path (cniConfigFilepath) are what its
	// checks and writes set.
	confName, path string
}

// install is what installAll does in the conf dir, on start and on every
// change there: it writes when check fails, and reports whether it did.
func (in *istioInstaller) install(tb testing.TB) bool {
	tb.Helper()
	if in.check() == nil {
		return false
	}
	in.path = in.write(tb)
	return true
}

// check is checkValidCNIConfig, chained.
func (in *istioInstaller) check() error {
	names, err := istioConfigFilenames(in.dir)
	if err != nil {
		return err
	}
	first, second := names[0], ""
	if in.owned != "" {
		if len(names) >= 2 {
			second = names[1]
		}
		if first != in.owned {
			if in.confName == "" {
				in.confName = first
			}
			return errors.New("istio owned CNI config does not exist or is not the highest priority")
		}
	}
	if filepath.Join(in.dir, first) != in.path && in.confName == "" {
		if in.owned != "" {
			in.confName = second
		} else {
			in.confName = first
		}
		return errors.New("perform initial update of highest priority config")
	} // with confName set, a preempted file is only warned about
	if _, err := os.Stat(in.path); err != nil {
		return err
	}
	if in.owned != "" && in.confName == "" {
		in.confName = second
	}
	types, err := confTypes(in.path)
	if err != nil {
		return err
	}
	if !slices.Contains(types, istioCNIType) {
		return errors.New("istio-cni plugin not found")
	}
	if in.owned != "" {
		primary, err := istioConfigFilepath(in.dir, in.confName)
		if err != nil {
			return err
		}
		primaryTypes, err := confTypes(primary)
		if err != nil {
			return err
		}
		for _, t := range primaryTypes {
			if !slices.Contains(types, t) {
				return fmt.Errorf("plugin of type %s from primary CNI config is missing in Istio CNI config file", t)
			}
		}
	}
	return nil
}

// write is writeCNIConfig with insertCNIConfig: istio-cni's entry out of
// the primary's plugins and appended last, the result re-marshalled and
// written by rename to the primary's file (a .conf renamed .conflist), or
// to its own with istioOwnedCNIConfig. It returns the path written.
func (in *istioInstaller) write(tb testing.TB) string {
	tb.Helper()
	src, err := istioConfigFilepath(in.dir, in.confName)
	if err != nil {
		tb.Fatal(err)
	}
	var istio, existing map[string]any
	if err := json.Unmarshal([]byte(istioCNIEntry), &istio); err != nil {
		tb.Fatal(err)
	}
	if err := json.Unmarshal([]byte(readFile(tb, src)), &existing); err != nil {
		tb.Fatal(err)
	}
	var out map[string]any
	if _, ok := existing["type"]; ok {
		delete(existing, "cniVersion")
		out = map[string]any{"name": "k8s-pod-network", "cniVersion": "0.3.1", "plugins": []any{existing, istio}}
	} else {
		out = existing
		plugins := existing["plugins"].([]any)
		if i := slices.IndexFunc(plugins, func(p any) bool { return p.(map[string]any)["type"] == istioCNIType }); i >= 0 {
			plugins = slices.Delete(plugins, i, i+1)
		}
		out["plugins"] = append(plugins, istio)
	}
	data, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		tb.Fatal(err)
	}
	dst := src
	if in.owned != "" {
		dst = filepath.Join(in.dir, in.owned)
	}
	tmp := filepath.Join(in.dir, "."+filepath.Base(dst)+".tmp")
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		tb.Fatal(err)
	}
	if in.owned == "" && strings.HasSuffix(dst, ".conf") {
		if err := os.Rename(dst, dst+"list"); err != nil {
			tb.Fatal(err)
		}
		dst += "list"
	}
	return dst
}

// istioConfigFilenames is istio-cni's getConfigFilenames: the valid .conf
// and .conflist files of dir, in lexical order.
func istioConfigFilenames(dir string) ([]string, error) {
	files, err := libcni.ConfFiles(dir, []string{".conf", ".conflist"})
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var valid []string
	for _, f := range files {
		if validNetworkConfig(f) == nil {
			valid = append(valid, filepath.Base(f))
		}
	}
	if len(valid) == 0 {
		return nil, fmt.Errorf("no valid networks found in %s", dir)
	}
	return valid, nil
}

// istioConfigFilepath is istio-cni's getCNIConfigFilepath, chained,
// without its wait: the file named name, or the first valid one when name
// is empty; X.conflist for a missing X.conf, and the other way round.
func istioConfigFilepath(dir, name string) (string, error) {
	if name == "" {
		names, err := istioConfigFilenames(dir)
		if err != nil {
			return "", err
		}
		name = names[0]
	}
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	for _, alt := range []string{path + "list", strings.TrimSuffix(path, "list")} {
		if _, err := os.Stat(alt); alt != path && err == nil {
			return alt, nil
		}
	}
	return "", fmt.Errorf("CNI config file %s does not exist", path)
}

// istioOwnedConfig writes istio-cni's own copy of the configuration named
// primary to owned, as its installer does with istioOwnedCNIConfig on at
// every start of its pod, and whenever its check finds the copy lacking a
// plugin type of the primary's.
func istioOwnedConfig(tb testing.TB, dir, primary, owned string) {
	tb.Helper()
	(&istioInstaller{dir: dir, owned: owned, confName: primary}).write(tb)
}

// TestInstallPutsZtdnsAfterIstioCNI: istio-cni's ADD annotates the pod
// (ambient.istio.io/redirection) whose annotation the agent's decision
// reads, so ztdns's entry goes after istio-cni's. istio-cni's installer
// takes its entry out and appends it last at every start of its pod, which
// puts it after ztdns's; ztdns's installer moves its entry right after it
// again, and then neither writes: istio-cni's check accepts ztdns after
// it, with istioOwnedCNIConfig as without. (Before, ztdns's entry stayed
// where it stood, [..., ztdns, istio-cni], after one istio-cni restart.)
func TestInstallPutsZtdnsAfterIstioCNI(t *testing.T) {
	for _, tc := range []struct {
		name, primary, content string
		owned                  string // istio-cni's own file, "" when it writes into the primary's
	}{
		{name: "conflist", primary: "10-containerd-net.conflist", content: runtimeConflist},
		{name: "conf", primary: "10-mynet.conf", content: runtimeConf},
		{name: "istio-owned conflist", primary: "10-containerd-net.conflist", content: runtimeConflist, owned: "02-istio-cni.conflist"},
		{name: "istio-owned conf", primary: "10-mynet.conf", content: runtimeConf, owned: "02-istio-cni.conflist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newInstallEnv(t, Config{})
			dir := e.cfg.ConfDir
			e.write(t, tc.primary, tc.content)
			e.install(t) // ztdns's installer first, as on a fresh node

			// The file the runtime uses ends with istio-cni, then ztdns.
			wantOrder := func(t *testing.T, when string) {
				t.Helper()
				runtime, _, err := primaryConfFile(dir)
				if err != nil {
					t.Fatal(err)
				}
				got := pluginTypes(t, runtime)
				if n := len(got); n < 2 || got[n-2] != istioCNIType || got[n-1] != PluginType {
					t.Fatalf("%s: %s has plugins %v, want istio-cni then ztdns last", when, filepath.Base(runtime), got)
				}
			}
			for restart := range 3 {
				istio := &istioInstaller{dir: dir, owned: tc.owned}
				if !istio.install(t) {
					t.Fatalf("istio-cni's start %d wrote nothing", restart)
				}
				e.install(t)
				wantOrder(t, fmt.Sprintf("after istio-cni's start %d", restart))
				// Each writes when the other changed the conf dir: neither
				// changes anything now.
				before := e.snapshot(t)
				for round := range 3 {
					if istio.install(t) {
						t.Fatalf("istio-cni's installer wrote again (round %d): %v", round, istio.check())
					}
					e.install(t)
				}
				if after := e.snapshot(t); !mapsEqual(before, after) {
					t.Fatalf("after istio-cni's start %d, ztdns's installer wrote again", restart)
				}
			}

			// Uninstalling ztdns leaves istio-cni's configuration valid to it.
			e.uninstall(t)
			if err := (&istioInstaller{dir: dir, owned: tc.owned, path: istioPath(t, dir, tc.owned)}).check(); err != nil {
				t.Errorf("istio-cni's check after Uninstall: %v", err)
			}
		})
	}
}

// istioPath is the file istio-cni's installer last wrote in dir.
func istioPath(tb testing.TB, dir, owned string) string {
	tb.Helper()
	if owned != "" {
		return filepath.Join(dir, owned)
	}
	path, _, err := primaryConfFile(dir)
	if err != nil {
		tb.Fatal(err)
	}
	return path
}

// TestUpsertEntryAfterIstioCNI drives the byte-level editor: an entry
// before istio-cni's moves right after it, one after it (right after or
// not) stays, a new one goes right after it; writing again changes
// nothing.
func TestUpsertEntryAfterIstioCNI(t *testing.T) {
	t.Parallel()
	entry := []byte(`{"type":"ztdns","socketPath":"/run/z.sock"}`)
	tests := []struct {
		name, in, want string
		moved          bool // the entry was before istio-cni's
	}{
		{
			name:  "before istio-cni",
			in:    `{"plugins": [{"type":"ptp"}, {"type":"ztdns","socketPath":"/run/z.sock"}, {"type":"istio-cni"}]}`,
			want:  `{"plugins": [{"type":"ptp"}, {"type":"istio-cni"}, {"type":"ztdns","socketPath":"/run/z.sock"}]}`,
			moved: true,
		},
		{
			name:  "an older entry before istio-cni",
			in:    "{\"plugins\": [\n  {\"type\": \"ztdns\", \"timeout\": \"1s\"},\n  {\"type\": \"ptp\"},\n  {\"type\": \"istio-cni\"}\n]}\n",
			want:  "{\"plugins\": [\n  {\"type\": \"ptp\"},\n  {\"type\": \"istio-cni\"},\n  {\"type\":\"ztdns\",\"socketPath\":\"/run/z.sock\"}\n]}\n",
			moved: true,
		},
		{
			name: "right after istio-cni",
			in:   `{"plugins": [{"type":"ptp"}, {"type":"istio-cni"}, {"type":"ztdns","socketPath":"/run/z.sock"}]}`,
			want: `{"plugins": [{"type":"ptp"}, {"type":"istio-cni"}, {"type":"ztdns","socketPath":"/run/z.sock"}]}`,
		},
		{
			name: "later after istio-cni",
			in:   `{"plugins": [{"type":"istio-cni"}, {"type":"portmap"}, {"type":"ztdns","socketPath":"/run/z.sock"}]}`,
			want: `{"plugins": [{"type":"istio-cni"}, {"type":"portmap"}, {"type":"ztdns","socketPath":"/run/z.sock"}]}`,
		},
		{
			name: "missing, istio-cni not last",
			in:   `{"plugins": [{"type":"ptp"}, {"type":"istio-cni"}, {"type":"portmap"}]}`,
			want: `{"plugins": [{"type":"ptp"}, {"type":"istio-cni"}, {"type":"ztdns","socketPath":"/run/z.sock"}, {"type":"portmap"}]}`,
		},
		{
			name: "missing, istio-cni first",
			in:   `{"plugins": [{"type":"istio-cni"},{"type":"ptp"}]}`,
			want: `{"plugins": [{"type":"istio-cni"},{"type":"ztdns","socketPath":"/run/z.sock"},{"type":"ptp"}]}`,
		},
		{
			name: "only istio-cni",
			in:   `{"plugins": [{"type":"istio-cni"}]}`,
			want: `{"plugins": [{"type":"istio-cni"},{"type":"ztdns","socketPath":"/run/z.sock"}]}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, changed, moved, err := upsertEntry([]byte(tt.in), entry, PluginType, istioCNIType)
			if err != nil || changed != (tt.in != tt.want) || moved != tt.moved || string(got) != tt.want {
				t.Fatalf("upsertEntry = %t, moved %t, %v:\n%s\nwant:\n%s (moved %t)", changed, moved, err, got, tt.want, tt.moved)
			}
			again, changed, moved, err := upsertEntry(got, entry, PluginType, istioCNIType)
			if err != nil || changed || moved || !bytes.Equal(again, got) {
				t.Errorf("second upsertEntry = %t, moved %t, %v:\n%s", changed, moved, err, again)
			}
		})
	}
}

// TestReadChain: the chain of the file a runtime uses holds istio-cni when
// it has an istio-cni entry with ambient on; an entry of istio-cni with
// ambient off (its sidecar-only mode) enrolls no pod, so it does not count.
// The namespaces that entry excludes are read as its installer writes them
// (null for none), at most MaxIstioExcludeNamespaces of them, none longer
// than a namespace name.
func TestReadChain(t *testing.T) {
	t.Parallel()
	many := make([]string, MaxIstioExcludeNamespaces+1)
	for i := range many {
		many[i] = fmt.Sprintf("ns-%d", i)
	}
	manyJSON, err := json.Marshal(many)
	if err != nil {
		t.Fatal(err)
	}
	istioWith := func(exclude string) string {
		return `{"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "ptp"}, {"name": "istio-cni", "type": "istio-cni", ` +
			`"ambient_enabled": true` + exclude + `}]}`
	}
	for _, tc := range []struct {
		name, file, content string
		want                Chain
	}{
		{"istio-cni, ambient on", "10-a.conflist", `{"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "ptp"}, ` + istioCNIEntry + `]}`,
			Chain{IstioCNI: true, IstioExcludeNamespaces: []string{"kube-system"}, IstioExcludeNamespacesKnown: true}},
		{"istio-cni, ambient off", "10-a.conflist", `{"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "ptp"}, {"type": "istio-cni", "ambient_enabled": false, "exclude_namespaces": ["a"]}]}`, Chain{}},
		{"no istio-cni", "10-a.conflist", runtimeConflist, Chain{}},
		{"a single plugin", "10-a.conf", runtimeConf, Chain{}},
		{"istio-cni excluding none", "10-a.conflist", istioWith(`, "exclude_namespaces": null`), Chain{IstioCNI: true, IstioExcludeNamespacesKnown: true}},
		{"istio-cni excluding two", "10-a.conflist", istioWith(`, "exclude_namespaces": ["kube-system", "monitoring"]`),
			Chain{IstioCNI: true, IstioExcludeNamespaces: []string{"kube-system", "monitoring"}, IstioExcludeNamespacesKnown: true}},
		{"istio-cni without the list", "10-a.conflist", istioWith(``), Chain{IstioCNI: true}},
		{"istio-cni with a list of something else", "10-a.conflist", istioWith(`, "exclude_namespaces": "kube-system"`), Chain{IstioCNI: true}},
		{"istio-cni with a number in its list", "10-a.conflist", istioWith(`, "exclude_namespaces": ["a", 1, "b"]`),
			Chain{IstioCNI: true, IstioExcludeNamespaces: []string{"a"}, IstioExcludeNamespacesKnown: true, IstioExcludeNamespacesCut: true}},
		{"istio-cni with a name no namespace has", "10-a.conflist", istioWith(`, "exclude_namespaces": ["a", "` + strings.Repeat("x", 64) + `", "b"]`),
			Chain{IstioCNI: true, IstioExcludeNamespaces: []string{"a"}, IstioExcludeNamespacesKnown: true, IstioExcludeNamespacesCut: true}},
		{"istio-cni excluding too many", "10-a.conflist", istioWith(`, "exclude_namespaces": ` + string(manyJSON)),
			Chain{IstioCNI: true, IstioExcludeNamespaces: many[:MaxIstioExcludeNamespaces], IstioExcludeNamespacesKnown: true, IstioExcludeNamespacesCut: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newInstallEnv(t, Config{})
			path := e.write(t, tc.file, tc.content)
			e.write(t, "20-b.conflist", `{"cniVersion": "1.0.0", "name": "b", "plugins": [`+istioCNIEntry+`]}`) // not the runtime's
			got, err := ReadChain(e.cfg.ConfDir)
			tc.want.File = path
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ReadChain = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}
