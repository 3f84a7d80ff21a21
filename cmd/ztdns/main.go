// Command ztdns is the node-level DNS redirector for Istio ambient mode: one
// binary for the agent, the operator commands that talk to it, and (when a
// container runtime invokes it) the chained CNI plugin.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/ztdns/ztdns/pkg/cni"
)

// command is one subcommand.
type command struct {
	summary string
	run     func(args []string) error
}

var commands = map[string]command{
	"agent":     {"run the node agent: resolver, capture and control socket", runAgent},
	"table":     {"print what a pod in a namespace can resolve locally", runTable},
	"pods":      {"list the pods the agent knows, with their capture state and counters", runPods},
	"capture":   {"add|del: capture a network namespace's DNS by hand (VMs, tests)", runCapture},
	"status":    {"print the agent's status: ready, what it serves, inputs it could not read", runStatus},
	"uninstall": {"remove the programs, pins and interface the agent installed", runUninstall},
	// What the Helm chart's containers run (node.go).
	"mount-bpffs":  {"mount a bpf filesystem where none is (the chart's opt-in init container)", runMountBPFFS},
	"remove-state": {"empty the agent's state directory (the chart's cleanup mode)", runRemoveState},
	"idle":         {"wait for SIGTERM (the chart's cleanup mode, once the node is clean)", runIdle},
}

func main() {
	// The container runtime runs this same binary as the chained CNI plugin.
	if _, ok := os.LookupEnv("CNI_COMMAND"); ok {
		cni.PluginMain()
		return
	}
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		os.Exit(2)
	}
	cmd, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "ztdns: unknown command %q\n\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err := cmd.run(os.Args[2:]); errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	} else if err != nil {
		fmt.Fprintf(os.Stderr, "ztdns %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	var names []string
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("ztdns: DNS proxying for Istio ambient pods, captured with eBPF.\n\nUsage: ztdns <command> [flags]\n\nCommands:\n")
	for _, n := range names {
		fmt.Fprintf(&b, "  %-10s %s\n", n, commands[n].summary)
	}
	b.WriteString("\nRun 'ztdns <command> -h' for a command's flags.\n")
	fmt.Fprint(os.Stderr, b.String())
}
