//go:build linux

package redirect

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// A pinned map another release left is reused when this release would
// create the same map: the same type, key and value sizes, flags and
// capacity (what cilium/ebpf's MapSpec.Compatible checks), and keys and
// values of the same layout as their BTF describes them. Sizes alone do
// not tell a layout: members reordered, or a field's meaning changed under
// the same name, would have this release read the older one's bytes under
// its own meaning, silently (a pod's first word taken for its flags). The
// BTF every ztdns map carries is compared member by member: names,
// offsets, sizes and the members' own types, typedefs and qualifiers
// looked through. A member named pad (or padN) on one side matches any
// member of the same offset and size on the other: giving a pad a meaning
// whose zero is what the older programs did, which they always wrote, is
// how bpf/ztdns.h changes a layout compatibly (endpoint.flags,
// nameserver.flags). A pinned map without BTF is not one of ztdns's, or its
// layout cannot be told: it is replaced.
//
// A map whose layout matches but whose capacity does not (ZTDNS_MAX_PODS
// changed) is replaced too, the kernel fixing a map's capacity at its
// creation; a hash map is given the entries of the pinned one (Redirector's
// previous, copyPrevious). Checking costs each pinned map a look at its
// BTF, which the kernel hands out as a few hundred bytes: well under a
// millisecond at each start.

// pinChange is what a Load does with a pinned map.
type pinChange struct {
	resized bool   // the same layout, another capacity: entries copied
	reason  string // what differs
}

// pinnedChanges names the pinned maps to replace, and why: those of
// another layout or capacity than spec's. config and config_index are
// replaced together: the programs read them as one, config_index naming
// an entry of config. A replaced map's pin goes, but the programs attached
// until attachAll keep the map they were loaded with; a partner kept would
// be shared by old and new programs, each reading it with its own other
// half. Kept config_index with a new config: writeConfig switches the
// index to an entry of the new config, and the old programs read that
// entry of their old config, never written (all zeros: no resolver, so
// capture is off and replies of redirected queries are not restored),
// until attachAll swaps them, or for good if it fails. Replaced as a pair,
// the old programs go on reading their old pair untouched.
//
// The other maps are read on their own and may be replaced alone: a new
// counters map only misses what the old programs count before attachAll,
// and the heartbeat is meant to be shared (old programs stay fresh).
func (r *Redirector) pinnedChanges(spec *ebpf.CollectionSpec) (map[string]pinChange, error) {
	changes := map[string]pinChange{}
	pinned := map[string]bool{}
	for name, ms := range spec.Maps {
		pin := pinPath(r.cfg.BPFFS, name)
		m, err := ebpf.LoadPinnedMap(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("open pinned map %s: %w", pin, err)
		}
		pinned[name] = true
		reason, err := layoutChange(ms, m)
		entries := m.MaxEntries()
		m.Close()
		if err != nil {
			return nil, fmt.Errorf("pinned map %s: %w", pin, err)
		}
		switch {
		case reason != "":
			changes[name] = pinChange{reason: reason}
		case entries != ms.MaxEntries:
			changes[name] = pinChange{
				resized: slices.Contains(resizedMaps, name),
				reason:  fmt.Sprintf("max entries %d changed to %d", entries, ms.MaxEntries),
			}
		}
	}
	for _, pair := range [][2]string{{ztdnsMapConfig, ztdnsMapConfigIndex}, {ztdnsMapConfigIndex, ztdnsMapConfig}} {
		if ch, ok := changes[pair[0]]; ok && pinned[pair[1]] {
			if _, ok := changes[pair[1]]; !ok {
				changes[pair[1]] = pinChange{reason: "replaced with " + pair[0] + " (" + ch.reason + ")"}
			}
		}
	}
	return changes, nil
}

// layoutChange says how the pinned map m's layout differs from ms's, ""
// when it does not: type, key and value sizes and flags, then, when ms has
// BTF, the key and value types (layoutDiff). Capacity is not compared.
func layoutChange(ms *ebpf.MapSpec, m *ebpf.Map) (string, error) {
	same := ms.Copy()
	same.MaxEntries = m.MaxEntries()
	if err := same.Compatible(m); err != nil {
		if !errors.Is(err, ebpf.ErrMapIncompatible) {
			return "", err
		}
		reason, _ := strings.CutSuffix(err.Error(), ": "+ebpf.ErrMapIncompatible.Error())
		return reason, nil
	}
	if ms.Key == nil && ms.Value == nil {
		return "", nil
	}
	key, value, err := mapTypes(m)
	if err != nil {
		return "", err
	}
	if key == nil && value == nil {
		return "no BTF: its layout cannot be told", nil
	}
	if d := layoutDiff("key", ms.Key, key); d != "" {
		return d, nil
	}
	return layoutDiff("value", ms.Value, value), nil
}

// mapInfo is the head of the kernel's struct bpf_map_info (linux/bpf.h),
// up to the BTF ids of key and value, which cilium/ebpf's MapInfo leaves
// out. The kernel fills as much of it as it is given.
type mapInfo struct {
	Type, ID, KeySize, ValueSize, MaxEntries, MapFlags uint32
	Name                                               [unix.BPF_OBJ_NAME_LEN]byte
	Ifindex, BTFVmlinuxValueTypeID                     uint32
	NetnsDev, NetnsIno                                 uint64
	BTFID, BTFKeyTypeID, BTFValueTypeID                uint32
}

// mapTypes returns the BTF types the map's key and value were created
// with, both nil when it has no BTF.
func mapTypes(m *ebpf.Map) (key, value btf.Type, err error) {
	var info mapInfo
	if err := objectInfo(m.FD(), unsafe.Pointer(&info), unsafe.Sizeof(info)); err != nil {
		return nil, nil, fmt.Errorf("map info: %w", err)
	}
	if info.BTFID == 0 {
		return nil, nil, nil
	}
	h, err := btf.NewHandleFromID(btf.ID(info.BTFID))
	if err != nil {
		return nil, nil, fmt.Errorf("map BTF: %w", err)
	}
	defer h.Close()
	spec, err := h.Spec(nil)
	if err != nil {
		return nil, nil, fmt.Errorf("map BTF: %w", err)
	}
	if key, err = spec.TypeByID(btf.TypeID(info.BTFKeyTypeID)); err != nil {
		return nil, nil, fmt.Errorf("map BTF key type: %w", err)
	}
	if value, err = spec.TypeByID(btf.TypeID(info.BTFValueTypeID)); err != nil {
		return nil, nil, fmt.Errorf("map BTF value type: %w", err)
	}
	return key, value, nil
}

// layoutDiff says where have, a pinned map's type, is laid out otherwise
// than want, this release's, "" when nowhere; path names the place for the
// message. Typedefs and qualifiers are looked through; integers compare by
// size and sign, arrays by length and element, structs and unions member
// by member (isPad).
func layoutDiff(path string, want, have btf.Type) string {
	want, have = btf.UnderlyingType(want), btf.UnderlyingType(have)
	changed := func(what string, w, h any) string {
		return fmt.Sprintf("%s: %s %v changed to %v", path, what, h, w)
	}
	switch w := want.(type) {
	case *btf.Int:
		if h, ok := have.(*btf.Int); ok {
			if w.Size != h.Size || w.Encoding&btf.Signed != h.Encoding&btf.Signed {
				return changed("integer", h, w)
			}
			return ""
		}
	case *btf.Enum:
		if h, ok := have.(*btf.Enum); ok {
			if w.Size != h.Size || w.Signed != h.Signed {
				return changed("enum", h, w)
			}
			return ""
		}
	case *btf.Array:
		if h, ok := have.(*btf.Array); ok {
			if w.Nelems != h.Nelems {
				return changed("length", h.Nelems, w.Nelems)
			}
			return layoutDiff(path+"[]", w.Type, h.Type)
		}
	case *btf.Struct:
		if h, ok := have.(*btf.Struct); ok {
			return membersDiff(path, w.Size, h.Size, w.Members, h.Members)
		}
	case *btf.Union:
		if h, ok := have.(*btf.Union); ok {
			return membersDiff(path, w.Size, h.Size, w.Members, h.Members)
		}
	case *btf.Pointer:
		if _, ok := have.(*btf.Pointer); ok {
			return ""
		}
	case *btf.Void:
		if _, ok := have.(*btf.Void); ok {
			return ""
		}
	}
	return changed("type", have, want)
}

func membersDiff(path string, wantSize, haveSize uint32, want, have []btf.Member) string {
	if wantSize != haveSize {
		return fmt.Sprintf("%s: size %d changed to %d", path, haveSize, wantSize)
	}
	if len(want) != len(have) {
		return fmt.Sprintf("%s: %d members changed to %d", path, len(have), len(want))
	}
	for i, w := range want {
		h := have[i]
		at := path + "." + w.Name
		switch {
		case w.Offset != h.Offset || w.BitfieldSize != h.BitfieldSize:
			return fmt.Sprintf("%s: bits %d:%d changed to %d:%d", at, h.Offset, h.BitfieldSize, w.Offset, w.BitfieldSize)
		case w.Name == h.Name:
			if d := layoutDiff(at, w.Type, h.Type); d != "" {
				return d
			}
		case isPad(w.Name) || isPad(h.Name):
			ws, werr := btf.Sizeof(w.Type)
			hs, herr := btf.Sizeof(h.Type)
			if werr != nil || herr != nil || ws != hs {
				return fmt.Sprintf("%s: %s of %d bytes changed to %d", at, h.Name, hs, ws)
			}
		default:
			return fmt.Sprintf("%s: member %d named %s changed to %s", path, i, h.Name, w.Name)
		}
	}
	return ""
}

// isPad reports whether a member is padding by its name: pad or padN
// (leading underscores aside), which ztdns always writes zero.
func isPad(name string) bool {
	rest, ok := strings.CutPrefix(strings.TrimLeft(name, "_"), "pad")
	return ok && strings.Trim(rest, "0123456789") == ""
}

// resizedMaps are the maps whose entries a Load copies when it replaces
// them for their capacity alone.
var resizedMaps = []string{ztdnsMapPods, ztdnsMapNameservers, ztdnsMapPodSockets}

// copyPrevious gives the maps loaded in place of pinned ones of another
// capacity (previous) the entries those hold, none it holds already:
// what this agent wrote since Load stays. ApplyConfig calls it before it
// attaches the programs that read them, and once more after for the
// nameservers the old programs learned in between. A smaller map than the
// pinned one may not take every entry: those past its capacity, in the
// order the kernel lists them, are dropped, and a warning says how many.
func (r *Redirector) copyPrevious(names ...string) {
	for _, name := range names {
		from := r.previous[name]
		if from == nil {
			continue
		}
		to := r.mapNamed(name)
		copied, dropped, err := copyEntries(from, to)
		if err != nil {
			r.log.Warn("could not copy every entry of the pinned map replaced for its capacity: those are lost",
				"map", name, "copied", copied, "err", err)
		}
		if dropped > 0 {
			r.log.Warn("the new map holds fewer entries than the pinned one it replaces: entries past its capacity dropped",
				"map", name, "capacity", to.MaxEntries(), "copied", copied, "dropped", dropped)
		}
	}
}

// copyEntries adds to to the entries of from that it lacks, and returns
// how many it copied and how many it dropped for want of room.
func copyEntries(from, to *ebpf.Map) (copied, dropped int, err error) {
	key, val := make([]byte, from.KeySize()), make([]byte, from.ValueSize())
	var errs []error
	it := from.Iterate()
	for it.Next(&key, &val) {
		err := to.Update(key, val, ebpf.UpdateNoExist)
		switch {
		case err == nil:
			copied++
		case errors.Is(err, ebpf.ErrKeyExist):
		case errors.Is(err, unix.E2BIG):
			dropped++
		default:
			errs = append(errs, err)
		}
	}
	if err := it.Err(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return copied, dropped, fmt.Errorf("%w (and %d more)", errs[0], len(errs)-1)
	}
	return copied, dropped, nil
}
