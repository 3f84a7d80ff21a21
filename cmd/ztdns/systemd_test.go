//go:build linux

package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ztdns/ztdns/internal/testenv"
)

// unitFile is the systemd unit the repository ships for the agent without
// Kubernetes (README.md, "Running the agent as a service").
const unitFile = "../../deploy/systemd/ztdns.service"

// readUnit reads a unit file's settings by section and key, each key's
// values in order, lines continued with a trailing backslash joined.
func readUnit(t *testing.T, path string) map[string]map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	unit := map[string]map[string][]string{}
	section, line := "", ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		text := strings.TrimSpace(sc.Text())
		if line == "" && (text == "" || strings.HasPrefix(text, "#") || strings.HasPrefix(text, ";")) {
			continue
		}
		if cont, ok := strings.CutSuffix(text, `\`); ok {
			line += cont + " "
			continue
		}
		line += text
		switch {
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			unit[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: %q is no setting of a section", path, line)
			}
			unit[section][strings.TrimSpace(k)] = append(unit[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
		line = ""
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return unit
}

// TestSystemdUnit: the shipped unit runs `ztdns agent` with flags the
// agent takes (parsed with its own flag set, so a renamed or removed flag
// fails here, not on a user's machine), keeps --state-dir where systemd
// leaves it at a stop (StateDirectory=, not a RuntimeDirectory= systemd
// removes, which made the next agent uncapture every namespace captured by
// hand), restarts always, and uninstalls nothing when it stops.
func TestSystemdUnit(t *testing.T) {
	unit := readUnit(t, unitFile)
	svc := unit["Service"]
	if len(svc["ExecStart"]) != 1 {
		t.Fatalf("ExecStart = %q, want one command line", svc["ExecStart"])
	}
	line := svc["ExecStart"][0]
	if strings.ContainsAny(line, `"'$%`) {
		t.Fatalf("ExecStart %q: quoting, variables or specifiers this test does not expand", line)
	}
	words := strings.Fields(line)
	if len(words) < 2 || !filepath.IsAbs(words[0]) || filepath.Base(words[0]) != "ztdns" || words[1] != "agent" {
		t.Fatalf("ExecStart %q: want /PATH/ztdns agent FLAGS", line)
	}
	cmd := newAgentCmd()
	if err := cmd.ParseFlags(oneDashLongFlags(newRoot(), words[2:])); err != nil {
		t.Fatalf("ExecStart %q: the agent refuses its flags: %v", line, err)
	}
	if args := cmd.Flags().Args(); len(args) != 0 {
		t.Errorf("ExecStart %q: arguments %q the agent takes none of", line, args)
	}
	flag := func(name string) string { return cmd.Flags().Lookup(name).Value.String() }
	if flag("config-dir") == "" {
		t.Errorf("ExecStart %q: no --config-dir, the source without Kubernetes", line)
	}

	stateDir := flag("state-dir")
	if stateDir == "" {
		stateDir = filepath.Dir(flag("socket"))
	}
	kept := false
	for _, d := range strings.Fields(strings.Join(svc["StateDirectory"], " ")) {
		kept = kept || stateDir == filepath.Join("/var/lib", d)
	}
	if !kept {
		t.Errorf("the agent's state directory %s is not a StateDirectory= of the unit (%q): systemd does not keep it", stateDir, svc["StateDirectory"])
	}
	if strings.Join(svc["RuntimeDirectoryPreserve"], "") != "yes" {
		for _, d := range strings.Fields(strings.Join(svc["RuntimeDirectory"], " ")) {
			for _, run := range []string{"/run", "/var/run"} {
				if dir := filepath.Join(run, d); stateDir == dir || strings.HasPrefix(stateDir, dir+"/") {
					t.Errorf("the agent's state directory %s is in RuntimeDirectory=%s, which systemd removes at every stop", stateDir, d)
				}
			}
		}
	}
	if got := svc["Restart"]; len(got) != 1 || got[0] != "always" {
		t.Errorf("Restart = %q, want always", got)
	}
	for _, key := range []string{"ExecStop", "ExecStopPost"} {
		for _, v := range svc[key] {
			if strings.Contains(" "+v+" ", " uninstall ") {
				t.Errorf("%s=%s: a stop must leave the pins and links, for the next agent to take over", key, v)
			}
		}
	}

	// systemd's own reading of it: unknown keys, bad values, a missing
	// section are reported there (and ignored by systemd at run time).
	analyze := testenv.LookPath(t, "systemd-analyze")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	copied := filepath.Join(t.TempDir(), "ztdns.service") // ExecStart must be an executable there is
	if err := os.WriteFile(copied, []byte(strings.Replace(string(text), "ExecStart="+words[0], "ExecStart="+self, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(t.Context(), analyze, "verify", copied).CombinedOutput(); err != nil || len(out) != 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unitFile, err, out)
	}
}
