#!/usr/bin/env bash
# build-helm.sh builds the helm CLI that the chart tests (test/deploy) and
# deploy/render-manifests.sh run, from the Go module proxy only, into a cache
# outside the repo:
#
#   ${ZTDNS_CACHE:-$HOME/.cache/ztdns}/helm/<helm version>/helm
#
# A cold build takes about 3 minutes on a 2-core machine; once the binary is
# there a run is a no-op that does not even start the go command.
#
# Usage:
#   scripts/build-helm.sh           build if missing; print the directory
#   scripts/build-helm.sh --check   print the directory; exit 0 if helm is there,
#                                   3 if a build is needed (builds nothing)
#
# Logs go to stderr; stdout is only the binary directory, for scripts and tests.
#
# helm is kept out of the ztdns module: `go install helm.sh/helm/v3/cmd/helm@VERSION`
# run outside any module builds the released module with its own go.mod and
# go.sum, as its authors test it. The link flags are the ones helm's Makefile
# sets for a release: the version `helm version` reports, and the Kubernetes
# version `helm template` and `helm lint` assume (the minor version of the
# client-go helm is built with), which a chart's kubeVersion is checked against.
# A version directory is complete or absent: helm is built into a temporary
# directory that is renamed into place, and a lock file makes concurrent runs
# wait for one another instead of building twice.
set -euo pipefail

version="v3.22.0"
module="helm.sh/helm/v3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tool="build-helm"
# shellcheck source=scripts/lib/cache.sh
source "$here/lib/cache.sh"
bin_dir="$cache_root/helm/$version"

is_complete() { [[ -x "$bin_dir/helm" ]]; }

cache_main "$bin_dir" "$cache_root/helm/.lock" "${BASH_SOURCE[0]}" "$@"

log "fetching $module@$version from the Go module proxy"
gomod="$(go_outside go mod download -json "$module@$version" |
	sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
[[ -f "$gomod" ]] || die "go mod download did not report the go.mod of $module@$version"
client_go="$(awk '($1 == "k8s.io/client-go" && $2 ~ /^v0\./) { print $2; exit }' "$gomod")"
[[ -n "$client_go" ]] || die "$gomod does not require k8s.io/client-go"
# client-go v0.N.x is Kubernetes 1.N, as helm's Makefile computes it.
kube_minor="${client_go#v0.}"
kube_minor="${kube_minor%%.*}"

tmp_path="$(mktemp -d "$cache_root/helm/.$version.tmp.XXXXXX")"
ldflags="-s -w"
ldflags+=" -X $module/internal/version.version=$version"
ldflags+=" -X $module/internal/version.metadata="
ldflags+=" -X $module/internal/version.gitTreeState=clean"
for pkg in pkg/chartutil pkg/lint/rules; do
	ldflags+=" -X $module/$pkg.k8sVersionMajor=1 -X $module/$pkg.k8sVersionMinor=$kube_minor"
done
log "building helm $version (Kubernetes 1.$kube_minor capabilities) from the Go module proxy"
start=$SECONDS
go_outside env CGO_ENABLED=0 GOBIN="$tmp_path" \
	go install -trimpath -ldflags "$ldflags" "$module/cmd/helm@$version"
[[ -x "$tmp_path/helm" ]] || die "go install did not produce helm"
reported="$("$tmp_path/helm" version --template '{{ .Version }}')"
[[ "$reported" == "$version" ]] || die "the built helm reports version $reported, want $version"
install_tmp_dir "$bin_dir"
log "built in $((SECONDS - start))s: $bin_dir"
printf '%s\n' "$bin_dir"
