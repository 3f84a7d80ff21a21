package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ztdns/ztdns/pkg/control"
)

// newLogCmd: ztdns log on|off [--sample N].
func newLogCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "log on|off [--sample N]",
		Short: "Turn the agent's access log on or off, without a restart",
		Long: `Turn the agent's access log on or off while it runs: one line per query
(pod, namespace, name, type, protocol, rcode, where the answer came from,
upstream, latency), written where --access-log of the agent says (stderr when
it was not given). A query never waits for the log: lines the destination
cannot take are dropped and counted (ztdns status, ztdns_access_log_dropped_total).`,
		Example: `  ztdns log on --sample 10   # one query in ten
  ztdns log off`,
		// Runnable only to turn "log" alone, or an unknown verb, into a
		// usage error instead of a help page and success.
		RunE: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("give on or off")
			}
			return usagef("unknown command %q: give on or off", args[0])
		},
	}
	cmd.AddCommand(newLogVerbCmd(true), newLogVerbCmd(false))
	return cmd
}

func newLogVerbCmd(on bool) *cobra.Command {
	cmd := &cobra.Command{Use: "on [--sample N]", Short: "Write a line per query (or per N queries)", Args: cobra.NoArgs}
	var sample *int
	if on {
		sample = cmd.Flags().Int("sample", 0, "one query in `N` gets a line (default: the rate the log had, else 1)")
	} else {
		cmd.Use, cmd.Short = "off", "Stop writing lines"
	}
	socket := socketFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		req := control.AccessLogRequest{On: on}
		if sample != nil {
			if *sample < 0 || *sample > control.MaxAccessLogSample {
				return usagef("--sample %d: want 1 to %d", *sample, control.MaxAccessLogSample)
			}
			req.Sample = *sample
		}
		ctx, cancel := callContext(cmd)
		defer cancel()
		st, err := client(*socket).SetAccessLog(ctx, req)
		if err != nil {
			return err
		}
		fmt.Fprintln(cmd.OutOrStdout(), "access log", accessLogText(st))
		return nil
	}
	return cmd
}

// accessLogText says what the access log does: "on: one query in 10, to
// stderr" or "off (to stderr when on)".
func accessLogText(l control.AccessLog) string {
	var s string
	switch {
	case !l.On:
		s = fmt.Sprintf("off (to %s when on)", l.Destination)
	case l.Sample <= 1:
		s = fmt.Sprintf("on: every query, to %s", l.Destination)
	default:
		s = fmt.Sprintf("on: one query in %d, to %s", l.Sample, l.Destination)
	}
	if l.Dropped > 0 {
		s += fmt.Sprintf("; %d lines dropped", l.Dropped)
	}
	return s
}
