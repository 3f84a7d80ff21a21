//go:build linux

package testenv

import (
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// NewBPFFS mounts a private bpf filesystem and returns its mount point.
// Unmounting it at cleanup releases every pin in it (and so every link
// pinned only there): nothing under /sys/fs/bpf is touched.
func NewBPFFS(tb testing.TB) string {
	tb.Helper()
	RequireRoot(tb)
	dir := filepath.Join(tb.TempDir(), "bpffs")
	if err := unix.Mkdir(dir, 0o700); err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	RecordMount(tb, dir)
	if err := unix.Mount("bpffs", dir, "bpf", 0, "mode=0700"); err != nil {
		Unavailable(tb, "cannot mount bpffs: %v", err)
	}
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			tb.Errorf("cleanup: unmount bpffs %s: %v", dir, err)
		}
	})
	return dir
}
