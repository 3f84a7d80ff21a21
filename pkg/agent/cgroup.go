package agent

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Where the agent's own cgroup is, for what it reads of it: its memory
// limit (memlimit.go) and its CPU throttling (cputhrottle.go). Found once
// at start (findSelfCgroup): a process stays in its cgroup, and a
// container restarted is a new process.
//
// /proc/self/cgroup names the cgroup relative to the root of the agent's
// cgroup namespace. In a container with a namespace of its own (containerd
// and CRI-O on cgroup v2) that is "/", and it is right only under the
// container's own cgroup mount, whose root is the container's cgroup. The
// chart mounts the node's hierarchy over it (capture attaches at the
// node's root): there "/" is the node's root cgroup, whose limit is none.
// So a directory found from /proc/self/cgroup counts only if its
// cgroup.procs lists the agent; else the agent looks for its pod's cgroup
// by the pod's UID (Config.PodUID) under the kubelet's hierarchy, as the
// systemd driver names it (kubepods.slice/kubepods-burstable.slice/
// kubepods-burstable-pod<uid, - as _>.slice) or cgroupfs does
// (kubepods/burstable/pod<uid>; a Guaranteed pod's directly under
// kubepods), and its container's cgroup beneath it: the one whose
// cgroup.procs lists the agent.

// selfCgroup is the agent's cgroup in each hierarchy it reads.
type selfCgroup struct {
	v2     cgroupDir // the cgroup2 hierarchy
	memory cgroupDir // the v1 memory controller's (a v1 or hybrid host)
	cpu    cgroupDir // the v1 cpu controller's
}

// cgroupDir is the agent's cgroup in one hierarchy.
type cgroupDir struct {
	mount string // where the hierarchy's root (as far as it shows) is mounted
	dir   string // the cgroup's directory, under mount; "" when not found
	found string // how it was found, or why not, for the log
}

// findSelfCgroup finds the cgroup of the process whose /proc directory is
// proc and whose PID (in the agent's PID namespace, as cgroup.procs shows
// it) is pid, in each hierarchy; podUID, when set, is its pod's.
func findSelfCgroup(proc string, pid int, podUID string) selfCgroup {
	return selfCgroup{
		v2:     findCgroup(proc, pid, podUID, "cgroup2", ""),
		memory: findCgroup(proc, pid, podUID, "cgroup", "memory"),
		cpu:    findCgroup(proc, pid, podUID, "cgroup", "cpu"),
	}
}

// findCgroup finds the process's cgroup in the cgroup2 hierarchy or the v1
// one holding controller: from proc's cgroup file when the directory it
// names lists pid (or its cgroup.procs cannot be read), else by podUID.
func findCgroup(proc string, pid int, podUID, fstype, controller string) cgroupDir {
	path, ok := cgroupPath(filepath.Join(proc, "cgroup"), controller)
	if !ok {
		return cgroupDir{found: "not in " + filepath.Join(proc, "cgroup")}
	}
	mount, root := cgroupMount(filepath.Join(proc, "mountinfo"), fstype, controller)
	if mount == "" {
		return cgroupDir{found: "hierarchy not mounted"}
	}
	why := "the hierarchy mounted is above the agent's cgroup namespace"
	if root == "/" {
		dir := filepath.Join(mount, path)
		listed, readable := cgroupLists(dir, pid)
		if listed || !readable {
			return cgroupDir{mount: mount, dir: dir, found: "/proc/self/cgroup"}
		}
		why = "the cgroup /proc/self/cgroup names (" + path + ") does not hold the agent: a cgroup namespace of its own, under the node's hierarchy"
	}
	if podUID == "" {
		return cgroupDir{mount: mount, found: why + "; no pod UID to look for"}
	}
	pod := findPodCgroup(mount, podUID)
	if pod == "" {
		return cgroupDir{mount: mount, found: why + "; no cgroup of pod " + podUID + " under kubepods"}
	}
	if ctr := findListing(pod, pid); ctr != "" {
		return cgroupDir{mount: mount, dir: ctr, found: "its container's, under its pod's (by the pod's UID)"}
	}
	return cgroupDir{mount: mount, dir: pod, found: "its pod's, by the pod's UID (no container's cgroup beneath lists the agent)"}
}

// cgroupLists says whether dir's cgroup.procs lists pid, and whether it
// could be read.
func cgroupLists(dir string, pid int) (listed, readable bool) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return false, false
	}
	return slices.Contains(strings.Fields(string(b)), strconv.Itoa(pid)), true
}

// findPodCgroup looks for the cgroup of the pod with uid under the
// hierarchy mounted at mount: the kubelet's pod directories, under
// kubepods (a --cgroup-root, such as kind's kubelet.slice, above it),
// named pod<uid> (cgroupfs) or *-pod<uid with - as _>.slice (systemd). It
// reads only directories whose names say they lead there, four levels at
// most: the root, kubepods and a QoS class's.
func findPodCgroup(mount, uid string) string {
	names := []string{"pod" + uid, "pod" + uid + ".slice", "pod" + strings.ReplaceAll(uid, "-", "_") + ".slice"}
	matches := func(name string) bool {
		for _, n := range names {
			if name == n || strings.HasSuffix(name, "-"+n) {
				return true
			}
		}
		return false
	}
	level := []string{mount}
	for range 4 {
		var next []string
		for _, dir := range level {
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				name := e.Name()
				if !e.IsDir() {
					continue
				}
				if matches(name) {
					return filepath.Join(dir, name)
				}
				pod := strings.HasPrefix(name, "pod") || strings.Contains(name, "-pod")
				qos := name == "burstable" || name == "besteffort"
				if !pod && (strings.Contains(name, "kube") || qos && strings.Contains(filepath.Base(dir), "kube")) {
					next = append(next, filepath.Join(dir, name))
				}
			}
		}
		level = next
	}
	return ""
}

// findListing is the cgroup under pod (a container's, or one of its own
// beneath, two levels at most) whose cgroup.procs lists pid; "" if none.
func findListing(pod string, pid int) string {
	level := []string{pod}
	for range 2 {
		var next []string
		for _, dir := range level {
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				if !e.IsDir() {
					continue
				}
				sub := filepath.Join(dir, e.Name())
				if listed, _ := cgroupLists(sub, pid); listed {
					return sub
				}
				next = append(next, sub)
			}
		}
		level = next
	}
	return ""
}

// cgroupPath reads a /proc/PID/cgroup file: the process's cgroup v2 path
// (controller "") or the path in the v1 hierarchy that holds controller.
func cgroupPath(file, controller string) (string, bool) {
	f, err := os.Open(file)
	if err != nil {
		return "", false
	}
	defer f.Close()
	for sc := bufio.NewScanner(f); sc.Scan(); {
		// hierarchy-ID:controller-list:cgroup-path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if controller == "" && parts[0] == "0" && parts[1] == "" ||
			controller != "" && slices.Contains(strings.Split(parts[1], ","), controller) {
			return parts[2], true
		}
	}
	return "", false
}

// cgroupMount finds where a cgroup hierarchy is mounted, from a
// /proc/PID/mountinfo file: the cgroup2 one, or the v1 one holding
// controller; and the root of the mount as the file shows it, relative
// to the reader's cgroup namespace. A mount of the namespace's root ("/")
// comes first; else one of a cgroup above it ("/.." or "/../..": the
// node's hierarchy, mounted into a container with a cgroup namespace of
// its own). A bind mount of a cgroup below the root is none.
func cgroupMount(file, fstype, controller string) (mount, root string) {
	f, err := os.Open(file)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID parent major:minor root mountpoint options [optional...] - fstype source superoptions
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, after := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(after) < 3 || after[0] != fstype {
			continue
		}
		if controller != "" && !slices.Contains(strings.Split(after[2], ","), controller) {
			continue
		}
		switch r := fields[3]; {
		case r == "/":
			return fields[4], r
		case mount == "" && strings.Trim(strings.ReplaceAll(r, "/..", ""), "/") == "" && strings.HasPrefix(r, "/.."):
			mount, root = fields[4], r
		}
	}
	return mount, root
}
