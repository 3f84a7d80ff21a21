package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/redirect"
)

// The commands in this file are what the Helm chart's containers run, so
// that the image needs nothing but this binary (no shell, mount or sleep).

// newMountBPFFSCmd mounts a bpf filesystem at --path unless one is there:
// the chart's opt-in privileged init container (bpf.mountFS), for nodes
// that do not mount bpffs at boot. Run with the host's /sys/fs/bpf mounted
// Bidirectional, the mount reaches the node and outlives the pod.
func newMountBPFFSCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mount-bpffs",
		Short: "Mount a bpf filesystem where none is (the chart's opt-in init container)",
		Args:  cobra.NoArgs,
	}
	path := cmd.Flags().String("path", "/sys/fs/bpf", "`DIR` to mount the bpf filesystem on")
	cmd.RunE = func(*cobra.Command, []string) error { return mountBPFFS(*path) }
	return cmd
}

func mountBPFFS(path string) error {
	mounted, err := redirect.MountBPFFS(path)
	if err != nil {
		return err
	}
	if mounted {
		fmt.Fprintf(os.Stderr, "mounted a bpf filesystem at %s\n", path)
	} else {
		fmt.Fprintf(os.Stderr, "%s is a bpf filesystem already\n", path)
	}
	return nil
}

// newRemoveStateCmd empties the agent's state directory (the marker that
// says ztdns is installed, the control socket, the record of captured pods,
// the CNI events recorded while it was away), keeping the directory itself,
// which the chart's hostPath volume makes anyway: the last step of the
// chart's cleanup mode. Without the marker, the CNI plugin left behind for
// the pods created under ztdns records nothing more.
func newRemoveStateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "remove-state",
		Short: "Empty the agent's state directory (the chart's cleanup mode)",
		Args:  cobra.NoArgs,
	}
	dir := cmd.Flags().String("dir", "/var/run/ztdns", "the agent's state `DIR` (--socket's directory)")
	cmd.RunE = func(*cobra.Command, []string) error {
		if !filepath.IsAbs(*dir) || filepath.Clean(*dir) == "/" {
			return usagef("--dir %q: want an absolute path below /", *dir)
		}
		return removeState(*dir)
	}
	return cmd
}

func removeState(dir string) error {
	// The marker first: a plugin that finds it gone records nothing more,
	// so nothing lands among what is removed below.
	if err := os.Remove(filepath.Join(dir, control.InstalledFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
	}
	return errors.Join(errs...)
}

// newIdleCmd waits for SIGTERM or SIGINT: the container that keeps a
// cleanup pod running once its node is clean.
func newIdleCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "idle",
		Short: "Wait for SIGTERM (the chart's cleanup mode, once the node is clean)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			<-ctx.Done()
			return nil
		},
	}
}
