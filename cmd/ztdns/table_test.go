//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"iter"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/kubetest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/source/kube"
)

// gatedTable is an agent whose table is rows: it makes the first of them,
// then waits for gate before it makes the rest.
type gatedTable struct {
	control.API // nothing else is asked for
	rows        []control.TableRow
	first       int
	gate        chan struct{}
}

func (g *gatedTable) Table(context.Context, string) (iter.Seq[control.TableRow], error) {
	return func(yield func(control.TableRow) bool) {
		for i, r := range g.rows {
			if i == g.first {
				<-g.gate
			}
			if !yield(r) {
				return
			}
		}
	}, nil
}

// TestTablePrintedAsItComes: `ztdns table` prints the rows the agent has
// made while the agent makes the rest: an answer too large to be made and
// read in requestTimeout is printed all the same. Every row is printed,
// once, in the agent's order, under the header's columns.
func TestTablePrintedAsItComes(t *testing.T) {
	testenv.RequireRoot(t)
	const total, first = 5000, 3000
	api := &gatedTable{first: first, gate: make(chan struct{})}
	for i := range total {
		api.rows = append(api.rows, control.TableRow{Name: fmt.Sprintf("svc-%d.ns.svc.cluster.local.", i), Type: "A", Values: []string{"10.96.0.1"}, Origin: "Service ns/svc"})
	}
	socket := filepath.Join(testenv.MkdirTemp(t, "ztdns-cmd-"), "s.sock") // short: a socket path has 108 bytes
	ln, err := control.Listen(socket, control.Access{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- control.Serve(ctx, ln, control.NewHandler(api, nil)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	gateOpen := false
	t.Cleanup(func() {
		if !gateOpen {
			close(api.gate)
		}
	})

	out, w := io.Pipe()
	var stderr strings.Builder
	code := make(chan int, 1)
	go func() {
		code <- run(t.Context(), []string{"table", "--socket", socket}, w, &stderr)
		w.Close()
	}()
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var printed []string
	for len(printed) < 1+streamBlock { // the header and a block of rows
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("ztdns table ended before the agent made its last rows: %q", stderr.String())
			}
			printed = append(printed, l)
		case <-time.After(time.Minute):
			t.Fatalf("ztdns table printed %d lines in a minute while the agent waited, having made %d rows: it waits for the whole answer", len(printed), first)
		}
	}
	close(api.gate)
	gateOpen = true
	for l := range lines {
		printed = append(printed, l)
	}
	if c := <-code; c != 0 {
		t.Fatalf("ztdns table: exit %d, %q", c, stderr.String())
	}

	if len(printed) != 1+total {
		t.Fatalf("ztdns table printed %d lines for %d rows", len(printed), total)
	}
	typeAt := strings.Index(printed[0], "TYPE")
	if fields := strings.Fields(printed[0]); strings.Join(fields, " ") != "NAME TYPE VALUES FROM ADDRESSES REASON" {
		t.Fatalf("header %q", printed[0])
	}
	for i, l := range printed[1:] {
		r := api.rows[i]
		if want := []string{r.Name, r.Type, r.Values[0], "Service", "ns/svc"}; strings.Join(strings.Fields(l), " ") != strings.Join(want, " ") {
			t.Fatalf("line %d is %q, want the row %v", i+1, l, want)
		}
		// The first block is laid out with the header; later ones may
		// widen the columns, never narrow them.
		if at := strings.Index(l, " A "); (i+1 < streamBlock && at+1 != typeAt) || at+1 < typeAt {
			t.Fatalf("line %d's TYPE at %d, the header's at %d:\n%s\n%s", i+1, at+1, typeAt, printed[0], l)
		}
	}
}

// TestTableBeforeTheFirstTable: `ztdns table` asked before the agent has
// its first table (its API server not answering yet) fails, exit 1, with
// why on stderr, and prints nothing, in every format; once the source has
// synced it lists the cluster's names. (Before: the header alone, or [],
// and exit 0, as if the cluster had no names, while `ztdns status` said
// "Ready: no".)
func TestTableBeforeTheFirstTable(t *testing.T) {
	env := kubetest.Start(t)
	env.Stop()
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.Zone{})
	a := agenttest.Run(t, agent.Config{Source: kube.New(env.Config, kube.WithNodeName("node-a")),
		Upstreams: []netip.AddrPort{up.Addr}, Registry: prometheus.NewRegistry()})
	if st, err := a.Status(); err != nil || st.Ready {
		t.Fatalf("status %+v, %v: want an agent not ready, its API server down", st, err)
	}
	const notReady = "ztdns table: no table yet, the agent is not ready: waiting for the first full sync of the source"
	for _, format := range []string{"table", "json", "yaml"} {
		r := ztdns(t, "table", "--socket", a.Socket, "-n", "default", "-o", format)
		if r.code != exitFailure || r.stdout != "" || !strings.HasPrefix(r.stderr, notReady) || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("ztdns table -o %s before the first table: %v; want exit %d, nothing printed and one line on stderr, %q…",
				format, r, exitFailure, notReady)
		}
	}

	env.Restart()
	agenttest.Eventually(t, time.Minute, func() error {
		st, err := a.Status()
		if err == nil && !st.Ready {
			err = fmt.Errorf("not ready: %s", st.NotReady)
		}
		return err
	})
	out := ok(t, "table", "--socket", a.Socket, "-n", "default")
	if !regexp.MustCompile(`(?m)^kubernetes\.default\.svc\.cluster\.local\.\s+A\s+10\.`).MatchString(out) {
		t.Errorf("ztdns table once ready lacks the kubernetes Service's A record:\n%s", out)
	}
}
