package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/ztdns/ztdns/pkg/control"
)

// requestTimeout bounds one call to the agent's control socket.
const requestTimeout = 10 * time.Second

// client returns a client of the agent's control socket.
func client(socket string) *control.Client { return control.NewClient(socket, requestTimeout) }

// callContext bounds one call to the agent.
func callContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), requestTimeout)
}

// render prints rows as indented JSON, or as a table with header (columns
// separated by tabs) and one line per row.
func render[T any](format string, rows []T, header string, line func(T) string) error {
	switch format {
	case "json":
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	case "table":
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, header)
		for _, r := range rows {
			fmt.Fprintln(w, line(r))
		}
		return w.Flush()
	}
	return fmt.Errorf("-o %q: want table or json", format)
}
