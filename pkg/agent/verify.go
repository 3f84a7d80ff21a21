package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/netns"
)

// Whom the agent believes. A request on the control socket comes from root
// (pkg/control checks), but what it says is still a claim. The agent trusts
// only what it sees itself:
//
//   - the network namespace: it opens the path it is given, never blocking
//     on something that is not a namespace, and reads that namespace's
//     cookie and the addresses configured in it. A CNI ADD whose cookie is
//     not that namespace's, or that claims an IP the namespace does not
//     have, is refused; so is the node's own namespace (the agent's, and
//     that of PID 1), whatever path names it.
//   - the pod's identity, which decides the namespace view its queries get:
//     a network namespace belongs to the first pod recorded in it until that
//     pod's DEL, so an ADD (or `capture add`) cannot give a recorded
//     namespace to another pod; and where the source knows the pod (with
//     --kubeconfig, the Pod object from the API server) the ADD must agree
//     with it to be recorded: the same UID, and a pod on this node that is
//     not on the host's network. The source may lag behind the runtime (a
//     StatefulSet pod made again under its name before the watch saw the
//     new UID), so such an ADD is not refused: the pod starts, not
//     captured and not recorded (sourceDisagrees), and is adopted once the
//     source agrees. A new pod the source has not seen yet is taken on the
//     runtime's word, which the source's object then replaces.

// maxAddedNetnsAddrs bounds the addresses read from the namespace a CNI ADD
// or `capture add` names. That namespace is the runtime's, set up by its
// plugins (or root's choice), not a scan's find, so the bound is far above
// a pod's few; it only keeps one namespace from costing the agent more than
// a few hundred KB.
const maxAddedNetnsAddrs = 4096

// netnsSeen is what the agent found in a network namespace itself.
type netnsSeen struct {
	cookie uint64
	addrs  []netip.Addr
}

// inspectNetns opens the network namespace at path and reads its cookie and
// addresses from that one open file, so the path cannot be swapped between
// the two reads. A path that is missing or not a namespace is Invalid; the
// node's own namespace is Refused.
func (a *Agent) inspectNetns(path string) (netnsSeen, error) {
	fd, self, err := lookAtNetns(capture.ProcNamespaces{Root: a.cfg.ProcRoot}, path)
	if err != nil {
		return netnsSeen{}, control.Invalid(err)
	}
	defer unix.Close(fd)
	cookie, err := netns.Cookie(self)
	if err != nil {
		return netnsSeen{}, control.Invalid(fmt.Errorf("%s: %w", path, err))
	}
	if slices.Contains(a.hostCookies, cookie) {
		return netnsSeen{}, control.Refused(fmt.Errorf("%s is the node's own network namespace (cookie %d): the agent never captures it", path, cookie))
	}
	addrs, err := netns.Addrs(self, maxAddedNetnsAddrs)
	if err != nil {
		return netnsSeen{}, fmt.Errorf("%s: %w", path, err)
	}
	return netnsSeen{cookie: cookie, addrs: addrs}, nil
}

// lookAtNetns opens the path of a network namespace, as seen from the
// node (procs), and checks that it is one. O_PATH opens nothing: a device,
// a FIFO or a file on a stuck FUSE mount at the path is never really
// opened, only looked at, and what is no network namespace goes no
// further. The caller closes fd; self reopens the namespace for real.
func lookAtNetns(procs capture.ProcNamespaces, path string) (fd int, self string, err error) {
	fd, err = unix.Open(procs.NodePath(path), unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, "", fmt.Errorf("network namespace %s: %w", path, &os.PathError{Op: "open", Path: path, Err: err})
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
		unix.Close(fd)
		return -1, "", fmt.Errorf("%s is not a network namespace", path)
	}
	return fd, fmt.Sprintf("/proc/self/fd/%d", fd), nil
}

// verifyAdd checks a CNI ADD against the namespace it names and against the
// pods the agent recorded (see the rule above).
func (a *Agent) verifyAdd(req control.CNIAddRequest) error {
	ns, err := a.inspectNetns(req.Netns)
	if err != nil {
		return err
	}
	if ns.cookie != req.NetnsCookie {
		return control.Refused(fmt.Errorf("the ADD says the cookie of %s is %d, but it is %d", req.Netns, req.NetnsCookie, ns.cookie))
	}
	for _, ip := range req.IPs {
		if !slices.Contains(ns.addrs, ip) {
			return control.Refused(fmt.Errorf("%s is not an address of %s (it has %v)", ip, req.Netns, ns.addrs))
		}
	}
	key := req.PodNamespace + "/" + req.PodName
	if p := a.pods.ByCookie(ns.cookie); p != nil && p.Attachment != nil && p.Key() != key {
		return control.Refused(fmt.Errorf("%s is pod %s's network namespace: an ADD cannot give it to %s", req.Netns, p.Key(), key))
	}
	return nil
}

// sourceDisagrees checks a CNI ADD against what the source says about the
// pod, if it knows it: what it says may be stale, so a disagreement is no
// reason to fail the pod, only not to record the ADD's claim.
func (a *Agent) sourceDisagrees(req control.CNIAddRequest) error {
	key := req.PodNamespace + "/" + req.PodName
	if p := a.pods.Get(req.PodNamespace, req.PodName); p != nil && p.Spec != nil {
		spec := p.Spec
		switch {
		case req.PodUID != "" && spec.UID != "" && req.PodUID != spec.UID:
			return fmt.Errorf("pod %s has UID %s, not %s", key, spec.UID, req.PodUID)
		case a.cfg.NodeName != "" && spec.NodeName != "" && spec.NodeName != a.cfg.NodeName:
			return fmt.Errorf("pod %s runs on node %s, not on this one (%s)", key, spec.NodeName, a.cfg.NodeName)
		case spec.HostNetwork:
			return fmt.Errorf("pod %s is on the host's network: it has no namespace of its own", key)
		}
	}
	return nil
}

// ownNetnsCookie returns the cookie of the calling thread's network
// namespace. It needs no setns (nor the privilege for it): a socket opened
// here is in it.
func ownNetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	return unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
}

// nodeCookies returns the cookies of the agent's own network namespace and
// of the node's PID 1 (under procRoot, the node's /proc): namespaces never
// captured. One it cannot read is logged, once, at level (a warning but
// without capture, see newAgent): the guard then knows only the other (a
// container without the node's /proc, or without the capability to open
// PID 1's namespace, knows only its own).
func nodeCookies(procRoot string, log *slog.Logger, level slog.Level) []uint64 {
	ctx := context.Background()
	var cookies []uint64
	if c, err := ownNetnsCookie(); err == nil {
		cookies = append(cookies, c)
	} else {
		log.Log(ctx, level, "cannot read the agent's own network namespace: it is not refused as the node's to capture add and CNI ADDs", "err", err)
	}
	// In a test's node namespace PID 1's namespace is another one, and it
	// may be out of reach.
	pid1 := filepath.Join(procRoot, "1/ns/net")
	c, err := netns.Cookie(pid1)
	switch {
	case err != nil:
		log.Log(ctx, level, "cannot read the node's network namespace (PID 1's): only the agent's own is refused as the node's to capture add and CNI ADDs",
			"path", pid1, "err", err)
	case !slices.Contains(cookies, c):
		cookies = append(cookies, c)
	}
	return cookies
}
