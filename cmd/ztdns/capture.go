package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/cni"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/redirect"
)

// newCaptureCmd: ztdns capture add|del --netns PATH.
func newCaptureCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "capture add|del --netns PATH",
		Short: "Capture a network namespace's DNS by hand (VMs, tests): add or del",
		Long: `Capture a network namespace's DNS by hand, without a CNI plugin: for a VM, a
test, or a process in a namespace of its own. The agent opens the namespace
itself; what it finds there (cookie, addresses) is what it records, and it
reads the addresses again every 30 s: an address given later is known
within 30 s. A namespace gone (deleted, or made again at its path) frees
its name for the next add.`,
		Example: `  ztdns capture add --netns /run/netns/pod1 -n default --name pod1
  ztdns capture del --netns /run/netns/pod1`,
		// Runnable only to turn "capture" alone, or an unknown verb, into a
		// usage error instead of a help page and success.
		RunE: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("give add or del")
			}
			return usagef("unknown command %q: give add or del", args[0])
		},
	}
	cmd.AddCommand(newCaptureVerbCmd("add", "Mark a network namespace: its DNS goes to the agent"),
		newCaptureVerbCmd("del", "Unmark a network namespace captured by hand"))
	return cmd
}

func newCaptureVerbCmd(verb, short string) *cobra.Command {
	cmd := &cobra.Command{Use: verb + " --netns PATH", Short: short, Args: cobra.NoArgs}
	netns := cmd.Flags().String("netns", "", "the network namespace's `PATH`, e.g. /run/netns/pod1 (required)")
	// del finds the namespace by its path alone: no -n or --name to ignore.
	ns, name := new(string), new(string)
	if verb == "add" {
		ns = cmd.Flags().StringP("namespace", "n", "default", "the pod's namespace `NS`: which names it sees")
		name = cmd.Flags().String("name", "", "the pod's `NAME` (default: the netns path)")
	}
	socket := socketFlag(cmd)
	if err := cmd.MarkFlagRequired("netns"); err != nil {
		panic(err) // the flag was added just above
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		req := control.CaptureRequest{Netns: *netns, Namespace: *ns, Name: *name}
		// What the agent would refuse (400) is the command line's fault.
		if err := req.Validate(); err != nil {
			return usageError{err}
		}
		ctx, cancel := callContext(cmd)
		defer cancel()
		c := client(*socket)
		if verb == "del" {
			return c.CaptureDel(ctx, req)
		}
		row, err := c.CaptureAdd(ctx, req)
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "captured %s/%s (netns cookie %d, %s)\n", row.Namespace, row.Name, row.NetnsCookie, strings.Join(row.IPs, ", "))
		// Marked, yet maybe never redirected: say so, with what to write.
		var st *control.Status
		if s, err := c.Status(ctx); err == nil {
			st = &s
		}
		if w := uncapturedWarning(*netns, st); w != "" {
			fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\n", cmd.CommandPath(), w)
		}
		return nil
	}
	return cmd
}

func newPodsCmd() *cobra.Command {
	return readCommand(&cobra.Command{
		Use:   "pods",
		Short: "List the pods the agent knows, with their capture state and counters",
		Example: `  ztdns pods
  ztdns pods -o wide    # also queries let out while failing open, the container ID and the netns path`,
	}, (*control.Client).Pods, listPrinter(podColumns))
}

// nameserversText is a pod's learned nameservers for its table row:
// "10.96.0.10:53 (slot 1)", with "idle 2s" too when wide, and
// "unconfirmed" for a slot only UDP connects went through (given away
// after 2 s idle instead of 30 s).
func nameserversText(nss []control.PodNameserver, wide bool) string {
	var parts []string
	for _, ns := range nss {
		about := []string{fmt.Sprintf("slot %d", ns.Slot)}
		if wide {
			about = append(about, "idle "+ns.Idle)
		}
		if ns.Unconfirmed {
			about = append(about, "unconfirmed")
		}
		parts = append(parts, fmt.Sprintf("%s (%s)", ns.Address, strings.Join(about, ", ")))
	}
	return strings.Join(parts, ", ")
}

var podColumns = []column[control.PodRow]{
	{header: "NAMESPACE", value: func(r control.PodRow, _ bool) string { return r.Namespace }},
	{header: "NAME", value: func(r control.PodRow, _ bool) string { return r.Name }},
	{header: "IPS", value: func(r control.PodRow, _ bool) string { return strings.Join(r.IPs, ",") }},
	{header: "NETNS COOKIE", value: func(r control.PodRow, _ bool) string { return fmt.Sprint(r.NetnsCookie) }},
	{header: "CAPTURED", value: func(r control.PodRow, _ bool) string { return fmt.Sprint(r.Captured) }},
	{header: "REASON", value: func(r control.PodRow, _ bool) string { return r.Reason }},
	{header: "MARKED", value: func(r control.PodRow, _ bool) string { return fmt.Sprint(r.Marked) }},
	{header: "REDIRECTED", value: func(r control.PodRow, _ bool) string { return fmt.Sprint(r.Redirected) }},
	{header: "RESTORED", value: func(r control.PodRow, _ bool) string { return fmt.Sprint(r.Restored) }},
	// SKIPPED STALE counts queries let out to the pod's own nameservers
	// while capture failed open.
	{header: "SKIPPED STALE", wide: true, value: func(r control.PodRow, _ bool) string { return fmt.Sprint(r.SkippedStale) }},
	// SOCKETS counts the pod's open sockets holding a record of what they
	// addressed (at most --capture-sockets-per-pod).
	{header: "SOCKETS", wide: true, value: func(r control.PodRow, _ bool) string { return fmt.Sprint(r.Sockets) }},
	// NAMESERVERS: each learned slot's, with its number (-o wide: and how
	// long it has been idle) and whether it is unconfirmed.
	{header: "NAMESERVERS", value: func(r control.PodRow, wide bool) string { return nameserversText(r.Nameservers, wide) }},
	{header: "ISTIO DNS RULES", value: func(r control.PodRow, _ bool) string {
		if r.IstioDNSRules == "" {
			return "-"
		}
		return r.IstioDNSRules + " (ztdns answers)"
	}},
	// LIMITED counts what the pod's resolver limits refused: queries over
	// its rate, forwarded queries over its share, replies over its bytes
	// in flight, TCP connections over its share (-o json names them).
	{header: "LIMITED RATE/FWD/BYTES/TCP", value: func(r control.PodRow, _ bool) string {
		u := r.Resolver
		return fmt.Sprintf("%d/%d/%d/%d", u.RateLimited, u.ForwardRefused, u.BytesRefused, u.TCPRefused)
	}},
	{header: "CONTAINER ID", wide: true, value: func(r control.PodRow, _ bool) string { return r.ContainerID }},
	{header: "NETNS PATH", wide: true, value: func(r control.PodRow, _ bool) string { return r.NetnsPath }},
}

func newUninstallCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove the programs, pins and interface the agent installed",
		Long: `Remove what the agent installed on the node: its eBPF programs and pins, the
resolver's interface, and, with --cni-conf-dir, the CNI plugin's entries. Pods
get their own nameservers back at once. The plugin binary stays in
--cni-bin-dir: pods created while ztdns was in the chain run it at their DEL,
with the configuration cached at their ADD, and a missing binary would stop
their primary plugin's DEL too (see deploy/README.md, Uninstall).`,
		Args: cobra.NoArgs,
	}
	bpffs := cmd.Flags().String("bpffs", redirect.DefaultBPFFS, "`DIR` where the agent pinned maps and links")
	cgroup := cmd.Flags().String("cgroup", "", "cgroup v2 `DIR` the programs were attached to (default: the pods' cgroup, kubepods.slice or kubepods, and the cgroup2 root)")
	iface := cmd.Flags().String("interface", redirect.DefaultInterface, "the resolver's interface `NAME`")
	cniBinDir := cmd.Flags().String("cni-bin-dir", "", "the CNI plugin's `DIR`, with --cni-conf-dir: the binary there is left in place, and named in the log")
	cniConfDir := cmd.Flags().String("cni-conf-dir", "", "also remove the plugin's entry from the CNI configuration in this `DIR`")
	procRoot := cmd.Flags().String("proc-root", "/proc", "the node's proc filesystem `DIR`, where the marked pods' network namespaces are found (their sockets kept connected to the resolver are aborted)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		var cniErr error
		if *cniConfDir != "" {
			cniErr = cni.Uninstall(cni.InstallConfig{BinDir: *cniBinDir, ConfDir: *cniConfDir})
		}
		// The marked pods and the resolver's addresses, read before the
		// pins and the interface go; their kept sockets are aborted once
		// nothing redirects, so the sockets their clients open instead
		// reach the pods' own nameservers.
		log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
		marked, markedErr := redirect.PinnedMarks(*bpffs)
		resolvers, addrsErr := redirect.InterfaceAddrs(*iface)
		if err := errors.Join(markedErr, addrsErr); err != nil {
			log.Warn("cannot tell which sockets pods connected to the resolver while captured", "err", err)
		}
		err := redirect.Uninstall(*bpffs, *cgroup)
		capture.ProcNamespaces{Root: *procRoot}.AbortKeptSockets(log, marked, resolvers)
		return errors.Join(cniErr, err, redirect.RemoveInterface(*iface))
	}
	return cmd
}
