#!/usr/bin/env bash
# build-cni-plugins.sh builds the reference CNI plugins that the CNI
# end-to-end tests (test/cni) chain ztdns after, from the Go module proxy
# only, into a cache outside the repo:
#
#   ${ZTDNS_CACHE:-$HOME/.cache/ztdns}/cni/<plugins version>/{bridge,host-local,loopback}
#
# A cold build takes about 20 seconds; once the plugins are there a run is a
# no-op that does not even start the go command.
#
# Usage:
#   scripts/build-cni-plugins.sh           build if missing; print the directory
#   scripts/build-cni-plugins.sh --check   print the directory; exit 0 if the plugins
#                                          are there, 3 if a build is needed (builds nothing)
#
# Logs go to stderr; stdout is only the plugin directory, for scripts and tests.
#
# The version is the one go.mod requires of github.com/containernetworking/plugins,
# so the tests run the plugins of the library ztdns itself is built against.
# A version directory is complete or absent: the plugins are built into a
# temporary directory that is renamed into place, and a lock file makes
# concurrent runs wait for one another instead of building twice.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
tool="build-cni-plugins"
# shellcheck source=scripts/lib/cache.sh
source "$here/lib/cache.sh"

module="github.com/containernetworking/plugins"
plugins=(bridge host-local loopback)
packages=(plugins/main/bridge plugins/ipam/host-local plugins/main/loopback)
version="$(required_version "$repo/go.mod" "$module")"
bin_dir="$cache_root/cni/$version"

# is_complete succeeds when every plugin is in bin_dir.
is_complete() {
	local p
	for p in "${plugins[@]}"; do
		[[ -x "$bin_dir/$p" ]] || return 1
	done
}

cache_main "$bin_dir" "$cache_root/cni/.lock" "${BASH_SOURCE[0]}" "$@"

tmp_path="$(mktemp -d "$cache_root/cni/.$version.tmp.XXXXXX")"
targets=()
for p in "${packages[@]}"; do
	targets+=("$module/$p@$version")
done
log "building ${plugins[*]} $version from the Go module proxy"
start=$SECONDS
go_outside env CGO_ENABLED=0 GOBIN="$tmp_path" go install -trimpath -ldflags "-s -w" "${targets[@]}"
for p in "${plugins[@]}"; do
	[[ -x "$tmp_path/$p" ]] || die "go install did not produce $p"
done
install_tmp_dir "$bin_dir"
log "built in $((SECONDS - start))s: $bin_dir"
printf '%s\n' "$bin_dir"
