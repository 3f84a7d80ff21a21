//go:build linux

package redirect

import (
	"bufio"
	"bytes"
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
// which CI installs.
func TestGeneratedObjectsMatchSources(t *testing.T) {
	testenv.LookPath(t, "clang")
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
