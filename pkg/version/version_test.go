package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestFromBuild(t *testing.T) {
	const rev = "0123456789abcdef0123456789abcdef01234567"
	vcs := func(version string, settings ...string) *debug.BuildInfo {
		bi := &debug.BuildInfo{GoVersion: "go1.99.1", Main: debug.Module{Path: "github.com/ztdns/ztdns", Version: version}}
		for i := 0; i+1 < len(settings); i += 2 {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
		}
		return bi
	}
	for _, tc := range []struct {
		name             string
		ldVersion, ldRev string
		bi               *debug.BuildInfo
		want             Info
	}{
		{
			name:      "make build: the linker's values win",
			ldVersion: "v0.3.0-2-g0123456-dirty", ldRev: rev,
			bi:   vcs("v0.0.0-20260102150405-fedcba987654", "vcs.revision", "fedcba9876543210fedcba9876543210fedcba98"),
			want: Info{Version: "v0.3.0-2-g0123456-dirty", Revision: rev, GoVersion: "go1.99.1"},
		},
		{
			name: "go install module@version: the module version, no VCS",
			bi:   vcs("v0.3.0"),
			want: Info{Version: "v0.3.0", Revision: Unknown, GoVersion: "go1.99.1"},
		},
		{
			name: "go build in a checkout: Go's pseudo-version and revision",
			bi:   vcs("v0.0.0-20260102150405-0123456789ab+dirty", "vcs", "git", "vcs.revision", rev, "vcs.modified", "true"),
			want: Info{Version: "v0.0.0-20260102150405-0123456789ab+dirty", Revision: rev, GoVersion: "go1.99.1"},
		},
		{
			name: "go build with -buildvcs=false",
			bi:   vcs(Devel),
			want: Info{Version: Devel, Revision: Unknown, GoVersion: "go1.99.1"},
		},
		{
			name: "no build info at all",
			want: Info{Version: Devel, Revision: Unknown, GoVersion: runtime.Version()},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := fromBuild(tc.ldVersion, tc.ldRev, tc.bi); got != tc.want {
				t.Errorf("fromBuild = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestCollector checks the metric carries the same build as Get.
func TestCollector(t *testing.T) {
	i := Get()
	reg := prometheus.NewRegistry()
	reg.MustRegister(Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 || mfs[0].GetName() != "ztdns_build_info" || len(mfs[0].GetMetric()) != 1 {
		t.Fatalf("gathered %v, want one ztdns_build_info series", mfs)
	}
	m := mfs[0].GetMetric()[0]
	got := map[string]string{}
	for _, l := range m.GetLabel() {
		got[l.GetName()] = l.GetValue()
	}
	want := map[string]string{"version": i.Version, "revision": i.Revision, "goversion": i.GoVersion}
	if fmt.Sprint(got) != fmt.Sprint(want) || m.GetGauge().GetValue() != 1 {
		t.Errorf("ztdns_build_info%v = %v, want %v = 1", got, m.GetGauge().GetValue(), want)
	}
	if s := i.String(); !strings.Contains(s, i.Version) || !strings.Contains(s, i.Revision) || !strings.Contains(s, i.GoVersion) {
		t.Errorf("String() = %q lacks a field of %+v", s, i)
	}
}
