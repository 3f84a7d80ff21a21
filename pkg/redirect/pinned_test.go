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
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/testenv"
)

// plantMap pins, as name under bpffs, a map of the spec's type, sizes and
// flags with change applied: what an agent of another release left there.
func plantMap(tb testing.TB, bpffs, name string, change func(*ebpf.MapSpec)) *ebpf.Map {
	tb.Helper()
	spec, err := loadZtdns()
	if err != nil {
		tb.Fatal(err)
	}
	ms := spec.Maps[name].Copy()
	ms.Pinning = ebpf.PinByName
	change(ms)
	m, err := ebpf.NewMapWithOptions(ms, ebpf.MapOptions{PinPath: bpffs})
	if err != nil {
		tb.Fatalf("plant %s: %v", name, err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

// TestPinnedMapOfAnotherLayoutIsReplaced: a pinned map whose key or value
// layout differs from this release's is replaced even when its sizes,
// flags and capacity are the same, and a pinned map without BTF, whose
// layout cannot be told, is replaced too: read under this release's
// meaning, its bytes would be taken for other fields. (Before: reused, a
// pod's first word written as its IPv4 address, or 1 in a map without BTF,
// was read as flags, the pod paused.) A pad member given a name at the
// same offset and size is the same layout (how nameserver.flags and
// endpoint.flags came, zero meaning what the older programs did): that map
// is kept with what it holds.
func TestPinnedMapOfAnotherLayoutIsReplaced(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	const cookie = 4242
	for _, tt := range []struct {
		name   string
		change func(*ebpf.MapSpec)
		value  func() any // the pod's value as the other release wrote it
	}{{
		name:   "no BTF",
		change: func(ms *ebpf.MapSpec) { ms.Key, ms.Value = nil, nil },
		value: func() any {
			b := make([]byte, binary.Size(ztdnsPodInfo{}))
			b[0] = 1 // flags 1 to this release: paused
			return b
		},
	}, {
		name: "members reordered",
		change: func(ms *ebpf.MapSpec) {
			v := btf.Copy(ms.Value).(*btf.Struct)
			// ipv4 first, then flags: same offsets, sizes and names.
			m := v.Members
			m[0].Name, m[0].Type, m[1].Name, m[1].Type = m[1].Name, m[1].Type, m[0].Name, m[0].Type
			ms.Value = v
		},
		value: func() any {
			b := make([]byte, binary.Size(ztdnsPodInfo{}))
			copy(b, []byte{10, 0, 0, 7}) // ipv4 to that release
			return b
		},
	}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			bpffs := mkdirAll(t, filepath.Join(testenv.NewBPFFS(t), "ztdns"))
			old := plantMap(t, bpffs, ztdnsMapPods, tt.change)
			if err := old.Update(&ztdnsPodKey{NetnsCookie: cookie}, tt.value(), ebpf.UpdateNoExist); err != nil {
				t.Fatal(err)
			}
			oldID := idOf(t, old)
			var log testenv.Log
			r := mustLoad(t, Config{BPFFS: bpffs, CgroupPath: testenv.NewCgroup(t).Path, Resolver4: DefaultResolver4(), Logger: teeLogger(t, &log)})
			if got := idOf(t, r.objs.Pods); got == oldID {
				t.Errorf("Load reused the pinned pods map of another layout (map %d)", got)
			}
			if pinned, err := pinnedMapID(pinPath(bpffs, ztdnsMapPods)); err != nil || pinned != idOf(t, r.objs.Pods) {
				t.Errorf("map %d (%v) pinned as pods, want %d, the one loaded", pinned, err, idOf(t, r.objs.Pods))
			}
			pods, err := r.Pods()
			if err != nil {
				t.Fatal(err)
			}
			if i := slices.IndexFunc(pods, func(p MarkedPod) bool { return p.NetnsCookie == cookie }); i >= 0 {
				t.Errorf("the other layout's entry is read as %+v", pods[i].PodInfo)
			}
			if want := `msg="replacing pinned map: layout changed`; !strings.Contains(log.String(), want) {
				t.Errorf("no warning %s...\" logged:\n%s", want, log.String())
			}
		})
	}

	t.Run("pad given a name", func(t *testing.T) {
		t.Parallel()
		bpffs := mkdirAll(t, filepath.Join(testenv.NewBPFFS(t), "ztdns"))
		// nameserver.flags was pad in the first releases.
		old := plantMap(t, bpffs, ztdnsMapNameservers, func(ms *ebpf.MapSpec) {
			v := btf.Copy(ms.Value).(*btf.Struct)
			i := slices.IndexFunc(v.Members, func(m btf.Member) bool { return m.Name == "flags" })
			v.Members[i].Name = "pad"
			ms.Value = v
		})
		server := netip.MustParseAddrPort("192.0.2.53:53")
		if err := old.Update(&ztdnsNameserverKey{NetnsCookie: cookie}, &ztdnsNameserver{Server: endpointFrom(server)}, ebpf.UpdateNoExist); err != nil {
			t.Fatal(err)
		}
		r := mustLoad(t, Config{BPFFS: bpffs, CgroupPath: testenv.NewCgroup(t).Path, Resolver4: DefaultResolver4(), Logger: testLogger(t)})
		if got, want := idOf(t, r.objs.Nameservers), idOf(t, old); got != want {
			t.Errorf("Load replaced the nameservers map whose pad is flags now (map %d, was %d)", got, want)
		}
		if got, ok := r.Nameserver(cookie, 0); !ok || got != server {
			t.Errorf("slot 0 holds %v (%v), want %v kept", got, ok, server)
		}
	})
}

// TestCapacityChangeKeepsEntries: an upgrade (or a rollback) that changes
// only how many entries pods, nameservers and pod_sockets hold
// (ZTDNS_MAX_PODS) gives the new maps what the pinned ones hold before its
// programs read them: the pod stays marked with its counters, the slot it
// learned and its count of sockets. With KeepConfig (a new agent taking
// over) the resolver finds the slot in the running programs' map until
// ApplyConfig switches the programs, and in the new map after. (Before:
// the maps were replaced empty; until the switch the resolver looked in
// the new, empty, map and forwarded the pod's misses to its fallback
// upstreams, and after it the slot and the count were lost.)
func TestCapacityChangeKeepsEntries(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	const cookie = 4242
	server := netip.MustParseAddrPort("192.0.2.53:53")
	resized := []string{ztdnsMapPods, ztdnsMapNameservers, ztdnsMapPodSockets}
	for _, keep := range []bool{true, false} {
		t.Run(map[bool]string{true: "KeepConfig", false: "Load"}[keep], func(t *testing.T) {
			t.Parallel()
			bpffs := mkdirAll(t, filepath.Join(testenv.NewBPFFS(t), "ztdns"))
			cfg := Config{BPFFS: bpffs, CgroupPath: testenv.NewCgroup(t).Path, Resolver4: DefaultResolver4(), Logger: testLogger(t)}
			mustLoad(t, cfg) // the running agent: its programs attached
			planted := map[string]*ebpf.Map{}
			for _, name := range resized {
				if err := os.Remove(pinPath(bpffs, name)); err != nil {
					t.Fatal(err)
				}
				planted[name] = plantMap(t, bpffs, name, func(ms *ebpf.MapSpec) { ms.MaxEntries /= 2 })
			}
			key := ztdnsPodKey{NetnsCookie: cookie}
			pod := ztdnsPodInfo{Ipv4: [4]byte{10, 0, 0, 2}, Redirected: 7}
			if err := planted[ztdnsMapPods].Update(&key, &pod, ebpf.UpdateNoExist); err != nil {
				t.Fatal(err)
			}
			slot := ztdnsNameserver{Server: endpointFrom(server)}
			if err := planted[ztdnsMapNameservers].Update(&ztdnsNameserverKey{NetnsCookie: cookie}, &slot, ebpf.UpdateNoExist); err != nil {
				t.Fatal(err)
			}
			if err := planted[ztdnsMapPodSockets].Update(&key, &ztdnsPodSocketCount{Held: 3}, ebpf.UpdateNoExist); err != nil {
				t.Fatal(err)
			}

			var log testenv.Log
			cfg.Logger, cfg.KeepConfig = teeLogger(t, &log), keep
			r := mustLoad(t, cfg)
			if keep {
				if got, ok := r.Nameserver(cookie, 0); !ok || got != server {
					t.Errorf("before ApplyConfig the resolver finds %v (%v) in slot 0, want %v, what the running programs learned", got, ok, server)
				}
				if r.ReplacingPods() {
					t.Error("a pods map replaced for its capacity reports that it has to be marked again")
				}
				if err := r.ApplyConfig(); err != nil {
					t.Fatal(err)
				}
			}
			if got, ok := r.Nameserver(cookie, 0); !ok || got != server {
				t.Errorf("after the switch the resolver finds %v (%v) in slot 0, want %v", got, ok, server)
			}
			pods, err := r.Pods()
			if err != nil {
				t.Fatal(err)
			}
			want := []MarkedPod{{
				NetnsCookie: cookie,
				PodInfo:     PodInfo{IPv4: netip.MustParseAddr("10.0.0.2")},
				Counters:    PodCounters{Redirected: 7},
				Sockets:     3,
			}}
			want[0].Nameservers[0].Addr = server
			for i := range pods {
				for s := range pods[i].Nameservers {
					pods[i].Nameservers[s].Idle = 0 // last_used_ns 0: idle since boot
				}
			}
			if !slices.Equal(pods, want) {
				t.Errorf("pods after the switch:\n%+v\nwant\n%+v", pods, want)
			}
			spec, err := loadZtdns()
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range resized {
				if got, want := r.mapNamed(name).MaxEntries(), spec.Maps[name].MaxEntries; got != want {
					t.Errorf("%s holds %d entries, want %d", name, got, want)
				}
				if pinned, err := pinnedMapID(pinPath(bpffs, name)); err != nil || pinned != idOf(t, r.mapNamed(name)) {
					t.Errorf("map %d (%v) pinned as %s, want %d, the one loaded", pinned, err, name, idOf(t, r.mapNamed(name)))
				}
				if want := `msg="replacing pinned map: capacity changed, entries copied" pin=` + pinPath(bpffs, name); !strings.Contains(log.String(), want) {
					t.Errorf("no warning %s logged", want)
				}
			}
			if strings.Contains(log.String(), "layout changed") {
				t.Errorf("a capacity change logged as a layout change:\n%s", log.String())
			}
		})
	}
}

// TestSmallerCapacityDropsAndSays: a map replaced by a smaller one (a
// lower ZTDNS_MAX_PODS) is given the entries it has room for, the rest
// dropped with a warning that says how many; an entry the new map holds
// already (this agent's own mark) is kept over the pinned one's.
func TestSmallerCapacityDropsAndSays(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	newMap := func(entries uint32) *ebpf.Map {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 8, MaxEntries: entries, Flags: unix.BPF_F_NO_PREALLOC})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	from, to := newMap(5), newMap(3)
	for k := range uint64(5) {
		if err := from.Update(k, k+100, ebpf.UpdateNoExist); err != nil {
			t.Fatal(err)
		}
	}
	if err := to.Update(uint64(0), uint64(7), ebpf.UpdateNoExist); err != nil {
		t.Fatal(err)
	}
	var log testenv.Log
	r := &Redirector{log: teeLogger(t, &log), previous: map[string]*ebpf.Map{ztdnsMapPods: from}}
	r.objs.Pods = to
	r.copyPrevious(ztdnsMapPods)

	var k, v uint64
	got := map[uint64]uint64{}
	for it := to.Iterate(); it.Next(&k, &v); {
		got[k] = v
	}
	if len(got) != 3 || got[0] != 7 {
		t.Errorf("the smaller map holds %v, want 3 entries, 0 holding 7 as it did", got)
	}
	for k, v := range got {
		if k != 0 && v != k+100 {
			t.Errorf("entry %d holds %d, want %d copied", k, v, k+100)
		}
	}
	if want := `msg="the new map holds fewer entries than the pinned one it replaces: entries past its capacity dropped" map=pods capacity=3 copied=2 dropped=2`; !strings.Contains(log.String(), want) {
		t.Errorf("no warning %s logged:\n%s", want, log.String())
	}
}
