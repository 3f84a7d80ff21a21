package main

import (
	"errors"
	"flag"
	"fmt"
	"strings"

	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/cni"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/redirect"
)

// runCapture: ztdns capture add|del --netns PATH.
func runCapture(args []string) error {
	if len(args) == 0 || (args[0] != "add" && args[0] != "del") {
		return errors.New("usage: ztdns capture add|del --netns PATH [--namespace NS] [--name NAME]")
	}
	verb := args[0]
	fs := flag.NewFlagSet("capture "+verb, flag.ContinueOnError)
	netns := fs.String("netns", "", "the network namespace's `PATH`, e.g. /run/netns/pod1")
	ns := fs.String("namespace", "default", "the pod's namespace: which names it sees")
	name := fs.String("name", "", "the pod's name (default: the netns path)")
	socket := fs.String("socket", control.DefaultSocket, "the agent's control socket `PATH`")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *netns == "" {
		return errors.New("--netns is required")
	}
	req := agent.CaptureRequest{Netns: *netns, Namespace: *ns, Name: *name}
	if verb == "del" {
		return call(*socket, "DELETE", agent.PathCapture, req, nil)
	}
	var row agent.PodRow
	if err := call(*socket, "POST", agent.PathCapture, req, &row); err != nil {
		return err
	}
	fmt.Printf("captured %s/%s (netns cookie %d, %s)\n", row.Namespace, row.Name, row.NetnsCookie, strings.Join(row.IPs, ", "))
	return nil
}

// runPods: ztdns pods.
func runPods(args []string) error {
	fs := flag.NewFlagSet("pods", flag.ContinueOnError)
	socket := fs.String("socket", control.DefaultSocket, "the agent's control socket `PATH`")
	output := fs.String("o", "table", "output format: table or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var rows []agent.PodRow
	if err := call(*socket, "GET", agent.PathPods, nil, &rows); err != nil {
		return err
	}
	// LIMITED counts what the pod's resolver limits refused: queries over
	// its rate, forwarded queries over its share, TCP connections over its
	// share (-o json names them).
	return render(*output, rows, "NAMESPACE\tNAME\tIPS\tNETNS COOKIE\tCAPTURED\tREASON\tMARKED\tREDIRECTED\tRESTORED\tNAMESERVERS\tLIMITED RATE/FWD/TCP", func(r agent.PodRow) string {
		u := r.Resolver
		return fmt.Sprintf("%s\t%s\t%s\t%d\t%v\t%s\t%v\t%d\t%d\t%s\t%d/%d/%d", r.Namespace, r.Name, strings.Join(r.IPs, ","), r.NetnsCookie,
			r.Captured, r.Reason, r.Marked, r.Redirected, r.Restored, strings.Join(r.Nameservers, ","), u.RateLimited, u.ForwardRefused, u.TCPRefused)
	})
}

// runUninstall removes what the agent installed on the node.
func runUninstall(args []string) error {
	fs := flag.NewFlagSet("uninstall", flag.ContinueOnError)
	bpffs := fs.String("bpffs", redirect.DefaultBPFFS, "`DIR` where the agent pinned maps and links")
	cgroup := fs.String("cgroup", "", "cgroup v2 `DIR` the programs were attached to (default: the cgroup2 root)")
	iface := fs.String("interface", redirect.DefaultInterface, "the resolver's interface")
	cniBinDir := fs.String("cni-bin-dir", "", "also remove the CNI plugin from this `DIR` (with --cni-conf-dir)")
	cniConfDir := fs.String("cni-conf-dir", "", "also remove the plugin's entry from the CNI configuration in this `DIR`")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var cniErr error
	if *cniConfDir != "" {
		cniErr = cni.Uninstall(cni.InstallConfig{BinDir: *cniBinDir, ConfDir: *cniConfDir})
	}
	if *cgroup == "" {
		mounts, err := redirect.Cgroup2Mounts()
		if err != nil {
			return err
		}
		if len(mounts) > 0 {
			*cgroup = mounts[0]
		}
	}
	return errors.Join(cniErr, redirect.Uninstall(*bpffs, *cgroup), redirect.RemoveInterface(*iface))
}
