package main

import (
	"context"
	"errors"

	"github.com/spf13/cobra"

	"github.com/ztdns/ztdns/pkg/control"
)

func newTableCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "table",
		Short: "Print what a pod in a namespace can resolve locally",
		Long: `Print every name the agent answers itself for a pod in a namespace: Services,
ServiceEntry hosts, their VIPs, SRV and PTR records, and where each came from.
Names the namespace cannot see (exportTo) are left out: they are the only
names missing. A name held without records is listed as forwarded: type -,
value (forwarded), the object holding it, and the REASON: a headless Service
without a ready endpoint, or a ServiceEntry host without a VIP ("no VIP:
istiod has not allocated one" with --vip-source=istiod and no
status.addresses yet, resolution NONE, auto-allocation off, ...). Such a host
that a wildcard covers is listed with the wildcard's answer, and the REASON
it has none of its own. Before the agent has its first table (ztdns status:
Ready: no) it prints nothing and fails, saying why.`,
		Example: `  ztdns table -n default
  ztdns table -n default -o wide    # every value, not the first few
  ztdns table -o yaml               # the view of a client that is no known pod`,
	}
	ns := cmd.Flags().StringP("namespace", "n", "", "show the view of a pod in `NS` (default: a client that is not a known pod)")
	socket := socketFlag(cmd)
	output := outputFlag(cmd, outputTable, readFormats...)
	cmd.Args = cobra.NoArgs
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		// The agent writes the rows as it makes them: the first come
		// within requestTimeout, the last may take longer.
		ctx, cancel := context.WithTimeout(cmd.Context(), streamTimeout)
		defer cancel()
		out := newListStream(cmd.OutOrStdout(), output.value, tableColumns, streamBlock)
		err := control.NewStreamingClient(*socket, requestTimeout, streamTimeout).TableEach(ctx, *ns, out.Row)
		if err != nil && out.Rows() == 0 {
			return err // no answer: not even the header is printed
		}
		return errors.Join(out.Close(), err)
	}
	return cmd
}

var tableColumns = []column[control.TableRow]{
	{header: "NAME", value: func(r control.TableRow, _ bool) string { return r.Name }},
	{header: "TYPE", value: func(r control.TableRow, _ bool) string { return r.Type }},
	{header: "VALUES", value: func(r control.TableRow, wide bool) string { return shortList(r.Values, wide) }},
	{header: "FROM", value: func(r control.TableRow, _ bool) string { return r.Origin }},
	{header: "ADDRESSES", value: func(r control.TableRow, _ bool) string { return r.AddrSource }},
	{header: "REASON", value: func(r control.TableRow, _ bool) string { return r.Reason }},
}
