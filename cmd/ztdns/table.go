package main

import (
	"flag"
	"net/url"
	"strings"

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
	if err := call(*socket, "GET", "/v1/table?namespace="+url.QueryEscape(*ns), nil, &rows); err != nil {
		return err
	}
	return render(*output, rows, "NAME\tTYPE\tVALUES\tFROM\tADDRESSES", func(r table.Row) string {
		return strings.Join([]string{r.Name, r.Type, strings.Join(r.Values, ","), r.Origin, r.AddrSource}, "\t")
	})
}
