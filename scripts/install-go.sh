#!/usr/bin/env bash
# install-go.sh [DIR]: installs go.mod's Go at DIR (default /usr/local/go)
# unless go in PATH, DIR/bin first, is that version or later already. It
# comes from the Go module proxy's golang.org/toolchain module (the zip the
# go command itself downloads to switch toolchains; go.dev's downloads are
# not needed), checked against the sha256 sums below. Needs curl, unzip and
# sha256sum. README.md's Set-up and .ci/run run it.
#
# Bumping go.mod's go line means bumping go_version and both sums with it
# (sha256sum of
# https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-go<VERSION>.linux-<ARCH>.zip);
# a go_version other than go.mod's stops the script.
set -euo pipefail

go_version=1.26.8
declare -A go_sha256=(
  [amd64]=30c2b1bf7dcc88d3eb0a1364e47ddd9128edb3110a30e8a0ef61cd5856b31de7
  [arm64]=02b36b6787b3ac767668f630e2998df45a3b1f9ffee08d1bf3ef6487cd658d99
)

die() {
  echo "install-go.sh: $*" >&2
  exit 1
}

# install_go DEST installs Go go_version for this machine's architecture in
# DEST (replacing what is there) from the Go module proxy, after checking
# the zip's sha256; it refuses a zip whose sum is not go_sha256's. A
# subshell: its temporary directory (beside DEST, for a rename into place)
# goes however it ends.
install_go() (
  dest=$1
  case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) die "no Go pinned for $(uname -m): install Go $go_version at $dest" ;;
  esac
  name="v0.0.1-go$go_version.linux-$arch"
  url="https://proxy.golang.org/golang.org/toolchain/@v/$name.zip"
  mkdir -p "$(dirname "$dest")"
  tmp=$(mktemp -d "$(dirname "$dest")/.go-install.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "install-go.sh: installing Go $go_version at $dest from $url" >&2
  curl -fsSL --retry 3 -o "$tmp/go.zip" "$url" || die "download of $url failed"
  sum=$(sha256sum "$tmp/go.zip" | cut -d' ' -f1)
  [ "$sum" = "${go_sha256[$arch]}" ] ||
    die "$url has sha256 $sum, not the ${go_sha256[$arch]} pinned in scripts/install-go.sh: not installing it"
  unzip -q "$tmp/go.zip" -d "$tmp"
  # The zip holds one directory, golang.org/toolchain@<version>/: GOROOT.
  rm -rf "$dest"
  mv "$tmp/golang.org/toolchain@$name" "$dest"
)

# go_version_ok succeeds when go in PATH is want_go or later, and sets have_go
# to its version. GOTOOLCHAIN=local and / as the directory: the version
# installed, not one go would download.
go_version_ok() {
  have_go=
  command -v go >/dev/null || return 1
  have_go=$(cd / && GOTOOLCHAIN=local go env GOVERSION | grep -oE 'go[0-9]+(\.[0-9]+)*' | head -n 1 || true)
  have_go=${have_go#go}
  [ -n "$have_go" ] && [ "$(printf '%s\n%s\n' "$want_go" "$have_go" | sort -V | head -n 1)" = "$want_go" ]
}

dest=$(realpath -m "${1:-/usr/local/go}")
cd "$(dirname "$0")/.."
export PATH="$dest/bin:$PATH"

want_go=$(sed -n 's/^go \([0-9][0-9.]*\).*/\1/p' go.mod)
[ -n "$want_go" ] || die "go.mod has no go line"
[ "$want_go" = "$go_version" ] ||
  die "go.mod's go line is $want_go but scripts/install-go.sh pins Go $go_version: set go_version to $want_go and go_sha256 to the sums of its toolchain zips (see the comment at the top)"

if go_version_ok; then
  echo "install-go.sh: $(command -v go) is go $have_go, go.mod's $want_go or later: nothing to install" >&2
  exit 0
fi
if command -v go >/dev/null; then
  echo "install-go.sh: $(command -v go) is go ${have_go:-of an unknown version}, not go.mod's $want_go or later" >&2
else
  echo "install-go.sh: no go in PATH" >&2
fi
install_go "$dest"
hash -r # forget where go was
go_version_ok || die "go in PATH is $(command -v go || echo missing) (go ${have_go:-of an unknown version}) after installing Go $go_version at $dest"
echo "install-go.sh: Go $go_version is at $dest; put $dest/bin on PATH" >&2
