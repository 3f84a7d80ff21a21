//go:build linux

package agent_test

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// TestTableWarningsLoggedOnce: a ServiceEntry with a partial wildcard host
// is left out of the table with a warning, logged when it appears, not
// again on each of the builds that five edits of another file make; status
// still lists it. Once it is fixed, a line says one warning cleared. A
// warning that leaves nothing out (an exportTo with "*" and other values:
// served to every namespace) is logged as a table warning too, not as
// something left out of the table. (Before: every build logged every
// warning again, six lines here; and every warning as "left out of the
// name table".)
func TestTableWarningsLoggedOnce(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	entry := func(name, host, addr string) string {
		return fmt.Sprintf("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: %s}\nspec:\n  hosts: [%q]\n  addresses: [%s]\n", name, host, addr)
	}
	write("bad.yaml", entry("bad", "*foo.example", "198.51.100.200"))
	write("edited.yaml", entry("edited", "edited.example", "198.51.100.1"))
	write("everyone.yaml", entry("everyone", "everyone.example", "198.51.100.201")+`  exportTo: ["*", "team-a"]`+"\n")
	var log testenv.Log
	a := agenttest.Start(t, agent.Config{Source: configdir.New(dir), Upstreams: []netip.AddrPort{testenv.DeadAddr(t)},
		Logger: slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", log.String())
		}
	})
	loopback := netip.MustParseAddr("127.0.0.1")
	for i := 2; i <= 6; i++ {
		want := fmt.Sprintf("198.51.100.%d", i)
		write("edited.yaml", entry("edited", "edited.example", want))
		agenttest.Eventually(t, 10*time.Second, func() error {
			if got := a.Addrs(t, loopback, "edited.example", dns.TypeA); !slices.Equal(got, []string{want}) {
				return fmt.Errorf("edited.example: %q, want %s", got, want)
			}
			return nil
		})
	}
	var warned []string
	for l := range strings.SplitSeq(log.String(), "\n") {
		if strings.Contains(l, `msg="name table warning"`) {
			warned = append(warned, l)
		}
	}
	if len(warned) != 2 || !slices.ContainsFunc(warned, func(l string) bool { return strings.Contains(l, `\"*foo.example\"`) }) ||
		!slices.ContainsFunc(warned, func(l string) bool { return strings.Contains(l, "every namespace sees it") }) {
		t.Errorf("name table warning lines:\n%s\nwant two: the partial wildcard's and the exportTo's, once each", strings.Join(warned, "\n"))
	}
	if log.Contains("left out of the name table") {
		t.Errorf("the log says something is left out of the name table for a warning that leaves nothing out:\n%s", log.String())
	}
	st, err := a.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Warnings) != 2 || !slices.ContainsFunc(st.Warnings, func(w string) bool { return strings.Contains(w, `"*foo.example"`) }) {
		t.Errorf("status warnings %q, want the partial wildcard's and the exportTo's", st.Warnings)
	}

	write("bad.yaml", entry("bad", "foo.example", "198.51.100.200"))
	agenttest.Eventually(t, 10*time.Second, func() error {
		if want := `msg="table warnings cleared" cleared=1 remaining=1`; !log.Contains(want) {
			return fmt.Errorf("no line %s", want)
		}
		return nil
	})
	if st, err := a.Status(); err != nil || len(st.Warnings) != 1 || !strings.Contains(st.Warnings[0], "every namespace sees it") {
		t.Errorf("status warnings %q, %v; want the exportTo's alone", st.Warnings, err)
	}
}
