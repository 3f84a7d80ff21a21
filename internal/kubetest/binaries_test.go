package kubetest

import (
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// buildFailsEnvVar makes the test binary, run again by
// TestFailedBuildSkipsOutsideCI, build with testdata/build-fails.sh.
const buildFailsEnvVar = "ZTDNS_KUBETEST_BUILD_FAILS_HELPER"

// TestFailedBuildSkipsOutsideCI runs a test whose helper build fails (as a
// fresh machine's with no network does) in a test binary of its own: with
// CI unset the test is skipped with the build's error, with CI=true it
// fails, as the helm and CNI plugin tests do.
func TestFailedBuildSkipsOutsideCI(t *testing.T) {
	if os.Getenv(buildFailsEnvVar) == "1" {
		_, err := cachedBuild(t, "internal/kubetest/testdata/build-fails.sh", "the helpers", "no time", time.Second)
		requireBuilt(t, err)
		t.Log("requireBuilt returned")
		return
	}
	for _, tc := range []struct {
		name     string
		ci       string // CI's value; "" leaves it unset
		wantExit int
		want     string // in the output
	}{
		{name: "CI unset", wantExit: 0, want: "--- SKIP: TestFailedBuildSkipsOutsideCI"},
		{name: "CI=true", ci: "true", wantExit: 1, want: "--- FAIL: TestFailedBuildSkipsOutsideCI"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			helper := exec.Command(os.Args[0], "-test.run=^TestFailedBuildSkipsOutsideCI$", "-test.v", "-test.count=1")
			helper.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "CI=") })
			helper.Env = append(helper.Env, buildFailsEnvVar+"=1", "TMPDIR="+t.TempDir())
			if tc.ci != "" {
				helper.Env = append(helper.Env, "CI="+tc.ci)
			}
			out, err := helper.CombinedOutput()
			exit := 0
			var exitErr *exec.ExitError
			if errors.As(err, &exitErr) {
				exit = exitErr.ExitCode()
			} else if err != nil {
				t.Fatalf("helper test binary: %v", err)
			}
			if exit != tc.wantExit || !strings.Contains(string(out), tc.want) {
				t.Errorf("helper test binary exited %d, want %d with %q; output:\n%s", exit, tc.wantExit, tc.want, out)
			}
			if !strings.Contains(string(out), "cannot download the modules") {
				t.Errorf("helper test binary's output lacks the build's error; output:\n%s", out)
			}
			if strings.Contains(string(out), "requireBuilt returned") {
				t.Errorf("the test went on after the build failed; output:\n%s", out)
			}
		})
	}
}
