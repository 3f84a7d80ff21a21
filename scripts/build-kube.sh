#!/usr/bin/env bash
# build-kube.sh builds the kube-apiserver and etcd binaries that the
# integration tests run against (internal/kubetest), from the Go module proxy
# only, into a cache outside the repo:
#
#   ${ZTDNS_CACHE:-$HOME/.cache/ztdns}/kube/<kubernetes version>-etcd-<etcd version>/
#
# A cold build takes about 12 minutes on a 2-core machine; once the binaries
# are there a run is a no-op that does not even start the go command.
#
# Usage:
#   scripts/build-kube.sh           build what is missing or stale; print the directory
#   scripts/build-kube.sh --check   print the directory; exit 0 if both binaries are
#                                   up to date, 3 if a build is needed (builds nothing)
#
# Logs go to stderr; stdout is only the binary directory, for scripts and tests.
#
# Each binary is built from a wrapper module with its own go.mod and go.sum
# (scripts/kube-testenv/{apiserver,etcd}). A binary counts as cached when a
# stamp next to it records the sha256 of those inputs, so bumping a version
# rebuilds it. Builds go to a temporary name and are renamed into place, so an
# interrupted build never leaves a binary that looks finished; a lock file makes
# concurrent runs wait for one another instead of building twice.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
testenv="$here/kube-testenv"
tool="build-kube"
# shellcheck source=scripts/lib/cache.sh
source "$here/lib/cache.sh"

kube_version="$(required_version "$testenv/apiserver/go.mod" k8s.io/kubernetes)"
etcd_version="$(required_version "$testenv/etcd/go.mod" go.etcd.io/etcd/server/v3)"
bin_dir="$cache_root/kube/${kube_version}-etcd-${etcd_version}"

# inputs_sum DIR prints one checksum over the files that decide what DIR builds.
inputs_sum() {
	(
		cd "$1"
		shopt -s nullglob
		cat go.mod go.sum ./*.go
	) | sha256sum | cut -d' ' -f1
}

# is_current NAME WRAPPER_DIR succeeds when bin_dir/NAME was built from the
# wrapper's present inputs.
is_current() {
	[[ -x "$bin_dir/$1" && -f "$bin_dir/.$1.inputs" ]] &&
		[[ "$(<"$bin_dir/.$1.inputs")" == "$(inputs_sum "$2")" ]]
}

# build NAME WRAPPER_DIR PACKAGE [LDFLAGS] builds PACKAGE inside the wrapper
# module to bin_dir/NAME.
build() {
	local name="$1" wrapper="$2" pkg="$3" ldflags="${4:-}"
	if is_current "$name" "$wrapper"; then
		log "$name is up to date in $bin_dir"
		return
	fi
	tmp_path="$bin_dir/.$name.tmp.$$"
	rm -f "$bin_dir/.$name.inputs"
	log "building $name ($pkg) in ${wrapper#"$(dirname "$here")/"}"
	local start=$SECONDS
	(
		cd "$wrapper"
		# GOWORK=off: build the wrapper module alone, whatever go.work may exist.
		# -mod=readonly: the committed go.sum must be complete; -modcacherw keeps
		# the shared module cache removable without chmod. GOCACHE: see build_cache.
		GOWORK=off GOFLAGS="-mod=readonly -modcacherw" CGO_ENABLED=0 GOCACHE="$build_cache" \
			go build -trimpath -buildvcs=false -ldflags "-s -w $ldflags" -o "$tmp_path" "$pkg"
	)
	mv -f "$tmp_path" "$bin_dir/$name"
	tmp_path=""
	inputs_sum "$wrapper" >"$bin_dir/.$name.inputs"
	log "built $name in $((SECONDS - start))s"
}

is_complete() { is_current kube-apiserver "$testenv/apiserver" && is_current etcd "$testenv/etcd"; }

cache_main "$bin_dir" "$bin_dir/.lock" "${BASH_SOURCE[0]}" "$@"
log "building into $bin_dir (kube-apiserver takes about 12 minutes on 2 cores)"

# The compiled packages of kube-apiserver take about 3 GB and no other build
# reuses them (the main module's tests build without -trimpath, against other
# versions), so they go to a build cache of their own, kept until both
# binaries are built (an interrupted build resumes from it) and then removed.
build_cache="$bin_dir/.gocache"
log "using the Go build cache $build_cache, removed after a successful build"

build etcd "$testenv/etcd" .
kube_minor="${kube_version#v1.}"
kube_minor="${kube_minor%%.*}"
# The same version stamps the official build sets, so /version reports it.
build kube-apiserver "$testenv/apiserver" k8s.io/kubernetes/cmd/kube-apiserver \
	"-X k8s.io/component-base/version.gitVersion=$kube_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$kube_minor -X k8s.io/component-base/version.gitTreeState=clean"

rm -rf "$build_cache"
log "done: $bin_dir"
printf '%s\n' "$bin_dir"
