package main

import (
	"encoding/json"
	"flag"
	"os"

	"github.com/ztdns/ztdns/pkg/control"
)

// runStatus prints the agent's status: ready or why not, what it serves,
// and inputs it could not read.
func runStatus(args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	socket := fs.String("socket", control.DefaultSocket, "the agent's control socket `PATH`")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := callContext()
	defer cancel()
	st, err := client(*socket).Status(ctx)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(st)
}
