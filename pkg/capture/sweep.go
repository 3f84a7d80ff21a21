// The sweep: what the controller forgets without an event telling it to,
// at each Redecide and housekeeping. A record is dead when its network
// namespace no longer exists (recordDead), and orphaned when its pod has
// been unknown to the source for a while and its namespace lives on with no
// process in it (orphans.go); both are forgotten with their marks. So are
// marks no record holds (UnmarkStale) and the nameservers learned for
// namespaces no longer marked (SweepNameservers).

package capture

import (
	"errors"
	"io/fs"
	"log/slog"
	"strings"
	"time"

	"github.com/ztdns/ztdns/pkg/netns"
	"github.com/ztdns/ztdns/pkg/podcache"
	"github.com/ztdns/ztdns/pkg/redirect"
)

func (c *Controller) netnsDead(a podcache.Attachment) bool { return NetnsDead(c.netns, a) }

// NetnsDead reports whether the network namespace an attachment records is
// known to be dead, looking through ns: nothing is at its path any more, or
// another namespace is (a process's ns/net whose PID was reused). An error
// that says neither (the agent may not open it, say) is no proof: the
// record stays. An adopted record's path is one process's ns/net: for it,
// this says only that the process left, and the namespace may live on in
// another (recordDead). Exported for an agent without capture, which keeps
// records, none adopted, but no controller.
func NetnsDead(ns Namespaces, a podcache.Attachment) bool {
	if a.NetnsPath == "" {
		return false
	}
	cookie, err := ns.Cookie(a.NetnsPath)
	if err != nil {
		return errors.Is(err, netns.ErrNotFound) || errors.Is(err, fs.ErrNotExist)
	}
	return cookie != a.NetnsCookie
}

// recordDead reports whether the record with that key is dead, to be
// forgotten: its network namespace is (netnsDead) and, for an adopted
// record, no other process holds it either (moveAdopted, which moves the
// record to one that does).
func (c *Controller) recordDead(key string, a podcache.Attachment, live *liveNetns) bool {
	return c.netnsDead(a) && !c.moveAdopted(key, a, live)
}

// dropDeadRecords forgets the dead records (recordDead), so that no
// record, mark or claim on an IP outlives its pod for want of a DEL (an
// adopted pod's DEL may never name it; a DEL may be lost while no agent
// runs). Each look enters the namespace, so it looks at every record at
// most every adoptInterval, as adoption scans do, and at once at those
// whose pod is unknown to the source (by the time the API server forgets a
// pod, its sandbox is torn down). Callers hold decideMu.
func (c *Controller) dropDeadRecords() {
	now := c.cfg.Now()
	all := c.checkedAt.IsZero() || now.Sub(c.checkedAt) >= adoptInterval
	if all {
		c.checkedAt = now
	}
	var live liveNetns
	for key, a := range c.pods.Attachments() {
		if !all && !c.unknownToSource(a) || !c.recordDead(key, a, &live) {
			continue
		}
		if _, ok, err := c.forgetIf(key, a.NetnsCookie, false); ok {
			c.log.Info("pod's network namespace is gone; forgetting it", "pod", a.Namespace+"/"+a.Name, "container", a.ContainerID,
				"netns", a.NetnsPath, "err", err)
		}
	}
}

// dropOrphanedRecords forgets the orphaned records: those whose pod has
// been unknown to the source for unknownToSourceGrace (UnknownSince) and
// whose network namespace lives on with no process in it (Orphaned). That
// no process holds the namespace is read from one scan of the node's
// processes, the adoption scan's when it is recent (scanNode): a scan that
// failed, or could not open every process's namespace, proves nothing and
// forgets nothing. Callers hold decideMu.
func (c *Controller) dropOrphanedRecords() {
	if !c.cfg.PodsWatched || c.cfg.NodeName == "" {
		return
	}
	now := c.cfg.Now()
	due := c.unknown.Due(c.pods, c.pods.Attachments(), now)
	if len(due) == 0 {
		return
	}
	scan, ok := c.scanNode(adoptInterval)
	if !ok {
		return
	}
	for _, r := range Orphaned(c.log, scan, c.nsIDs, due) {
		if _, ok, err := c.forgetIf(r.Key, r.Attachment.NetnsCookie, false); ok {
			LogOrphanForgotten(c.log, r, now, err)
		}
	}
}

// scanNode scans the node's processes, or returns the scan made in this
// pass of Redecide, or within maxAge (0: this pass only). It looks into no
// network namespace known to be a record's or the node's (nsIDs) and
// learns those of the ones it looks into: on a dense node those are most
// of them, each about half a millisecond to look into. ok is false when
// the scan failed (logged). Callers hold decideMu.
func (c *Controller) scanNode(maxAge time.Duration) (ScanResult, bool) {
	now := c.cfg.Now()
	if c.scan.ok && (c.scan.pass == c.pass || maxAge > 0 && now.Sub(c.scan.at) < maxAge) {
		return c.scan.res, true
	}
	recorded := map[uint64]bool{}
	for _, a := range c.pods.Attachments() {
		recorded[a.NetnsCookie] = true
	}
	for _, cookie := range c.cfg.HostCookies {
		recorded[cookie] = true
	}
	known := map[NsID]bool{}
	for cookie, id := range c.nsIDs {
		if recorded[cookie] {
			known[id] = true
		} else {
			delete(c.nsIDs, cookie)
		}
	}
	res, err := c.netns.Scan(known)
	if err != nil {
		c.log.Error("scanning the node's processes for running pods failed", "err", err)
		c.scan = nodeScan{}
		return res, false
	}
	for _, n := range res.Found {
		if recorded[n.Cookie] {
			c.nsIDs[n.Cookie] = n.ID
		}
	}
	c.scan = nodeScan{res: res, ok: true, pass: c.pass, at: now}
	return res, true
}

// nodeScan is a scan of the node's processes and when it was made.
type nodeScan struct {
	res  ScanResult
	ok   bool
	pass uint64
	at   time.Time
}

// ForgetDeadClaims forgets the dead records (recordDead) other than a's
// that claim one of a's IPs, with their marks: a sandbox's record whose
// DEL is late, or was never heard, must not keep an IP the runtime gave
// another pod. The newer record owns the IP either way (podcache's
// AttachOrder); this makes the old one go at once rather than at the next
// full look (dropDeadRecords), when it was the old pod's last claim. A
// record whose namespace lives stays (two sandboxes may claim one IP while
// one of them is torn down).
func (c *Controller) ForgetDeadClaims(a podcache.Attachment) {
	var live liveNetns
	dead := func(key string, b podcache.Attachment) bool { return c.recordDead(key, b, &live) }
	for key, b := range c.pods.DeadClaims(a, dead) {
		if _, ok, err := c.forgetIf(key, b.NetnsCookie, false); ok {
			LogForgottenClaim(c.log, b, a, err)
		}
	}
}

// LogForgottenClaim logs that dead's record was forgotten for by's claim on
// one of its IPs (ForgetDeadClaims, and an agent without capture); err is
// the unmark's, if any.
func LogForgottenClaim(log *slog.Logger, dead, by podcache.Attachment, err error) {
	args := []any{"pod", dead.Namespace + "/" + dead.Name, "container", dead.ContainerID, "netns", dead.NetnsPath, "ips", dead.IPs,
		"by", by.Namespace + "/" + by.Name}
	if err != nil {
		args = append(args, "err", err)
	}
	log.Info("pod's network namespace is gone, and a new pod claims its IP; forgetting it", args...)
}

// liveNetns is where a scan found each network namespace: one scan at
// most, and only when a record asks for it.
type liveNetns struct {
	scanned bool
	paths   map[uint64]string
	err     error // the scan's
}

// moveAdopted keeps an adopted record whose process left its network
// namespace (netnsDead) when another process still holds it (follow), and
// records the path of that process. It reports whether the record stays:
// false for records that are not adopted, and when no process holds the
// namespace; true, without a move, when the scan failed.
func (c *Controller) moveAdopted(key string, a podcache.Attachment, live *liveNetns) bool {
	moved, keep := c.follow(key, a, live)
	if !keep || moved.NetnsPath == a.NetnsPath {
		return keep
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	cur, ok := c.pods.Attachment(key)
	if !ok || cur.NetnsCookie != a.NetnsCookie || c.fenced.Load() {
		return true // forgotten or replaced meanwhile: nothing to move
	}
	cur.NetnsPath = moved.NetnsPath
	c.pods.Attach(cur)
	c.saveOrRetry()
	c.logFollowing(cur)
	return true
}

// follow decides for a record whose path no longer leads to its network
// namespace (netnsDead) whether it stays: an adopted record names a
// process's ns/net, and that process (the lowest PID when it was adopted, or
// a record an older agent made from another PID) can exit while the pod runs
// on. The record stays while a live process holds its namespace, found by a
// fresh scan (live keeps it for the rest of the pass), and is returned
// naming that process; a failed scan keeps it as it is. Records that are not
// adopted do not stay. It takes no lock: Restore calls it holding mu,
// moveAdopted without.
func (c *Controller) follow(key string, a podcache.Attachment, live *liveNetns) (podcache.Attachment, bool) {
	if !strings.HasPrefix(key, AdoptedPrefix) {
		return a, false
	}
	path, held := c.heldAt(a.NetnsCookie, live)
	if held && path != "" {
		a.NetnsPath = path
	}
	return a, held
}

func (c *Controller) logFollowing(a podcache.Attachment) {
	c.log.Info("adopted pod's process is gone; following another process of its network namespace", "pod", a.Namespace+"/"+a.Name, "netns", a.NetnsPath)
}

// heldAt returns where a live process holds the network namespace with
// that cookie, by a scan made once per pass (live). held is false when no
// process holds it; a failed scan is no proof of that: held, at no path.
func (c *Controller) heldAt(cookie uint64, live *liveNetns) (path string, held bool) {
	if !live.scanned {
		live.scanned = true
		scan, err := c.netns.Scan(nil)
		if err != nil {
			c.log.Error("scanning the node's processes for adopted pods' network namespaces failed", "err", err)
			live.err = err
		}
		live.paths = map[uint64]string{}
		for _, n := range scan.Found {
			live.paths[n.Cookie] = n.Path
		}
	}
	if live.err != nil {
		return "", true
	}
	path, held = live.paths[cookie]
	return path, held
}

// unknownToSource reports whether the pod an attachment records is unknown
// to the source: it no longer has it, or has another pod under its name.
func (c *Controller) unknownToSource(a podcache.Attachment) bool { return unknownToSource(c.pods, a) }

// UnmarkStale removes a mark that no attachment records (it reports false
// when there is none with that cookie, or when an attachment records it).
func (c *Controller) UnmarkStale(cookie uint64) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fenced.Load() {
		return false, ErrFenced
	}
	if p := c.pods.ByCookie(cookie); p != nil && p.Attachment != nil {
		return false, nil
	}
	marked, err := c.marker.Pods()
	if err != nil {
		return false, err
	}
	for _, m := range marked {
		if m.NetnsCookie == cookie {
			return true, c.marker.Unmark(cookie)
		}
	}
	return false, nil
}

// SweepNameservers forgets the nameservers learned for network namespaces
// no longer marked, once they are idle (redirect.SweepNameservers): Unmark
// leaves them for sockets connected while the pod was captured.
func (c *Controller) SweepNameservers() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.sweepLocked(); err != nil {
		c.log.Warn("forgetting the nameservers of unmarked network namespaces failed", "err", err)
	}
}

// sweepLocked is SweepNameservers for callers holding mu (which keeps Mark
// from racing the sweep).
func (c *Controller) sweepLocked() error {
	if c.fenced.Load() {
		return nil // the successor's marks are not this agent's to judge
	}
	s, ok := c.marker.(nameserverSweeper)
	if !ok {
		return nil
	}
	n, err := s.SweepNameservers()
	if n > 0 {
		c.log.Info("forgot the nameservers of unmarked network namespaces", "slots", n)
	}
	return err
}

// nameserverSweeper is what *redirect.Redirector does beyond a Marker:
// forget the nameservers learned for network namespaces no longer marked,
// which Unmark can leave behind (see SweepNameservers).
type nameserverSweeper interface {
	SweepNameservers() (int, error)
}

var _ nameserverSweeper = (*redirect.Redirector)(nil)
