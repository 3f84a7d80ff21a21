package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
)

// builds are the executables Build compiled in this test binary.
var builds struct {
	mu     sync.Mutex
	dir    string
	remove func()
	bins   map[string]*build
}

type build struct {
	once sync.Once
	dir  string // its own directory: two packages may share a base name
	bin  string
	err  error
}

// Build compiles the main package pkg (an import path, e.g.
// "github.com/ztdns/ztdns/cmd/ztdns") once per test binary, as `make build`
// does, and returns the executable. Call RemoveBuilds from TestMain after
// m.Run to delete them.
func Build(tb testing.TB, pkg string) string {
	tb.Helper()
	builds.mu.Lock()
	if builds.bins == nil {
		builds.bins = map[string]*build{}
	}
	if builds.dir == "" {
		dir, remove, err := MkdirTempForProcess("ztdns-testbin-")
		if err != nil {
			builds.mu.Unlock()
			tb.Fatalf("testenv: %v", err)
		}
		builds.dir, builds.remove = dir, remove
	}
	b := builds.bins[pkg]
	if b == nil {
		b = &build{dir: filepath.Join(builds.dir, strconv.Itoa(len(builds.bins)))}
		builds.bins[pkg] = b
	}
	builds.mu.Unlock()

	b.once.Do(func() {
		gobin, err := exec.LookPath("go")
		if err != nil {
			gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		if b.err = os.MkdirAll(b.dir, 0o755); b.err != nil {
			return
		}
		b.bin = filepath.Join(b.dir, path.Base(pkg))
		out, err := exec.Command(gobin, "build", "-trimpath", "-o", b.bin, pkg).CombinedOutput()
		if err != nil {
			b.err = fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
		}
	})
	if b.err != nil {
		tb.Fatal(b.err)
	}
	return b.bin
}

// RemoveBuilds deletes what Build compiled.
func RemoveBuilds() {
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if builds.dir != "" {
		builds.remove()
		builds.dir, builds.remove, builds.bins = "", nil, nil
	}
}
