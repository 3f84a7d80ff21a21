#!/usr/bin/env bash
# build-istiod.sh builds istiod (pilot-discovery), Istio's control plane, that
# the integration tests run against the test API server (internal/kubetest),
# from the Go module proxy only, into a cache outside the repo:
#
#   ${ZTDNS_CACHE:-$HOME/.cache/ztdns}/istiod/<istio.io/istio version>/pilot-discovery
#
# A cold build takes 4-5 minutes on a 2-core machine and about 3 GB of module
# and build cache; once the binary is there a run is a no-op that does not
# even start the go command.
#
# Usage:
#   scripts/build-istiod.sh           build what is missing or stale; print the directory
#   scripts/build-istiod.sh --check   print the directory; exit 0 if the binary is
#                                     up to date, 3 if a build is needed (builds nothing)
#
# Logs go to stderr; stdout is only the binary directory, for scripts and tests.
#
# The binary is built from a wrapper module with its own go.mod and go.sum
# (scripts/kube-testenv/istiod) that pins one istio.io/istio snapshot: the
# module proxy serves istio.io/istio only as untagged snapshots. A stamp next
# to the binary records the sha256 of those inputs, so bumping the snapshot
# rebuilds it. The build goes to a temporary name that is renamed into place,
# and a lock file makes concurrent runs wait for one another.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
wrapper="$here/kube-testenv/istiod"
tool="build-istiod"
# shellcheck source=scripts/lib/cache.sh
source "$here/lib/cache.sh"

istio_version="$(required_version "$wrapper/go.mod" istio.io/istio)"
bin_dir="$cache_root/istiod/$istio_version"
inputs_sum() { cat "$wrapper/go.mod" "$wrapper/go.sum" | sha256sum | cut -d' ' -f1; }

is_complete() {
	[[ -x "$bin_dir/pilot-discovery" && -f "$bin_dir/.inputs" ]] &&
		[[ "$(<"$bin_dir/.inputs")" == "$(inputs_sum)" ]]
}

cache_main "$bin_dir" "$cache_root/istiod/.lock" "${BASH_SOURCE[0]}" "$@"
mkdir -p "$bin_dir"
rm -f "$bin_dir/.inputs"

# The compiled packages take about 2 GB that no other build reuses, so they go
# to a build cache of their own, removed once the binary is there (an
# interrupted build resumes from it).
build_cache="$bin_dir/.gocache"
tmp_path="$bin_dir/.pilot-discovery.tmp.$$"
log "building pilot-discovery $istio_version (4-5 minutes on 2 cores), Go build cache $build_cache"
start=$SECONDS
(
	cd "$wrapper"
	# GOWORK=off: build the wrapper module alone; -mod=readonly: the committed
	# go.sum must be complete.
	GOWORK=off GOFLAGS="-mod=readonly -modcacherw" CGO_ENABLED=0 GOCACHE="$build_cache" \
		go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$tmp_path" istio.io/istio/pilot/cmd/pilot-discovery
)
"$tmp_path" version --short >/dev/null || die "the built pilot-discovery does not run"
mv -f "$tmp_path" "$bin_dir/pilot-discovery"
tmp_path=""
inputs_sum >"$bin_dir/.inputs"
rm -rf "$build_cache"
log "built in $((SECONDS - start))s: $bin_dir"
printf '%s\n' "$bin_dir"
