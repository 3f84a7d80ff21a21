//go:build linux

package redirect

import (
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/testenv"
)

func TestConfigValidate(t *testing.T) {
	ap := netip.MustParseAddrPort
	r4, r6 := DefaultResolver4(), DefaultResolver6()
	with4 := func(i int, a netip.AddrPort) [Slots]netip.AddrPort { r := r4; r[i] = a; return r }
	with6 := func(i int, a netip.AddrPort) [Slots]netip.AddrPort { r := r6; r[i] = a; return r }

	tests := []struct {
		name    string
		cfg     Config
		wantErr string // "" for valid
	}{
		{name: "defaults", cfg: Config{Resolver4: r4, Resolver6: r6}},
		{name: "IPv4 only", cfg: Config{Resolver4: r4}},
		{name: "IPv6 only", cfg: Config{Resolver6: r6}},
		{name: "no resolver", cfg: Config{}, wantErr: "no resolver address"},
		{name: "missing slot", cfg: Config{Resolver4: with4(2, netip.AddrPort{})}, wantErr: "slot 2 is missing"},
		{name: "IPv6 in IPv4 list", cfg: Config{Resolver4: with4(0, ap("[fd00::1]:53"))}, wantErr: "not a plain IPv4"},
		{name: "v4-mapped in IPv6 list", cfg: Config{Resolver6: with6(1, ap("[::ffff:10.0.0.1]:53"))}, wantErr: "not a plain IPv6"},
		{name: "zone", cfg: Config{Resolver6: with6(0, ap("[fe80::1%eth0]:53"))}, wantErr: "not a plain IPv6"},
		{name: "no port", cfg: Config{Resolver4: with4(1, ap("169.254.20.99:0"))}, wantErr: "has no port"},
		{name: "duplicate", cfg: Config{Resolver4: with4(1, r4[0])}, wantErr: "used by two slots"},
		{name: "negative staleness", cfg: Config{Resolver4: r4, StaleAfter: -1}, wantErr: "negative"},
		{name: "sockets per pod", cfg: Config{Resolver4: r4, SocketsPerPod: 1}},
		{name: "sockets per pod, the most", cfg: Config{Resolver4: r4, SocketsPerPod: MaxSocketsPerPod}},
		{name: "sockets per pod, too many", cfg: Config{Resolver4: r4, SocketsPerPod: MaxSocketsPerPod + 1}, wantErr: "sockets per pod 1048577: want 1 to 1048576"},
		{name: "sockets per pod negative", cfg: Config{Resolver4: r4, SocketsPerPod: -1}, wantErr: "sockets per pod -1"},
		{name: "capture nameservers", cfg: Config{Resolver4: r4, CaptureNameservers: prefixes("10.96.0.10/32", "169.254.20.10/32", "fd00:10:96::/112", "::ffff:10.0.0.0/104")}},
		{name: "capture nameservers, the most", cfg: Config{Resolver4: r4, CaptureNameservers: prefixes(
			"10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32", "10.0.0.4/32", "10.0.0.5/32", "10.0.0.6/32", "10.0.0.7/32", "10.0.0.8/32")}},
		{name: "capture nameservers, too many", cfg: Config{Resolver4: r4, CaptureNameservers: prefixes(
			"10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32", "10.0.0.4/32", "10.0.0.5/32", "10.0.0.6/32", "10.0.0.7/32", "10.0.0.8/32", "10.0.0.9/32")},
			wantErr: "at most 8"},
		{name: "capture nameserver not masked", cfg: Config{Resolver4: r4, CaptureNameservers: prefixes("10.96.0.10/16")}, wantErr: "bits set past /16"},
		{name: "capture nameserver invalid", cfg: Config{Resolver4: r4, CaptureNameservers: []netip.Prefix{{}}}, wantErr: "not valid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("validate() = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("validate() = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// TestCapturePrefixLayout: prefixes are stored, unmapped as Load has them,
// as the programs compare them, IPv4-mapped ones as IPv4, since the programs
// see an IPv4-mapped destination as IPv4.
func TestCapturePrefixLayout(t *testing.T) {
	tests := []struct {
		prefix string
		want   ztdnsCapturePrefix
	}{
		{"10.96.0.10/32", ztdnsCapturePrefix{Addr: [16]byte{10, 96, 0, 10}, Family: afInet, Len: 32}},
		{"::ffff:10.96.0.0/112", ztdnsCapturePrefix{Addr: [16]byte{10, 96}, Family: afInet, Len: 16}},
		{"fd00::/8", ztdnsCapturePrefix{Addr: [16]byte{0xfd}, Family: afInet6, Len: 8}},
	}
	for _, tt := range tests {
		if got := capturePrefixFrom(UnmapCaptureNameservers(prefixes(tt.prefix))[0]); got != tt.want {
			t.Errorf("capturePrefixFrom(%s) = %+v, want %+v", tt.prefix, got, tt.want)
		}
	}
}

// TestUnmapCaptureNameservers: an IPv4-mapped prefix becomes the IPv4
// prefix it covers, which Listed then matches IPv4 and IPv4-mapped
// addresses against; the list given is left as it is (the agent's status
// shows it).
func TestUnmapCaptureNameservers(t *testing.T) {
	given := prefixes("10.96.0.10/32", "::ffff:198.51.100.48/124", "::ffff:0.0.0.0/96", "2001:db8::/120")
	kept := slices.Clone(given)
	got := UnmapCaptureNameservers(given)
	if want := prefixes("10.96.0.10/32", "198.51.100.48/28", "0.0.0.0/0", "2001:db8::/120"); !slices.Equal(got, want) {
		t.Errorf("UnmapCaptureNameservers(%v) = %v, want %v", given, got, want)
	}
	if !slices.Equal(given, kept) {
		t.Errorf("UnmapCaptureNameservers changed its argument to %v", given)
	}
	listed := UnmapCaptureNameservers(prefixes("::ffff:198.51.100.48/124", "2001:db8::/120"))
	for _, tt := range []struct {
		addr string
		want bool
	}{
		{"198.51.100.60", true},
		{"::ffff:198.51.100.60", true},
		{"198.51.100.64", false},
		{"2001:db8::ab", true},
		{"2001:db8::1:0", false},
	} {
		if got := Listed(listed, netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("Listed(%v, %s) = %v, want %v", listed, tt.addr, got, tt.want)
		}
	}
	if !Listed(nil, netip.MustParseAddr("203.0.113.9")) {
		t.Error("Listed(nil, 203.0.113.9) = false, want true: no list captures every destination")
	}
}

func mkdirAll(tb testing.TB, dir string) string {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	return dir
}

func TestParseCgroup2Mounts(t *testing.T) {
	tests := []struct {
		name   string
		mounts string
		want   []string
	}{{
		name: "hybrid",
		mounts: "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n" +
			"cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n" +
			"cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n",
		want: []string{"/sys/fs/cgroup/unified"},
	}, {
		name:   "unified",
		mounts: "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n",
		want:   []string{"/sys/fs/cgroup"},
	}, {
		name:   "escaped path",
		mounts: `none /run/my\040cgroup cgroup2 rw 0 0` + "\n",
		want:   []string{"/run/my cgroup"},
	}, {
		name:   "none",
		mounts: "proc /proc proc rw 0 0\n",
		want:   nil,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseCgroup2Mounts(strings.NewReader(tt.mounts))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// TestLoadChecksFirst: Load names what is wrong before loading anything,
// and mounts bpffs where none is mounted.
func TestLoadChecksFirst(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)

	t.Run("cgroup is not cgroup v2", func(t *testing.T) {
		_, err := Load(Config{BPFFS: filepath.Join(testenv.NewBPFFS(t), "ztdns"), CgroupPath: t.TempDir(), Resolver4: DefaultResolver4()})
		if err == nil || !strings.Contains(err.Error(), "is not a cgroup v2 directory") {
			t.Errorf("Load: %v, want it to name the cgroup", err)
		}
	})

	t.Run("bpffs missing is mounted", func(t *testing.T) {
		root := filepath.Join(t.TempDir(), "bpf")
		testenv.RecordMount(t, root) // Load mounts it
		t.Cleanup(func() {
			if err := unix.Unmount(root, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", root, err)
			}
		})
		cg := testenv.NewCgroup(t)
		mustLoad(t, Config{BPFFS: filepath.Join(root, "ztdns"), CgroupPath: cg.Path, Resolver4: DefaultResolver4(), Logger: testLogger(t)})
		var st unix.Statfs_t
		if err := unix.Statfs(root, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
			t.Errorf("statfs %s: type %#x, %v; want bpffs mounted", root, st.Type, err)
		}
		// What `ztdns mount-bpffs` runs, on a bpffs already: nothing to do.
		if mounted, err := MountBPFFS(root); err != nil || mounted {
			t.Errorf("MountBPFFS on a bpffs: mounted=%v, %v; want nothing done", mounted, err)
		}
	})

	t.Run("incompatible pinned map is replaced", func(t *testing.T) {
		bpffs := filepath.Join(testenv.NewBPFFS(t), "ztdns")
		old, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{
			Name: ztdnsMapPods, Type: ebpf.Hash, KeySize: 8, ValueSize: 4, MaxEntries: 1, Pinning: ebpf.PinByName,
		}, ebpf.MapOptions{PinPath: mkdirAll(t, bpffs)})
		if err != nil {
			t.Fatal(err)
		}
		old.Close()
		cg := testenv.NewCgroup(t)
		r := mustLoad(t, Config{BPFFS: bpffs, CgroupPath: cg.Path, Resolver4: DefaultResolver4(), Logger: testLogger(t)})
		if got, want := r.objs.Pods.ValueSize(), uint32(binary.Size(ztdnsPodInfo{})); got != want {
			t.Errorf("pods value size %d, want %d", got, want)
		}
	})

	t.Run("default cgroup is the cgroup2 root", func(t *testing.T) {
		cfg, err := Config{}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		if want := testenv.Cgroup2Root(t); cfg.CgroupPath != want {
			t.Errorf("default cgroup %s, want %s", cfg.CgroupPath, want)
		}
		if cfg.BPFFS != DefaultBPFFS || cfg.StaleAfter != DefaultStaleAfter {
			t.Errorf("defaults %+v", cfg)
		}
	})
}

// TestKeepConfigReplacesNothingUntilApplied: a Load with KeepConfig (a new
// agent taking over) that finds a pinned map of another layout leaves it
// pinned and the running programs attached, and closed without ApplyConfig
// leaves them so: the running agent marks pods in the map its programs
// read. ApplyConfig then pins the new map in its place, with the marks
// written to it before (ReplacingPods says to), and attaches the new
// programs. (Before: Load replaced the pin and swapped the programs in at
// once, and a new agent that stopped before taking over left the programs
// reading an empty map.)
func TestKeepConfigReplacesNothingUntilApplied(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	bpffs := mkdirAll(t, filepath.Join(testenv.NewBPFFS(t), "ztdns"))
	cfg := Config{BPFFS: bpffs, CgroupPath: testenv.NewCgroup(t).Path, Resolver4: DefaultResolver4(), Logger: testLogger(t)}
	running := mustLoad(t, cfg)
	if running.ReplacingPods() {
		t.Error("a Load without KeepConfig has a pods map left to replace")
	}
	links, err := running.Links()
	if err != nil {
		t.Fatal(err)
	}
	pin := pinPath(bpffs, ztdnsMapPods)
	if err := os.Remove(pin); err != nil {
		t.Fatal(err)
	}
	other, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{
		Name: ztdnsMapPods, Type: ebpf.Hash, KeySize: 8, ValueSize: 4, MaxEntries: 1, Pinning: ebpf.PinByName,
	}, ebpf.MapOptions{PinPath: bpffs})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	// pinned returns the id of the map pinned as pods.
	pinned := func() ebpf.MapID {
		t.Helper()
		m, err := ebpf.LoadPinnedMap(pin, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		info, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		return id
	}
	otherInfo, err := other.Info()
	if err != nil {
		t.Fatal(err)
	}
	otherID, _ := otherInfo.ID()
	// attached fails unless each hook runs exactly the program of want.
	attached := func(when string, want []Link) {
		t.Helper()
		for _, l := range want {
			if got := attachedPrograms(t, cfg.CgroupPath, l.Attach); !slices.Equal(got, []ebpf.ProgramID{l.ProgramID}) {
				t.Errorf("%s: %s runs programs %v, want %d", when, l.Program, got, l.ProgramID)
			}
		}
	}

	keep := cfg
	keep.KeepConfig = true
	stopped, err := Load(keep)
	if err != nil {
		t.Fatal(err)
	}
	if got := pinned(); got != otherID {
		t.Errorf("after a Load with KeepConfig, map %d is pinned as pods, want %d, the one there", got, otherID)
	}
	attached("after a Load with KeepConfig", links)
	if err := stopped.Close(); err != nil {
		t.Fatal(err)
	}
	attached("after it closed without ApplyConfig", links)

	taking := mustLoad(t, keep)
	if !taking.ReplacingPods() {
		t.Error("a Load with KeepConfig over a pods map of another layout is not replacing it")
	}
	const cookie = 4242
	if err := taking.Mark(cookie, PodInfo{IPv4: netip.MustParseAddr("10.0.0.2")}); err != nil {
		t.Fatal(err)
	}
	if err := taking.ApplyConfig(); err != nil {
		t.Fatal(err)
	}
	if taking.ReplacingPods() {
		t.Error("still replacing the pods map after ApplyConfig")
	}
	pods, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pods.Close()
	var val ztdnsPodInfo
	if err := pods.Lookup(&ztdnsPodKey{NetnsCookie: cookie}, &val); err != nil {
		t.Errorf("the mark written before ApplyConfig is not in the map pinned as pods: %v", err)
	}
	takingInfo, err := taking.objs.Pods.Info()
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := takingInfo.ID(); pinned() != want {
		t.Errorf("after ApplyConfig, map %d is pinned as pods, want %d, the new one", pinned(), want)
	}
	newLinks, err := taking.Links()
	if err != nil {
		t.Fatal(err)
	}
	if len(newLinks) != len(hooks) {
		t.Fatalf("%d links after ApplyConfig, want %d", len(newLinks), len(hooks))
	}
	attached("after ApplyConfig", newLinks)
}

// TestUpgradeReplacesConfigWithItsIndex: an upgrade that changes the
// config's layout replaces config_index with it. The programs attached
// until Load swaps them hold the maps they were loaded with, so their
// config_index must still name the entry of their config that holds a
// valid config; flipped to the other entry, which the new Load writes in
// its new config only, they would read zeros.
func TestUpgradeReplacesConfigWithItsIndex(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	bpffs := mkdirAll(t, filepath.Join(testenv.NewBPFFS(t), "ztdns"))
	pinned := func(name string, valueSize, entries uint32) *ebpf.Map {
		t.Helper()
		m, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{
			Name: name, Type: ebpf.Array, KeySize: 4, ValueSize: valueSize, MaxEntries: entries, Pinning: ebpf.PinByName,
		}, ebpf.MapOptions{PinPath: bpffs})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	// An older layout: config without capture_only (128 bytes), the
	// programs on entry 1.
	const oldSize = 128
	var valid [oldSize]byte
	for i := range valid {
		valid[i] = byte(i + 1)
	}
	oldConfig, oldIndex := pinned(ztdnsMapConfig, oldSize, 2), pinned(ztdnsMapConfigIndex, 4, 1)
	if err := oldConfig.Update(uint32(1), valid, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	if err := oldIndex.Update(uint32(0), uint32(1), ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}

	r := mustLoad(t, Config{BPFFS: bpffs, CgroupPath: testenv.NewCgroup(t).Path, Resolver4: DefaultResolver4(), Logger: testLogger(t)})

	var index uint32
	if err := oldIndex.Lookup(uint32(0), &index); err != nil || index != 1 {
		t.Errorf("the old programs' config_index holds %d (%v), want 1: they would read an entry of their config never written", index, err)
	}
	var got [oldSize]byte
	if err := oldConfig.Lookup(uint32(1), &got); err != nil || got != valid {
		t.Errorf("the old programs' config entry 1 = %v (%v), want it untouched", got, err)
	}
	var active ztdnsActiveConfig
	var cfg ztdnsRedirectConfig
	if err := r.objs.ConfigIndex.Lookup(uint32(0), &active); err != nil {
		t.Fatal(err)
	}
	if err := r.objs.Config.Lookup(active.Index, &cfg); err != nil || cfg.Resolver4[0] != endpointFrom(DefaultResolver4()[0]) {
		t.Errorf("new config entry %d = %+v (%v), want the resolvers", active.Index, cfg, err)
	}
}

// TestDetachOrder: every hook is detached once, the redirecting ones
// (connect, sendmsg) before any restoring one (recvmsg, getpeername): a
// query redirected after its socket's restoring hook is gone would get a
// reply from the resolver's address, which the client drops. sock_release
// goes last: a socket the redirecting hooks counted against its pod while
// it was attached is taken off when it closes.
func TestDetachOrder(t *testing.T) {
	// stage: 0 redirecting, 1 restoring, 2 releasing.
	stage := func(h hook) int {
		switch {
		case strings.Contains(h.name, "sock_release"):
			return 2
		case strings.Contains(h.name, "recvmsg") || strings.Contains(h.name, "getpeername"):
			return 1
		}
		return 0
	}
	order := detachOrder()
	if len(order) != len(hooks) {
		t.Fatalf("detachOrder has %d hooks, want %d", len(order), len(hooks))
	}
	seen := map[string]bool{}
	reached := 0
	stages := map[int]bool{}
	for i, h := range order {
		if seen[h.name] {
			t.Errorf("%s detached twice", h.name)
		}
		seen[h.name] = true
		if s := stage(h); s < reached {
			t.Errorf("%s (stage %d) detached after a hook of stage %d (redirecting 0, restoring 1, releasing 2)", h.name, s, reached)
		} else {
			reached = s
		}
		stages[stage(h)] = true
		if got := detachRank(h.attach); got != i {
			t.Errorf("detachRank(%s) = %d, want %d", h.name, got, i)
		}
	}
	if len(stages) != 3 {
		t.Errorf("detachOrder has hooks of stages %v, want a redirecting, a restoring and a releasing one", stages)
	}
}
