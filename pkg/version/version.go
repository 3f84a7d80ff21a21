// Package version says which build of ztdns is running. `make build` stamps
// the release and commit in with the linker:
//
//	go build -ldflags "-X github.com/ztdns/ztdns/pkg/version.version=$(git describe --tags --always --dirty) \
//	                   -X github.com/ztdns/ztdns/pkg/version.revision=$(git rev-parse HEAD)"
//
// A binary built without them (go build, go install module@version) reports
// what the Go toolchain recorded in it instead: the module's version and the
// VCS revision, when there were any to record.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Set by the linker (-X); empty when the build did not set them.
var (
	version  string
	revision string
)

// Devel is the version of a build that recorded none: Go's own word for it.
const Devel = "(devel)"

// Unknown is the revision of a build that recorded none.
const Unknown = "unknown"

// Info is one build of ztdns. `ztdns version`, `ztdns status` and the
// ztdns_build_info metric all show it.
type Info struct {
	// Version is the release, or `git describe` of the commit it was built
	// from (with -dirty for uncommitted changes), or the module version Go
	// recorded; Devel when there is none.
	Version string `json:"version"`
	// Revision is the full commit hash; Unknown when not recorded.
	Revision string `json:"revision"`
	// GoVersion is the Go release the binary was built with.
	GoVersion string `json:"goVersion"`
}

// String is the one line `ztdns version` prints.
func (i Info) String() string {
	return fmt.Sprintf("ztdns %s (revision %s, %s)", i.Version, i.Revision, i.GoVersion)
}

// Get returns this binary's build.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return fromBuild(version, revision, bi)
}

// fromBuild prefers what the linker set and falls back on the build info
// (nil when the binary has none).
func fromBuild(version, revision string, bi *debug.BuildInfo) Info {
	info := Info{Version: version, Revision: revision, GoVersion: runtime.Version()}
	if bi == nil {
		bi = &debug.BuildInfo{}
	}
	if info.Version == "" {
		// A module version (go install …@v1.2.3), or the pseudo-version Go
		// derives from the VCS (v0.0.0-20260102150405-abcdef012345+dirty).
		info.Version = bi.Main.Version
	}
	if info.Version == "" {
		info.Version = Devel
	}
	if info.Revision == "" {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				info.Revision = s.Value
			}
		}
	}
	if info.Revision == "" {
		info.Revision = Unknown
	}
	if bi.GoVersion != "" {
		info.GoVersion = bi.GoVersion
	}
	return info
}

// Collector exports ztdns_build_info{version,revision,goversion}, always 1,
// as CoreDNS's coredns_build_info does: dashboards join other series on it
// to show which build a node runs.
func Collector() prometheus.Collector {
	i := Get()
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "ztdns_build_info",
		Help:        "A metric with a constant '1' value labelled by the version, revision and Go version ztdns was built with.",
		ConstLabels: prometheus.Labels{"version": i.Version, "revision": i.Revision, "goversion": i.GoVersion},
	}, func() float64 { return 1 })
}
