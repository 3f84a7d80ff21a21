//go:build linux

package redirect

import (
	"bufio"
	"bytes"
	"cmp"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ztdns/ztdns/internal/testenv"
)

// TestGeneratedObjectsMatchSources re-runs the //go:generate line of
// gen.go into a temporary directory and compares the result byte for byte
// with the committed files, so a change to bpf/ without `make generate`
// fails here. bpf2go builds reproducibly (no clang version, no absolute
// paths in the object); the committed files come from Debian's clang 14,
// which CI installs. Another major version of clang makes other bytes of
// the same sources, so with one the test does not compare: a difference
// would blame the objects, and `make generate` would commit that clang's.
func TestGeneratedObjectsMatchSources(t *testing.T) {
	requireCommittedClang(t)
	testenv.LookPath(t, "llvm-strip")
	goBin := testenv.LookPath(t, "go")

	args := generateArgs(t)
	out := t.TempDir()
	// bpf2go flags come before its positional arguments.
	cmd := exec.Command(goBin, append([]string{"tool", "bpf2go", "-output-dir", out}, args...)...)
	cmd.Env = append(os.Environ(), "GOPACKAGE=redirect", "GOFILE=gen.go")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, b)
	}

	for _, name := range []string{"ztdns_bpfel.o", "ztdns_bpfel.go"} {
		committed, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		fresh, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(committed, fresh) {
			v, _ := exec.Command("clang", "--version").Output()
			t.Errorf("%s differs from what bpf/ compiles to: run `make generate` and commit (committed with Debian clang 14; this is %s)",
				name, firstLine(v))
		}
	}
}

// committedClang is the clang major version the committed objects come
// from: Debian 12's, which .ci/run insists on.
const committedClang = "14"

// requireCommittedClang stops the test unless the clang bpf2go compiles
// with ($BPF2GO_CC, else clang) is committedClang's major version
// (testenv.Unavailable, naming both: with CI=true the clang is wrong).
func requireCommittedClang(t *testing.T) {
	t.Helper()
	cc := cmp.Or(os.Getenv("BPF2GO_CC"), "clang")
	testenv.LookPath(t, cc)
	v, err := exec.Command(cc, "-dumpversion").Output()
	major, _, _ := strings.Cut(strings.TrimSpace(string(v)), ".")
	if err == nil && major == committedClang {
		return
	}
	full, _ := exec.Command(cc, "--version").Output()
	have := "of an unknown version"
	if err == nil && major != "" {
		have = major
	}
	testenv.Unavailable(t, "wrong clang for this test: %s is clang %s (%s), but the committed BPF objects are clang %s's (Debian 12), and another clang compiles bpf/ to other bytes: this says nothing of the objects; do not run `make generate` with this clang. Run it with clang %s (Debian 12, as .ci/run checks) to compare",
		cc, have, firstLine(full), committedClang, committedClang)
}

// generateArgs returns the bpf2go arguments of the //go:generate line in
// gen.go.
func generateArgs(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const prefix = "//go:generate go tool bpf2go "
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			return strings.Fields(rest)
		}
	}
	t.Fatalf("gen.go has no %q line", prefix)
	return nil
}

func firstLine(b []byte) string {
	line, _, _ := strings.Cut(string(b), "\n")
	return line
}

// TestAnotherClangIsNotBlamedOnTheObjects: with a clang of another major
// version first on PATH (Debian 13's is 19), TestGeneratedObjectsMatchSources
// skips, naming both versions, and with CI=true fails saying the clang is
// wrong; neither tells the user to `make generate` and commit. (Before: it
// compiled with that clang and blamed the committed objects.)
func TestAnotherClangIsNotBlamedOnTheObjects(t *testing.T) {
	bin := t.TempDir()
	clang := "#!/bin/sh\ncase \"$1\" in\n-dumpversion) echo 19 ;;\n--version) echo 'Debian clang version 19.1.7 (3+b1)' ;;\n*) echo \"fake clang 19: $*\" >&2; exit 1 ;;\nesac\n"
	if err := os.WriteFile(filepath.Join(bin, "clang"), []byte(clang), 0o755); err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "PATH" && k != "CI" && k != "BPF2GO_CC" {
			env = append(env, kv)
		}
	}
	env = append(env, "PATH="+bin+":"+os.Getenv("PATH"))

	for _, ci := range []string{"", "true"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestGeneratedObjectsMatchSources$", "-test.v")
		cmd.Env = append(env, "CI="+ci)
		b, err := cmd.CombinedOutput()
		out := string(b)
		if strings.Contains(out, "and commit") || !strings.Contains(out, "clang 19 (Debian clang version 19.1.7") || !strings.Contains(out, "clang 14's") {
			t.Errorf("CI=%q: the test's output does not name clang 19 and 14, or says to commit:\n%s", ci, out)
		}
		if ci == "" && (err != nil || !strings.Contains(out, "--- SKIP: TestGeneratedObjectsMatchSources")) {
			t.Errorf("outside CI: not skipped (%v):\n%s", err, out)
		}
		if ci == "true" && (err == nil || !strings.Contains(out, "--- FAIL: TestGeneratedObjectsMatchSources") || !strings.Contains(out, "wrong clang")) {
			t.Errorf("with CI=true: not failed for the clang (%v):\n%s", err, out)
		}
	}
}
