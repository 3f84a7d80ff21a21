package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// asUserPrefix starts the names of AsUser's directories.
const asUserPrefix = "ztdns-asuser-"

// tempDirPrefixes start the names of the directories tests make under
// os.TempDir(): the crash sweep removes a recorded directory only when it
// is there and named so.
var tempDirPrefixes = []string{
	asUserPrefix,
	"ztcni-",         // test/cni: a runtime's directories and socket
	"ztdns-testbin-", // Build
	"ztdns-bench-",   // test/bench: generated clusters
	"ztctl-",         // pkg/control: sockets (t.TempDir's path is too long for one)
	"ztdns-cmd-",     // cmd/ztdns: an agent's control socket (likewise)
}

// isTempDir reports whether dir is one tests make: directly under
// os.TempDir(), named with one of tempDirPrefixes.
func isTempDir(dir string) bool {
	if !filepath.IsAbs(dir) || filepath.Dir(dir) != filepath.Clean(os.TempDir()) {
		return false
	}
	for _, p := range tempDirPrefixes {
		if strings.HasPrefix(filepath.Base(dir), p) && len(filepath.Base(dir)) > len(p) {
			return true
		}
	}
	return false
}

// MkdirTemp makes a directory under os.TempDir() named prefix (one of
// tempDirPrefixes) and a random suffix, removed at cleanup. It is recorded
// in the ledger before it is made, so the first test after this process is
// killed removes it.
func MkdirTemp(tb testing.TB, prefix string) string {
	tb.Helper()
	dir, release, err := mkdirTemp(prefix)
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	tb.Cleanup(func() { release(tb.Failed()) })
	tb.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			tb.Errorf("cleanup: %v", err)
		}
	})
	return dir
}

// MkdirTempForProcess is MkdirTemp for a directory the package's tests
// share (a build): remove deletes it, from TestMain after m.Run.
func MkdirTempForProcess(prefix string) (dir string, remove func(), err error) {
	dir, release, err := mkdirTemp(prefix)
	if err != nil {
		return "", nil, err
	}
	return dir, func() {
		err := os.RemoveAll(dir)
		release(err != nil)
	}, nil
}

func mkdirTemp(prefix string) (dir string, release func(failed bool), err error) {
	b := make([]byte, 6)
	rand.Read(b)
	dir = filepath.Join(os.TempDir(), prefix+hex.EncodeToString(b))
	if !isTempDir(dir) {
		return "", nil, fmt.Errorf("temporary directory %s: not a prefix the crash sweep knows", prefix)
	}
	if release, err = holdTempDir(dir); err != nil {
		return "", nil, fmt.Errorf("the ledger of what this test makes: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		release(true)
		return "", nil, err
	}
	return dir, release, nil
}
