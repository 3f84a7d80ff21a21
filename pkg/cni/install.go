package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"

	"github.com/containernetworking/cni/libcni"
)

// InstallConfig says where the node's container runtime looks for CNI
// plugins and configuration, and what to put there.
type InstallConfig struct {
	// BinDir is the runtime's CNI bin dir (e.g. /opt/cni/bin, mounted from
	// the host). The plugin is installed there as "ztdns".
	BinDir string
	// ConfDir is the runtime's CNI conf dir (e.g. /etc/cni/net.d).
	ConfDir string
	// Binary is the executable to install, normally the agent's own
	// (os.Executable()): the ztdns binary is also the plugin.
	Binary string
	// PluginConf is the plugin's conflist entry, a JSON object with "type":
	// "ztdns" (see Config.Entry). Install only.
	PluginConf json.RawMessage
	// Logger reports what changed; nil discards.
	Logger *slog.Logger

	// OnRepair, when set, is called each time KeepInstalled puts back the
	// binary or the entry after something removed or changed them.
	OnRepair func()
	// OnContested, when set, is called with true when KeepInstalled finds
	// another installer taking the entry out whenever it is back (see
	// KeepInstalled), and with false once it stopped, or KeepInstalled
	// returned.
	OnContested func(bool)
	// OnInstalled, when set, is called after each of KeepInstalled's
	// Installs with nil when the binary and the entry are in place, or
	// the error that keeps them out: one wrapping ErrNoNetworkConfig
	// while there is no configuration to chain into, or why it cannot be
	// changed (a .conf beside a .conflist ztdns did not write, say).
	OnInstalled func(error)
	// OnChain, when set, is called after each of KeepInstalled's Installs
	// that succeeded with the chain the runtime now runs (see Chain).
	OnChain func(Chain)
}

// Chain is what the agent needs to know of the network configuration a
// runtime uses, the one that holds ztdns's entry.
type Chain struct {
	// File is its path.
	File string
	// IstioCNI says it holds an istio-cni entry with ambient on
	// ("ambient_enabled": true, as istio-cni's installer writes it with its
	// ambient.enabled): istio-cni's ADD then runs for every new sandbox of
	// the node, and enrolls an ambient pod's (its annotation
	// ambient.istio.io/redirection). Without one, istio-cni has set up no
	// sandbox made since on this node, whatever a pod's annotation says.
	IstioCNI bool
	// IstioExcludeNamespaces are the namespaces that entry excludes
	// ("exclude_namespaces", istio-cni's excludeNamespaces as its
	// installer writes them): istio-cni's ADD enrolls no pod of theirs.
	// At most MaxIstioExcludeNamespaces of them, in the entry's order;
	// nil, with IstioExcludeNamespacesKnown false, when the entry has no
	// such list (an istio-cni from before it had one) or no entry counts.
	IstioExcludeNamespaces []string
	// IstioExcludeNamespacesKnown says the entry has the list (empty: no
	// namespace excluded).
	IstioExcludeNamespacesKnown bool
	// IstioExcludeNamespacesCut says the entry named more than
	// MaxIstioExcludeNamespaces namespaces (or one not a string, or longer
	// than a namespace name), and IstioExcludeNamespaces holds the first of
	// them only.
	IstioExcludeNamespacesCut bool
}

// MaxIstioExcludeNamespaces bounds Chain.IstioExcludeNamespaces: the file
// is the node's, but a list past it is no configuration anyone means, and
// the agent compares and reports it.
const MaxIstioExcludeNamespaces = 256

// maxNamespaceName is the longest namespace name (a DNS-1123 label).
const maxNamespaceName = 63

// ReadChain reads the Chain of the network configuration a runtime uses
// in dir (see Install), ztdns's entry in it or not. A single-plugin .conf
// has no istio-cni entry.
func ReadChain(dir string) (Chain, error) {
	path, _, err := primaryConfFile(dir)
	if err != nil {
		return Chain{}, err
	}
	if !strings.HasSuffix(path, ".conflist") {
		return Chain{File: path}, nil
	}
	return chainOf(path)
}

// chainOf reads the Chain of the conflist at path.
func chainOf(path string) (Chain, error) {
	c := Chain{File: path}
	data, err := readConfFile(path)
	if err != nil {
		return c, err
	}
	list, err := parsePluginList(data)
	if err != nil {
		return c, err
	}
	for i, typ := range list.types {
		if typ != istioCNIType || c.IstioCNI {
			continue
		}
		var entry struct {
			AmbientEnabled    bool            `json:"ambient_enabled"`
			ExcludeNamespaces json.RawMessage `json:"exclude_namespaces"`
		}
		s := list.entries[i]
		if json.Unmarshal(data[s.start:s.end], &entry) != nil || !entry.AmbientEnabled {
			continue
		}
		c.IstioCNI = true
		c.IstioExcludeNamespaces, c.IstioExcludeNamespacesKnown, c.IstioExcludeNamespacesCut = excludeNamespacesOf(entry.ExcludeNamespaces)
	}
	return c, nil
}

// excludeNamespacesOf reads istio-cni's exclude_namespaces, a list of
// names (istio-cni's Go type: []string; null, as its installer writes an
// empty list, excludes none). Names past MaxIstioExcludeNamespaces, and a
// list holding anything else or a name longer than any namespace's, are
// cut: the agent shows the names, which must not carry a broken file's
// megabytes.
func excludeNamespacesOf(raw json.RawMessage) (names []string, known, cut bool) {
	if len(raw) == 0 {
		return nil, false, false
	}
	if string(raw) == "null" {
		return nil, true, false
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return nil, false, false
	}
	for dec.More() {
		var name string
		if len(names) == MaxIstioExcludeNamespaces || dec.Decode(&name) != nil || len(name) > maxNamespaceName {
			return names, true, true
		}
		names = append(names, name)
	}
	return names, true, false
}

// ErrNoNetworkConfig means ConfDir holds no valid network configuration yet:
// the primary network plugin writes one when it starts, and ztdns can only
// chain after it. Install fails with it; KeepInstalled waits.
var ErrNoNetworkConfig = errors.New("no CNI network configuration yet")

// confExtensions are the files a runtime (containerd, CRI-O) loads from the
// conf dir, as libcni.ConfFiles matches them.
var confExtensions = []string{".conf", ".conflist", ".json"}

// Install copies Binary to BinDir/ztdns and adds PluginConf as the last
// plugin of the primary network configuration in ConfDir — the file a
// runtime uses: the first, in lexical order, of the valid .conf, .conflist
// and .json files, as kubelet, containerd and istio-cni choose it — or,
// when that holds istio-cni's entry, after it. istio-cni's ADD annotates
// the pod (ambient.istio.io/redirection) that the agent's decision reads,
// so it runs first. istio-cni's installer takes its entry out and appends
// it last at every start of its pod (insertCNIConfig in istio's
// cni/pkg/install), so an entry of ztdns's found before istio-cni's is
// moved right after it; one already after it stays where it stands. The
// two never rewrite each other: istio-cni's check of the file
// (checkValidCNIConfig) asks only that its entry be there, and, with
// istioOwnedCNIConfig, every plugin type of the configuration it copies,
// wherever they stand. A
// single-plugin .conf (or .json) is turned into a .conflist holding the
// original plugin followed by ztdns, with the same name and cniVersion,
// replacing a .conflist of that name, and the original file is removed
// (istio-cni does the same).
//
// When that file is istio-cni's own copy of the primary plugin's
// configuration (istio-cni's istioOwnedCNIConfig: 02-istio-cni.conflist,
// which sorts first), the entry also goes into the configuration it copies
// (see istioCopySource): istio-cni writes its copy again from that one
// whenever its pod starts, and the copy then keeps ztdns.
//
// The binary goes in first and the entry second, so a runtime never finds the
// entry without the plugin. Both are written to a temporary file renamed
// into place, so a runtime never reads half a file. Install is idempotent:
// when the binary and the entry are already there, nothing is written, not
// even a timestamp. An existing ztdns entry that differs is replaced where
// it stands; only the entry's bytes change.
//
// With no network configuration in ConfDir, Install returns an error
// wrapping ErrNoNetworkConfig and changes nothing, not even the binary.
func Install(cfg InstallConfig) error {
	r, err := install(cfg, nil)
	r.log(cfg.logger(), slog.LevelInfo)
	if !errors.Is(err, ErrNoNetworkConfig) { // else the error names them
		r.logRefused(cfg.logger())
	}
	if err != nil {
		return fmt.Errorf("cni install: %w", err)
	}
	return nil
}

// installResult is what an Install wrote: the paths, "" for what it left as it
// was.
type installResult struct {
	binary string // the plugin binary
	entry  string // the conflist it put the entry into
	source string // the configuration istio-cni's copy (entry) is made from
	// conflist is the conflist that holds the entry, written or not.
	conflist string
	// moved says the entry was written by moving it after istio-cni's.
	moved bool
	// refused are the network configurations before the primary one that
	// were refused unread (see primaryConfFile).
	refused []error
}

// wrote reports whether the Install wrote anything.
func (r installResult) wrote() bool { return r.binary != "" || r.entry != "" || r.source != "" }

// log logs what the Install wrote at level.
func (r installResult) log(log *slog.Logger, level slog.Level) {
	ctx := context.Background()
	if r.binary != "" {
		log.Log(ctx, level, "installed the CNI plugin binary", "path", r.binary)
	}
	switch {
	case r.moved:
		log.Log(ctx, level, "moved ztdns after istio-cni in the primary CNI network configuration: istio-cni's ADD, "+
			"which enrolls the pod, runs before ztdns's", "file", r.entry)
	case r.entry != "":
		log.Log(ctx, level, "added ztdns to the primary CNI network configuration", "file", r.entry)
	case r.conflist != "":
		log.Debug("ztdns is already in the primary CNI network configuration", "file", r.conflist)
	}
	if r.source != "" {
		log.Log(ctx, level, "added ztdns to the CNI network configuration istio-cni copies its own from", "file", r.source, "copy", r.conflist)
	}
}

// logRefused warns of the files refused before the primary
// configuration.
func (r installResult) logRefused(log *slog.Logger) {
	for _, err := range r.refused {
		log.Warn("skipped a CNI network configuration the installer does not read (not a regular file, or too large): "+
			"ztdns chains into the next valid one, and a runtime that uses this one runs its pods without ztdns", "err", err)
	}
}

// install is Install, which bin, when not nil, spares reading the binary
// and the installed one when they are as they were the last time (see
// binCache). Nothing is logged of what it wrote: that is returned.
func install(cfg InstallConfig, bin *binCache) (installResult, error) {
	var r installResult
	log := cfg.logger()
	if err := cfg.check(); err != nil {
		return r, err
	}

	// What an Install killed between writing and renaming left.
	removeStaleTemp(cfg.ConfDir, ".*.conflist.*.tmp")
	removeStaleTemp(cfg.BinDir, "."+PluginType+".*.tmp")

	primary, refused, err := primaryConfFile(cfg.ConfDir)
	r.refused = refused
	if err != nil {
		return r, err
	}

	dst := filepath.Join(cfg.BinDir, PluginType)
	changed, err := installBinary(cfg.Binary, dst, bin)
	if err != nil {
		return r, err
	}
	if changed {
		r.binary = dst
	}

	path, changed, moved, err := insertEntry(primary, cfg.PluginConf)
	if err != nil {
		return r, fmt.Errorf("%s: %w", primary, err)
	}
	r.conflist = path
	if changed {
		r.entry, r.moved = path, moved
	}

	// istio-cni's own copy (istioOwnedCNIConfig) is written again from
	// the configuration it copies at every start of istio-cni's pod: that
	// one holds ztdns too, so the copy keeps it.
	source, err := istioCopySource(cfg.ConfDir, path)
	if err != nil || source == "" {
		if err != nil {
			log.Warn("cannot tell whether the primary CNI network configuration is istio-cni's copy of another", "file", path, "err", err)
		}
		return r, nil
	}
	source, changed, _, err = insertEntry(source, cfg.PluginConf)
	switch {
	case err != nil:
		// The runtime's configuration holds ztdns: not a reason to fail.
		log.Warn("cannot add ztdns to the CNI network configuration istio-cni copies its own from: "+
			"the next time istio-cni writes its copy again, ztdns is out of it until the installer looks again",
			"file", path, "source", source, "err", err)
	case changed:
		r.source = source
	}
	return r, nil
}

// istioCNIType is the type of istio-cni's conflist entry.
const istioCNIType = "istio-cni"

// istioCopySource returns the network configuration in dir that the
// conflist at path copies, when path is istio-cni's own copy of the
// primary plugin's (its istioOwnedCNIConfig, written as
// 02-istio-cni.conflist unless renamed): path holds an istio-cni entry, and
// the first other valid configuration in lexical order whose plugins are
// path's, in order, without istio-cni's and ztdns's entries, is the one it
// was copied from (istio-cni copies the configuration after its own in
// lexical order, or the one named by its cniConfFileName, and checks that
// its copy holds every plugin type of it). It returns "" when path is not
// such a copy, or no configuration matches it.
func istioCopySource(dir, path string) (string, error) {
	types, err := confTypes(path)
	if err != nil {
		return "", err
	}
	if !slices.Contains(types, istioCNIType) {
		return "", nil
	}
	want := slices.DeleteFunc(types, func(t string) bool { return t == istioCNIType || t == PluginType })
	if len(want) == 0 {
		return "", nil
	}
	files, err := libcni.ConfFiles(dir, confExtensions)
	if err != nil {
		return "", err
	}
	sort.Strings(files)
	for _, f := range files {
		if f == path || validNetworkConfig(f) != nil {
			continue
		}
		got, err := confTypes(f)
		if err != nil {
			continue
		}
		got = slices.DeleteFunc(got, func(t string) bool { return t == PluginType })
		if slices.Equal(got, want) {
			return f, nil
		}
	}
	return "", nil
}

// confTypes returns the plugin types of the network configuration at
// path, in order: a conflist's entries, or a single-plugin config's type.
func confTypes(path string) ([]string, error) {
	data, err := readConfFile(path)
	if err != nil {
		return nil, err
	}
	if strings.HasSuffix(path, ".conflist") {
		list, err := parsePluginList(data)
		if err != nil {
			return nil, err
		}
		return list.types, nil
	}
	conf, err := libcni.NetworkPluginConfFromBytes(data)
	if err != nil {
		return nil, err
	}
	return []string{conf.Network.Type}, nil
}

// Uninstall removes every ztdns entry from the conflists in ConfDir. The
// rest of each file stays byte for byte as it was; a .conf that Install
// turned into a .conflist stays a (now equivalent) .conflist. Removing what
// is not there is not an error, so Uninstall is idempotent. Files in ConfDir
// that are not valid JSON conflists are left alone; those it does not read
// (see asRefused) too, named in its error: it cannot tell whether they
// hold ztdns.
//
// It leaves the plugin binary, BinDir/ztdns (BinDir may be empty): pods
// created while ztdns was in the chain are torn down with the configuration
// cached at their ADD (CRI-O's ocicni, Multus, libcni's result cache), which
// still lists ztdns. The runtime runs DEL in reverse order, so ztdns's runs
// first, and a missing binary fails it in libcni before it starts, which
// stops the primary plugin's DEL too: veths and IPAM addresses never
// released, pods stuck Terminating. The binary left behind only answers
// those DELs, with success (plugin.del never fails), and records nothing
// once the agent's installed marker is gone (recordForAgent), which
// remove-state deletes. A later Install
// overwrites it atomically; an operator
// removes it by hand once no pod created under ztdns remains on the node
// (deploy/README.md, Uninstall).
func Uninstall(cfg InstallConfig) error {
	log := cfg.logger()
	if cfg.ConfDir == "" {
		return errors.New("cni: ConfDir is empty")
	}
	files, err := libcni.ConfFiles(cfg.ConfDir, []string{".conflist"})
	if err != nil {
		return fmt.Errorf("cni uninstall: %w", err)
	}
	var errs []error
	for _, path := range files {
		changed, err := removeEntryFromFile(path)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("cni uninstall: %s: %w", path, err))
		case changed:
			log.Info("removed ztdns from a CNI network configuration", "file", path)
		}
	}
	if cfg.BinDir != "" {
		bin := filepath.Join(cfg.BinDir, PluginType)
		if _, err := os.Stat(bin); err == nil {
			log.Info("left the CNI plugin binary in place: pods created while ztdns was in the chain run it at their DEL, "+
				"with the configuration cached at their ADD; remove it by hand once none remains on the node", "path", bin)
		}
	}
	return errors.Join(errs...)
}

// check finds what no later look can mend, as the agent's flags and
// mounts give it: an empty setting, an entry not ztdns's, a dir that is
// not a directory or cannot be looked at. A dir that does not exist yet
// passes: the primary plugin may make the conf dir when it starts, and
// Install then finds no configuration (ErrNoNetworkConfig); a missing bin
// dir fails each Install, which says so.
func (cfg *InstallConfig) check() error {
	switch {
	case cfg.BinDir == "":
		return errors.New("BinDir is empty")
	case cfg.ConfDir == "":
		return errors.New("ConfDir is empty")
	case len(cfg.PluginConf) == 0:
		return errors.New("PluginConf is empty")
	}
	var entry struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(cfg.PluginConf, &entry); err != nil {
		return fmt.Errorf("PluginConf is not a JSON object: %w", err)
	}
	if entry.Type != PluginType {
		return fmt.Errorf("PluginConf has type %q, want %q", entry.Type, PluginType)
	}
	for _, dir := range []string{cfg.ConfDir, cfg.BinDir} {
		fi, err := os.Stat(dir)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return err
		case !fi.IsDir():
			return fmt.Errorf("%s is not a directory", dir)
		}
	}
	return nil
}

func (cfg *InstallConfig) logger() *slog.Logger {
	if cfg.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return cfg.Logger
}

// primaryConfFile returns the network configuration file a runtime would
// use: the first valid one in lexical order. refused are the files before
// it that were not read at all (see asRefused): unlike a file that
// does not parse, which a runtime skips too, one of them may be what the
// runtime uses (a conflist over maxConfFileBytes), so the installer says so.
func primaryConfFile(dir string) (path string, refused []error, err error) {
	files, err := libcni.ConfFiles(dir, confExtensions)
	if err != nil {
		return "", nil, err
	}
	sort.Strings(files)
	var skipped []string
	for _, f := range files {
		if err := validNetworkConfig(f); err != nil {
			skipped = append(skipped, fmt.Sprintf("%s (%v)", filepath.Base(f), err))
			if refusedErr := (*refusedFileError)(nil); errors.As(err, &refusedErr) {
				refused = append(refused, err)
			}
			continue
		}
		return f, refused, nil
	}
	msg := fmt.Sprintf("%s holds no network configuration: the primary network plugin writes one when it starts, and ztdns chains after it", dir)
	if len(skipped) > 0 {
		msg += "; skipped " + strings.Join(skipped, ", ")
	}
	return "", refused, fmt.Errorf("%w: %s", ErrNoNetworkConfig, msg)
}

// validNetworkConfig applies a runtime's test: a conflist that libcni loads
// with at least one plugin, or a single-plugin config with a type.
func validNetworkConfig(path string) error {
	if strings.HasSuffix(path, ".conflist") {
		_, err := loadConfList(path)
		return err
	}
	data, err := readConfFile(path)
	if err != nil {
		return err
	}
	_, err = libcni.NetworkPluginConfFromBytes(data)
	return err
}

// loadConfList is libcni.ConfListFromFile, as a runtime loads a conflist,
// with every file read through readConfFile: the conflist, and, unless it
// sets loadOnlyInlinedPlugins, the plugin configurations in the directory
// named after its network (<dir>/<name>/*.conf), which libcni appends to
// its plugins. An error of either fails the whole list, as in libcni.
func loadConfList(path string) (*libcni.NetworkConfigList, error) {
	data, err := readConfFile(path)
	if err != nil {
		return nil, err
	}
	list, err := libcni.NetworkConfFromBytes(data)
	if err != nil {
		return nil, err
	}
	if !list.LoadOnlyInlinedPlugins {
		pluginDir := filepath.Join(filepath.Dir(path), list.Name)
		files, err := libcni.ConfFiles(pluginDir, []string{".conf"})
		if err != nil {
			return nil, fmt.Errorf("failed to read plugin config files in %s: %w", pluginDir, err)
		}
		for _, f := range files {
			data, err := readConfFile(f)
			if err != nil {
				return nil, err
			}
			plugin, err := libcni.NetworkPluginConfFromBytes(data)
			if err != nil {
				return nil, err
			}
			list.Plugins = append(list.Plugins, plugin)
		}
	}
	if len(list.Plugins) == 0 {
		return nil, errors.New("no plugins")
	}
	return list, nil
}

// insertEntry puts entry into the network configuration at path, after
// istio-cni's entry when it holds one (see Install), and returns the path of
// the conflist that now holds it, whether anything was written, and whether
// that was moving the entry from before istio-cni's to after it.
func insertEntry(path string, entry []byte) (string, bool, bool, error) {
	data, err := readConfFile(path)
	if err != nil {
		return "", false, false, err
	}
	info, err := os.Stat(path)
	if err != nil {
		return "", false, false, err
	}
	if strings.HasSuffix(path, ".conflist") {
		updated, changed, moved, err := upsertEntry(data, entry, PluginType, istioCNIType)
		if err != nil || !changed {
			return path, false, false, err
		}
		return path, true, moved, writeFileAtomic(path, updated, info.Mode().Perm())
	}

	// A .conflist of the same name may be there: the one an earlier
	// Install made, with the primary plugin now writing its .conf again,
	// which sorts first and lacks ztdns. The new .conf is what the primary
	// plugin means, so it replaces the .conflist (renamed over it, as
	// istio-cni does); refusing would leave ztdns out of the chain for good.
	// Any other .conflist is someone else's, and stays.
	list := strings.TrimSuffix(path, filepath.Ext(path)) + ".conflist"
	if err := ztdnsWrote(list); err != nil {
		return "", false, false, err
	}
	converted, err := confToConflist(data, entry)
	if err != nil {
		return "", false, false, err
	}
	if err := writeFileAtomic(list, converted, info.Mode().Perm()); err != nil {
		return "", false, false, err
	}
	if err := os.Remove(path); err != nil {
		return "", false, false, fmt.Errorf("remove the converted original: %w", err)
	}
	return list, true, false, nil
}

// ztdnsWrote returns nil when there is no file at list or it is a
// conflist holding the ztdns entry, which Install made; otherwise an error
// saying why the .conf cannot become it.
func ztdnsWrote(list string) error {
	data, err := readConfFile(list)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if parsed, err := libcni.ConfListFromBytes(data); err == nil &&
		slices.ContainsFunc(parsed.Plugins, func(p *libcni.PluginConfig) bool { return p.Network.Type == PluginType }) {
		return nil
	}
	return fmt.Errorf("cannot turn it into %s, which exists and is not one ztdns wrote: remove one of the two", filepath.Base(list))
}

// removeEntryFromFile removes the ztdns entries of the conflist at path.
func removeEntryFromFile(path string) (bool, error) {
	data, err := readConfFile(path)
	if err != nil {
		return false, err
	}
	if !bytes.Contains(data, []byte(PluginType)) {
		return false, nil // not ours to parse, or to judge
	}
	updated, changed, err := removeEntries(data, PluginType)
	if err != nil || !changed {
		return false, err
	}
	info, err := os.Stat(path)
	if err != nil {
		return false, err
	}
	return true, writeFileAtomic(path, updated, info.Mode().Perm())
}

// installBinary copies src to dst unless dst already has its content, and
// reports whether it wrote. With cache, it compares the two only when
// either changed since they were last found the same (binCache).
func installBinary(src, dst string, cache *binCache) (bool, error) {
	if src == "" {
		return false, errors.New("Binary is empty")
	}
	if cache.unchanged(src, dst) {
		return false, nil
	}
	if cache != nil {
		cache.compared.Add(1)
	}
	same, stamps, err := sameContent(src, dst)
	if err != nil {
		return false, err
	}
	if same {
		cache.verified(stamps)
		return false, nil
	}
	cache.forget()
	in, err := os.Open(src)
	if err != nil {
		return false, err
	}
	defer in.Close()
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*.tmp")
	if err != nil {
		return false, fmt.Errorf("copy %s to %s: %w", src, dst, templess(err))
	}
	tmp := f.Name()
	defer os.Remove(tmp) // fails harmlessly once renamed
	_, err = io.Copy(f, in)
	if err == nil {
		err = f.Chmod(0o755)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, fmt.Errorf("copy %s to %s: %w", src, dst, templess(err))
	}
	// Renaming over a binary a runtime is executing is safe: the running
	// process keeps the old inode.
	if err := os.Rename(tmp, dst); err != nil {
		return false, fmt.Errorf("copy %s to %s: %w", src, dst, templess(err))
	}
	return true, nil
}

// sameContent reports whether the files at a and b hold the same bytes; a
// missing b is a difference, a missing a an error. When they are the same,
// stamps are what the two were before they were read.
func sameContent(a, b string) (same bool, stamps [2]fileStamp, err error) {
	fa, err := os.Open(a)
	if err != nil {
		return false, stamps, err
	}
	defer fa.Close()
	// O_NONBLOCK: a FIFO at b must not block the open; it is no binary,
	// and the copy renamed over it replaces it.
	fb, err := os.OpenFile(b, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENXIO) { // ENXIO: a socket
		return false, stamps, nil
	}
	if err != nil {
		return false, stamps, err
	}
	defer fb.Close()
	sa, err := fa.Stat()
	if err != nil {
		return false, stamps, err
	}
	sb, err := fb.Stat()
	if err != nil {
		return false, stamps, err
	}
	if !sb.Mode().IsRegular() || sa.Size() != sb.Size() || sb.Mode().Perm()&0o111 == 0 {
		return false, stamps, nil
	}
	stamps = [2]fileStamp{stampOf(sa), stampOf(sb)}
	bufA, bufB := make([]byte, 1<<16), make([]byte, 1<<16)
	for {
		na, errA := io.ReadFull(fa, bufA)
		nb, errB := io.ReadFull(fb, bufB)
		if na != nb || !bytes.Equal(bufA[:na], bufB[:nb]) {
			return false, stamps, nil
		}
		if errA == io.EOF || errA == io.ErrUnexpectedEOF {
			return errB == io.EOF || errB == io.ErrUnexpectedEOF, stamps, nil
		}
		if errA != nil {
			return false, stamps, errA
		}
		if errB != nil {
			return false, stamps, errB
		}
	}
}
