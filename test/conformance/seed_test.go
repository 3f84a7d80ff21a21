package conformance

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/resolver/table"
)

// dig runs the real dig from a pod's address and returns its +short output.
func (r *running) dig(t *testing.T, from netip.Addr, args ...string) []string {
	t.Helper()
	digPath := testenv.LookPath(t, "dig")
	full := append([]string{"-p", fmt.Sprint(r.addr.Port()), "@" + r.addr.Addr().String(), "-b", from.String(),
		"+short", "+tries=1", "+time=3"}, args...)
	out, err := exec.Command(digPath, full...).CombinedOutput()
	if err != nil {
		t.Fatalf("dig %v: %v\n%s", full, err, out)
	}
	return strings.Fields(string(out))
}

var vip4 = regexp.MustCompile(`^240\.240\.\d+\.\d+$`)

// TestSeedWalkthrough follows Istio's "DNS Proxying" page with the manifests
// in examples/, asking as the walkthrough's curl pod with the real dig.
func TestSeedWalkthrough(t *testing.T) {
	up := upstream(t)
	r := startAgent(t, agentOpts{upstreams: []netip.AddrPort{up.Addr}}, "../../examples")
	curl := fromDefault // examples/pods.yaml: curl in default is 127.0.0.2

	if got := r.dig(t, curl, "address.internal"); !slices.Equal(got, []string{"198.51.100.1"}) {
		t.Errorf("address.internal = %q, want 198.51.100.1", got)
	}
	auto := r.dig(t, curl, "auto.internal")
	if len(auto) != 1 || !vip4.MatchString(auto[0]) {
		t.Errorf("auto.internal = %q, want one 240.240.x.y VIP", auto)
	}
	// Two TCP services on one port get two VIPs, told apart by address.
	e1 := r.dig(t, curl, "tcp-echo.external-1.svc.cluster.local")
	e2 := r.dig(t, curl, "tcp-echo.external-2.svc.cluster.local")
	if len(e1) != 1 || len(e2) != 1 || !vip4.MatchString(e1[0]) || !vip4.MatchString(e2[0]) || e1[0] == e2[0] {
		t.Errorf("tcp-echo VIPs %q and %q, want two distinct 240.240.x.y", e1, e2)
	}
	// The equivalent of `istioctl pc listener | grep tcp-echo`.
	rows := tableRows(t, r, "default")
	for host, want := range map[string]string{"tcp-echo.external-1.svc.cluster.local.": e1[0], "tcp-echo.external-2.svc.cluster.local.": e2[0], "auto.internal.": auto[0]} {
		row := findRow(rows, host, "A")
		if row == nil || !slices.Equal(row.Values, []string{want}) || row.AddrSource != table.FromAllocated || !strings.HasPrefix(row.Origin, "ServiceEntry default/") {
			t.Errorf("table row for %s = %+v, want %s allocated from a ServiceEntry", host, row, want)
		}
	}

	// Apply the opt-out label: auto.internal is no longer allocated, so it
	// is forwarded and the upstream does not know it.
	optout, err := os.ReadFile("../../examples/optout/external-auto.yaml")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(r.dir, "external-auto.yaml"), optout)
	eventually(t, 5*time.Second, func() error {
		resp := r.query(t, "udp", curl, "auto.internal.", dns.TypeA, false)
		if resp.Rcode != dns.RcodeNameError {
			return fmt.Errorf("auto.internal: %s %v, want NXDOMAIN from the upstream", dns.RcodeToString[resp.Rcode], resp.Answer)
		}
		return nil
	})
	if got := r.dig(t, curl, "auto.internal"); len(got) != 0 {
		t.Errorf("after opt-out dig still answers %q", got)
	}
	if up.Queries("auto.internal.") == 0 {
		t.Error("the opted-out name was not forwarded upstream")
	}
	// The other VIPs did not move.
	if got := r.dig(t, curl, "tcp-echo.external-1.svc.cluster.local"); !slices.Equal(got, e1) {
		t.Errorf("tcp-echo.external-1 moved from %q to %q when another entry changed", e1, got)
	}
}

// TestTableCommand runs the real `ztdns table` against the agent.
func TestTableCommand(t *testing.T) {
	up := upstream(t)
	r := startAgent(t, agentOpts{upstreams: []netip.AddrPort{up.Addr}}, manifests)
	bin := buildZtdns(t)
	run := func(args ...string) string {
		out, err := exec.Command(bin, append([]string{"table", "--socket", r.socket}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ztdns table %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	teamA := run("--namespace", "team-a")
	teamB := run("-n", "team-b")
	for _, want := range []string{"private.internal.", "198.51.100.20", "ServiceEntry team-a/private"} {
		if !strings.Contains(teamA, want) {
			t.Errorf("team-a view lacks %q:\n%s", want, teamA)
		}
	}
	if strings.Contains(teamB, "private.internal") {
		t.Errorf("private.internal (exportTo: .) leaked into team-b's table:\n%s", teamB)
	}
	if !strings.Contains(teamB, "shared.internal.") || strings.Contains(run("-n", "default"), "shared.internal") {
		t.Error("shared.internal should be listed for team-b only")
	}
	if !strings.Contains(run("-o", "json"), `"addrSource": "allocated"`) {
		t.Error("json output lacks addrSource")
	}
}

// TestBrokenManifestKeepsServing: a broken edit is reported and the last
// good state keeps answering; the fix is picked up without a restart.
func TestBrokenManifestKeepsServing(t *testing.T) {
	up := upstream(t)
	r := startAgent(t, agentOpts{upstreams: []netip.AddrPort{up.Addr}}, manifests)
	path := filepath.Join(r.dir, "serviceentries.yaml")
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, append(append([]byte(nil), good...), []byte("\n---\nkind: [broken\n")...))
	// The error names the file and line, and is reported by the agent.
	eventually(t, 5*time.Second, func() error {
		st, err := control.NewClient(r.socket, time.Second).Status(context.Background())
		if err != nil {
			return err
		}
		for _, e := range st.SourceErrors {
			if strings.Contains(e, "serviceentries.yaml:") {
				return nil
			}
		}
		return fmt.Errorf("no error naming serviceentries.yaml:<line> in %q", st.SourceErrors)
	})
	if resp := r.query(t, "udp", fromDefault, "address.internal.", dns.TypeA, false); len(resp.Answer) != 1 {
		t.Fatalf("a broken edit dropped the file's previous objects: %v", resp)
	}
	fixed := strings.Replace(string(good), "198.51.100.1,", "198.51.100.99,", 1)
	writeFile(t, path, []byte(fixed))
	eventually(t, 5*time.Second, func() error {
		resp := r.query(t, "udp", fromDefault, "address.internal.", dns.TypeA, false)
		if got := rrText(resp.Answer); !slices.Equal(got, []string{"address.internal. A 198.51.100.99"}) {
			return fmt.Errorf("address.internal = %q", got)
		}
		return nil
	})
}

func tableRows(t *testing.T, r *running, ns string) []table.Row {
	t.Helper()
	rows, err := control.NewClient(r.socket, 5*time.Second).Table(context.Background(), ns)
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

func findRow(rows []table.Row, name, typ string) *table.Row {
	for i := range rows {
		if rows[i].Name == name && rows[i].Type == typ {
			return &rows[i]
		}
	}
	return nil
}

// buildZtdns builds the ztdns binary once per test binary run.
func buildZtdns(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ztdns")
	out, err := exec.Command("go", "build", "-o", bin, "../../cmd/ztdns").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}
