package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/resolver/forward"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

func newStatusCmd() *cobra.Command {
	cmd := readCommand(&cobra.Command{
		Use:   "status",
		Short: "Print the agent's status: ready, version, what it serves, inputs it could not read",
		Example: `  ztdns status
  ztdns status -o json | jq .ready`,
	}, (*control.Client).Status, func(w io.Writer, format string, st control.Status) error {
		return printOutput(w, format, st, func(w io.Writer, wide bool) { statusTable(w, st, wide) })
	})
	get := cmd.RunE
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		err := get(cmd, args)
		if errors.Is(err, control.ErrUnreachable) {
			return hinted{err, agentDownHint}
		}
		return err
	}
	return cmd
}

// agentDownHint follows `ztdns status`'s error when no agent answers: what
// captured pods get meanwhile (README, "Fail open") and where to look.
const agentDownHint = "If the agent is down, captured pods fail open: their queries go to their own nameservers (the cluster DNS, usually), around ztdns, " +
	"at once after a clean stop, within --heartbeat-stale (3s) after a crash. " +
	"Check the agent: its pod (kubectl -n kube-system get pod -l app.kubernetes.io/name=ztdns --field-selector spec.nodeName=NODE), " +
	"or its unit (systemctl status ztdns; journalctl -u ztdns), and --socket if the agent's is not the default."

// hinted is an error followed, on a line of its own, by what to do about
// it (run prints it).
type hinted struct {
	err  error
	hint string
}

func (h hinted) Error() string { return h.err.Error() }
func (h hinted) Unwrap() error { return h.err }

// statusShownWarnings is how many table warnings `ztdns status` shows
// without -o wide.
const statusShownWarnings = 5

// statusTable writes st as "Field:<tab>value" lines; a list continues on
// lines of its own in the value column. Values are shown escaped (shown):
// one line each, whatever a manifest's file name or an error holds.
func statusTable(w io.Writer, st control.Status, wide bool) {
	line := func(field, value string) { fmt.Fprintf(w, "%s:\t%s\n", field, shown(value)) }
	list := func(field string, values []string) {
		for i, v := range values {
			if i == 0 {
				line(field, v)
			} else {
				fmt.Fprintf(w, "\t%s\n", shown(v))
			}
		}
	}
	switch {
	case st.Ready && st.SourceFailing != "":
		line("Ready", "yes, "+st.SourceFailing)
	case st.Ready:
		line("Ready", "yes")
	default:
		line("Ready", "no: "+st.NotReady)
	}
	line("Version", st.Build.Version)
	if wide {
		line("Revision", st.Build.Revision)
		line("Go", st.Build.GoVersion)
	}
	line("Names", fmt.Sprint(st.Names))
	line("Pods", fmt.Sprint(st.Pods))
	line("Capture", onOff(st.Capture))
	if st.FailingOpen {
		why := "the agent's heartbeat is stale"
		if st.ResolverStalled != "" {
			why = st.ResolverStalled
		}
		line("Failing open", "yes: "+why+"; captured pods' queries go to their own nameservers, around ztdns")
	}
	if st.CaptureCgroup != "" {
		line("Capture cgroup", st.CaptureCgroup)
	}
	list("Capture broken", st.CaptureProblems)
	if len(st.CaptureNameservers) > 0 {
		line("Capture only", strings.Join(st.CaptureNameservers, ", "))
	}
	line("Listen", strings.Join(st.Listen, ", "))
	line("Fallback upstreams", strings.Join(st.FallbackUpstreams, ", ")+" (for clients whose own nameserver is not known; a captured pod's misses go to the nameserver it asked)")
	askedTable(w, st.AskedUpstreams, wide)
	if st.VIPs != "" {
		line("VIPs", st.VIPs)
	}
	if st.DefaultExportTo != "" {
		line("ExportTo", "default "+st.DefaultExportTo)
	}
	var noVIP []string
	for _, reason := range table.NoVIPReasons {
		if n := st.HostsWithoutVIP[reason]; n > 0 {
			noVIP = append(noVIP, fmt.Sprintf("%d %s", n, reason))
		}
	}
	if len(noVIP) > 0 {
		line("Hosts without VIP", strings.Join(noVIP, ", ")+" (ztdns table -n NS lists them, forwarded, with why)")
	}
	line("Access log", accessLogText(st.AccessLog))
	list("Source errors", st.SourceErrors)
	list("Source warnings", st.SourceWarnings)
	if st.StateUnsaved != "" {
		line("State unsaved", st.StateUnsaved)
	}
	warnings, more := st.Warnings, st.WarningsOmitted
	if !wide && len(warnings) > statusShownWarnings {
		warnings, more = warnings[:statusShownWarnings], more+len(warnings)-statusShownWarnings
	}
	list("Warnings", warnings)
	if more > 0 {
		if !wide && len(st.Warnings) > statusShownWarnings {
			fmt.Fprintf(w, "\t... and %d more (-o wide shows the %d the agent keeps)\n", more, len(st.Warnings))
		} else {
			fmt.Fprintf(w, "\t... and %d more, not kept by the agent\n", more)
		}
	}
}

// statusShownUpstreams is how many of the upstreams asked recently
// `ztdns status` shows without -o wide.
const statusShownUpstreams = 5

// askedTable writes the "Upstreams asked" lines of statusTable: each
// nameserver asked within 10 minutes, with how its exchanges ended.
func askedTable(w io.Writer, asked []control.AskedUpstream, wide bool) {
	if len(asked) == 0 {
		fmt.Fprintf(w, "Upstreams asked:\tnone in the last 10 minutes\n")
		return
	}
	listed := asked
	if !wide && len(listed) > statusShownUpstreams {
		listed = listed[:statusShownUpstreams]
	}
	for i, u := range listed {
		var results []string
		for _, r := range forward.Results {
			if n := u.Results[r]; n > 0 {
				results = append(results, fmt.Sprintf("%d %s", n, r))
			}
		}
		v := fmt.Sprintf("%s: %s (last %s ago)", u.Address, strings.Join(results, ", "), u.Idle)
		if i == 0 {
			fmt.Fprintf(w, "Upstreams asked:\t%s\n", shown(v))
		} else {
			fmt.Fprintf(w, "\t%s\n", shown(v))
		}
	}
	if more := len(asked) - len(listed); more > 0 {
		fmt.Fprintf(w, "\t... and %d more (-o wide shows them)\n", more)
	}
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}
