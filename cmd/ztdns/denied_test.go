//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/source/configdir"
)

// linesEnv holds, in a child ztdnsAsUser starts, the command lines it is to
// run (JSON): TestMain runs them and prints what each did.
const linesEnv = "ZTDNS_CMD_TEST_LINES"

func TestMain(m *testing.M) {
	if lines := os.Getenv(linesEnv); lines != "" {
		os.Exit(runLines(lines))
	}
	os.Exit(m.Run())
}

// lineResult is result, as a child sends it back.
type lineResult struct {
	Code           int
	Stdout, Stderr string
}

// runLines runs each command line of lines (JSON) as main does, and prints
// what each did (JSON).
func runLines(lines string) int {
	var args [][]string
	if err := json.Unmarshal([]byte(lines), &args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var out []lineResult
	for _, a := range args {
		var stdout, stderr strings.Builder
		code := run(context.Background(), a, &stdout, &stderr)
		out = append(out, lineResult{code, stdout.String(), stderr.String()})
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	return 0
}

// ztdnsAsUser runs each command line in one process of this test binary
// running as cred, as main would, and returns what each did.
func ztdnsAsUser(t *testing.T, cred syscall.Credential, lines ...[]string) []result {
	t.Helper()
	b, err := json.Marshal(lines)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := testenv.AsUser(t, ctx, cred, os.Args[0])
	cmd.Env = append(os.Environ(), linesEnv+"="+string(b))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	var got []lineResult
	if err != nil || json.Unmarshal(out, &got) != nil || len(got) != len(lines) {
		t.Fatalf("running %q as uid %d: %v\n%s", lines, cred.Uid, err, out)
	}
	rs := make([]result, len(got))
	for i, r := range got {
		rs[i] = result{r.Code, r.Stdout, r.Stderr}
	}
	return rs
}

// TestRefusedCallerIsToldWhy runs status, pods, table and log as uid 65534
// against agents whose control socket is root's, and root's and a group's:
// a caller the socket's mode keeps out, and one it lets in (a supplementary
// member of the group) but the agent refuses, are told whose the socket is
// and to run as root, never that the agent may be down. Before: "agent not
// reachable: … permission denied", and "connection reset by peer" for the
// supplementary member, each (for status) with the advice for an agent
// that is down.
func TestRefusedCallerIsToldWhy(t *testing.T) {
	testenv.RequireRoot(t)
	const group = 65533
	rootOnly := startAgentAt(t, 0)
	withGroup := startAgentAt(t, group)
	member := syscall.Credential{Uid: 65534, Gid: group}
	supplementary := syscall.Credential{Uid: 65534, Gid: 0, Groups: []uint32{group}}

	for _, tc := range []struct {
		name   string
		socket string
		cred   syscall.Credential
		want   string // the error, after the command's name
	}{
		{"not root", rootOnly, testenv.Nobody,
			"the control socket " + rootOnly + " is root's: run as root; uid 65534 may not connect: permission denied"},
		{"not in the socket group", withGroup, testenv.Nobody,
			"the control socket " + withGroup + " is root's and group 65533's: run as root (members of 65533 may read, with it as their primary group); " +
				"uid 65534 may not connect: permission denied"},
		{"supplementary member of the socket group", withGroup, supplementary,
			"the control socket is root's and group 65533's: uid 65534, of primary group 0, may not call. " +
				"The agent sees a caller's primary group only (SO_PEERCRED), not its supplementary ones: " +
				"run as root, or with 65533 as primary group (sg 65533 -c 'ztdns status')"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lines := [][]string{
				{"status", "--socket", tc.socket},
				{"pods", "--socket", tc.socket},
				{"table", "--socket", tc.socket},
				{"log", "on", "--socket", tc.socket},
			}
			for i, r := range ztdnsAsUser(t, tc.cred, lines...) {
				name := "ztdns " + lines[i][0]
				if lines[i][0] == "log" {
					name += " on"
				}
				if want := name + ": " + tc.want + "\n"; r.code != 1 || r.stdout != "" || r.stderr != want {
					t.Errorf("%s as uid %d gid %d groups %v: %+v\nwant exit status 1 and on stderr only %q",
						name, tc.cred.Uid, tc.cred.Gid, tc.cred.Groups, r, want)
				}
			}
		})
	}

	// What the refusal advises: with the group as its primary group, the
	// same user reads.
	r := ztdnsAsUser(t, member, []string{"status", "--socket", withGroup})[0]
	if r.code != 0 || !strings.Contains(r.stdout, "Ready:") {
		t.Errorf("status as uid 65534 of primary group %d: %+v, want the agent's status", group, r)
	}
}

// startAgentAt starts an agent serving no manifests, whose control socket
// (returned) is opened to group (0: root alone), in a directory others may
// pass through to reach it, as /var/run/ztdns is.
func startAgentAt(t *testing.T, group int) string {
	t.Helper()
	dir := testenv.MkdirTemp(t, "ztdns-cmd-")
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.Marker(netip.MustParseAddr("203.0.113.99"), netip.MustParseAddr("2001:db8::99")))
	a := agenttest.Run(t, agent.Config{
		Source: configdir.New(t.TempDir()), Upstreams: []netip.AddrPort{up.Addr},
		Socket: filepath.Join(dir, "run", "ztdns.sock"), SocketGroup: group,
	})
	return a.Socket
}
