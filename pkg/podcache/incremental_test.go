package podcache

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/ztdns/ztdns/pkg/model"
)

// TestAttachAndDetachAgreeWithRebuild: after every attach and detach of a
// random sequence (records replaced with the same or another network
// namespace, restored with an order of their own, of pods the source knows
// or not, on the host's network or not, sandboxes and pods claiming one
// another's addresses and namespaces), the index is the one a rebuild from
// every record and the source makes: the same pods, the same owner of
// every address and namespace.
func TestAttachAndDetachAgreeWithRebuild(t *testing.T) {
	for seed := range uint64(150) {
		rng := rand.New(rand.NewPCG(seed, 7))
		c := New()
		for step := range 150 {
			op := randomOp(rng, c)
			op.do(c)
			if err := agreesWithRebuild(c); err != nil {
				t.Fatalf("seed %d, step %d, after %s: %v", seed, step, op, err)
			}
		}
	}
}

type cacheOp struct {
	name string
	do   func(*Cache)
}

func (o cacheOp) String() string { return o.name }

var (
	opNames  = []string{"a/web", "a/db", "b/web", "b/job", "c/x"}
	opIPs    = []netip.Addr{ip2, ip3, netip.MustParseAddr("10.0.0.4"), netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("fd00::2")}
	opKeys   = []string{"ctr-1", "ctr-2", "ctr-3", "ctr-4", "ctr-5", "ctr-6", "ctr-7", ""}
	opOrders = []uint64{0, 0, 0, 1, 5, 50}
)

func randomIPs(rng *rand.Rand) []netip.Addr {
	var ips []netip.Addr
	for range rng.IntN(3) {
		if ip := opIPs[rng.IntN(len(opIPs))]; !slices.Contains(ips, ip) {
			ips = append(ips, ip)
		}
	}
	return ips
}

func randomOp(rng *rand.Rand, c *Cache) cacheOp {
	switch n := rng.IntN(20); {
	case n == 0:
		var pods []model.Pod
		for _, k := range opNames {
			if rng.IntN(2) == 0 {
				continue
			}
			ns, name, _ := cutKey(k)
			pods = append(pods, model.Pod{Namespace: ns, Name: name, UID: "src-" + k, IPs: randomIPs(rng), HostNetwork: rng.IntN(6) == 0})
		}
		return cacheOp{fmt.Sprintf("SetSourcePods(%d pods)", len(pods)), func(c *Cache) { c.SetSourcePods(pods) }}
	case n < 7:
		keys := slices.Sorted(maps.Keys(c.Attachments()))
		key := opKeys[rng.IntN(len(opKeys))]
		if len(keys) > 0 && rng.IntN(3) > 0 {
			key = keys[rng.IntN(len(keys))]
		}
		return cacheOp{"Detach(" + key + ")", func(c *Cache) { c.Detach(key) }}
	}
	ns, name, _ := cutKey(opNames[rng.IntN(len(opNames))])
	a := Attachment{ContainerID: opKeys[rng.IntN(len(opKeys))], Namespace: ns, Name: name, NetnsCookie: uint64(rng.IntN(6)),
		IPs: randomIPs(rng), Captured: rng.IntN(2) == 0, AttachOrder: opOrders[rng.IntN(len(opOrders))]}
	if rng.IntN(2) == 0 {
		a.UID = "uid-" + a.ContainerID
	}
	if keys := slices.Sorted(maps.Keys(c.Attachments())); len(keys) > 0 && rng.IntN(3) == 0 {
		// The same record again: a repeated ADD, a changed decision.
		cur, _ := c.Attachment(keys[rng.IntN(len(keys))])
		a = cur
		a.Captured = !a.Captured
		if rng.IntN(2) == 0 {
			a.AttachOrder = 0
		}
	}
	return cacheOp{fmt.Sprintf("Attach(%+v)", a), func(c *Cache) { c.Attach(a) }}
}

func cutKey(k string) (string, string, bool) {
	for i := range k {
		if k[i] == '/' {
			return k[:i], k[i+1:], true
		}
	}
	return "", k, false
}

// agreesWithRebuild compares c's index with the one rebuild makes from the
// same records and source, leaving c as it was.
func agreesWithRebuild(c *Cache) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	got := c.view.Load()
	recordsOf, claims, inNetns, recordsAt := c.recordsOf, c.claims, c.inNetns, c.recordsAt
	quotas := maps.Clone(c.quotas)
	c.rebuild()
	want := c.view.Load()
	wantRecordsOf, wantClaims, wantInNetns, wantRecordsAt := c.recordsOf, c.claims, c.inNetns, c.recordsAt
	wantQuotas := c.quotas
	c.view.Store(got)
	c.recordsOf, c.claims, c.inNetns, c.recordsAt, c.quotas = recordsOf, claims, inNetns, recordsAt, quotas

	if len(got.all) != len(want.all) {
		return fmt.Errorf("%d pods, want %d: %v, want %v", len(got.all), len(want.all), podKeys(got.all), podKeys(want.all))
	}
	for i, p := range got.all {
		if err := samePod(p, want.all[i]); err != nil {
			return err
		}
	}
	if err := sameOwners(got, want, got.byIP, want.byIP); err != nil {
		return fmt.Errorf("by IP: %w", err)
	}
	if err := sameOwners(got, want, got.byCookie, want.byCookie); err != nil {
		return fmt.Errorf("by cookie: %w", err)
	}
	if !maps.Equal(quotas, wantQuotas) {
		return fmt.Errorf("quotas of %v, want %v", slices.Sorted(maps.Keys(quotas)), slices.Sorted(maps.Keys(wantQuotas)))
	}
	for name, pair := range map[string][2]any{"recordsOf": {recordsOf, wantRecordsOf}, "claims": {claims, wantClaims}, "inNetns": {inNetns, wantInNetns},
		"recordsAt": {recordsAt, wantRecordsAt}} {
		if !reflect.DeepEqual(pair[0], pair[1]) {
			return fmt.Errorf("%s = %v, want %v", name, pair[0], pair[1])
		}
	}
	return nil
}

func podKeys(all []*Pod) []string {
	var out []string
	for _, p := range all {
		out = append(out, p.Key())
	}
	return out
}

func samePod(p, q *Pod) error {
	type view struct {
		Namespace, Name, UID string
		IPs                  []netip.Addr
		Spec                 *model.Pod
		Attachment           *Attachment
		Uncaptured           bool
		Families             uint8
	}
	v := func(p *Pod) view {
		return view{p.Namespace, p.Name, p.UID, p.IPs, p.Spec, p.Attachment, p.uncaptured, p.families}
	}
	if got, want := v(p), v(q); !reflect.DeepEqual(got, want) {
		return fmt.Errorf("pod %s = %+v, want %+v", p.Key(), got, want)
	}
	if p.Quota != q.Quota || p.Quota == nil {
		return fmt.Errorf("pod %s has quota %p, want %p", p.Key(), p.Quota, q.Quota)
	}
	return nil
}

// sameOwners compares two owner maps by pod key, and checks that each of
// got's owners is the object got lists.
func sameOwners[K comparable](got, want *index, g, w map[K]*Pod) error {
	keys := func(m map[K]*Pod) map[K]string {
		out := map[K]string{}
		for k, p := range m {
			out[k] = p.Key()
		}
		return out
	}
	if !maps.Equal(keys(g), keys(w)) {
		return fmt.Errorf("owners %v, want %v", keys(g), keys(w))
	}
	for k, p := range g {
		if got.find(p.Key()) != p {
			return fmt.Errorf("%v is owned by an object of %s the index does not list", k, p.Key())
		}
	}
	return nil
}

// TestAttachWorkDoesNotGrowWithThePods: an attach and a detach (a CNI ADD
// and DEL) in a registry of a thousand pods do about the work they do in
// one of ten, counted in allocations (every pod's object remade would
// show), and leave every other pod's object as it was. (Before: each
// remade every pod.)
func TestAttachWorkDoesNotGrowWithThePods(t *testing.T) {
	allocs := map[int]float64{}
	for _, n := range []int{10, 1000} {
		c := New()
		var pods []model.Pod
		ip := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}) }
		for i := range n {
			pods = append(pods, model.Pod{Namespace: "shop", Name: fmt.Sprintf("pod-%d", i), UID: fmt.Sprint(i), IPs: []netip.Addr{ip(i)}})
		}
		c.SetSourcePods(pods)
		for i := range n {
			c.Attach(Attachment{ContainerID: fmt.Sprintf("ctr-%d", i), Namespace: "shop", Name: fmt.Sprintf("pod-%d", i),
				NetnsCookie: uint64(i + 1), IPs: []netip.Addr{ip(i)}, Captured: true})
		}
		before := c.List()
		allocs[n] = testing.AllocsPerRun(20, func() {
			c.Attach(Attachment{ContainerID: "new", Namespace: "shop", Name: "new", NetnsCookie: 99999, IPs: []netip.Addr{ip(n)}, Captured: true})
			c.Detach("new")
		})
		if after := c.List(); !slices.Equal(after, before) {
			t.Errorf("%d pods: an attach and a detach of another pod remade pods' objects", n)
		}
	}
	t.Logf("allocations of an attach and a detach: %v among 10 pods, %v among 1,000", allocs[10], allocs[1000])
	if allocs[1000] > 2*allocs[10] {
		t.Errorf("an attach and a detach make %v allocations among 1,000 pods, %v among 10: the work grows with the pods", allocs[1000], allocs[10])
	}
}

// TestAttachmentEqualSeesEveryField: a record that differs from another in
// any field is not Equal to it (the agent writes a record again only when
// it is not Equal to the one it wrote).
func TestAttachmentEqualSeesEveryField(t *testing.T) {
	a := Attachment{ContainerID: "c", Namespace: "n", Name: "p", UID: "u", NetnsPath: "/p", NetnsCookie: 1, IPs: []netip.Addr{ip2},
		Captured: true, Reason: "r", AttachOrder: 1}
	if b := a; !a.Equal(&b) {
		t.Fatal("a copy is not Equal")
	}
	typ := reflect.TypeOf(a)
	for i := range typ.NumField() {
		b := a
		b.IPs = slices.Clone(a.IPs)
		f := reflect.ValueOf(&b).Elem().Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString(f.String() + "x")
		case reflect.Uint64:
			f.SetUint(f.Uint() + 1)
		case reflect.Bool:
			f.SetBool(!f.Bool())
		case reflect.Slice:
			f.Set(reflect.ValueOf([]netip.Addr{ip3}))
		default:
			t.Fatalf("field %s of kind %s: teach this test to change it", typ.Field(i).Name, f.Kind())
		}
		if a.Equal(&b) {
			t.Errorf("records that differ in %s are Equal", typ.Field(i).Name)
		}
	}
}
