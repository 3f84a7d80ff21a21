package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/ztdns/ztdns/pkg/version"
)

func newVersionCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print this binary's version, revision and Go version",
		Long: `Print this binary's version, revision and Go version. A running agent reports
its own in ztdns status and in the ztdns_build_info metric.`,
		Args: cobra.NoArgs,
	}
	output := outputFlag(cmd, "", outputJSON, outputYAML)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		info := version.Get()
		return printOutput(cmd.OutOrStdout(), output.value, info, func(w io.Writer, _ bool) { fmt.Fprintln(w, info) })
	}
	return cmd
}
