// The pods behind the node's interfaces: which recorded pod's network
// namespace is at the other end of each (its veth), for the resolver to
// count a pod asking from its link-local address (fe80::…, zoned with the
// interface its query came in on) against the pod's own limits.

package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/internal/netlinkdump"
	"github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/netns"
	"github.com/ztdns/ztdns/pkg/podcache"
)

// linkOwners maps the agent's interfaces to the recorded network
// namespaces at their other end. The node names a veth's peer namespace
// by an id of its own (nsid, IFLA_LINK_NETNSID); the agent asks the nsid
// of each record's namespace through its path (RTM_GETNSID): one dump of
// the node's links per look, and each namespace asked once, and again
// only when a new link shows its nsid (refresh).
type linkOwners struct {
	pods  *podcache.Cache
	procs capture.ProcNamespaces
	log   *slog.Logger
	// byLink is the owners the resolver reads: the netns cookie at the
	// other end of each interface, by index (podcache.Cache.ByCookie
	// finds its pod).
	byLink atomic.Pointer[map[uint32]uint64]
	wake   chan struct{}
	// onChange are called after each look that changed byLink
	// (OnChange), under mu.
	mu       sync.Mutex
	onChange map[*func()]struct{}

	// The looks' alone (refresh). fd is a netlink socket in the agent's
	// own network namespace, where the resolver's interfaces are; seq its
	// last request's sequence number.
	fd  int
	seq uint32
	// nsids is the node's id of each record's namespace (-1: none yet),
	// by cookie; links the last dump's peer nsid of each interface.
	nsids map[uint64]int32
	links map[uint32]int32
}

func newLinkOwners(pods *podcache.Cache, procs capture.ProcNamespaces, log *slog.Logger) *linkOwners {
	return &linkOwners{pods: pods, procs: procs, log: log, wake: make(chan struct{}, 1), fd: -1, nsids: map[uint64]int32{}, onChange: map[*func()]struct{}{}}
}

// Owner is the pod behind the interface ifindex, nil for none
// (resolver.Links).
func (l *linkOwners) Owner(ifindex uint32) *podcache.Pod {
	m := l.byLink.Load()
	if m == nil {
		return nil
	}
	cookie, ok := (*m)[ifindex]
	if !ok {
		return nil
	}
	return l.pods.ByCookie(cookie)
}

// Owners is every interface with a pod behind it, with the pod
// (resolver.Links): the kernel's rate filter charges the link-local
// sources of each to its pod.
func (l *linkOwners) Owners() map[uint32]*podcache.Pod {
	m := l.byLink.Load()
	if m == nil {
		return nil
	}
	owners := make(map[uint32]*podcache.Pod, len(*m))
	for ifindex, cookie := range *m {
		if p := l.pods.ByCookie(cookie); p != nil {
			owners[ifindex] = p
		}
	}
	return owners
}

// OnChange calls f after each look that changed which interface is whose
// (a change of the pods' records is the pod cache's own OnChange), until
// stop (resolver.Links).
func (l *linkOwners) OnChange(f func()) (stop func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	key := &f
	l.onChange[key] = struct{}{}
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		delete(l.onChange, key)
	}
}

// open opens the netlink socket in the calling thread's network namespace,
// the agent's: run's goroutine may be on a thread in another (a test's).
func (l *linkOwners) open() error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	// The kernel answers at once; a look never waits long for it.
	tv := unix.NsecToTimeval(int64(5 * time.Second))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return fmt.Errorf("netlink socket: %w", err)
	}
	l.fd = fd
	return nil
}

// run looks again whenever the records change, and every
// housekeepingInterval for the links changed under them (a namespace
// captured by hand given its veth later), until ctx ends. It closes the
// socket open opened.
func (l *linkOwners) run(ctx context.Context) {
	defer unix.Close(l.fd)
	stop := l.pods.OnChange(func() {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	})
	defer stop()
	t := time.NewTicker(housekeepingInterval)
	defer t.Stop()
	for {
		if err := l.refresh(); err != nil {
			l.log.Debug("cannot tell which pod is behind which interface; link-local clients count as sources of their own", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-l.wake:
		case <-t.C:
		}
	}
}

// refresh looks at the node's links and the records' namespaces, and
// publishes the owners.
func (l *linkOwners) refresh() error {
	links, err := l.dumpLinks()
	if err != nil {
		return err
	}
	paths := map[uint64]string{}
	l.pods.RangeAttachments(func(_ string, b podcache.Attachment) {
		if b.NetnsCookie != 0 && b.NetnsPath != "" {
			paths[b.NetnsCookie] = b.NetnsPath
		}
	})
	for cookie := range l.nsids {
		if _, ok := paths[cookie]; !ok {
			delete(l.nsids, cookie)
		}
	}
	// A namespace's nsid goes with it, and the node may give it to the
	// next one: the nsid of a link new since the last look is asked
	// again of whoever held it (a record whose namespace died and whose
	// DEL is late), and of those that had none.
	fresh := map[int32]bool{}
	for ifindex, nsid := range links {
		if old, ok := l.links[ifindex]; !ok || old != nsid {
			fresh[nsid] = true
		}
	}
	for cookie, nsid := range l.nsids {
		if fresh[nsid] || (nsid < 0 && len(fresh) > 0) {
			delete(l.nsids, cookie)
		}
	}
	for cookie, path := range paths {
		if _, ok := l.nsids[cookie]; ok {
			continue
		}
		// A namespace gone, or another at its path, is asked again at the
		// next look, until its record goes.
		if nsid, err := l.nsidOf(path, cookie); err == nil {
			l.nsids[cookie] = nsid
		}
	}
	byNsid := make(map[int32]uint64, len(l.nsids))
	twice := map[int32]bool{}
	for cookie, nsid := range l.nsids {
		if nsid < 0 {
			continue
		}
		if _, ok := byNsid[nsid]; ok {
			twice[nsid] = true // one is stale: neither is trusted
		}
		byNsid[nsid] = cookie
	}
	owners := map[uint32]uint64{}
	for ifindex, nsid := range links {
		if cookie, ok := byNsid[nsid]; ok && !twice[nsid] {
			owners[ifindex] = cookie
		}
	}
	l.links = links
	if old := l.byLink.Swap(&owners); old == nil || !maps.Equal(*old, owners) {
		l.changed()
	}
	return nil
}

// changed calls the OnChange functions.
func (l *linkOwners) changed() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for f := range l.onChange {
		(*f)()
	}
}

// nsidOf returns the node's id of the network namespace at path, which
// must be the one with that cookie (a record's); -1 when it has none.
func (l *linkOwners) nsidOf(path string, cookie uint64) (int32, error) {
	pfd, self, err := lookAtNetns(l.procs, path)
	if err != nil {
		return 0, err
	}
	defer unix.Close(pfd)
	if c, err := netns.Cookie(self); err != nil || c != cookie {
		return 0, fmt.Errorf("%s is not the namespace of cookie %d", path, cookie)
	}
	fd, err := unix.Open(self, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	return l.getNsid(fd)
}

// getNsid asks the node's id of the namespace open at fd (RTM_GETNSID).
func (l *linkOwners) getNsid(fd int) (int32, error) {
	// struct rtgenmsg, padded, then the NETNSA_FD attribute.
	var body [4 + unix.SizeofRtAttr + 4]byte
	body[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint16(body[4:], unix.SizeofRtAttr+4)
	binary.NativeEndian.PutUint16(body[6:], unix.NETNSA_FD)
	binary.NativeEndian.PutUint32(body[8:], uint32(fd))
	l.seq++
	seq := l.seq
	// NLM_F_ACK: the answer, then an acknowledgement, ends as a dump's
	// does (netlinkdump.Read).
	if err := netlinkdump.Request(l.fd, unix.RTM_GETNSID, unix.NLM_F_ACK, seq, body[:]); err != nil {
		return 0, fmt.Errorf("send RTM_GETNSID: %w", err)
	}
	var buf [256]byte
	nsid, answered := int32(-1), false
	_, err := netlinkdump.Read(netlinkdump.Receiver(l.fd, buf[:]), seq, func(typ, _ uint16, data []byte) error {
		if typ != unix.RTM_NEWNSID {
			return nil
		}
		answered = true
		netlinkdump.Attrs(data, 4, func(typ uint16, v []byte) {
			if typ == unix.NETNSA_NSID && len(v) >= 4 {
				nsid = int32(binary.NativeEndian.Uint32(v))
			}
		})
		return nil
	})
	switch {
	case err != nil:
		return 0, fmt.Errorf("RTM_GETNSID: %w", err)
	case !answered:
		return 0, errors.New("RTM_GETNSID: no answer")
	}
	return nsid, nil
}

// dumpLinks lists the agent's interfaces whose other end is in another
// network namespace: the node's id of that namespace (IFLA_LINK_NETNSID),
// by interface index. A dump the links changed under is asked again once.
func (l *linkOwners) dumpLinks() (map[uint32]int32, error) {
	buf := make([]byte, 32<<10) // any datagram of a dump (netns.Addrs)
	var links map[uint32]int32
	err := netlinkdump.RetryOnce(func(int) (bool, error) {
		l.seq++
		seq := l.seq
		var ifinfomsg [unix.SizeofIfInfomsg]byte
		if err := netlinkdump.Request(l.fd, unix.RTM_GETLINK, unix.NLM_F_DUMP, seq, ifinfomsg[:]); err != nil {
			return false, fmt.Errorf("send RTM_GETLINK: %w", err)
		}
		recv := netlinkdump.Receiver(l.fd, buf)
		links = map[uint32]int32{}
		return netlinkdump.Read(recv, seq, func(typ, _ uint16, data []byte) error {
			if typ != unix.RTM_NEWLINK || len(data) < unix.SizeofIfInfomsg {
				return nil
			}
			ifindex := binary.NativeEndian.Uint32(data[4:])
			netlinkdump.Attrs(data, unix.SizeofIfInfomsg, func(typ uint16, v []byte) {
				if typ == unix.IFLA_LINK_NETNSID && len(v) >= 4 {
					links[ifindex] = int32(binary.NativeEndian.Uint32(v))
				}
			})
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list the links: %w", err)
	}
	return links, nil
}
