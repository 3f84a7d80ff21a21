# shellcheck shell=bash
# cache.sh is sourced by the scripts/build-*.sh scripts: each builds a test
# helper once, from the Go module proxy only, into a cache outside the repo
# (${ZTDNS_CACHE:-$HOME/.cache/ztdns}), prints the directory on stdout, and
# logs on stderr. The script sets `tool` (its name in log lines) and defines
# is_complete (succeeds when the cached build is there and current) before
# calling cache_main.

# shellcheck disable=SC2034 # used by the scripts that source this
cache_root="${ZTDNS_CACHE:-${HOME:?HOME or ZTDNS_CACHE must be set}/.cache/ztdns}"

# tmp_path is what is being built, removed if the build does not finish.
tmp_path=""
trap '[[ -z "$tmp_path" ]] || rm -rf "$tmp_path"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

log() { printf '%s: %s\n' "${tool:?}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# required_version MODFILE MODULE prints the version MODFILE requires of MODULE,
# parsed without the go command so that a cached run stays fast and offline.
required_version() {
	local v
	v="$(awk -v m="$2" '($1 == "require" && $2 == m) { print $3; exit } ($1 == m && $2 ~ /^v/) { print $2; exit }' "$1")"
	[[ -n "$v" ]] || die "$1 does not require $2"
	printf '%s\n' "$v"
}

# go_outside runs a go command outside any module (cd /, GOWORK=off), so
# `go install pkg@version` builds the released module with its own go.mod
# and go.sum, as its authors test it. -modcacherw keeps the shared module
# cache removable without chmod.
go_outside() { (cd / && GOWORK=off GOFLAGS="-modcacherw" "$@"); }

# cache_main DIR LOCKFILE SCRIPT ARGS... handles the scripts' arguments
# (nothing: build if needed; --check: print DIR, exit 0 if complete and 3 if
# a build is needed; -h: print SCRIPT's header), exits printing DIR when the
# build is complete, and otherwise returns holding LOCKFILE, so that
# concurrent runs wait for one another instead of building twice.
cache_main() {
	local dir="$1" lockfile="$2" script="$3"
	shift 3
	local mode="build"
	case "${1:-}" in
	"") ;;
	--check) mode="check" ;;
	-h | --help)
		sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$script"
		exit 0
		;;
	*) die "unknown argument $1 (want --check or nothing)" ;;
	esac
	if is_complete; then
		printf '%s\n' "$dir"
		exit 0
	fi
	if [[ "$mode" == "check" ]]; then
		printf '%s\n' "$dir"
		exit 3
	fi
	command -v go >/dev/null || die "the go command is not on PATH"
	mkdir -p "$(dirname "$lockfile")"
	exec 9>"$lockfile"
	log "waiting for the build lock $lockfile"
	flock 9
	# Another run may have finished the build while this one waited.
	if is_complete; then
		log "built by a concurrent run: $dir"
		printf '%s\n' "$dir"
		exit 0
	fi
}

# install_tmp_dir DIR moves the finished tmp_path directory to DIR: a version
# directory is complete or absent.
install_tmp_dir() {
	chmod 0755 "$tmp_path"
	rm -rf "$1" # an incomplete directory from an older layout
	mv -T "$tmp_path" "$1"
	tmp_path=""
}
