package table

import (
	"net/netip"
	"unsafe"
)

// An entry is allocated together with its name's bytes and, when it has one
// or two, its addresses (pack). A lookup compares the map key (the name's
// bytes: the key is e.Name), reads the entry and writes its addresses:
// three allocations, each a cache miss when the table is cold between
// queries (BenchmarkColdLookup), now adjacent lines of one.
//
// Each layout fills a size class of Go's allocator exactly: 72 bytes of
// entry (TestEntryTakes72Bytes), 24 an address, and the rest room for the
// name, so that no layout costs more than the entry, its name and its
// addresses allocated apart (whose classes have the same steps). The
// rooms go up to the names of most Services and hosts
// ("reviews.bookinfo.svc.cluster.local." is 36 bytes, the benchmark's 26
// and 35); more addresses are apart, and so is a longer name.
type packed[A, N any] struct {
	e     Entry
	addrs A // [k]netip.Addr
	name  N // [room]byte
}

// layout is one packed type: its room for addresses and for name bytes.
type layout struct {
	addrs, room int
	alloc       func() (*Entry, []netip.Addr, []byte)
}

func layoutOf[A, N any]() layout {
	alloc := func() (*Entry, []netip.Addr, []byte) {
		p := new(packed[A, N])
		return &p.e, unsafe.Slice((*netip.Addr)(unsafe.Pointer(&p.addrs)), unsafe.Sizeof(p.addrs)/unsafe.Sizeof(netip.Addr{})),
			unsafe.Slice((*byte)(unsafe.Pointer(&p.name)), unsafe.Sizeof(p.name))
	}
	var p packed[A, N]
	return layout{addrs: int(unsafe.Sizeof(p.addrs) / unsafe.Sizeof(netip.Addr{})), room: int(unsafe.Sizeof(p.name)), alloc: alloc}
}

// layouts are the packed types by number of addresses, smallest room
// first. In bytes: 96 to 176 without an address (a headless Service's
// name, an endpoint's, a host without a VIP), 128 to 192 with one (a
// Service, a host with one spec.addresses), 144 to 208 with two (dual
// stack, an allocated VIP pair).
var layouts = [...][]layout{
	{
		layoutOf[[0]netip.Addr, [24]byte](), layoutOf[[0]netip.Addr, [40]byte](), layoutOf[[0]netip.Addr, [56]byte](),
		layoutOf[[0]netip.Addr, [72]byte](), layoutOf[[0]netip.Addr, [88]byte](), layoutOf[[0]netip.Addr, [104]byte](),
	},
	{
		layoutOf[[1]netip.Addr, [32]byte](), layoutOf[[1]netip.Addr, [48]byte](), layoutOf[[1]netip.Addr, [64]byte](),
		layoutOf[[1]netip.Addr, [80]byte](), layoutOf[[1]netip.Addr, [96]byte](),
	},
	{
		layoutOf[[2]netip.Addr, [24]byte](), layoutOf[[2]netip.Addr, [40]byte](), layoutOf[[2]netip.Addr, [56]byte](),
		layoutOf[[2]netip.Addr, [72]byte](), layoutOf[[2]netip.Addr, [88]byte](),
	},
}

// pack returns a new entry of src's object whose name is the concatenation
// of parts, with the addresses addrs (IPv4 first, n4 of them), copied into
// the entry's allocation when a layout has room for them and the name;
// otherwise only the name is, when it fits, and addrs are kept as they are
// (a ServiceEntry's spec.addresses, which all its hosts share). The entry
// is the builder's to change until a table holds it; its name and packed
// addresses never change.
func pack(src *source, addrs []netip.Addr, n4 uint32, parts ...string) *Entry {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	var e *Entry
	var name []byte
	if l, ok := layoutFor(len(addrs), n); ok {
		var room []netip.Addr
		e, room, name = l.alloc()
		if len(addrs) > 0 {
			e.Addrs = room[:copy(room, addrs)]
		}
	} else if l, ok := layoutFor(0, n); ok {
		e, _, name = l.alloc()
		e.Addrs = addrs
	} else {
		e, name = &Entry{Addrs: addrs}, make([]byte, 0, n)
	}
	name = name[:0]
	for _, p := range parts {
		name = append(name, p...) // within its room
	}
	e.Name = unsafe.String(unsafe.SliceData(name), n)
	e.n4, e.more = n4, none
	e.setSource(src)
	return e
}

// layoutFor returns the smallest layout with room for addrs addresses and
// a name of n bytes.
func layoutFor(addrs, n int) (layout, bool) {
	if addrs < len(layouts) {
		for _, l := range layouts[addrs] {
			if n <= l.room {
				return l, true
			}
		}
	}
	return layout{}, false
}
