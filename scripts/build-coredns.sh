#!/usr/bin/env bash
# build-coredns.sh builds CoreDNS, the reference implementation of the
# Kubernetes DNS specification (its kubernetes plugin), which the
# differential test in test/kube asks the same questions as ztdns. Built from
# the Go module proxy only, into a cache outside the repo:
#
#   ${ZTDNS_CACHE:-$HOME/.cache/ztdns}/coredns/<coredns version>/coredns
#
# A cold build takes about 2 minutes on a 2-core machine; once the binary is
# there a run is a no-op that does not even start the go command.
#
# Usage:
#   scripts/build-coredns.sh           build if missing; print the directory
#   scripts/build-coredns.sh --check   print the directory; exit 0 if coredns is
#                                      there, 3 if a build is needed (builds nothing)
#
# Logs go to stderr; stdout is only the binary directory, for scripts and tests.
#
# `go install github.com/coredns/coredns@VERSION` run outside any module
# builds the released module with its own go.mod and go.sum and its default
# plugin set. A version directory is complete or absent: coredns is built
# into a temporary directory that is renamed into place, and a lock file
# makes concurrent runs wait for one another instead of building twice.
set -euo pipefail

version="v1.15.0"
module="github.com/coredns/coredns"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tool="build-coredns"
# shellcheck source=scripts/lib/cache.sh
source "$here/lib/cache.sh"
bin_dir="$cache_root/coredns/$version"

is_complete() { [[ -x "$bin_dir/coredns" ]]; }

cache_main "$bin_dir" "$cache_root/coredns/.lock" "${BASH_SOURCE[0]}" "$@"

tmp_path="$(mktemp -d "$cache_root/coredns/.$version.tmp.XXXXXX")"
log "building coredns $version from the Go module proxy"
start=$SECONDS
go_outside env CGO_ENABLED=0 GOBIN="$tmp_path" \
	go install -trimpath -ldflags "-s -w" "$module@$version"
[[ -x "$tmp_path/coredns" ]] || die "go install did not produce coredns"
reported="$("$tmp_path/coredns" -version | awk -F- 'NR == 1 { print $2 }')"
[[ "v$reported" == "$version" ]] || die "the built coredns reports version $reported, want $version"
install_tmp_dir "$bin_dir"
log "built in $((SECONDS - start))s: $bin_dir"
printf '%s\n' "$bin_dir"
