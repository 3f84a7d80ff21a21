//go:build linux

// Which cgroup the programs attach to by default, and why not the root.
//
// Cilium's socket LB attaches its connect/sendmsg/recvmsg/getpeername
// programs at the cgroup2 root. Two things go wrong when ztdns attaches
// there too:
//   - Programs on one cgroup run in the order they were attached. Cilium's
//     first, it rewrites a query to the cluster DNS Service (10.96.0.10:53)
//     to a CoreDNS pod's address before ztdns's program sees it: ztdns
//     learns the backend's address, and with --capture-nameservers listing
//     the Service's, captures nothing. Which one attached first changes
//     with a reboot.
//   - For each hook Cilium has off, its agent detaches at start every
//     program on the root cgroup with BPF_PROG_DETACH; a program attached
//     through a bpf_link cannot be detached so, the kernel answers ENOENT,
//     and Cilium's datapath fails to initialize (cilium/cilium#43877).
//
// Programs on a descendant cgroup run before those of its ancestors: the
// kernel builds each cgroup's effective program array in
// compute_effective_progs (kernel/bpf/cgroup.c) walking from the cgroup up
// to the root, appending each level's programs after those below it (an
// ancestor's only when attached with BPF_F_ALLOW_MULTI, which links
// always are, and Cilium's too). So by default ztdns attaches to the
// kubelet's cgroup of all pods, directly under the cgroup2 root:
// kubepods.slice (the systemd cgroup driver) or kubepods (cgroupfs). Every
// pod's processes are under it, ztunnel's included (its in-pod sockets
// with them); the host's processes are not, nor the programs' view of any
// socket outside it. Where neither exists (no kubelet: a VM, a laptop,
// --config-dir), the root, as before.

package redirect

import (
	"errors"
	"path/filepath"
)

// podsCgroupNames are the names of the kubelet's cgroup of all pods under
// the cgroup2 root: the systemd driver's, then cgroupfs's.
var podsCgroupNames = []string{"kubepods.slice", "kubepods"}

// chooseCgroup is the cgroup to attach to under the cgroup2 hierarchy whose
// root is root, and why: the pods' cgroup when there is one, else root.
func chooseCgroup(root string) (path, why string) {
	for _, name := range podsCgroupNames {
		dir := filepath.Join(root, name)
		if checkCgroup(dir) == nil {
			return dir, "the pods' cgroup (" + name + " under the cgroup2 root): programs there run before the root's, where Cilium's socket LB attaches"
		}
	}
	return root, "the cgroup2 root: no kubepods.slice or kubepods under it (no kubelet on this host)"
}

// cgroup2Root is the first cgroup2 mount in /proc/mounts.
func cgroup2Root() (string, error) {
	mounts, err := Cgroup2Mounts()
	if err != nil {
		return "", err
	}
	if len(mounts) == 0 {
		return "", errors.New("no cgroup2 filesystem is mounted (none in /proc/mounts), and ztdns attaches to cgroup v2")
	}
	return mounts[0], nil
}

// Cgroup is the cgroup this Redirector's programs attach to, and why that
// one: given (Config.CgroupPath), the pods' or the cgroup2 root.
func (r *Redirector) Cgroup() (path, why string) {
	return r.cfg.CgroupPath, r.cfg.cgroupWhy
}
