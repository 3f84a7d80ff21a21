// Adoption: the pods of this node the rules capture that no CNI event
// announced (they ran before ztdns was installed, or their ADD was lost)
// are found running by their IPs, in the network namespaces a scan of the
// node's processes lists, and recorded. These decisions see namespaces
// only through Namespaces (procns.go reads them from /proc), so they are
// tested without a kernel.

package capture

import (
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ztdns/ztdns/pkg/netns"
	"github.com/ztdns/ztdns/pkg/podcache"
)

// adoptInterval bounds how often the node's processes are scanned for the
// same pods.
const adoptInterval = 30 * time.Second

// AdoptedPrefix starts the container ID of an attachment the controller
// adopted: no runtime told it one.
const AdoptedPrefix = "adopted-"

// Namespaces is how the controller looks into network namespaces.
type Namespaces interface {
	// Cookie returns the cookie of the network namespace at path. An error
	// that wraps netns.ErrNotFound or fs.ErrNotExist says no namespace is
	// there (any more).
	Cookie(path string) (uint64, error)
	// Scan lists the network namespaces the node's processes live in, each
	// once (through its lowest PID), with its addresses, except those of
	// namespaces another user namespace owns (ForeignUserns: any user can
	// make one, with as many as it likes), which Addrs reads when needed.
	// Each namespace is looked into once, however many processes share
	// it, and those known (the namespaces of records, by NsID) not at all:
	// they are listed in Known, by path and NsID alone. Namespaces it could
	// not open are counted in the result, not returned as an error.
	Scan(known map[NsID]bool) (ScanResult, error)
	// Addrs reads the addresses of a namespace a scan found, if the process
	// at its path still lives in it. An error that wraps
	// netns.ErrTooManyAddrs says it has more than a pod has.
	Addrs(n Netns) ([]netip.Addr, error)
}

// Netns is one network namespace a scan found.
type Netns struct {
	// Path opens it: a process's ns/net link under the proc root.
	Path string
	// ID is its nsfs identity, which a scan compares before it looks
	// into a namespace. Unlike the cookie it is reused: a namespace made
	// after another is gone may get its inode.
	ID     NsID
	Cookie uint64
	// Addrs are its addresses; a scan leaves them unread when
	// ForeignUserns or TooManyAddrs.
	Addrs []netip.Addr
	// ForeignUserns says a user namespace other than the node's initial
	// one owns it: an unprivileged user's (unshare -Urn), or a pod's with
	// hostUsers: false.
	ForeignUserns bool
	// TooManyAddrs says it has more addresses than a pod has
	// (netns.MaxAddrs), which were not read past that: it is no
	// pod's.
	TooManyAddrs bool
}

// ScanResult is what a scan found, and what it could not look into.
type ScanResult struct {
	Found []Netns
	// Known are the namespaces of the scan's known set that processes
	// live in, by Path and ID alone: not looked into.
	Known []Netns
	// Denied counts processes whose namespace the agent may not open
	// (EACCES, EPERM), and DeniedErr is the first such error.
	Denied    int
	DeniedErr error
}

// NsID identifies a namespace while it lives: its nsfs device and inode.
// The kernel gives a new namespace the inode of one gone, so over time it
// names several; a netns cookie never does within a boot.
type NsID struct{ Dev, Ino uint64 }

// adoptRunningPods finds the network namespaces of pods on this node that
// should be captured but that no CNI event announced (they started before
// ztdns was installed), by scanning for the namespace that holds the pod's
// IP. It scans when that set of pods changed, and otherwise at most every
// adoptInterval. Callers hold decideMu.
func (c *Controller) adoptRunningPods() {
	if c.cfg.NodeName == "" {
		return // standalone: pods in manifests are not processes here
	}
	deleted := c.recentlyDeleted()
	var want []*podcache.Pod
	for _, p := range c.pods.List() {
		if d, ok := deleted[p.Key()]; ok && d.uid == p.UID {
			continue // its DEL came before the source heard it ended
		}
		if p.Attachment == nil && c.adoptable(p) {
			if captured, _ := c.policy().Decide(p.Namespace, p.Spec, c.namespaceOf(p.Namespace)); captured {
				want = append(want, p)
			}
		}
	}
	// A pod made again under its name (a StatefulSet's) is another pod to
	// look for: its UID is in the key.
	var key strings.Builder
	for _, p := range want {
		key.WriteString(p.Key() + "/" + p.UID + ",")
	}
	now := c.cfg.Now()
	if len(want) == 0 {
		c.missing = nil // none is missing: one wanted again is news
	}
	if len(want) == 0 || (key.String() == c.adoptKey && now.Sub(c.adoptedAt) < adoptInterval) {
		return
	}
	c.adoptKey, c.adoptedAt = key.String(), now
	scan, ok := c.scanNode(0)
	if !ok {
		return
	}
	byIP := c.candidates(scan.Found, want)
	var missing []string
	wasMissing := c.missing
	c.missing = map[string]bool{}
	for _, p := range want {
		n, ok := c.findByIP(byIP, p)
		if !ok {
			missing = append(missing, p.Key())
			k := p.Key() + "/" + p.UID
			if !wasMissing[k] {
				c.log.Warn("a pod to capture is not found running: no network namespace of the node holds its IP; not captured until a CNI ADD or a later scan finds it",
					"pod", p.Key(), "uid", p.UID, "ips", p.IPs)
			}
			c.missing[k] = true
			continue
		}
		att := podcache.Attachment{ContainerID: AdoptedPrefix + strconv.FormatUint(n.Cookie, 10), Namespace: p.Namespace, Name: p.Name,
			UID: p.UID, NetnsPath: n.Path, NetnsCookie: n.Cookie, IPs: p.IPs}
		att.Captured, att.Reason = c.Decide(att)
		if adopted, err := c.adopt(att); err != nil {
			c.log.Error("adopting a running pod failed", "pod", p.Key(), "err", err)
		} else if adopted {
			c.log.Info("adopted a running pod", "pod", p.Key(), "netns", n.Path, "captured", att.Captured)
		}
	}
	// A pod not found may simply not run yet; one whose namespace the agent
	// may not open is a misconfiguration worth saying.
	if len(missing) > 0 && scan.Denied > 0 {
		c.log.Warn("running pods not found: the network namespaces of some processes cannot be opened (the agent needs CAP_SYS_PTRACE and CAP_SYS_ADMIN)",
			"pods", missing, "processes", scan.Denied, "err", scan.DeniedErr)
	}
}

// adoptable reports whether p is a pod adoption would look for, should
// the rules capture it: one of this node's, with an IP.
func (c *Controller) adoptable(p *podcache.Pod) bool {
	return c.cfg.NodeName != "" && p.Spec != nil && p.Spec.NodeName == c.cfg.NodeName && len(p.IPs) > 0
}

// candidates indexes by IP the namespaces a scan found that may be a wanted
// pod's. The node's own are not, nor those recorded for a pod: any pod may
// add another's IP to its own namespace, and two holding it would name
// neither. Nor are those with more addresses than a pod has: whoever owns a
// namespace decides how many, and they are not read past that. Namespaces
// another user namespace owns are read only for an IP that none the node's
// owns holds: of several holding an IP, findByIP prefers those.
func (c *Controller) candidates(found []Netns, want []*podcache.Pod) map[netip.Addr][]Netns {
	byIP := map[netip.Addr][]Netns{}
	var foreign []Netns
	var tooMany []string
	for _, n := range found {
		switch {
		case slices.Contains(c.cfg.HostCookies, n.Cookie), c.pods.ByCookie(n.Cookie) != nil:
		case n.TooManyAddrs:
			tooMany = append(tooMany, n.Path)
		case n.ForeignUserns:
			foreign = append(foreign, n)
		default:
			for _, ip := range n.Addrs {
				byIP[ip] = append(byIP[ip], n)
			}
		}
	}
	unheld := false
	for _, p := range want {
		for _, ip := range p.IPs {
			unheld = unheld || len(byIP[ip]) == 0
		}
	}
	for i := 0; unheld && i < len(foreign); i++ {
		n := foreign[i]
		addrs, err := c.netns.Addrs(n)
		switch {
		case errors.Is(err, netns.ErrTooManyAddrs):
			tooMany = append(tooMany, n.Path)
		case err != nil: // e.g. its process exited since the scan
			c.log.Debug("cannot read a network namespace's addresses", "netns", n.Path, "err", err)
		default:
			n.Addrs = addrs
			for _, ip := range addrs {
				byIP[ip] = append(byIP[ip], n)
			}
		}
	}
	if len(tooMany) > 0 {
		c.log.Warn("network namespaces with more addresses than a pod has are taken for no pod", "max", netns.MaxAddrs, "netns", tooMany)
	}
	return byIP
}

// adopt records and marks a pod found running, unless a CNI ADD recorded
// the pod or its namespace while the scan ran: two records of one sandbox
// would outlive the ADD's DEL, which releases one. It reports whether it
// adopted.
func (c *Controller) adopt(a podcache.Attachment) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.pods.Get(a.Namespace, a.Name); p != nil && p.Attachment != nil {
		return false, nil
	}
	if p := c.pods.ByCookie(a.NetnsCookie); p != nil && p.Attachment != nil {
		return false, nil
	}
	return true, c.applyLocked(a)
}

// findByIP finds the pod's namespace by one of its IPs. Any user may make
// a network namespace holding a pod's IP, so of several holding one the
// namespaces the initial user namespace owns are preferred; a sole holder
// owned by another (a pod with hostUsers: false) is still the pod's. An IP
// several namespaces still claim names none.
func (c *Controller) findByIP(byIP map[netip.Addr][]Netns, p *podcache.Pod) (Netns, bool) {
	for _, ip := range p.IPs {
		cands := byIP[ip]
		if len(cands) > 1 {
			cands = slices.DeleteFunc(slices.Clone(cands), func(n Netns) bool { return n.ForeignUserns })
		}
		switch len(cands) {
		case 0:
			if len(byIP[ip]) > 0 {
				c.log.Warn("not adopting a running pod: several network namespaces owned by other user namespaces hold its IP",
					"pod", p.Key(), "ip", ip, "netns", netnsPaths(byIP[ip]))
			}
		case 1:
			return cands[0], true
		default:
			c.log.Warn("not adopting a running pod: several network namespaces hold its IP",
				"pod", p.Key(), "ip", ip, "netns", netnsPaths(cands))
		}
	}
	return Netns{}, false
}

func netnsPaths(ns []Netns) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.Path)
	}
	return out
}
