package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// The commands in this file are what the Helm chart's containers run, so
// that the image needs nothing but this binary (no shell, mount or sleep).

// runMountBPFFS mounts a bpf filesystem at --path unless one is there: the
// chart's opt-in privileged init container (bpf.mountFS), for nodes that do
// not mount bpffs at boot. Run with the host's /sys/fs/bpf mounted
// Bidirectional, the mount reaches the node and outlives the pod.
func runMountBPFFS(args []string) error {
	fs := flag.NewFlagSet("mount-bpffs", flag.ContinueOnError)
	path := fs.String("path", "/sys/fs/bpf", "`DIR` to mount the bpf filesystem on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(*path, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", *path, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		fmt.Fprintf(os.Stderr, "%s is a bpf filesystem already\n", *path)
		return nil
	}
	if err := unix.Mount("bpf", *path, "bpf", 0, ""); err != nil {
		return fmt.Errorf("mount -t bpf bpf %s: %w", *path, err)
	}
	fmt.Fprintf(os.Stderr, "mounted a bpf filesystem at %s\n", *path)
	return nil
}

// runRemoveState empties the agent's state directory (the control socket,
// the record of captured pods, the CNI events recorded while it was away),
// keeping the directory itself: the last step of the chart's cleanup mode.
func runRemoveState(args []string) error {
	fs := flag.NewFlagSet("remove-state", flag.ContinueOnError)
	dir := fs.String("dir", "/var/run/ztdns", "the agent's state `DIR` (--socket's directory)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !filepath.IsAbs(*dir) || filepath.Clean(*dir) == "/" {
		return fmt.Errorf("--dir %q: want an absolute path below /", *dir)
	}
	entries, err := os.ReadDir(*dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		errs = append(errs, os.RemoveAll(filepath.Join(*dir, e.Name())))
	}
	return errors.Join(errs...)
}

// runIdle waits for SIGTERM or SIGINT: the container that keeps a cleanup
// pod running once its node is clean.
func runIdle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ContinueOnError)
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return nil
}
