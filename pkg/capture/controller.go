// Package capture is the node agent's capture controller. It decides which
// pods' DNS is captured (Istio's ambient rules, namespaces marked by hand,
// never the node's own), keeps the pods map of the capture programs in line
// with those decisions, adopts pods that were running before any CNI event
// announced them, and keeps a record of its attachments so that a restarted
// agent knows whose marks are in the map.
//
// It acts on the data plane only through a Marker (pkg/redirect's
// Redirector in the agent, a fake in tests) and looks into network
// namespaces only through Namespaces, so every decision can be tested
// without a kernel. pkg/agent wires it to the CNI plugin, the control socket
// and the source.
package capture

import (
	"errors"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ztdns/ztdns/pkg/ambient"
	"github.com/ztdns/ztdns/pkg/model"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/redirect"
)

// Reasons the controller gives besides pkg/ambient's.
const (
	// ReasonCaptureOff: the agent runs with --capture=false (given by the
	// agent, which has no controller then).
	ReasonCaptureOff = "capture-off"
	// ReasonHostNetns: the sandbox is the node's own network namespace.
	ReasonHostNetns = "host-netns"
	// ReasonByHand: marked with `ztdns capture add`.
	ReasonByHand = "by-hand"
	// ReasonReleased: marked with `ztdns capture add`, then released with
	// `ztdns capture del` (Release).
	ReasonReleased = "released"
	// ReasonSourceMismatch: a CNI ADD the source contradicts (another UID,
	// another node, the host's network), given by the agent: the pod is not
	// captured and not recorded until the source agrees.
	ReasonSourceMismatch = "source-mismatch"
	// ReasonNotFoundRunning: a pod of this node the rules capture, that no
	// CNI ADD announced and whose network namespace the scan for running
	// pods did not find (none of the node's holds its IP): not captured,
	// and not recorded, until an ADD or a later scan finds it.
	ReasonNotFoundRunning = "not-found-running"
)

// Marker is what the controller does to the capture programs' pods map.
// *redirect.Redirector implements it.
type Marker interface {
	// Mark makes the network namespace with this cookie captured.
	Mark(cookie uint64, pod redirect.PodInfo) error
	// Unmark releases it; an unknown cookie is no error.
	Unmark(cookie uint64) error
	// Pods lists what the map holds.
	Pods() ([]redirect.MarkedPod, error)
}

var _ Marker = (*redirect.Redirector)(nil)

// Config says how the controller decides and where it keeps its record.
type Config struct {
	// StateDir keeps the record of attachments across restarts.
	StateDir string
	// NodeName scopes the pods the controller adopts; empty (standalone
	// mode: pods in manifests are not processes here) adopts none.
	NodeName string
	// DNSCaptureDefault is the node-wide switch for ambient pods
	// (values.cni.ambient.dnsCapture).
	DNSCaptureDefault bool
	// ExcludeNamespaces are never captured, whatever their pods say:
	// istio-cni's excludeNamespaces (agent --exclude-namespaces), whose pods
	// Istio never enrolls.
	ExcludeNamespaces []string
	// PodsWatched says the source watches every pod of the node (a
	// Kubernetes API server; ambient.Policy.PodsWatched): a pod it has not
	// delivered is not captured (ambient.ReasonPodUnknown) until it is,
	// rather than decided on its namespace alone. Redecide, after each
	// snapshot, decides it again.
	PodsWatched bool
	// RequireEnrollment leaves alone a pod the labels put in the mesh that
	// istio-cni has not enrolled (ambient.Policy.RequireEnrollment, only
	// with PodsWatched; agent --require-istio-enrollment): released, after
	// EnrollmentGrace for a sandbox a CNI ADD announced.
	RequireEnrollment bool
	// HostCookies are the node's own network namespaces: never captured.
	HostCookies []uint64
	// BootID is the kernel's boot ID (BootID()), kept with the record on
	// disk: a record of another boot is forgotten, as its netns cookies
	// name this boot's namespaces by chance. Empty: New reads it; a
	// kernel that has none keeps every record.
	BootID string
	Logger *slog.Logger
	// Now is the clock (default time.Now); tests move it.
	Now func() time.Time
}

// Controller decides and marks. Its methods are safe for concurrent use.
type Controller struct {
	cfg    Config
	log    *slog.Logger
	pods   *podcache.Cache
	marker Marker
	netns  Namespaces

	mu sync.Mutex // serialises marking and the state file
	// retry writes the record again after a failed write; nil when the
	// record on disk is current. Guarded by mu, like closed.
	retry  *time.Timer
	closed bool
	// encoded is each record as save last encoded it, by key; keys are
	// their keys, sorted; saves counts the saves; savedSize is the last
	// one's size. Guarded by mu.
	encoded   map[string]*encodedRecord
	keys      []string
	saves     uint64
	savedSize int
	// fenced is set, holding decideMu and mu, when the agent hands over to
	// a successor (Fence): the controller then changes nothing.
	fenced atomic.Bool
	// saveErr is the last failed write's error while the record is not
	// current, for status.
	saveErr atomic.Pointer[error]

	namespaces atomic.Pointer[map[string]*model.Namespace]
	// noIstioCNI says istio-cni is missing from the node's CNI chain
	// (SetNoIstioCNI), and chainTold that SetNoIstioCNI was called.
	noIstioCNI atomic.Bool
	chainTold  atomic.Bool
	// restored is set once Restore has read the previous agent's record:
	// until then Redecide does nothing (see Redecide).
	restored  atomic.Bool
	decideMu  sync.Mutex // serialises Redecide
	adoptKey  string     // the pods the last scan looked for; guarded by decideMu
	adoptedAt time.Time
	// missing are the wanted pods (key/UID) the last scan did not find,
	// each logged once; guarded by decideMu.
	missing map[string]bool
	// checkedAt is when dropDeadRecords last looked at every record;
	// guarded by decideMu.
	checkedAt time.Time
	// pass counts Redecide's passes, and scan is the last scan of the
	// node's processes (scanNode); guarded by decideMu.
	pass uint64
	scan nodeScan
	// nsIDs are the NsIDs of recorded (and the node's own) network
	// namespaces by cookie, as scans found them: a scan does not look
	// into them again. Guarded by decideMu.
	nsIDs map[uint64]NsID
	// unknown is since when the pod of each record has been unknown to
	// the source (dropOrphanedRecords); guarded by decideMu.
	unknown UnknownSince
	// deleted are the pods whose sandbox a CNI DEL released, by
	// namespace/name, that adoption does not look for while the source
	// still lists them (rememberDeletedLocked); guarded by mu.
	deleted map[string]deletedPod
	// repairFailures is how many marks RepairMarks's last pass failed to
	// repair; guarded by mu.
	repairFailures int

	// graceMu guards added, graceTimer and graceClosed (set by Close and
	// Fence, holding mu: mu comes first).
	graceMu sync.Mutex
	// added is when a CNI ADD announced each sandbox (by key) that istio-cni
	// had not enrolled then, while EnrollmentGrace runs (inEnrollmentGrace).
	added map[string]time.Time
	// graceTimer decides again when the first grace in added ends; nil
	// when none is due.
	graceTimer  *time.Timer
	graceClosed bool
	// addedWithoutIstioCNI are the records (by key) of sandboxes a CNI ADD
	// announced while istio-cni was missing from the chain, kept in the
	// record on disk (see decideWithoutIstioCNI). Guarded by graceMu, and
	// changed holding mu too, so that save writes it as it is.
	addedWithoutIstioCNI map[string]bool
}

// deletedPod is a pod whose sandbox a CNI DEL released.
type deletedPod struct {
	namespace, name, uid string
	at                   time.Time
}

// New returns a controller over pods (the agent's registry, which it fills
// with attachments), acting on m and looking into namespaces through ns.
func New(cfg Config, pods *podcache.Cache, m Marker, ns Namespaces) *Controller {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.BootID == "" {
		cfg.BootID = BootID()
	}
	return &Controller{cfg: cfg, log: cfg.Logger, pods: pods, marker: m, netns: ns,
		nsIDs: map[uint64]NsID{}, deleted: map[string]deletedPod{}, added: map[string]time.Time{}, addedWithoutIstioCNI: map[string]bool{}}
}

// BootID returns the kernel's boot ID, a random UUID made at each boot, or
// "" when it cannot be read.
func BootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Decide applies Istio's ambient rules to an attachment, with what the
// source knows about the pod and its namespace right now. Namespaces marked
// by hand are captured until released by hand, the node's own never; then
// pods in an excluded namespace (Config.ExcludeNamespaces) never are. A
// sandbox a CNI ADD announced less than EnrollmentGrace ago that istio-cni
// has not enrolled (yet, as the source has it) is decided as if it had.
// istio-cni missing from the node's CNI chain (SetNoIstioCNI) counts only
// for sandboxes announced since (decideWithoutIstioCNI).
func (c *Controller) Decide(att podcache.Attachment) (bool, string) {
	captured, reason, _ := c.decide(att)
	return captured, reason
}

// decide is Decide, also saying whether istio-cni missing from the chain
// counted (ambient.Policy.NoIstioCNI).
func (c *Controller) decide(att podcache.Attachment) (captured bool, reason string, noIstioCNI bool) {
	switch {
	case att.ContainerID == "" && att.Reason == ReasonReleased:
		return false, ReasonReleased, false
	case att.ContainerID == "":
		return true, ReasonByHand, false
	case slices.Contains(c.cfg.HostCookies, att.NetnsCookie):
		return false, ReasonHostNetns, false
	}
	var spec *model.Pod
	if p := c.pods.Get(att.Namespace, att.Name); p != nil {
		spec = p.Spec
	}
	policy, ns := c.policy(), c.namespaceOf(att.Namespace)
	policy.NoIstioCNI = c.decideWithoutIstioCNI(att)
	inGrace := c.inEnrollmentGrace(att)
	captured, reason = policy.Decide(att.Namespace, spec, ns)
	if reason == ambient.ReasonNotEnrolled && inGrace {
		policy.RequireEnrollment = false
		captured, reason = policy.Decide(att.Namespace, spec, ns)
	}
	return captured, reason, policy.NoIstioCNI
}

// decideWithoutIstioCNI reports whether att is decided as a sandbox
// istio-cni did not set up (ambient.Policy.NoIstioCNI): istio-cni is
// missing from the node's CNI chain and a CNI ADD announced att's sandbox
// since it went (a new sandbox, or one addedWithoutIstioCNI records).
// istio-cni leaving the chain (uninstalled, its DaemonSet moved off the
// node pool, a shutdown it does not take for an upgrade) removes only its
// entry: the pods it enrolled before keep their in-pod rules and their
// annotation, and ztunnel keeps serving them, so they keep their
// annotation's decision. So do records restored, adopted or made by hand,
// whose sandboxes were there before.
func (c *Controller) decideWithoutIstioCNI(att podcache.Attachment) bool {
	if !c.noIstioCNI.Load() || !announcedByADD(att) {
		return false
	}
	key := att.Key()
	c.graceMu.Lock()
	defer c.graceMu.Unlock()
	if c.addedWithoutIstioCNI[key] {
		return true
	}
	cur, recorded := c.pods.Attachment(key)
	return !recorded || cur.NetnsCookie != att.NetnsCookie // this ADD's
}

// announcedByADD reports whether a CNI ADD made the record a, rather than
// adoption or `ztdns capture add`.
func announcedByADD(a podcache.Attachment) bool {
	return a.ContainerID != "" && !strings.HasPrefix(a.ContainerID, AdoptedPrefix)
}

// EnrollmentGrace is how long a sandbox a CNI ADD announced is decided as
// if istio-cni had enrolled its pod when the source does not say so yet
// (Config.RequireEnrollment). istio-cni annotates the pod
// (ambient.istio.io/redirection) during its own CNI ADD, before ztdns's
// (cni.Install keeps ztdns's entry after istio-cni's), but the agent's
// watch may deliver the pod without the annotation first, or deliver the
// pod only after the ADD: refusing then would release an
// enrolled pod for as long as the watch lags. After the grace a pod still
// without it is released (ambient.ReasonNotEnrolled), and captured again
// whenever the annotation comes.
const EnrollmentGrace = 5 * time.Second

// inEnrollmentGrace reports whether att is a sandbox a CNI ADD announced
// less than EnrollmentGrace ago, where enrollment is required. Its grace
// starts at its first decision while no record holds it (the ADD's,
// whatever it decided: the pod may be unknown to the source yet); a record
// restored, adopted or made by hand gets none, as its pod has been running
// and istio-cni has had its time. When the grace ends the controller
// decides again (graceEnded).
func (c *Controller) inEnrollmentGrace(att podcache.Attachment) bool {
	if !c.cfg.RequireEnrollment || !c.cfg.PodsWatched || !announcedByADD(att) {
		return false
	}
	key := att.Key()
	c.graceMu.Lock()
	defer c.graceMu.Unlock()
	now := c.cfg.Now()
	since, ok := c.added[key]
	if !ok {
		if _, recorded := c.pods.Attachment(key); recorded {
			return false
		}
		since = now
		c.added[key] = now
		if c.graceTimer == nil && !c.graceClosed {
			c.graceTimer = time.AfterFunc(EnrollmentGrace, c.graceEnded)
		}
	}
	return now.Sub(since) < EnrollmentGrace
}

// graceEnded forgets the graces that ended, waits for the next one to end,
// and decides again (Redecide) if a sandbox whose grace ended is captured
// while the rules, without the grace, leave it alone (its pod not
// enrolled, or istio-cni not in the chain).
func (c *Controller) graceEnded() {
	c.graceMu.Lock()
	now := c.cfg.Now()
	var ended []string
	var next time.Duration
	for key, since := range c.added {
		left := EnrollmentGrace - now.Sub(since)
		if left <= 0 {
			ended = append(ended, key)
			delete(c.added, key)
			continue
		}
		if next == 0 || left < next {
			next = left
		}
	}
	c.graceTimer = nil
	if next > 0 && !c.graceClosed {
		c.graceTimer = time.AfterFunc(next, c.graceEnded)
	}
	c.graceMu.Unlock()
	for _, key := range ended {
		a, ok := c.pods.Attachment(key)
		if !ok || !a.Captured {
			continue
		}
		if captured, _ := c.Decide(a); !captured {
			c.Redecide()
			return
		}
	}
}

// Unrecorded is the capture decision's reason for p, a pod of the source's
// that no attachment records: the rules' reason when they leave it alone;
// ReasonNotFoundRunning when they capture it, and it is one adoption looks
// for (a pod of this node with an IP), whose network namespace has not
// been found; "" for a pod neither (standalone, or without an IP yet).
func (c *Controller) Unrecorded(p *podcache.Pod) string {
	if p.Spec == nil {
		return ""
	}
	captured, reason := c.policy().Decide(p.Namespace, p.Spec, c.namespaceOf(p.Namespace))
	switch {
	case !captured:
		return reason
	case c.adoptable(p):
		return ReasonNotFoundRunning
	}
	return ""
}

// policy is the node-wide part of Istio's ambient rules. It takes
// istio-cni for in the chain: Decide says when not (decideWithoutIstioCNI),
// and a pod no record holds is adopted on its annotation.
func (c *Controller) policy() ambient.Policy {
	return ambient.Policy{DNSCaptureDefault: c.cfg.DNSCaptureDefault, ExcludeNamespaces: c.cfg.ExcludeNamespaces, PodsWatched: c.cfg.PodsWatched,
		RequireEnrollment: c.cfg.RequireEnrollment}
}

// SetNoIstioCNI says whether istio-cni is missing from the node's CNI
// chain (only with Config.RequireEnrollment), and decides again
// (Redecide) when that changed. While it is, the sandboxes CNI ADDs
// announce are recorded as set up without istio-cni, and are not taken for
// enrolled once their EnrollmentGrace ends (ambient.Policy.NoIstioCNI);
// the others keep their decision (decideWithoutIstioCNI). istio-cni back
// forgets which were: it enrolls the running pods it finds, and leaving
// again is a new moment.
func (c *Controller) SetNoIstioCNI(missing bool) {
	c.chainTold.Store(true)
	changed := c.noIstioCNI.Swap(missing) != missing
	if !missing {
		// After the swap: an ADD applied from now on is not recorded as
		// one without istio-cni, and one applied before is forgotten here.
		c.forgetAddsWithoutIstioCNI()
	}
	if changed {
		c.Redecide()
	}
}

// forgetAddsWithoutIstioCNI forgets which records' sandboxes were set up
// while istio-cni was missing from the chain, on disk too.
func (c *Controller) forgetAddsWithoutIstioCNI() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.graceMu.Lock()
	n := len(c.addedWithoutIstioCNI)
	clear(c.addedWithoutIstioCNI)
	c.graceMu.Unlock()
	// Before Restore the record on disk is the previous agent's, unread.
	if n > 0 && !c.fenced.Load() && c.restored.Load() {
		c.saveOrRetry()
	}
}

// Apply records an attachment and marks or unmarks its netns to match
// a.Captured. Only marking can fail it: the record on disk is bookkeeping
// (see saveOrRetry).
func (c *Controller) Apply(a podcache.Attachment) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.applyLocked(a)
}

func (c *Controller) applyLocked(a podcache.Attachment) error {
	if c.fenced.Load() {
		return ErrFenced
	}
	if err := c.setMark(a); err != nil {
		return err
	}
	prev, replaced := c.pods.Attachment(a.Key())
	if announcedByADD(a) {
		if !replaced || prev.NetnsCookie != a.NetnsCookie {
			// A new sandbox: set up with istio-cni or without, as the
			// chain is now. A record replaced for the same one keeps what
			// it says.
			c.graceMu.Lock()
			if c.noIstioCNI.Load() {
				c.addedWithoutIstioCNI[a.Key()] = true
			} else {
				delete(c.addedWithoutIstioCNI, a.Key())
			}
			c.graceMu.Unlock()
		}
		delete(c.deleted, a.Namespace+"/"+a.Name) // its sandbox is back
		// A CNI ADD (a replayed one, say) of a sandbox adopted before it:
		// the ADD's record is the one its DEL names, and two records of one
		// namespace would leave a mark to whichever goes first.
		for key := range c.pods.AttachmentsInNetns(a.NetnsCookie) {
			if strings.HasPrefix(key, AdoptedPrefix) {
				c.pods.Detach(key)
			}
		}
	}
	c.pods.Attach(a)
	// The record replaced named another network namespace (an ADD that
	// repeats a container ID with a new one): its mark goes with it, unless
	// another record captures that namespace. Netns cookies are not reused,
	// so such a mark would only hold a slot of the pods map, and keep its
	// namespace's nameservers from SweepNameservers, until a restart. An
	// unmark that fails is left to RepairMarks.
	if replaced && prev.Captured && prev.NetnsCookie != a.NetnsCookie && !c.capturedElsewhere(prev.NetnsCookie) {
		if err := c.marker.Unmark(prev.NetnsCookie); err != nil {
			c.log.Warn("cannot unmark the network namespace a replaced record captured; removed at housekeeping",
				"pod", prev.Namespace+"/"+prev.Name, "netnsCookie", prev.NetnsCookie, "err", err)
		}
	}
	c.saveOrRetry()
	return nil
}

// reapply applies a decision made on a copy of a record, if the record is
// still there as copied: a DEL (Forget) that landed after the copy must not
// see its pod marked and recorded again. It reports whether it applied.
func (c *Controller) reapply(a podcache.Attachment) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur, ok := c.pods.Attachment(a.Key()); !ok || cur.NetnsCookie != a.NetnsCookie {
		return false, nil
	}
	return true, c.applyLocked(a)
}

// Forget unmarks and forgets the attachment with that key: a CNI DEL's.
// Adoption does not look for its pod while the source still lists it
// (rememberDeletedLocked).
func (c *Controller) Forget(key string) (podcache.Attachment, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok, err := c.forgetLocked(key)
	if ok {
		c.rememberDeletedLocked(a)
	}
	return a, ok, err
}

// deletedMemory bounds how long adoption leaves alone a pod whose sandbox
// a CNI DEL released while the source still lists it.
const deletedMemory = 5 * time.Minute

// rememberDeletedLocked keeps, for adoption, that a CNI DEL released a's
// sandbox. The runtime tears a sandbox down (the DEL) before the source
// hears that its pod finished or was deleted: the kubelet stops the
// sandbox once the containers are killed or have ended, and the pod's
// final status, and its removal, reach the source after. Until then the
// source lists the pod, running, without a record: adoption
// would look for it, scanning the node's processes for every pod deleted,
// and warn that it is not found running. A pod is left alone while the
// source lists it with that UID, until an ADD records it again, or for
// deletedMemory at most. Records made by hand (no container ID) and
// without a UID are not remembered, nor any without a NodeName: nothing is
// adopted then (adoptRunningPods), so nothing would read, or forget, what
// is remembered. Callers hold mu.
func (c *Controller) rememberDeletedLocked(a podcache.Attachment) {
	if a.ContainerID == "" || a.UID == "" || c.cfg.NodeName == "" {
		return
	}
	c.deleted[a.Namespace+"/"+a.Name] = deletedPod{namespace: a.Namespace, name: a.Name, uid: a.UID, at: c.cfg.Now()}
}

// recentlyDeleted returns the pods CNI DELs released that the source still
// lists, by namespace/name, and forgets the others.
func (c *Controller) recentlyDeleted() map[string]deletedPod {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Now()
	for key, d := range c.deleted {
		p := c.pods.Get(d.namespace, d.name)
		if p == nil || p.Spec == nil || p.Spec.UID != d.uid || now.Sub(d.at) >= deletedMemory {
			delete(c.deleted, key)
		}
	}
	return maps.Clone(c.deleted)
}

// Release stops capturing the network namespace of a record made by hand
// (`ztdns capture del`) and keeps the record, not captured
// (ReasonReleased), for as long as the namespace lives, as a pod's
// record stays when Istio's rules stop capturing it. A socket connected
// while the namespace was captured stays connected to a resolver slot, and
// its queries still reach the resolver: the record tells the resolver
// whose they are, and that they are no longer captured, so it forwards
// them to the pod's own nameserver instead of answering from the table. A
// record whose namespace is dead is forgotten. It returns the record as it
// was.
func (c *Controller) Release(key string) (podcache.Attachment, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fenced.Load() {
		return podcache.Attachment{}, false, ErrFenced
	}
	a, ok := c.pods.Attachment(key)
	if !ok {
		return a, false, nil
	}
	if c.netnsDead(a) {
		return c.forgetLocked(key)
	}
	released := a
	released.Captured, released.Reason = false, ReasonReleased
	return a, true, c.applyLocked(released)
}

// Readdress gives the record with that key, if it still records the
// network namespace with that cookie, the addresses ips, marking its
// namespace again with them when it is captured. A record made by hand has
// the addresses its namespace had at `capture add`; the agent reads them
// again at housekeeping, for a namespace given its address after. It
// returns the record as it was, and whether it changed it.
func (c *Controller) Readdress(key string, cookie uint64, ips []netip.Addr) (podcache.Attachment, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.pods.Attachment(key)
	if !ok || a.NetnsCookie != cookie || slices.Equal(a.IPs, ips) {
		return a, false, nil
	}
	b := a
	b.IPs = slices.Clone(ips)
	if err := c.applyLocked(b); err != nil {
		return a, false, err
	}
	return a, true, nil
}

// forgetIf forgets the attachment with that key if it still records the
// network namespace with that cookie. For a CNI DEL's (cniDel), adoption
// does not look for the pod while the source still lists it
// (rememberDeletedLocked).
func (c *Controller) forgetIf(key string, cookie uint64, cniDel bool) (podcache.Attachment, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur, ok := c.pods.Attachment(key); !ok || cur.NetnsCookie != cookie {
		return podcache.Attachment{}, false, nil
	}
	a, ok, err := c.forgetLocked(key)
	if ok && cniDel {
		c.rememberDeletedLocked(a)
	}
	return a, ok, err
}

func (c *Controller) forgetLocked(key string) (podcache.Attachment, bool, error) {
	if c.fenced.Load() {
		return podcache.Attachment{}, false, ErrFenced
	}
	a, ok := c.pods.Detach(key)
	if !ok {
		return a, false, nil
	}
	// Another record of the namespace that captures it keeps its mark.
	var err error
	if !c.capturedElsewhere(a.NetnsCookie) {
		err = c.marker.Unmark(a.NetnsCookie)
	}
	c.saveOrRetry()
	return a, true, err
}

// capturedElsewhere reports whether a record captures the network
// namespace with that cookie. Callers hold mu.
func (c *Controller) capturedElsewhere(cookie uint64) bool {
	for _, b := range c.pods.AttachmentsInNetns(cookie) {
		if b.Captured {
			return true
		}
	}
	return false
}

// ForgetAdopted releases what the controller adopted of pod
// namespace/name when the runtime's DEL for it names a container the
// controller never heard of (an adopted pod's record is filed under
// AdoptedPrefix and its cookie, as no runtime told it the sandbox's ID).
// netnsPath is the DEL's CNI_NETNS, empty when the runtime removed it
// already. An adopted record is released when it is that namespace, or
// when it is dead (recordDead); one still alive that the DEL does not
// name is left: the DEL may be a repeated one for an older sandbox of the
// same pod. (An adopted record's path is a process's: when that process
// exits but another holds the namespace, the record follows it; see
// moveAdopted.) It returns the records it released.
func (c *Controller) ForgetAdopted(namespace, name, netnsPath string) ([]podcache.Attachment, error) {
	var delCookie uint64
	if netnsPath != "" {
		if cookie, err := c.netns.Cookie(netnsPath); err == nil {
			delCookie = cookie
		}
	}
	var released []podcache.Attachment
	var errs []error
	var live liveNetns
	atts := c.pods.Attachments()
	for _, key := range slices.Sorted(maps.Keys(atts)) {
		a := atts[key]
		if !strings.HasPrefix(key, AdoptedPrefix) || a.Namespace != namespace || a.Name != name {
			continue
		}
		if a.NetnsCookie != delCookie && !c.recordDead(key, a, &live) {
			continue
		}
		a, ok, err := c.forgetIf(key, a.NetnsCookie, true)
		if ok {
			released = append(released, a)
		}
		errs = append(errs, err) // ErrFenced forgets nothing
	}
	return released, errors.Join(errs...)
}

// SetNamespaces keeps the source's namespaces for decisions. Until the
// first call Redecide does nothing: every namespace would look unlabelled.
func (c *Controller) SetNamespaces(list []model.Namespace) {
	m := make(map[string]*model.Namespace, len(list))
	for i := range list {
		m[list[i].Name] = &list[i]
	}
	c.namespaces.Store(&m)
}

func (c *Controller) namespaceOf(name string) *model.Namespace {
	if m := c.namespaces.Load(); m != nil {
		return (*m)[name]
	}
	return nil
}

// Redecide forgets the records whose network namespace is dead
// (dropDeadRecords) or orphaned (dropOrphanedRecords), re-applies the rules
// to every other recorded pod, marking and unmarking those whose decision
// changed (how a namespace label or a pod annotation added at run time
// takes effect, without a restart), then adopts running pods that should
// be captured and that no CNI event announced. It does nothing before the
// source's first snapshot (SetNamespaces) and before Restore.
func (c *Controller) Redecide() {
	// Before the source's first snapshot every namespace looks unlabelled:
	// deciding then would unmark every restored pod until it arrives.
	if c.namespaces.Load() == nil {
		return
	}
	// Before Restore has read the previous agent's record the cache holds
	// none of its pods: deciding then would adopt every captured running
	// pod, and each adoption writes the record, overwriting the one Restore
	// is yet to read (by-hand and ADD records would be lost, and their marks
	// removed as stale).
	if !c.restored.Load() {
		return
	}
	c.decideMu.Lock()
	defer c.decideMu.Unlock()
	if c.fenced.Load() {
		return
	}
	c.pass++
	c.dropDeadRecords()
	c.dropOrphanedRecords()
	for _, att := range c.pods.Attachments() {
		captured, reason, noIstioCNI := c.decide(att)
		if captured == att.Captured && reason == att.Reason {
			continue
		}
		att.Captured, att.Reason = captured, reason
		applied, err := c.reapply(att)
		if err != nil {
			c.log.Error("applying a changed capture decision failed", "pod", att.Namespace+"/"+att.Name, "err", err)
			continue
		}
		switch {
		case !applied:
		case reason == ambient.ReasonNotEnrolled && noIstioCNI:
			c.log.Warn("pod is in the ambient mesh by its labels, but its sandbox was made while istio-cni was not in the node's CNI chain, so istio-cni did not set it up; not capturing its DNS",
				"pod", att.Namespace+"/"+att.Name, "captured", captured, "reason", reason)
		case reason == ambient.ReasonNotEnrolled:
			// A partial Istio failure to see: kube-dns answers it now.
			c.log.Warn("pod is in the ambient mesh by its labels, but istio-cni has not enrolled it (no ambient.istio.io/redirection: enabled or pending); not capturing its DNS",
				"pod", att.Namespace+"/"+att.Name, "captured", captured, "reason", reason)
		default:
			c.log.Info("capture decision changed", "pod", att.Namespace+"/"+att.Name, "captured", captured, "reason", reason)
		}
	}
	c.adoptRunningPods()
}

func (c *Controller) setMark(a podcache.Attachment) error {
	if a.NetnsCookie == 0 {
		return errors.New("no network namespace cookie")
	}
	if !a.Captured {
		return c.marker.Unmark(a.NetnsCookie)
	}
	info := redirect.PodInfo{}
	for _, ip := range a.IPs {
		switch {
		case ip.Is4() && !info.IPv4.IsValid():
			info.IPv4 = ip
		case ip.Is6() && !info.IPv6.IsValid():
			info.IPv6 = ip
		}
	}
	return c.marker.Mark(a.NetnsCookie, info)
}

// ErrFenced is what the controller answers once its agent handed over to
// a successor (Fence): the successor keeps the marks and the record now.
var ErrFenced = errors.New("capture: handed over to a new agent")

// Fence makes the controller change nothing any more, for good: no mark,
// no record in memory or on disk, no sweep; what is under way finishes
// first. An agent that handed its sockets to a successor calls it before
// saying it released them: the successor, which marks pods and writes the
// record from then on, must not race an old agent that lingers. Decisions
// (Redecide) and writes return at once after it; those that would change
// something return ErrFenced.
func (c *Controller) Fence() {
	c.decideMu.Lock()
	defer c.decideMu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fenced.Store(true)
	c.closeLocked()
}

// Close stops retrying the record; the marks stay.
func (c *Controller) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeLocked()
}

// closeLocked is Close for callers holding mu.
func (c *Controller) closeLocked() {
	c.closed = true
	if c.retry != nil {
		c.retry.Stop()
	}
	c.graceMu.Lock()
	c.graceClosed = true
	if c.graceTimer != nil {
		c.graceTimer.Stop()
	}
	c.graceMu.Unlock()
}
