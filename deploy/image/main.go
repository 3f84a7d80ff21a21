// Command image builds the ztdns container image without a container
// engine or a base image: for each platform, the ztdns binary built with
// CGO_ENABLED=0 (static: the agent also copies it onto the node as the CNI
// plugin, where it runs outside the image) in one layer, FROM scratch. The
// images go into one multi-platform index, written as an OCI image layout
// directory and as a tar of that directory.
//
// Usage (what `make image` runs, from the repository root):
//
//	go run ./deploy/image [-o bin/image] [-tag TAG] [-platforms linux/amd64,linux/arm64]
//
// The layout holds one entry, the index, named TAG. Push it with crane or
// skopeo (deploy/README.md, "The image"). The same sources give the same
// digests: file times are the epoch (or SOURCE_DATE_EPOCH), and the build
// is -trimpath.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	// binaryPath is where the binary sits in the image; the chart's
	// containers run "ztdns", found through PATH.
	binaryPath = "/usr/local/bin/ztdns"
	chartFile  = "deploy/charts/ztdns/Chart.yaml"
	// refNameAnnotation names the index in the layout (skopeo's oci:DIR:TAG).
	refNameAnnotation = "org.opencontainers.image.ref.name"
)

func main() {
	out := flag.String("o", "bin/image", "the OCI image layout `DIR` to write (replaced); DIR.tar gets the same as a tar")
	tag := flag.String("tag", "", "the image's `TAG` (default: the chart's appVersion)")
	platforms := flag.String("platforms", "linux/amd64,linux/arm64", "comma-separated `OS/ARCH` list")
	flag.Parse()
	if err := run(*out, *tag, strings.Split(*platforms, ",")); err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
}

func run(out, tag string, platforms []string) error {
	if tag == "" {
		var err error
		if tag, err = chartAppVersion(); err != nil {
			return err
		}
	}
	epoch, err := sourceDateEpoch()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "ztdns-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range platforms {
		osName, arch, ok := strings.Cut(p, "/")
		if !ok || osName != "linux" {
			return fmt.Errorf("platform %q: want linux/ARCH", p)
		}
		bin := filepath.Join(tmp, "ztdns-"+arch)
		if err := buildBinary(bin, arch); err != nil {
			return err
		}
		img, err := image(bin, arch, tag, epoch)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: osName, Architecture: arch}},
		})
	}
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	lp, err := layout.Write(out, empty.Index)
	if err != nil {
		return err
	}
	if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{refNameAnnotation: tag})); err != nil {
		return err
	}
	if err := tarDir(out, out+".tar", epoch); err != nil {
		return err
	}
	digest, err := idx.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("ztdns:%s %s (%s) in %s and %s\n", tag, digest, strings.Join(platforms, ", "), out, out+".tar")
	return nil
}

// buildBinary builds ./cmd/ztdns for linux/arch, static.
func buildBinary(out, arch string) error {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if p, err := exec.LookPath("go"); err == nil {
		goBin = p
	}
	cmd := exec.Command(goBin, "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./cmd/ztdns")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/ztdns for linux/%s: %w", arch, err)
	}
	return nil
}

// image makes the one-layer image of bin.
func image(bin, arch, tag string, epoch time.Time) (v1.Image, error) {
	b, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, dir := range []string{"usr/", "usr/local/", "usr/local/bin/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
	}
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(binaryPath, "/"), Mode: 0o755, Size: int64(len(b)), ModTime: epoch, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(b); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(buf.Bytes())), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		return nil, err
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", arch
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config.Entrypoint = []string{binaryPath}
	cfg.Config.Env = []string{"PATH=" + filepath.Dir(binaryPath)}
	cfg.Config.Labels = map[string]string{
		"org.opencontainers.image.title":   "ztdns",
		"org.opencontainers.image.version": tag,
	}
	cfg.History = nil
	return mutate.ConfigFile(img, cfg)
}

// tarDir writes dir's files into a tar at out, for `ctr images import`,
// `kind load image-archive` and `docker load`.
func tarDir(dir, out string, epoch time.Time) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: rel + "/", Mode: 0o755, ModTime: epoch})
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: 0o644, Size: int64(len(b)), ModTime: epoch}); err != nil {
			return err
		}
		_, err = tw.Write(b)
		return err
	})
	return errors.Join(err, tw.Close(), f.Close())
}

// chartAppVersion reads appVersion from the chart: the tag the chart
// deploys by default.
func chartAppVersion() (string, error) {
	b, err := os.ReadFile(chartFile)
	if err != nil {
		return "", fmt.Errorf("%w (run from the repository root, or give -tag)", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "appVersion:"); ok {
			return strings.Trim(strings.TrimSpace(v), `"'`), nil
		}
	}
	return "", fmt.Errorf("%s has no appVersion", chartFile)
}

// sourceDateEpoch is the time stamped on files and the config: the epoch,
// or $SOURCE_DATE_EPOCH (reproducible-builds.org).
func sourceDateEpoch() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", s, err)
	}
	return time.Unix(n, 0).UTC(), nil
}
