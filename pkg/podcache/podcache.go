// Package podcache is the node's pod registry: which pod owns a source IP,
// which network namespace it lives in, and whether its DNS is captured.
//
// Two feeds fill it. The source (a Kubernetes watch of this node's pods, or
// Pod manifests in --config-dir) says who a pod is; the runtime (CNI ADD/DEL
// events and `ztdns capture add`) says where it lives, by container ID and
// network-namespace cookie, often before the source has seen the pod. Records
// of the same pod (namespace/name) are merged.
//
// Readers are on the resolver's hot path: they load an immutable index with
// one atomic read and take no lock. A change of the source rebuilds the
// index; a runtime record attached or detached (a CNI ADD or DEL, which the
// agent answers one at a time) makes a new index from the last one, with new
// objects for that record's pod only and the owners of its addresses and
// network namespaces looked up again, so that an ADD on a node of a
// thousand pods costs about what it does on a node of ten.
package podcache

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/resolver/quota"
)

// Attachment is what the runtime reports about a pod's sandbox.
type Attachment struct {
	// ContainerID is the CNI container ID; empty for pods marked by hand.
	ContainerID string `json:"containerID,omitempty"`
	Namespace   string `json:"namespace"`
	Name        string `json:"name"`
	UID         string `json:"uid,omitempty"`
	NetnsPath   string `json:"netnsPath,omitempty"`
	NetnsCookie uint64 `json:"netnsCookie"`
	// IPs are the pod's addresses as the runtime configured them.
	IPs []netip.Addr `json:"ips"`
	// Captured says whether the pod's netns is marked for DNS capture, and
	// Reason why (or why not).
	Captured bool   `json:"captured"`
	Reason   string `json:"reason,omitempty"`
	// AttachOrder is when the cache first recorded the sandbox, as a
	// count: of two records claiming one IP, or two of one pod, the later
	// (the higher) is the live one (see Cache.Attach). Kept in the agent's
	// record on disk, so that a restarted agent orders them the same; 0 in
	// what is handed to Attach for a new record.
	AttachOrder uint64 `json:"attachOrder,omitempty"`
}

// Equal reports whether a and b record the same: every field alike.
func (a *Attachment) Equal(b *Attachment) bool {
	return a.ContainerID == b.ContainerID && a.Namespace == b.Namespace && a.Name == b.Name && a.UID == b.UID &&
		a.NetnsPath == b.NetnsPath && a.NetnsCookie == b.NetnsCookie && slices.Equal(a.IPs, b.IPs) &&
		a.Captured == b.Captured && a.Reason == b.Reason && a.AttachOrder == b.AttachOrder
}

// Key identifies an attachment: its container ID, or its netns cookie for
// pods marked by hand.
func (a *Attachment) Key() string {
	if a.ContainerID != "" {
		return a.ContainerID
	}
	return fmt.Sprintf("netns-cookie:%d", a.NetnsCookie)
}

// Pod is the merged view of one pod. It is immutable: never modify a Pod
// returned by the cache.
type Pod struct {
	Namespace string
	Name      string
	UID       string
	IPs       []netip.Addr
	// Spec is the pod as the source reported it; nil when only the runtime
	// knows it so far.
	Spec *model.Pod
	// Attachment is the runtime's record; nil when the pod has none on this
	// node (yet).
	Attachment *Attachment
	// Quota is what the pod may take of the resolver and was refused. The
	// same Source stays with the pod (by namespace/name) across rebuilds.
	Quota *quota.Source
	// NamespaceSlot is the resolver's memo of the counter the pod's
	// queries count in (0: not looked up yet): the one field a reader may
	// set, so that the hot path finds it without a map lookup.
	NamespaceSlot atomic.Int32
	// uncaptured is Uncaptured's answer, set with Attachment: the hot path
	// reads it without following Attachment into an allocation of its own.
	// (Here, it takes NamespaceSlot's padding: a Pod's size is unchanged.)
	uncaptured bool
	// families is Families' answer, set when the cache is rebuilt: the
	// resolver reads it for every query without going over IPs. (It too
	// takes NamespaceSlot's padding.)
	families uint8
}

// Uncaptured reports whether the runtime's record of the pod says its DNS
// is not captured: never was, or was released. False for a nil pod and for
// one without a record, whose capture the agent does not know. The
// resolver reads it on its hot path.
func (p *Pod) Uncaptured() bool {
	return p != nil && p.uncaptured
}

// Families returns the IP families of the pod's addresses: 1 for IPv4, 2
// for IPv6, 3 for both (the resolver's table.Families); 0 for a nil pod or
// one without addresses. The resolver reads it on its hot path.
func (p *Pod) Families() uint8 {
	if p == nil {
		return 0
	}
	return p.families
}

// familiesOf is Families' value for a pod with addresses ips.
func familiesOf(ips []netip.Addr) uint8 {
	var f uint8
	for _, ip := range ips {
		if ip.Unmap().Is4() {
			f |= 1
		} else {
			f |= 2
		}
	}
	return f
}

// Key returns "namespace/name".
func (p *Pod) Key() string { return p.Namespace + "/" + p.Name }

// hostNetwork reports whether the source says the pod is on the host's
// network.
func (p *Pod) hostNetwork() bool { return p.Spec != nil && p.Spec.HostNetwork }

type index struct {
	byIP     map[netip.Addr]*Pod
	byCookie map[uint64]*Pod
	all      []*Pod // sorted by key
}

// Cache is the registry. Create it with New.
type Cache struct {
	mu          sync.Mutex // serialises writers
	fromSource  map[string]model.Pod
	attachments map[string]Attachment
	quotas      map[string]*quota.Source // by pod key
	watchers    map[*func()]struct{}
	// lastOrder is the highest AttachOrder given or restored.
	lastOrder uint64
	// What an attach or a detach looks up instead of going over every
	// pod or record (see update, DeadClaims); rebuild makes them again
	// (reindex).
	//
	// recordsOf is the keys of each pod's records, by pod key.
	recordsOf map[string]map[string]struct{}
	// claims is, by address, the keys of the pods whose IPs (as the index
	// shows them) hold it, pods on the host's network left out.
	claims map[netip.Addr]map[string]struct{}
	// inNetns is the keys of the records of each network namespace, by
	// cookie (0 left out).
	inNetns map[uint64]map[string]struct{}
	// recordsAt is the keys of the records that hold each address.
	recordsAt map[netip.Addr]map[string]struct{}

	view atomic.Pointer[index]
}

// New returns an empty cache.
func New() *Cache {
	c := &Cache{fromSource: map[string]model.Pod{}, attachments: map[string]Attachment{}, quotas: map[string]*quota.Source{},
		watchers: map[*func()]struct{}{}, recordsOf: map[string]map[string]struct{}{}, claims: map[netip.Addr]map[string]struct{}{},
		inNetns: map[uint64]map[string]struct{}{}, recordsAt: map[netip.Addr]map[string]struct{}{}}
	c.view.Store(&index{})
	return c
}

// Lookup returns the pod that owns ip, or nil. Safe on the hot path.
func (c *Cache) Lookup(ip netip.Addr) *Pod {
	return c.view.Load().byIP[ip.Unmap()]
}

// Owners returns every IP Lookup finds a pod for, with that pod. The map
// is immutable: never modify it.
func (c *Cache) Owners() map[netip.Addr]*Pod { return c.view.Load().byIP }

// OnChange calls f after every change of the registry, until stop is
// called. Calls come one at a time, in order, while writers wait: f must
// be quick, and may read the cache only through the methods that take no
// lock (Lookup, Owners, ByCookie, Get, List); any other call from f
// deadlocks.
func (c *Cache) OnChange(f func()) (stop func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.watchers[&f] = struct{}{}
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(c.watchers, &f)
	}
}

// ByCookie returns the pod living in the network namespace with that cookie.
func (c *Cache) ByCookie(cookie uint64) *Pod {
	return c.view.Load().byCookie[cookie]
}

// Get returns the pod namespace/name, or nil.
func (c *Cache) Get(namespace, name string) *Pod {
	all := c.view.Load().all
	i, ok := slices.BinarySearchFunc(all, namespace+"/"+name, func(p *Pod, k string) int {
		return strings.Compare(p.Key(), k)
	})
	if !ok {
		return nil
	}
	return all[i]
}

// List returns every pod, sorted by namespace/name.
func (c *Cache) List() []*Pod { return c.view.Load().all }

// Attachments returns the runtime records, keyed by Attachment.Key.
func (c *Cache) Attachments() map[string]Attachment {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.attachments)
}

// AttachmentsOldestFirst returns the runtime records in attach order,
// oldest first (by AttachOrder, then key): of two for one pod, IP or
// network namespace, the later is the live one.
func (c *Cache) AttachmentsOldestFirst() []Attachment {
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := c.attachOrder()
	out := make([]Attachment, len(keys))
	for i, k := range keys {
		out[i] = c.attachments[k]
	}
	return out
}

// DeadClaims returns, by key, the runtime records other than a's that
// claim one of a's IPs and for which dead (called without the cache's
// lock held) reports true: a sandbox's record whose DEL is late, or was
// never heard, whose namespace is dead, and which is to go when a new
// pod claims its IP.
func (c *Cache) DeadClaims(a Attachment, dead func(key string, b Attachment) bool) map[string]Attachment {
	claims := map[string]Attachment{}
	c.mu.Lock()
	for _, ip := range a.IPs {
		for key := range c.recordsAt[ip] {
			if key != a.Key() {
				claims[key] = c.attachments[key]
			}
		}
	}
	c.mu.Unlock()
	maps.DeleteFunc(claims, func(key string, b Attachment) bool { return !dead(key, b) })
	return claims
}

// RangeAttachments calls f with every runtime record, in no order, holding
// the cache's lock: f must not call the cache, nor keep b's IPs. It copies
// nothing, as Attachments does.
func (c *Cache) RangeAttachments(f func(key string, b Attachment)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for key, b := range c.attachments {
		f(key, b)
	}
}

// Attachment returns the runtime record with that key.
func (c *Cache) Attachment(key string) (Attachment, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.attachments[key]
	return a, ok
}

// SetSourcePods replaces everything the source said with pods.
func (c *Cache) SetSourcePods(pods []model.Pod) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fromSource = make(map[string]model.Pod, len(pods))
	for _, p := range pods {
		c.fromSource[p.Key()] = p
	}
	c.rebuild()
}

// Attach records (or replaces) a runtime attachment. A record of a
// sandbox the cache did not hold is given the next AttachOrder: the newest
// record owns its IPs, and its pod's lookups, over older ones that still
// claim them (a pod whose DEL is late, or pending while no agent answered;
// a completed Job pod whose Pod object stays). A replaced record (the same
// key, the same network namespace: a repeated ADD, a changed decision)
// keeps its order, and a record that comes with one (restored from disk)
// keeps that.
func (c *Cache) Attach(a Attachment) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a.IPs = slices.Clone(a.IPs)
	if a.AttachOrder == 0 {
		if cur, ok := c.attachments[a.Key()]; ok && cur.NetnsCookie == a.NetnsCookie {
			a.AttachOrder = cur.AttachOrder
		} else {
			a.AttachOrder = c.lastOrder + 1
		}
	}
	c.lastOrder = max(c.lastOrder, a.AttachOrder)
	old, replaced := c.attachments[a.Key()]
	if replaced {
		c.unindexRecord(old)
	}
	c.attachments[a.Key()] = a
	c.indexRecord(a)
	if replaced {
		c.update(old, a)
	} else {
		c.update(a)
	}
}

// Detach forgets the attachment with that key and returns it.
func (c *Cache) Detach(key string) (Attachment, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.attachments[key]
	if ok {
		delete(c.attachments, key)
		c.unindexRecord(a)
		c.update(a)
	}
	return a, ok
}

// AttachmentsInNetns returns the runtime records of the network namespace
// with that cookie, keyed by Attachment.Key.
func (c *Cache) AttachmentsInNetns(cookie uint64) map[string]Attachment {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]Attachment, len(c.inNetns[cookie]))
	for key := range c.inNetns[cookie] {
		out[key] = c.attachments[key]
	}
	return out
}

// attachOrder returns the attachments' keys, oldest first (OldestFirst).
// Callers hold mu.
func (c *Cache) attachOrder() []string {
	keys := slices.Collect(maps.Keys(c.attachments))
	slices.SortFunc(keys, func(a, b string) int {
		x, y := c.attachments[a], c.attachments[b]
		return OldestFirst(&x, &y)
	})
	return keys
}

// OldestFirst orders attachments as AttachmentsOldestFirst returns them:
// by AttachOrder, then by key.
func OldestFirst(a, b *Attachment) int {
	if c := cmp.Compare(a.AttachOrder, b.AttachOrder); c != 0 {
		return c
	}
	return strings.Compare(a.Key(), b.Key())
}

// rebuild makes a new index from both feeds. Callers hold mu.
func (c *Cache) rebuild() {
	pods := map[string]*Pod{}
	for k, sp := range c.fromSource {
		spec := sp
		pods[k] = &Pod{Namespace: sp.Namespace, Name: sp.Name, UID: sp.UID, IPs: sp.IPs, Spec: &spec}
	}
	// Attachments oldest first (by AttachOrder, then key), so that of two
	// of one pod (a sandbox restart before the old DEL) the pod shows the
	// newer: its IPs, its capture. attached is the pods in that order,
	// once per record: a pod's last place is its newest record's.
	cookies := map[uint64]string{}
	var attached []*Pod
	for _, key := range c.attachOrder() {
		a := c.attachments[key]
		k := a.Namespace + "/" + a.Name
		if a.NetnsCookie != 0 {
			cookies[a.NetnsCookie] = k
		}
		p := pods[k]
		if p == nil {
			p = &Pod{Namespace: a.Namespace, Name: a.Name, UID: a.UID}
			pods[k] = p
		}
		p.Attachment, p.uncaptured = &a, !a.Captured
		if len(a.IPs) > 0 { // the runtime knows the live sandbox's IPs first
			p.IPs = a.IPs
		}
		if p.UID == "" {
			p.UID = a.UID
		}
		attached = append(attached, p)
	}
	idx := &index{byIP: map[netip.Addr]*Pod{}, byCookie: map[uint64]*Pod{}}
	quotas := make(map[string]*quota.Source, len(pods))
	for k, p := range pods {
		if p.Quota = c.quotas[k]; p.Quota == nil {
			p.Quota = new(quota.Source)
		}
		quotas[k] = p.Quota
		p.families = familiesOf(p.IPs)
		idx.all = append(idx.all, p)
	}
	slices.SortFunc(idx.all, func(a, b *Pod) int { return strings.Compare(a.Key(), b.Key()) })
	// Attached pods own their IPs over source-only ones: an IP reused by a
	// new pod before the old pod object is gone must point at the new one.
	// Among attached pods, the one whose record is newest owns it (it comes
	// last in attached): the old pod's record may linger (a late DEL, a Job
	// pod that completed), and its namespace's view must not answer the new
	// pod. Pods on the host's network are never indexed by IP: they share
	// the node's addresses, so a query from the node's IP is nobody's in
	// particular and gets the view of a client outside every namespace.
	for _, p := range idx.all {
		if p.Attachment == nil && !p.hostNetwork() {
			for _, ip := range p.IPs {
				idx.byIP[ip] = p
			}
		}
	}
	for _, p := range attached {
		if !p.hostNetwork() {
			for _, ip := range p.IPs {
				idx.byIP[ip] = p
			}
		}
	}
	// Every record's namespace, not only the one its pod shows: a
	// namespace another record of the pod holds is still taken.
	for cookie, k := range cookies {
		idx.byCookie[cookie] = pods[k]
	}
	c.quotas = quotas
	c.reindex(idx)
	c.publish(idx)
}

// publish makes idx the index readers see and tells the watchers. Callers
// hold mu.
func (c *Cache) publish(idx *index) {
	c.view.Store(idx)
	for f := range c.watchers {
		(*f)()
	}
}

// reindex makes recordsOf, inNetns and claims again, from the records and
// idx. Callers hold mu.
func (c *Cache) reindex(idx *index) {
	c.recordsOf = map[string]map[string]struct{}{}
	c.inNetns = map[uint64]map[string]struct{}{}
	c.recordsAt = map[netip.Addr]map[string]struct{}{}
	for _, a := range c.attachments {
		c.indexRecord(a)
	}
	c.claims = map[netip.Addr]map[string]struct{}{}
	for _, p := range idx.all {
		c.claim(p)
	}
}

// indexRecord enters a (just stored in attachments) in recordsOf, inNetns
// and recordsAt. Callers hold mu.
func (c *Cache) indexRecord(a Attachment) {
	addKey(c.recordsOf, a.Namespace+"/"+a.Name, a.Key())
	if a.NetnsCookie != 0 {
		addKey(c.inNetns, a.NetnsCookie, a.Key())
	}
	for _, ip := range a.IPs {
		addKey(c.recordsAt, ip, a.Key())
	}
}

// unindexRecord takes a (just removed from attachments, or replaced) out of
// recordsOf, inNetns and recordsAt. Callers hold mu.
func (c *Cache) unindexRecord(a Attachment) {
	removeKey(c.recordsOf, a.Namespace+"/"+a.Name, a.Key())
	removeKey(c.inNetns, a.NetnsCookie, a.Key())
	for _, ip := range a.IPs {
		removeKey(c.recordsAt, ip, a.Key())
	}
}

// claim enters p's addresses in claims, unless it is on the host's network.
func (c *Cache) claim(p *Pod) {
	if !p.hostNetwork() {
		for _, ip := range p.IPs {
			addKey(c.claims, ip, p.Key())
		}
	}
}

func addKey[K comparable](m map[K]map[string]struct{}, k K, key string) {
	set := m[k]
	if set == nil {
		set = map[string]struct{}{}
		m[k] = set
	}
	set[key] = struct{}{}
}

func removeKey[K comparable](m map[K]map[string]struct{}, k K, key string) {
	if set := m[k]; set != nil {
		delete(set, key)
		if len(set) == 0 {
			delete(m, k)
		}
	}
}

// update makes a new index from the last one after records were attached,
// replaced or detached (changed: each as it was and as it is), as rebuild
// would make it: new objects for the pods those records are of, and the
// owners of their addresses and network namespaces decided again as rebuild
// decides them. Callers hold mu, and have updated attachments, recordsOf and
// inNetns.
func (c *Cache) update(changed ...Attachment) {
	old := c.view.Load()
	idx := &index{byIP: maps.Clone(old.byIP), byCookie: maps.Clone(old.byCookie), all: slices.Clone(old.all)}
	if idx.byIP == nil {
		idx.byIP = map[netip.Addr]*Pod{}
	}
	if idx.byCookie == nil {
		idx.byCookie = map[uint64]*Pod{}
	}
	var podKeys []string
	cookies := map[uint64]struct{}{}
	for _, a := range changed {
		if k := a.Namespace + "/" + a.Name; !slices.Contains(podKeys, k) {
			podKeys = append(podKeys, k)
		}
		cookies[a.NetnsCookie] = struct{}{}
	}
	ips := map[netip.Addr]struct{}{}
	for _, k := range podKeys {
		i, found := slices.BinarySearchFunc(idx.all, k, byKey)
		if found {
			was := idx.all[i]
			for _, ip := range was.IPs {
				removeKey(c.claims, ip, k)
				ips[ip] = struct{}{}
			}
		}
		p := c.pod(k)
		switch {
		case p == nil && found:
			idx.all = slices.Delete(idx.all, i, i+1)
			delete(c.quotas, k)
		case p != nil && found:
			idx.all[i] = p
		case p != nil:
			idx.all = slices.Insert(idx.all, i, p)
		}
		if p == nil {
			continue
		}
		c.claim(p)
		for _, ip := range p.IPs {
			ips[ip] = struct{}{}
		}
		// The namespaces of the pod's records may name the new object.
		for key := range c.recordsOf[k] {
			cookies[c.attachments[key].NetnsCookie] = struct{}{}
		}
	}
	for ip := range ips {
		if p := c.owner(idx, ip); p != nil {
			idx.byIP[ip] = p
		} else {
			delete(idx.byIP, ip)
		}
	}
	for cookie := range cookies {
		if p := c.netnsOwner(idx, cookie); p != nil {
			idx.byCookie[cookie] = p
		} else {
			delete(idx.byCookie, cookie)
		}
	}
	c.publish(idx)
}

func byKey(p *Pod, k string) int { return strings.Compare(p.Key(), k) }

// find returns the pod with key k in idx, or nil.
func (idx *index) find(k string) *Pod {
	if i, ok := slices.BinarySearchFunc(idx.all, k, byKey); ok {
		return idx.all[i]
	}
	return nil
}

// pod makes the object of pod k from what the source says and the pod's
// records, as rebuild does; nil when neither knows it. Callers hold mu.
func (c *Cache) pod(k string) *Pod {
	recs := make([]Attachment, 0, len(c.recordsOf[k]))
	for key := range c.recordsOf[k] {
		recs = append(recs, c.attachments[key])
	}
	sp, known := c.fromSource[k]
	if !known && len(recs) == 0 {
		return nil
	}
	slices.SortFunc(recs, func(a, b Attachment) int { return OldestFirst(&a, &b) })
	var p *Pod
	if known {
		spec := sp
		p = &Pod{Namespace: sp.Namespace, Name: sp.Name, UID: sp.UID, IPs: sp.IPs, Spec: &spec}
	} else {
		p = &Pod{Namespace: recs[0].Namespace, Name: recs[0].Name, UID: recs[0].UID}
	}
	for i := range recs {
		a := &recs[i]
		p.Attachment, p.uncaptured = a, !a.Captured
		if len(a.IPs) > 0 {
			p.IPs = a.IPs
		}
		if p.UID == "" {
			p.UID = a.UID
		}
	}
	if p.Quota = c.quotas[k]; p.Quota == nil {
		p.Quota = new(quota.Source)
		c.quotas[k] = p.Quota
	}
	p.families = familiesOf(p.IPs)
	return p
}

// newest returns the newest of the records with those keys (OldestFirst's
// last), nil for none. Callers hold mu.
func (c *Cache) newest(keys map[string]struct{}) *Attachment {
	var last *Attachment
	for key := range keys {
		if a := c.attachments[key]; last == nil || OldestFirst(last, &a) < 0 {
			last = &a
		}
	}
	return last
}

// owner decides who owns ip, as rebuild does: of the pods that claim it,
// the one with a record whose newest record is newest; else the last by
// key. Callers hold mu.
func (c *Cache) owner(idx *index, ip netip.Addr) *Pod {
	var best *Pod
	var bestRec *Attachment
	for k := range c.claims[ip] {
		p := idx.find(k)
		if p == nil {
			continue
		}
		if p.Attachment == nil {
			if bestRec == nil && (best == nil || p.Key() > best.Key()) {
				best = p
			}
			continue
		}
		if a := c.newest(c.recordsOf[k]); bestRec == nil || OldestFirst(bestRec, a) < 0 {
			best, bestRec = p, a
		}
	}
	return best
}

// netnsOwner decides whose the network namespace with that cookie is, as
// rebuild does: the pod of its newest record. Callers hold mu.
func (c *Cache) netnsOwner(idx *index, cookie uint64) *Pod {
	if cookie == 0 {
		return nil
	}
	last := c.newest(c.inNetns[cookie])
	if last == nil {
		return nil
	}
	return idx.find(last.Namespace + "/" + last.Name)
}
