// Command ztdns is the node-level DNS redirector for Istio ambient mode: one
// binary for the agent, the operator commands that talk to it, and (when a
// container runtime invokes it) the chained CNI plugin.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/ztdns/ztdns/pkg/cni"
)

// Exit statuses, as kubectl and most GNU tools use them.
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and failed (the agent said no, a file was missing)
	exitUsage   = 2 // the command line was wrong: nothing was done
)

// exitStatusHelp ends every command's --help.
const exitStatusHelp = `
Exit status: 0 success, 1 failure, 2 usage error (unknown command or flag, bad value).
`

func main() {
	// The container runtime runs this same binary as the chained CNI plugin;
	// that path comes first and builds nothing else.
	if _, ok := os.LookupEnv("CNI_COMMAND"); ok {
		cni.PluginMain()
		return
	}
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command line (without the program name) and returns the
// process's exit status. Errors go to stderr as one line naming the command,
// plus a line on what to do for a hinted error, and, for usage errors,
// where to find the usage.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot()
	root.SetArgs(oneDashLongFlags(root, args))
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	if cmd == nil {
		cmd = root
	}
	fmt.Fprintf(stderr, "%s: %v\n", cmd.CommandPath(), err)
	if h := new(hinted); errors.As(err, h) {
		fmt.Fprintln(stderr, h.hint)
	}
	if errors.As(err, new(failure)) {
		return exitFailure
	}
	fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	return exitUsage
}

// newRoot builds the command tree.
func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "ztdns",
		Short: "DNS proxying for Istio ambient pods, captured with eBPF",
		Long: `ztdns answers the DNS queries of Istio ambient pods on their node: a resolver
that knows the cluster's Services and ServiceEntries as each pod's namespace
sees them, and eBPF programs that send the pods' port-53 traffic to it.

Flags take GNU spellings (--socket PATH, --socket=PATH, -n NS, -o json); the
single-dash long spellings of earlier releases (-socket PATH) still work.`,
		// run prints errors itself, with the exit status they map to, and
		// no usage dump after an error that has nothing to do with usage.
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	// Add to cobra's usage rather than replace its template: a template
	// would link text/template, whose reflection keeps every exported method
	// of every type in the binary (tens of megabytes).
	usage := root.UsageFunc()
	root.SetUsageFunc(func(c *cobra.Command) error {
		if err := usage(c); err != nil {
			return err
		}
		_, err := fmt.Fprint(c.OutOrStderr(), exitStatusHelp)
		return err
	})
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return err }) // usage (exit 2)
	root.AddCommand(newAgentCmd(), newTableCmd(), newPodsCmd(), newStatusCmd(), newCaptureCmd(), newUninstallCmd(), newVersionCmd(), newLogCmd(),
		// What the Helm chart's containers run (node.go).
		newMountBPFFSCmd(), newRemoveStateCmd(), newIdleCmd())
	// Make the tree whole now (cobra adds these when it executes), so that
	// every command's run errors are marked below.
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "completion" { // `completion nosh`: a usage error, not a help page and success
			// Runnable, cobra refuses an unknown shell as it does an
			// unknown command; this is for none at all.
			c.RunE = func(*cobra.Command, []string) error { return usagef("give bash, zsh, fish or powershell") }
		}
		if c.Name() == "help" { // `help bogus`: a usage error, not a help page and success
			show := c.Run
			c.RunE = func(c *cobra.Command, args []string) error {
				if _, _, err := c.Root().Find(args); err != nil {
					return usageError{err}
				}
				show(c, args)
				return nil
			}
		}
	}
	markFailures(root)
	return root
}

// failure is the error of a command that ran and failed: exit status 1.
// Whatever else Execute returns (an unknown command or flag, a missing or
// malformed value, a usageError from a command) is a usage error: 2.
type failure struct{ err error }

func (f failure) Error() string { return f.err.Error() }
func (f failure) Unwrap() error { return f.err }

// usageError is what a command returns when its own checks find the command
// line wrong (two flags that exclude each other, a value out of range).
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// markFailures wraps the RunE of c and its subcommands so that their errors,
// unless they are usage errors, are failures; a call the control socket's
// permissions kept this user from says so (socketDenied).
func markFailures(c *cobra.Command) {
	if runE := c.RunE; runE != nil {
		c.RunE = func(cmd *cobra.Command, args []string) error {
			err := runE(cmd, args)
			if err == nil || errors.As(err, new(usageError)) {
				return err
			}
			return failure{socketDenied(cmd, err)}
		}
	}
	for _, sub := range c.Commands() {
		markFailures(sub)
	}
}
