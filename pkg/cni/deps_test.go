//go:build linux

package cni

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// The CNI plugin and istio-cni's rule finder read a pod's network
// namespace (pkg/netns) and need none of the eBPF loader: neither links
// pkg/redirect or cilium/ebpf. Before pkg/netns, they imported pkg/redirect
// for its NetnsCookie, and 17 cilium/ebpf packages with it.
func TestNoEBPFLoaderLinked(t *testing.T) {
	pkgs := []string{"github.com/ztdns/ztdns/pkg/cni", "github.com/ztdns/ztdns/pkg/ambient/istiocni"}
	for _, pkg := range pkgs {
		out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "list", "-deps", pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		var loader []string
		for _, dep := range strings.Fields(string(out)) {
			if strings.HasPrefix(dep, "github.com/cilium/ebpf") || dep == "github.com/ztdns/ztdns/pkg/redirect" {
				loader = append(loader, dep)
			}
		}
		if len(loader) > 0 {
			t.Errorf("%s links %d packages of the eBPF loader: %v", pkg, len(loader), loader)
		}
	}
}
