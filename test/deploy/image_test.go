//go:build linux

package deploy

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/ztdns/ztdns/internal/testenv"
)

// imageTool is the image builder `make image` runs.
const imageTool = "./deploy/image"

// TestImage builds the image as `make image` does and reads it back as a
// registry client would: an OCI layout whose one entry, named by the tag,
// is an index of a linux/amd64 and a linux/arm64 image; every blob matches
// its digest; each image is one layer holding a static ztdns binary for its
// architecture, which the chart's containers find on PATH. The host's
// architecture's binary runs in a root holding nothing else. Built twice,
// the index has the same digest.
func TestImage(t *testing.T) {
	root := repoRoot(t)
	tool := filepath.Join(t.TempDir(), "image")
	build := exec.Command("go", "build", "-o", tool, imageTool)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", imageTool, err, out)
	}
	makeImage := func(out string) v1.ImageIndex {
		t.Helper()
		cmd := exec.Command(tool, "-o", out, "-tag", "test")
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", imageTool, err, b)
		}
		p, err := layout.FromPath(out)
		if err != nil {
			t.Fatal(err)
		}
		top, err := p.ImageIndex()
		if err != nil {
			t.Fatal(err)
		}
		m, err := top.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Manifests) != 1 || !m.Manifests[0].MediaType.IsIndex() || m.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "test" {
			t.Fatalf("the layout's index.json lists %+v, want one index named test", m.Manifests)
		}
		idx, err := top.ImageIndex(m.Manifests[0].Digest)
		if err != nil {
			t.Fatal(err)
		}
		return idx
	}
	dir := t.TempDir()
	idx := makeImage(filepath.Join(dir, "image"))
	if err := validate.Index(idx); err != nil {
		t.Fatalf("the index does not validate: %v", err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var platforms []string
	for _, d := range m.Manifests {
		if d.Platform == nil {
			t.Fatalf("manifest %s names no platform", d.Digest)
		}
		platforms = append(platforms, d.Platform.OS+"/"+d.Platform.Architecture)
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(d.Platform.Architecture, func(t *testing.T) {
			checkImage(t, img, d.Platform.Architecture)
		})
	}
	if want := []string{"linux/amd64", "linux/arm64"}; !slices.Equal(platforms, want) {
		t.Errorf("platforms %q, want %q", platforms, want)
	}
	if fi, err := os.Stat(filepath.Join(dir, "image.tar")); err != nil || fi.Size() == 0 {
		t.Errorf("no image.tar beside the layout: %v", err)
	}

	again := makeImage(filepath.Join(dir, "again"))
	d1, _ := idx.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Errorf("two builds of the same sources differ: %s and %s", d1, d2)
	}
}

var elfMachine = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

func checkImage(t *testing.T, img v1.Image, arch string) {
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != arch {
		t.Errorf("config says %s/%s", cfg.OS, cfg.Architecture)
	}
	if !slices.Equal(cfg.Config.Entrypoint, []string{"/usr/local/bin/ztdns"}) || !slices.Contains(cfg.Config.Env, "PATH=/usr/local/bin") {
		t.Errorf("entrypoint %q, env %q: want /usr/local/bin/ztdns, found on PATH as the chart runs it", cfg.Config.Entrypoint, cfg.Config.Env)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers (%v), want one", len(layers), err)
	}
	files := readLayer(t, layers[0])
	var names []string
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	if want := []string{"usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/ztdns"}; !slices.Equal(names, want) {
		t.Errorf("the layer holds %q, want %q", names, want)
	}
	bin := files["usr/local/bin/ztdns"]
	if bin.hdr == nil || bin.hdr.Mode&0o111 == 0 || bin.hdr.Uid != 0 {
		t.Fatalf("usr/local/bin/ztdns: %+v, want an executable file of root's", bin.hdr)
	}
	f, err := elf.NewFile(bytes.NewReader(bin.data))
	if err != nil {
		t.Fatalf("usr/local/bin/ztdns is no ELF file: %v", err)
	}
	if f.Machine != elfMachine[arch] {
		t.Errorf("the binary is for %v, want %v", f.Machine, elfMachine[arch])
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary is dynamically linked: the agent copies it onto the node, where its libraries may be missing")
		}
	}
	if arch != runtime.GOARCH {
		return
	}
	// The image's root alone: nothing but the binary is needed to run it.
	testenv.RequireRoot(t)
	rootfs := t.TempDir()
	for _, name := range names { // sorted: a directory before what it holds
		f := files[name]
		path := filepath.Join(rootfs, name)
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(path, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(path, f.data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	run := exec.Command("chroot", rootfs, "ztdns", "idle", "-h")
	run.Env = cfg.Config.Env // chroot finds ztdns through the image's PATH
	out, err := run.CombinedOutput()
	if err != nil {
		t.Errorf("the binary does not run in the image's root alone: %v\n%s", err, out)
	}
}

type layerFile struct {
	hdr  *tar.Header
	data []byte
}

func readLayer(t *testing.T, l v1.Layer) map[string]layerFile {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]layerFile{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[hdr.Name] = layerFile{hdr: hdr, data: data}
	}
}
