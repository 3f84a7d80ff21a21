package agent

import (
	"bufio"
	"os"
	"slices"
	"strings"
)

// Where the agent's own cgroup is, for what it reads of it at scrape
// time: its memory limit (memlimit.go) and its CPU throttling
// (cputhrottle.go).

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
// controller.
func cgroupMount(file, fstype, controller string) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
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
		if len(fields) < 5 || len(after) < 3 || after[0] != fstype || fields[3] != "/" {
			continue // another type, or a bind mount of a cgroup below the root
		}
		if controller == "" || slices.Contains(strings.Split(after[2], ","), controller) {
			return fields[4]
		}
	}
	return ""
}
