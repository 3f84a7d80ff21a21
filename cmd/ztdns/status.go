package main

import (
	"context"
	"encoding/json"
	"flag"
	"os"
	"time"

	"github.com/ztdns/ztdns/pkg/agent"
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
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var st agent.Status
	if err := control.NewClient(*socket, 10*time.Second).Do(ctx, "GET", "/v1/status", nil, &st); err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(st)
}
