//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

	"github.com/ztdns/ztdns/internal/agenttest"
	"github.com/ztdns/ztdns/internal/dnstest"
	"github.com/ztdns/ztdns/internal/testenv"
	"github.com/ztdns/ztdns/pkg/accesslog"
	"github.com/ztdns/ztdns/pkg/agent"
	"github.com/ztdns/ztdns/pkg/control"
	"github.com/ztdns/ztdns/pkg/resolvconf"
	"github.com/ztdns/ztdns/pkg/source/configdir"
	"github.com/ztdns/ztdns/pkg/version"
)

// result is what one command line did.
type result struct {
	code           int
	stdout, stderr string
}

// ztdns runs one command line in process, as main does. An agent command
// line, meant to fail, is confined first (confineAgent): should a check it
// tests regress, the agent it starts serves on loopback, without capture,
// for at most 15 seconds, instead of attaching to this machine's cgroup
// root and taking the node's addresses for the rest of the run.
func ztdns(t *testing.T, args ...string) result {
	t.Helper()
	ctx := t.Context()
	if len(args) > 0 && args[0] == "agent" {
		dir := testenv.MkdirTemp(t, "ztdns-cmd-") // short: a socket path has 108 bytes
		args = confineAgent(args, filepath.Join(dir, "s.sock"))
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
	}
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, &stdout, &stderr)
	return result{code, stdout.String(), stderr.String()}
}

// confineAgent adds to an agent command line --capture=false, --listen
// 127.0.0.1:0, --socket socket and --metrics "", each unless the line sets
// that flag itself: the line's own value is what it tests, and adding ours
// would not always yield to it (--listen adds each use after the first to
// the list). A line that sets --capture is not kept from capture: it must
// fail before capture starts.
func confineAgent(args []string, socket string) []string {
	out := slices.Clone(args[:1])
	for _, f := range []struct{ name, value string }{
		{"capture", "false"}, {"listen", "127.0.0.1:0"}, {"socket", socket}, {"metrics", ""},
	} {
		if !setsFlag(args[1:], f.name) {
			out = append(out, "--"+f.name+"="+f.value)
		}
	}
	return append(out, args[1:]...)
}

// setsFlag reports whether args set the long flag name in any spelling the
// command line takes: --name, --name=V, -name, -name=V.
func setsFlag(args []string, name string) bool {
	for _, a := range args {
		if a == "--" {
			break
		}
		if n, ok := strings.CutPrefix(a, "-"); ok {
			n = strings.TrimPrefix(n, "-")
			if n, _, _ = strings.Cut(n, "="); n == name {
				return true
			}
		}
	}
	return false
}

// TestConfineAgent: the agent command lines of these tests keep the flags
// they set, in every spelling, and get the confining ones they do not set.
func TestConfineAgent(t *testing.T) {
	const sock = "/tmp/s.sock"
	for _, tc := range []struct{ args, want []string }{
		{[]string{"agent", "--config-dir", "/d"},
			[]string{"agent", "--capture=false", "--listen=127.0.0.1:0", "--socket=" + sock, "--metrics=", "--config-dir", "/d"}},
		{[]string{"agent", "--listen", "[::1]:53", "--capture", "-socket=/s", "-metrics", "127.0.0.1:9"},
			[]string{"agent", "--listen", "[::1]:53", "--capture", "-socket=/s", "-metrics", "127.0.0.1:9"}},
		{[]string{"agent", "-listen", "", "--capture=true", "--socket", "/s"},
			[]string{"agent", "--metrics=", "-listen", "", "--capture=true", "--socket", "/s"}},
		{[]string{"agent", "--listen=127.0.0.2:53", "--upstream", "127.0.0.1", "--", "--capture"},
			[]string{"agent", "--capture=false", "--socket=" + sock, "--metrics=", "--listen=127.0.0.2:53", "--upstream", "127.0.0.1", "--", "--capture"}},
	} {
		if got := confineAgent(tc.args, sock); !slices.Equal(got, tc.want) {
			t.Errorf("confineAgent(%q)\n = %q\nwant %q", tc.args, got, tc.want)
		}
	}
}

func (r result) String() string {
	return fmt.Sprintf("exit status %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// commandPaths lists every command of the tree a user can call, as the
// words that name it ("capture", "add").
func commandPaths(root *cobra.Command) [][]string {
	var paths [][]string
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		paths = append(paths, path)
		for _, sub := range c.Commands() {
			if !sub.Hidden {
				walk(sub, append(slices.Clone(path), sub.Name()))
			}
		}
	}
	walk(root, nil)
	return paths
}

// TestHelp: -h, --help and `help CMD` exit 0 and print, on stdout, the
// usage with every flag of the command (and its shorthand), the exit
// statuses, and for a command with subcommands every subcommand.
func TestHelp(t *testing.T) {
	root := newRoot()
	paths := commandPaths(root)
	if len(paths) < 12 {
		t.Fatalf("only %d commands: %v", len(paths), paths)
	}
	for _, path := range paths {
		cmd, _, err := root.Find(path)
		if err != nil {
			t.Fatalf("find %v: %v", path, err)
		}
		cmd.InitDefaultHelpFlag()
		for _, args := range [][]string{
			append(slices.Clone(path), "-h"),
			append(slices.Clone(path), "--help"),
			append([]string{"help"}, path...),
		} {
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				r := ztdns(t, args...)
				if r.code != 0 || r.stderr != "" {
					t.Fatalf("want exit status 0 and nothing on stderr, got %v", r)
				}
				want := []string{"Usage:", "Exit status: 0 success, 1 failure, 2 usage error"}
				cmd.Flags().VisitAll(func(f *pflag.Flag) {
					if f.Shorthand != "" {
						want = append(want, "-"+f.Shorthand+", --"+f.Name+" ")
					} else {
						want = append(want, "    --"+f.Name+" ")
					}
				})
				for _, sub := range cmd.Commands() {
					if !sub.Hidden {
						want = append(want, "\n  "+sub.Name()+" ")
					}
				}
				for _, w := range want {
					if !strings.Contains(r.stdout, w) {
						t.Errorf("help lacks %q:\n%s", w, r.stdout)
					}
				}
			})
		}
	}
	// The root's help names every command the issue asks for.
	r := ztdns(t, "--help")
	for _, name := range []string{"agent", "capture", "pods", "status", "table", "uninstall", "version", "completion", "log"} {
		if !strings.Contains(r.stdout, "\n  "+name+" ") {
			t.Errorf("ztdns --help lacks %s:\n%s", name, r.stdout)
		}
	}
}

// TestCacheFlagsSayWhatTheShareDoes: once the cache is full, a pod over
// its eighth is not held to it: it replaces only its own answers, and the
// others' misses take back what it holds past it (forward/cache.go). The
// help says so, as the README does, not that a pod holds at most an
// eighth.
func TestCacheFlagsSayWhatTheShareDoes(t *testing.T) {
	agentCmd, _, err := newRoot().Find([]string{"agent"})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"cache-size", "cache-bytes"} {
		usage := agentCmd.Flags().Lookup(name).Usage
		if strings.Contains(usage, "at most an eighth") || !strings.Contains(usage, "replaces only its own answers") ||
			!strings.Contains(usage, "take back what it holds past its share") {
			t.Errorf("--%s: %q, want what the cache does with a pod over its eighth", name, usage)
		}
	}
}

// TestTTLHelpSaysKubeDNS: `ztdns agent -h` gives --ttl no default of
// its own, for without the flag local answers take kube-dns's TTL, 30s
// only without one; the agent is then told no TTL (agent.Config.TTL 0),
// and a given one is passed on. Before, the help printed "(default 30s)".
func TestTTLHelpSaysKubeDNS(t *testing.T) {
	r := ztdns(t, "agent", "-h")
	var line string
	for l := range strings.Lines(r.stdout) {
		if strings.Contains(l, "--ttl ") {
			line = l
		}
	}
	if !strings.Contains(line, "Not given: kube-dns's") || strings.Contains(line, "(default") {
		t.Errorf("--ttl's help %q, want kube-dns's TTL when not given and no default of its own", line)
	}
	for _, c := range []struct {
		args []string
		want time.Duration
	}{
		{nil, 0},
		{[]string{"--ttl", "10s"}, 10 * time.Second},
	} {
		fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
		f := addAgentFlags(fs)
		if err := fs.Parse(c.args); err != nil {
			t.Fatal(err)
		}
		if err := f.check(fs); err != nil {
			t.Fatalf("%q: %v", c.args, err)
		}
		if got := f.config(nil, resolvconf.Config{}, nil, nil, nil).TTL; got != c.want {
			t.Errorf("%q: agent told TTL %s, want %s", c.args, got, c.want)
		}
	}
}

// TestUsageErrors: a wrong command line exits 2 with a short message that
// names the command and where its usage is, and does nothing.
func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	// Not in a pod, whatever runs the test: `agent` alone has no source.
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	noAgent := filepath.Join(dir, "no-agent.sock") // should a capture line get that far
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, `ztdns: unknown command "bogus" for "ztdns"`},
		{[]string{"help", "bogus"}, `ztdns help: unknown command "bogus" for "ztdns"`},
		{[]string{"table", "--bogus"}, "ztdns table: unknown flag: --bogus"},
		{[]string{"status", "-bogus"}, "ztdns status: unknown shorthand flag: 'b' in -bogus"},
		{[]string{"table", "--socket"}, "ztdns table: flag needs an argument: --socket"},
		{[]string{"pods", "-o", "xml"}, `ztdns pods: invalid argument "xml" for "-o, --output" flag: want table, wide, json or yaml`},
		{[]string{"version", "-o", "wide"}, `ztdns version: invalid argument "wide" for "-o, --output" flag: want json or yaml`},
		{[]string{"status", "extra"}, `ztdns status: unknown command "extra" for "ztdns status"`},
		{[]string{"capture"}, "ztdns capture: give add or del"},
		{[]string{"capture", "mark"}, `ztdns capture: unknown command "mark": give add or del`},
		{[]string{"capture", "add", "--name", "x"}, `ztdns capture add: required flag(s) "netns" not set`},
		{[]string{"agent", "--config-dir", dir, "--kubeconfig", "/nonexistent"}, "ztdns agent: give --config-dir or --kubeconfig, not both"},
		{[]string{"agent", "--config-dir", dir, "--log-level", "loud"}, `ztdns agent: --log-level "loud": want debug, info, warn or error`},
		{[]string{"agent", "--config-dir", dir, "--capture-port", "70000"}, "ztdns agent: --capture-port 70000: want 1-65535"},
		{[]string{"agent", "--config-dir", dir, "--capture-port", "0", "--resolv-conf", "/nonexistent"}, "ztdns agent: --capture-port 0: want 1-65535"},
		{[]string{"agent", "--config-dir", dir, "--udp-sockets", "0"}, "ztdns agent: --udp-sockets 0: want 1 to 64"},
		{[]string{"agent", "--config-dir", dir, "--default-service-export-to", "Team-A"},
			`ztdns agent: --default-service-export-to: "Team-A": "Team-A" is not ".", "*", "~" or a namespace name`},
		{[]string{"agent", "--config-dir", dir, "--default-service-export-to", ".,*"},
			`ztdns agent: --default-service-export-to: ".,*": "*" and "~" cannot be combined with other values`},
		{[]string{"agent", "--config-dir", dir, "--default-service-export-to", ""},
			`ztdns agent: --default-service-export-to: "": an empty value matches no namespace`},
		{[]string{"capture", "del", "--socket", noAgent, "--netns", "/run/netns/x", "-n", "default"}, "ztdns capture del: unknown shorthand flag: 'n' in -n"},
		{[]string{"agent", "--config-dir", dir, "--ztunnel-namespace", "Kube_System"},
			`ztdns agent: --ztunnel-namespace "Kube_System": not a namespace name: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`},
		{[]string{"agent", "--config-dir", dir, "--istio-namespace", "istio-system/"},
			`ztdns agent: --istio-namespace "istio-system/": not a namespace name: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`},
		{[]string{"agent", "--config-dir", dir, "--exclude-namespaces", "kube-system,Istio_System"},
			`ztdns agent: --exclude-namespaces "Istio_System": not a namespace name: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`},
		{[]string{"agent", "--config-dir", dir, "--istio-namespace=", "--ztunnel-namespace", "kube-system"},
			"ztdns agent: --ztunnel-namespace with --istio-namespace empty: without istiod there is no revision to compare ztunnel's with"},
		{[]string{"agent", "--config-dir", dir, "--max-tcp", "-1"}, "ztdns agent: --max-tcp -1: want 0 or more"},
		{[]string{"agent", "--config-dir", dir, "--cache-size", "-5"}, "ztdns agent: --cache-size -5: want 0 or more"},
		{[]string{"agent", "--config-dir", dir, "--forward-timeout", "-1s"}, "ztdns agent: --forward-timeout -1s: want 0 or more"},
		{[]string{"agent", "--config-dir", dir, "--config-max-files", "-1"}, "ztdns agent: --config-max-files -1: want 0 or more"},
		{[]string{"agent", "--config-dir", dir, "--access-log-sample", "10"},
			"ztdns agent: --access-log-sample without --access-log: the log is off (ztdns log on --sample N sets it at run time)"},
		{[]string{"agent", "--config-dir", dir, "--socket-group", "ztdns-nosuchgroup"}, `ztdns agent: --socket-group "ztdns-nosuchgroup": group: unknown group ztdns-nosuchgroup`},
		{[]string{"agent", "--config-dir", dir, "--metrics", "foo"}, `ztdns agent: --metrics "foo": want ADDR:PORT, e.g. 127.0.0.1:15053`},
		{[]string{"agent", "--config-dir", dir, "--metrics", "127.0.0.1:http"}, `ztdns agent: --metrics "127.0.0.1:http": port "http": want a number up to 65535`},
		{[]string{"agent"}, "ztdns agent: no source: give --config-dir, or --kubeconfig, or run in a pod: in-cluster Kubernetes config (give --kubeconfig when not running in a pod): unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined"},
		{[]string{"capture", "add", "--socket", noAgent, "--netns", "./x"}, `ztdns capture add: netns "./x" is not an absolute path`},
		{[]string{"capture", "del", "--socket", noAgent, "--netns", "x"}, `ztdns capture del: netns "x" is not an absolute path`},
		{[]string{"capture", "add", "--socket", noAgent, "--netns", "/run/netns/\xff"}, `ztdns capture add: netns "/run/netns/\xff": want printable UTF-8 characters`},
		{[]string{"capture", "del", "--socket", noAgent, "--netns", "/run/netns/\x1b[2K"}, `ztdns capture del: netns "/run/netns/\x1b[2K": want printable UTF-8 characters`},
		{[]string{"capture", "add", "--socket", noAgent, "--netns", "/run/netns/x", "--name", "web\xfe"}, `ztdns capture add: name "web\xfe": at most 4096 printable characters`},
		{[]string{"capture", "add", "--socket", noAgent, "--netns", "/run/netns/x", "-n", "BAD_NS"},
			`ztdns capture add: namespace "BAD_NS": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`},
		{[]string{"completion", "nosh"}, `ztdns completion: unknown command "nosh" for "ztdns completion"`},
		{[]string{"completion"}, `ztdns completion: give bash, zsh, fish or powershell`},
		{[]string{"agent", "--config-dir", dir, "--capture-port", "53"}, "ztdns agent: --capture-port 53: want another port, which istio-cni's in-pod DNS rules leave alone"},
		{[]string{"agent", "--config-dir", dir, "--heartbeat-stale", "0"}, "ztdns agent: --heartbeat-stale 0s: want at least 2s, twice the agent's heartbeat"},
		{[]string{"agent", "--config-dir", dir, "--heartbeat-stale", "1s"}, "ztdns agent: --heartbeat-stale 1s: want at least 2s, twice the agent's heartbeat"},
		{[]string{"agent", "--config-dir", dir, "--heartbeat-stale", "-3s"}, "ztdns agent: --heartbeat-stale -3s: want at least 2s, twice the agent's heartbeat"},
		{[]string{"agent", "--config-dir", dir, "--pod-template-generation", "0"},
			`ztdns agent: --pod-template-generation "0": want the pod's pod-template-generation label, a number from 1, or empty`},
		{[]string{"agent", "--config-dir", dir, "--pod-template-generation", "v2"},
			`ztdns agent: --pod-template-generation "v2": want the pod's pod-template-generation label, a number from 1, or empty`},
		{[]string{"agent", "--config-dir", dir, "--ttl", "0"}, "ztdns agent: --ttl 0s: want whole seconds from 1s to 24h0m0s"},
		{[]string{"agent", "--config-dir", dir, "--ttl", "500ms"}, "ztdns agent: --ttl 500ms: want whole seconds from 1s to 24h0m0s"},
		{[]string{"agent", "--config-dir", dir, "--ttl", "1500ms"}, "ztdns agent: --ttl 1.5s: want whole seconds from 1s to 24h0m0s"},
		{[]string{"agent", "--config-dir", dir, "--ttl", "-5s"}, "ztdns agent: --ttl -5s: want whole seconds from 1s to 24h0m0s"},
		{[]string{"agent", "--config-dir", dir, "--ttl", "200000h"}, "ztdns agent: --ttl 200000h0m0s: want whole seconds from 1s to 24h0m0s"},
		{[]string{"agent", "--config-dir", dir, "--service-entry-ttl", "0"}, "ztdns agent: --service-entry-ttl 0s: want whole seconds from 1s to 24h0m0s"},
		{[]string{"agent", "--config-dir", dir, "--service-entry-ttl", "1500ms"}, "ztdns agent: --service-entry-ttl 1.5s: want whole seconds from 1s to 24h0m0s"},
		{[]string{"agent", "--config-dir", dir, "--capture-nameservers", "10.96.0.10,cluster-dns"},
			`ztdns agent: invalid argument "10.96.0.10,cluster-dns" for "--capture-nameservers" flag: "cluster-dns" is not an address or CIDR`},
		{[]string{"agent", "--config-dir", dir, "--capture-nameservers", "10.96.0.0/33"},
			`ztdns agent: invalid argument "10.96.0.0/33" for "--capture-nameservers" flag: "10.96.0.0/33" is not an address or CIDR`},
		{[]string{"agent", "--config-dir", dir, "--capture-nameservers", "10.96.0.10/16"},
			"ztdns agent: --capture-nameservers: 10.96.0.10/16 has bits set past /16: give 10.96.0.0/16, or the address alone"},
		{[]string{"agent", "--config-dir", dir, "--capture-nameservers", "10.96.0.10,fe80::1"},
			"ztdns agent: --capture-nameservers: fe80::1/128 is on the pod's own host or link (loopback, IPv6 link-local, multicast, broadcast): queries there are never captured"},
		{[]string{"agent", "--config-dir", dir, "--capture-nameservers", "::ffff:127.0.0.53"},
			"ztdns agent: --capture-nameservers: ::ffff:127.0.0.53/128 is on the pod's own host or link (loopback, IPv6 link-local, multicast, broadcast): queries there are never captured"},
		{[]string{"agent", "--config-dir", dir, "--capture-nameservers", "10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4,10.0.0.5", "--capture-nameservers", "fd00::1,fd00::2,fd00::3,fd00::4/126"},
			"ztdns agent: --capture-nameservers: 9 prefixes, want at most 8"},
		{[]string{"agent", "--config-dir", dir, "--capture=false", "--capture-nameservers", "10.96.0.10"},
			"ztdns agent: --capture-nameservers with --capture=false: no queries are captured, so there is nothing to limit"},
		{[]string{"agent", "--config-dir", dir, "--pod-inflight-bytes", "32Ki"},
			"ztdns agent: --pod-inflight-bytes 32Ki: want 0 (no limit of its own) or at least 64Ki, one reply of the largest size"},
		{[]string{"agent", "--config-dir", dir, "--pod-inflight-bytes", "65535"},
			"ztdns agent: --pod-inflight-bytes 65535: want 0 (no limit of its own) or at least 64Ki, one reply of the largest size"},
		{[]string{"agent", "--config-dir", dir, "--inflight-bytes", "32Ki"},
			"ztdns agent: --inflight-bytes 32Ki: want at least 64Ki, one reply of the largest size"},
		{[]string{"agent", "--config-dir", dir, "--inflight-bytes", "65535"},
			"ztdns agent: --inflight-bytes 65535: want at least 64Ki, one reply of the largest size"},
		// Under dir: if the check regressed, the agent makes only dir/z.
		{[]string{"agent", "--config-dir", dir, "--socket", dir + "/l/../z/ztdns.sock"},
			"ztdns agent: --socket " + dir + `/l/../z/ztdns.sock has a ".." component, which symbolic links before it may send elsewhere: give the path without it`},
		{[]string{"agent", "--config-dir", dir, "--state-dir", dir + "/l/../z"},
			"ztdns agent: --state-dir " + dir + `/l/../z has a ".." component, which symbolic links before it may send elsewhere: give the path without it`},
		{[]string{"agent", "--config-dir", dir, "--inflight-bytes", "0"},
			`ztdns agent: invalid argument "0" for "--inflight-bytes" flag: "0" is not a positive size in bytes (e.g. 4Mi)`},
		// "$(HOST_IP):53" on a node with an IPv6 address of eight groups.
		{[]string{"agent", "--config-dir", dir, "--listen", "2001:db8:1:2:3:4:5:6:53"},
			`ztdns agent: invalid argument "2001:db8:1:2:3:4:5:6:53" for "--listen" flag: "2001:db8:1:2:3:4:5:6:53": an IPv6 address with a port goes in brackets: [2001:db8:1:2:3:4:5:6]:53`},
		// On a node with 2001:db8::5: the resolver would bind another
		// address (IP_FREEBIND), and nothing would fail.
		{[]string{"agent", "--config-dir", dir, "--listen", "2001:db8::5:53"},
			`ztdns agent: invalid argument "2001:db8::5:53" for "--listen" flag: "2001:db8::5:53": address 2001:db8::5:53 or port 53 of 2001:db8::5? An IPv6 address goes in brackets: write [2001:db8::5:53] or [2001:db8::5]:53`},
		// Another host: a nameserver on port 5353 goes in brackets.
		{[]string{"agent", "--config-dir", dir, "--upstream", "fd00:10:96::a:5353"},
			`ztdns agent: invalid argument "fd00:10:96::a:5353" for "--upstream" flag: "fd00:10:96::a:5353": address fd00:10:96::a:5353 or port 5353 of fd00:10:96::a? An IPv6 address goes in brackets: write [fd00:10:96::a:5353] or [fd00:10:96::a]:5353`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			r := ztdns(t, tc.args...)
			lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
			if r.code != 2 || r.stdout != "" || len(lines) != 2 || lines[0] != tc.want || !strings.HasPrefix(lines[1], "Run 'ztdns") {
				t.Errorf("want exit status 2, nothing on stdout, and on stderr %q and where the usage is; got %v", tc.want, r)
			}
		})
	}
}

// TestFailures: a command that ran and failed exits 1 with one line naming
// the command and the error, the one each line is for (an agent that ran
// until the tests' 15 s guard stopped it exits 1 too, with another).
// `ztdns status` with no agent adds a line: what captured pods do
// meanwhile, and where to look for the agent.
func TestFailures(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "no-agent.sock")
	missing := filepath.Join(t.TempDir(), "missing")
	notDir := filepath.Join(t.TempDir(), "manifests.yaml")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// The line after the error, by command; none for the others.
	hints := map[string]string{"status": "If the agent is down, captured pods fail open: their queries go to their own nameservers " +
		"(the cluster DNS, usually), around ztdns, at once after a clean stop, within --heartbeat-stale (3s) after a crash. " +
		"Check the agent: its pod (kubectl -n kube-system get pod -l app.kubernetes.io/name=ztdns --field-selector spec.nodeName=NODE), " +
		"or its unit (systemctl status ztdns; journalctl -u ztdns), and --socket if the agent's is not the default.\n"}
	for _, tc := range []struct {
		args []string
		want string // the error, after the command's name
	}{
		{[]string{"status", "--socket", socket}, "agent not reachable: "},
		{[]string{"pods", "--socket", socket, "-o", "json"}, "agent not reachable: "},
		{[]string{"table", "--socket", socket, "-n", "default"}, "agent not reachable: "},
		{[]string{"capture", "add", "--socket", socket, "--netns", "/run/netns/nonexistent"}, "agent not reachable: "},
		{[]string{"log", "on", "--socket", socket}, "agent not reachable: "},
		{[]string{"agent", "--config-dir", t.TempDir(), "--resolv-conf", "/nonexistent"},
			"no upstream: give --upstream or list a nameserver in /nonexistent\n"},
		{[]string{"agent", "--config-dir", t.TempDir(), "--listen", ""}, "no --listen address\n"},
		// Before anything is bound or attached, and not a usage error:
		// the directory may yet come, and a restart serve it. Before, the
		// agent started (logging "agent started"), then exited 1 as its
		// source ended.
		{[]string{"agent", "--config-dir", missing}, `--config-dir "` + missing + `": stat ` + missing + ": no such file or directory\n"},
		{[]string{"agent", "--config-dir", notDir}, `--config-dir "` + notDir + `": ` + notDir + " is not a directory\n"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			r := ztdns(t, tc.args...)
			prefix := "ztdns " + tc.args[0] + ": " + tc.want
			if tc.args[0] == "capture" || tc.args[0] == "log" {
				prefix = "ztdns " + tc.args[0] + " " + tc.args[1] + ": " + tc.want
			}
			hint := hints[tc.args[0]]
			if r.code != 1 || r.stdout != "" || strings.Count(r.stderr, "\n") != 1+strings.Count(hint, "\n") ||
				!strings.HasPrefix(r.stderr, prefix) || !strings.HasSuffix(r.stderr, "\n"+hint) {
				t.Errorf("want exit status 1 and one line %q… on stderr, then %q; got %v", prefix, hint, r)
			}
		})
	}
}

// testAgent is an agent serving a directory of manifests: the walkthrough's
// examples, a ServiceEntry with six addresses, seven hosts the table leaves
// out (warnings) and a file that does not parse (a source error).
type testAgent struct {
	*agenttest.Agent
	reg *prometheus.Registry
}

func startAgent(t *testing.T) testAgent {
	t.Helper()
	return startAgentWith(t, func(*agent.Config) {})
}

// startAgentWith is startAgent with the configuration changed by edit.
func startAgentWith(t *testing.T, edit func(*agent.Config)) testAgent {
	t.Helper()
	dir := t.TempDir()
	examples, err := filepath.Glob("../../examples/*.yaml")
	if err != nil || len(examples) == 0 {
		t.Fatalf("examples: %v %v", examples, err)
	}
	files := map[string]string{"zz-broken.yaml": "kind: Service\nmetadata: [\n"}
	for _, p := range examples {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files[filepath.Base(p)] = string(b)
	}
	many := "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: many, namespace: default}\n" +
		"spec: {hosts: [many.internal], addresses: [198.51.100.11, 198.51.100.12, 198.51.100.13, 198.51.100.14, 198.51.100.15, 198.51.100.16], ports: [{name: http, number: 80, protocol: HTTP}]}\n"
	for i := range 7 {
		many += fmt.Sprintf("---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: bad-%d, namespace: default}\n"+
			"spec: {hosts: [\"*bad%d.internal\"], addresses: [198.51.100.%d], ports: [{name: http, number: 80, protocol: HTTP}]}\n", i, i, 20+i)
	}
	// A headless Service without endpoints: a name held without records.
	many += "---\napiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: default}\nspec: {clusterIP: None, ports: [{name: http, port: 80}]}\n"
	// A ServiceEntry host without a VIP, which pods pass over: forwarded.
	many += "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: novip, namespace: default}\n" +
		"spec: {hosts: [novip.internal], resolution: NONE, ports: [{name: http, number: 80, protocol: HTTP}]}\n"
	files["many.yaml"] = many
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.Marker(netip.MustParseAddr("203.0.113.99"), netip.MustParseAddr("2001:db8::99")))
	reg := prometheus.NewRegistry()
	cfg := agent.Config{Source: configdir.New(dir), Upstreams: []netip.AddrPort{up.Addr}, Registry: reg}
	edit(&cfg)
	a := agenttest.Start(t, cfg)
	agenttest.Eventually(t, 10*time.Second, func() error {
		st, err := a.Status()
		if err == nil && (len(st.Warnings) < 7 || len(st.SourceErrors) == 0) {
			err = fmt.Errorf("not all manifests read yet: %+v", st)
		}
		return err
	})
	return testAgent{a, reg}
}

// ok runs a command line that must succeed and returns its stdout.
func ok(t *testing.T, args ...string) string {
	t.Helper()
	r := ztdns(t, args...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("ztdns %s: %v", strings.Join(args, " "), r)
	}
	return r.stdout
}

// TestReadCommands runs status, pods and table against a running agent in
// every format: JSON and YAML hold what the control API returns, field for
// field; the tables show it to a person, wide with more.
func TestReadCommands(t *testing.T) {
	a := startAgent(t)
	c := control.NewClient(a.Socket, 5*time.Second)
	st, err := c.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	pods, err := c.Pods(t.Context())
	if err != nil || len(pods) == 0 {
		t.Fatalf("pods: %v %v", pods, err)
	}
	rows, err := c.Table(t.Context(), "default")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		got  func() any // a new value of the output's type
		want any
	}{
		{[]string{"status"}, func() any { return new(control.Status) }, &st},
		{[]string{"pods"}, func() any { return new([]control.PodRow) }, &pods},
		{[]string{"table", "-n", "default"}, func() any { return new([]control.TableRow) }, &rows},
	} {
		for format, unmarshal := range map[string]func([]byte, any) error{
			"json": json.Unmarshal,
			"yaml": func(b []byte, v any) error { return yaml.UnmarshalStrict(b, v) },
		} {
			t.Run(tc.args[0]+" -o "+format, func(t *testing.T) {
				out := ok(t, append(slices.Clone(tc.args), "--socket", a.Socket, "-o", format)...)
				if format == "yaml" && json.Valid([]byte(out)) {
					t.Errorf("-o yaml printed JSON:\n%s", out)
				}
				got := tc.got()
				if err := unmarshal([]byte(out), got); err != nil {
					t.Fatalf("-o %s does not parse: %v\n%s", format, err, out)
				}
				if !reflect.DeepEqual(got, tc.want) {
					t.Errorf("-o %s: %+v\nwant what the control API says: %+v", format, got, tc.want)
				}
			})
		}
	}

	t.Run("status", func(t *testing.T) {
		table, wide := ok(t, "status", "--socket", a.Socket), ok(t, "status", "--socket", a.Socket, "-o", "wide")
		for _, want := range []string{
			"Ready:               yes\n",
			"Version:             " + st.Build.Version + "\n",
			"Capture:             off\n",
			fmt.Sprintf("Names:               %d\n", st.Names),
			"Listen:              " + a.Addr.String() + "\n",
			"Source errors:       " + st.SourceErrors[0],
			"Warnings:            " + st.Warnings[0],
			"                     " + st.Warnings[4] + "\n",
			"                     ... and 2 more (-o wide shows the 7 the agent keeps)\n",
			"Access log:          off (to stderr when on)\n",
		} {
			if !strings.Contains(table, want) {
				t.Errorf("ztdns status lacks %q:\n%s", want, table)
			}
		}
		if strings.Contains(table, st.Warnings[5]) || strings.Contains(table, "Revision:") {
			t.Errorf("ztdns status shows what only -o wide should:\n%s", table)
		}
		for _, want := range []string{"Revision:            " + st.Build.Revision + "\n", "Go:                  " + st.Build.GoVersion + "\n", st.Warnings[6]} {
			if !strings.Contains(wide, want) {
				t.Errorf("ztdns status -o wide lacks %q:\n%s", want, wide)
			}
		}
	})
	t.Run("pods", func(t *testing.T) {
		table, wide := ok(t, "pods", "--socket", a.Socket), ok(t, "pods", "--socket", a.Socket, "-o", "wide")
		header := []string{"NAMESPACE", "NAME", "IPS", "NETNS COOKIE", "CAPTURED", "REASON", "MARKED", "REDIRECTED", "RESTORED", "NAMESERVERS", "ISTIO DNS RULES", "LIMITED RATE/FWD/BYTES/TCP"}
		if got := headerCells(table); !slices.Equal(got, header) {
			t.Errorf("ztdns pods header %q, want %q", got, header)
		}
		wideHeader := slices.Concat(header[:9], []string{"SKIPPED STALE", "SOCKETS"}, header[9:], []string{"CONTAINER ID", "NETNS PATH"})
		if got, want := headerCells(wide), wideHeader; !slices.Equal(got, want) {
			t.Errorf("ztdns pods -o wide header %q, want %q", got, want)
		}
		for _, p := range pods {
			if !strings.Contains(table, p.Name) || !strings.Contains(table, strings.Join(p.IPs, ",")) {
				t.Errorf("ztdns pods lacks %s (%v):\n%s", p.Name, p.IPs, table)
			}
		}
		if lines := strings.Count(table, "\n"); lines != len(pods)+1 {
			t.Errorf("ztdns pods: %d lines for %d pods:\n%s", lines, len(pods), table)
		}
	})
	t.Run("table", func(t *testing.T) {
		table := ok(t, "table", "--socket", a.Socket, "-n", "default")
		wide := ok(t, "table", "--socket", a.Socket, "-n", "default", "-o", "wide")
		for _, r := range rows {
			if !strings.Contains(wide, r.Name) || !strings.Contains(wide, strings.Join(r.Values, ",")) {
				t.Errorf("ztdns table -o wide lacks %s %v:\n%s", r.Name, r.Values, wide)
			}
		}
		many := "198.51.100.11,198.51.100.12,198.51.100.13,198.51.100.14,198.51.100.15,198.51.100.16"
		if !strings.Contains(table, "198.51.100.11,198.51.100.12,198.51.100.13 + 3 more...") || strings.Contains(table, many) {
			t.Errorf("ztdns table shows many.internal's six addresses in full, or not the first three:\n%s", table)
		}
		if !regexp.MustCompile(`(?m)^empty\.default\.svc\.cluster\.local\.\s+-\s+\(forwarded\)\s+Service default/empty\s+no ready endpoint\s*$`).MatchString(table) {
			t.Errorf("ztdns table lacks the forwarded row of the headless Service without endpoints:\n%s", table)
		}
		if !regexp.MustCompile(`(?m)^novip\.internal\.\s+-\s+\(forwarded\)\s+ServiceEntry default/novip\s+no VIP: resolution NONE gets none\s*$`).MatchString(table) {
			t.Errorf("ztdns table lacks the forwarded row of the ServiceEntry host without a VIP:\n%s", table)
		}
		want := []string{"NAME", "TYPE", "VALUES", "FROM", "ADDRESSES", "REASON"}
		if got := headerCells(table); !slices.Equal(got, want) {
			t.Errorf("ztdns table header %q, want %q", got, want)
		}
		if got := headerCells(wide); !slices.Equal(got, want) {
			t.Errorf("ztdns table -o wide header %q, want %q", got, want)
		}
	})
}

// headerCells splits the first line of a table into its column names.
func headerCells(table string) []string {
	first, _, _ := strings.Cut(table, "\n")
	return regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(first), -1)
}

// TestOldFlagSpellings: the single-dash long flags of earlier releases,
// and their one-letter ones with two dashes, reach the command as the GNU
// spellings do.
func TestOldFlagSpellings(t *testing.T) {
	a := startAgent(t)
	wantTable := ok(t, "table", "--socket", a.Socket, "--namespace", "default", "-o", "json")
	for _, args := range [][]string{
		{"table", "-socket", a.Socket, "-namespace", "default", "-o", "json"},
		{"table", "-socket=" + a.Socket, "-namespace=default", "-o=json"},
		{"table", "--socket", a.Socket, "--n", "default", "--o", "json"},
		{"table", "-socket", a.Socket, "-n", "default", "-ojson"},
		{"table", "--socket=" + a.Socket, "--namespace=default", "--output=json"},
	} {
		if got := ok(t, args...); got != wantTable {
			t.Errorf("ztdns %s printed\n%s\nwant\n%s", strings.Join(args, " "), got, wantTable)
		}
	}
	for _, args := range [][]string{
		{"status", "-socket", a.Socket, "-o", "json"},
		{"pods", "-socket", a.Socket, "-o", "json"},
	} {
		var v any
		if err := json.Unmarshal([]byte(ok(t, args...)), &v); err != nil {
			t.Errorf("ztdns %s: %v", strings.Join(args, " "), err)
		}
	}
	if out := ok(t, "status", "-help"); !strings.Contains(out, "--socket PATH") {
		t.Errorf("ztdns status -help:\n%s", out)
	}
	// The agent refuses a capture without capture on: the request got there.
	r := ztdns(t, "capture", "add", "-socket", a.Socket, "-netns", "/run/netns/ztdns-nonexistent", "-namespace", "default", "-name", "pod1")
	if r.code != 1 || strings.Contains(r.stderr, "flag") {
		t.Errorf("capture add with old spellings: want the agent's refusal (exit status 1), got %v", r)
	}
}

// TestOneDashLongFlags checks the rewriting of old spellings word by word:
// values are never touched, even when they start with a dash.
func TestOneDashLongFlags(t *testing.T) {
	for _, tc := range []struct{ args, want []string }{
		{
			[]string{"agent", "-config-dir", "/d", "-capture=false", "-listen", "127.0.0.1:5353", "-autopath", "-ttl=5s"},
			[]string{"agent", "--config-dir", "/d", "--capture=false", "--listen", "127.0.0.1:5353", "--autopath", "--ttl=5s"},
		},
		{
			[]string{"capture", "add", "-name", "-netns", "-netns", "/run/netns/p", "-n", "-socket", "--", "-socket"},
			[]string{"capture", "add", "--name", "-netns", "--netns", "/run/netns/p", "-n", "-socket", "--", "-socket"},
		},
		{
			[]string{"table", "--o", "json", "--n=default", "-ojson", "-help", "-bogus"},
			[]string{"table", "-o", "json", "-n=default", "-ojson", "--help", "-bogus"},
		},
		{[]string{"bogus", "-socket", "x"}, []string{"bogus", "-socket", "x"}},
	} {
		if got := oneDashLongFlags(newRoot(), tc.args); !slices.Equal(got, tc.want) {
			t.Errorf("oneDashLongFlags(%q) = %q, want %q", tc.args, got, tc.want)
		}
	}
}

// TestVersionIsTheAgents: `ztdns version`, the agent's status and its
// ztdns_build_info metric name the same build.
func TestVersionIsTheAgents(t *testing.T) {
	a := startAgent(t)
	var info version.Info
	if err := json.Unmarshal([]byte(ok(t, "version", "-o", "json")), &info); err != nil {
		t.Fatal(err)
	}
	if line := ok(t, "version"); line != info.String()+"\n" {
		t.Errorf("ztdns version printed %q, want %q", line, info.String())
	}
	var st control.Status
	if err := json.Unmarshal([]byte(ok(t, "status", "--socket", a.Socket, "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Build != info {
		t.Errorf("ztdns status says %+v, ztdns version %+v", st.Build, info)
	}
	if got := buildInfoLabels(t, a.reg); got != info {
		t.Errorf("ztdns_build_info says %+v, ztdns version %+v", got, info)
	}
}

// buildInfoLabels returns the labels of ztdns_build_info, which must be 1.
func buildInfoLabels(t *testing.T, g prometheus.Gatherer) version.Info {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ztdns_build_info" {
			continue
		}
		if len(mf.GetMetric()) != 1 || mf.GetMetric()[0].GetGauge().GetValue() != 1 {
			t.Fatalf("ztdns_build_info: %v, want one series of value 1", mf)
		}
		l := map[string]string{}
		for _, p := range mf.GetMetric()[0].GetLabel() {
			l[p.GetName()] = p.GetValue()
		}
		return version.Info{Version: l["version"], Revision: l["revision"], GoVersion: l["goversion"]}
	}
	t.Fatal("no ztdns_build_info metric")
	return version.Info{}
}

// TestLogCommand: `ztdns log on|off` switches a running agent's access log:
// lines appear for the sampled queries while it is on, none after it is
// off, and `ztdns status` says which.
func TestLogCommand(t *testing.T) {
	var lines testenv.Log
	al, err := accesslog.New(&lines, "the test's buffer", "text", 0)
	if err != nil {
		t.Fatal(err)
	}
	a := startAgentWith(t, func(cfg *agent.Config) { cfg.AccessLog = al })
	ask := func(n int) {
		for range n {
			a.Query(t, "udp", netip.MustParseAddr("127.0.0.1"), "address.internal", dns.TypeA, false)
		}
	}
	count := func() int { return strings.Count(lines.String(), `msg="dns query"`) }
	status := func() string {
		t.Helper()
		for _, l := range strings.Split(ok(t, "status", "--socket", a.Socket), "\n") {
			if strings.HasPrefix(l, "Access log:") {
				return strings.TrimSpace(strings.TrimPrefix(l, "Access log:"))
			}
		}
		t.Fatal("ztdns status has no access log line")
		return ""
	}

	ask(3)
	if n := count(); n != 0 {
		t.Fatalf("%d lines while the log is off", n)
	}
	if out := ok(t, "log", "on", "--sample", "2", "--socket", a.Socket); out != "access log on: one query in 2, to the test's buffer\n" {
		t.Errorf("ztdns log on printed %q", out)
	}
	if got := status(); got != "on: one query in 2, to the test's buffer" {
		t.Errorf("ztdns status: access log %q", got)
	}
	ask(6)
	agenttest.Eventually(t, 5*time.Second, func() error {
		if n := count(); n != 3 {
			return fmt.Errorf("%d lines for 6 queries at one in 2, want 3:\n%s", n, lines.String())
		}
		return nil
	})
	if !strings.Contains(lines.String(), `name=address.internal. type=A proto=udp rcode=NOERROR answered=table`) {
		t.Errorf("access log lines lack the query:\n%s", lines.String())
	}
	if out := ok(t, "log", "off", "--socket", a.Socket); out != "access log off (to the test's buffer when on)\n" {
		t.Errorf("ztdns log off printed %q", out)
	}
	ask(4)
	if got := status(); got != "off (to the test's buffer when on)" {
		t.Errorf("ztdns status: access log %q", got)
	}
	if n := count(); n != 3 {
		t.Errorf("%d lines after ztdns log off, want the 3 from before", n)
	}
	// Usage errors do nothing.
	for _, args := range [][]string{{"log"}, {"log", "maybe"}, {"log", "on", "--sample", "-1"}, {"log", "off", "--sample", "2"}} {
		if r := ztdns(t, append(args, "--socket", a.Socket)...); r.code != 2 {
			t.Errorf("ztdns %s: want exit status 2, got %v", strings.Join(args, " "), r)
		}
	}
	if got := status(); got != "off (to the test's buffer when on)" {
		t.Errorf("after usage errors, ztdns status: access log %q", got)
	}
}

// TestStatusShowsManifestProblemsOnALineEach: a manifest whose file name
// or kind holds line breaks and terminal escapes cannot forge a line of
// `ztdns status` ("Ready: yes-FAKE") or move the cursor over the real
// ones: each source error is one line, with no ESC in the output.
func TestStatusShowsManifestProblemsOnALineEach(t *testing.T) {
	dir := t.TempDir()
	for name, text := range map[string]string{
		"evil\n\x1b[2K\x1b[1AReady:\tyes-FAKE.yaml": "kind: Service\nmetadata: [\n",
		"kind.yaml": "kind: \"\\e[2K\\e[1A\\nReady: yes-FAKE\"\nmetadata: {name: x}\n",
		"web.yaml":  "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	up := dnstest.Start(t, "127.0.0.1:0", dnstest.Marker(netip.MustParseAddr("203.0.113.99"), netip.MustParseAddr("2001:db8::99")))
	a := agenttest.Start(t, agent.Config{Source: configdir.New(dir), Upstreams: []netip.AddrPort{up.Addr}, Registry: prometheus.NewRegistry()})
	var st control.Status
	agenttest.Eventually(t, 10*time.Second, func() (err error) {
		if st, err = a.Status(); err == nil && (!st.Ready || len(st.SourceErrors) != 2) {
			err = fmt.Errorf("want ready with 2 source errors: %+v", st)
		}
		return err
	})
	for _, format := range []string{"table", "wide"} {
		out := ok(t, "status", "--socket", a.Socket, "-o", format)
		if strings.ContainsRune(out, '\x1b') {
			t.Errorf("ztdns status -o %s prints ESC:\n%q", format, out)
		}
		lines := strings.Split(out, "\n")
		if ready := slices.DeleteFunc(slices.Clone(lines), func(l string) bool { return !strings.Contains(l, "Ready:") || strings.Contains(l, `\`) }); len(ready) != 1 || strings.Join(strings.Fields(lines[0]), " ") != "Ready: yes" {
			t.Errorf("ztdns status -o %s: want one Ready line, first, saying yes:\n%s", format, out)
		}
		first := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "Source errors:") })
		if first < 0 || first+2 >= len(lines) || strings.HasPrefix(lines[first+1], "Source errors:") ||
			strings.TrimLeft(lines[first+1], " ") == lines[first+1] || !strings.HasPrefix(strings.TrimLeft(lines[first+1], " "), "/") ||
			strings.HasPrefix(lines[first+2], " ") {
			t.Errorf("ztdns status -o %s: want the 2 source errors on a line each:\n%s", format, out)
		}
	}
}

// TestAgentRefusesPluginConfig: a policy or a --socket the CNI plugin would
// refuse in its conflist entry (failing every pod's ADD, under allow too)
// is a usage error, before anything is installed.
func TestAgentRefusesPluginConfig(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir) // a relative --socket, should it be taken, lands here
	bin, conf := filepath.Join(dir, "bin"), filepath.Join(dir, "net.d")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--cni-on-agent-unreachable", "Fail"}, `--cni-on-agent-unreachable "Fail": want allow or fail`},
		{[]string{"--cni-on-agent-unreachable", "deny", "--cni-install=false"}, `--cni-on-agent-unreachable "deny": want allow or fail`},
		{[]string{"--socket", "run/ztdns.sock"}, `--socket "run/ztdns.sock" with --cni-install: want an absolute path, which the CNI plugin is given`},
	} {
		args := append([]string{"agent", "--config-dir", dir, "--cni-install", "--cni-bin-dir", bin, "--cni-conf-dir", conf}, tc.args...)
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			r := ztdns(t, args...)
			if r.code != 2 || !strings.HasPrefix(r.stderr, "ztdns agent: "+tc.want+"\n") {
				t.Errorf("want exit status 2 and %q, got %v", tc.want, r)
			}
			for _, d := range []string{bin, conf, filepath.Join(dir, "run")} {
				if _, err := os.Stat(d); err == nil {
					t.Errorf("%s was made", d)
				}
			}
		})
	}
}
