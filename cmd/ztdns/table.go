package main

import (
	"flag"
	"strings"

	"github.com/ztdns/ztdns/pkg/control"
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
	ctx, cancel := callContext()
	defer cancel()
	rows, err := client(*socket).Table(ctx, *ns)
	if err != nil {
		return err
	}
	return render(*output, rows, "NAME\tTYPE\tVALUES\tFROM\tADDRESSES", func(r control.TableRow) string {
		return strings.Join([]string{r.Name, r.Type, strings.Join(r.Values, ","), r.Origin, r.AddrSource}, "\t")
	})
}
