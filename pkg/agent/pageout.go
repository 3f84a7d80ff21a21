package agent

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// dropStartupPages asks the kernel to take back the pages of the agent's
// own binary that it has mapped so far (MADV_PAGEOUT), and returns how
// many bytes of them it mapped before.
//
// Starting touches far more of the binary than serving does: package
// initialisers, flag parsing, the first list of every watched kind, YAML
// and JSON decoding, the first table build. Those pages stay mapped, and
// counted in the agent's resident memory, although an agent that serves
// never runs that code again (about 10 of 19 MB). Called once the first
// table is served, this leaves mapped only what is used from then on,
// which comes back by page faults as it runs; the page cache keeps the
// pages another process still maps. Read-only mappings only: nothing is
// written back, and nothing writable (data, heap) is touched.
func dropStartupPages() (int64, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0, fmt.Errorf("finding the agent's binary: %w", err)
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, fmt.Errorf("reading the agent's mappings: %w", err)
	}
	defer f.Close()
	before, _ := residentFile()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 00400000-00eea000 r-xp 00000000 fe:00 10010876   /path/to/ztdns
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[5] != exe || strings.Contains(fields[1], "w") {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if !ok || err1 != nil || err2 != nil || end <= start {
			continue
		}
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(start), uintptr(end-start), unix.MADV_PAGEOUT); errno != 0 {
			return before, fmt.Errorf("madvise(MADV_PAGEOUT) on %s: %w", fields[0], errno)
		}
	}
	if err := sc.Err(); err != nil {
		return before, fmt.Errorf("reading the agent's mappings: %w", err)
	}
	return before, nil
}

// residentFile is RssFile of /proc/self/status, in bytes: the file-backed
// pages the process has mapped (its binary's, nearly all).
func residentFile() (int64, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no RssFile in /proc/self/status")
}
