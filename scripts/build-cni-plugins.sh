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
module="github.com/containernetworking/plugins"
plugins=(bridge host-local loopback)
packages=(plugins/main/bridge plugins/ipam/host-local plugins/main/loopback)

# tmp_dir is the directory being built, removed if the build does not finish.
tmp_dir=""
trap '[[ -z "$tmp_dir" ]] || rm -rf "$tmp_dir"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

log() { printf 'build-cni-plugins: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The version go.mod requires, parsed without the go command so that a cached
# run stays fast and offline.
version="$(awk -v m="$module" '($1 == "require" && $2 == m) { print $3; exit } ($1 == m && $2 ~ /^v/) { print $2; exit }' "$repo/go.mod")"
[[ -n "$version" ]] || die "$repo/go.mod does not require $module"
cache_root="${ZTDNS_CACHE:-${HOME:?HOME or ZTDNS_CACHE must be set}/.cache/ztdns}"
bin_dir="$cache_root/cni/$version"

# is_complete succeeds when every plugin is in bin_dir.
is_complete() {
	local p
	for p in "${plugins[@]}"; do
		[[ -x "$bin_dir/$p" ]] || return 1
	done
}

mode="build"
case "${1:-}" in
"") ;;
--check) mode="check" ;;
-h | --help)
	sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
	exit 0
	;;
*) die "unknown argument $1 (want --check or nothing)" ;;
esac

if is_complete; then
	printf '%s\n' "$bin_dir"
	exit 0
fi
if [[ "$mode" == "check" ]]; then
	printf '%s\n' "$bin_dir"
	exit 3
fi

command -v go >/dev/null || die "the go command is not on PATH"
mkdir -p "$cache_root/cni"
exec 9>"$cache_root/cni/.lock"
log "waiting for the build lock $cache_root/cni/.lock"
flock 9
# Another run may have finished the build while this one waited.
if is_complete; then
	log "built by a concurrent run: $bin_dir"
	printf '%s\n' "$bin_dir"
	exit 0
fi

tmp_dir="$(mktemp -d "$cache_root/cni/.$version.tmp.XXXXXX")"
targets=()
for p in "${packages[@]}"; do
	targets+=("$module/$p@$version")
done
log "building ${plugins[*]} $version from the Go module proxy"
start=$SECONDS
# Outside any module (cd /, GOWORK=off), `go install pkg@version` builds the
# released module with its own go.mod and go.sum, as its authors test it.
# -modcacherw keeps the shared module cache removable without chmod.
(
	cd /
	GOWORK=off GOFLAGS="-modcacherw" CGO_ENABLED=0 GOBIN="$tmp_dir" \
		go install -trimpath -ldflags "-s -w" "${targets[@]}"
)
for p in "${plugins[@]}"; do
	[[ -x "$tmp_dir/$p" ]] || die "go install did not produce $p"
done
chmod 0755 "$tmp_dir"
rm -rf "$bin_dir" # an incomplete directory from an older layout
mv -T "$tmp_dir" "$bin_dir"
tmp_dir=""
log "built in $((SECONDS - start))s: $bin_dir"
printf '%s\n' "$bin_dir"
