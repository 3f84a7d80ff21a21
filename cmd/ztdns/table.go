package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

func runTable(args []string) error {
	fs := flag.NewFlagSet("table", flag.ContinueOnError)
	ns := fs.String("namespace", "", "show the view of a pod in `NS` (default: a client that is not a known pod)")
	fs.StringVar(ns, "n", "", "shorthand for --namespace")
	socket := fs.String("socket", control.DefaultSocket, "the agent's control socket `PATH`")
	output := fs.String("o", "table", "output format: table or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var rows []table.Row
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := control.NewClient(*socket, 10*time.Second).Do(ctx, "GET", "/v1/table?namespace="+url.QueryEscape(*ns), nil, &rows); err != nil {
		return err
	}
	switch *output {
	case "json":
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	case "table":
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "NAME\tTYPE\tVALUES\tFROM\tADDRESSES")
		for _, r := range rows {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.Name, r.Type, strings.Join(r.Values, ","), r.Origin, r.AddrSource)
		}
		return w.Flush()
	}
	return fmt.Errorf("-o %q: want table or json", *output)
}
