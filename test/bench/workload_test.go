//go:build linux

package bench

import (
	"fmt"
	"sync"
	"testing"

	"github.com/ztdns/ztdns/bench/workload"
	"github.com/ztdns/ztdns/internal/testenv"
)

// generated are the clusters generate wrote in this test binary, by
// configuration, under one directory that TestMain removes.
var generated struct {
	mu     sync.Mutex
	dir    string
	remove func()
	files  map[workload.Config]*workload.Files
}

// generate writes the cluster c describes (manifests, unbound zone, dnsperf
// queries) once per test binary and returns its files.
func generate(tb testing.TB, c workload.Config) *workload.Files {
	tb.Helper()
	generated.mu.Lock()
	defer generated.mu.Unlock()
	if f := generated.files[c]; f != nil {
		return f
	}
	if generated.dir == "" {
		dir, remove, err := testenv.MkdirTempForProcess("ztdns-bench-")
		if err != nil {
			tb.Fatal(err)
		}
		generated.dir, generated.remove, generated.files = dir, remove, map[workload.Config]*workload.Files{}
	}
	f, err := workload.Write(fmt.Sprintf("%s/%d", generated.dir, len(generated.files)), c)
	if err != nil {
		tb.Fatalf("generating %+v: %v", c, err)
	}
	generated.files[c] = f
	return f
}

// removeGenerated deletes what generate wrote.
func removeGenerated() {
	generated.mu.Lock()
	defer generated.mu.Unlock()
	if generated.remove != nil {
		generated.remove()
		generated.dir, generated.remove = "", nil
	}
}
