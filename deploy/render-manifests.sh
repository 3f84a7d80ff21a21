#!/usr/bin/env bash
# render-manifests.sh renders the plain manifests under deploy/manifests/
# from the Helm chart, for users without Helm:
#
#   ztdns.yaml           the chart with its default values, in kube-system
#   ztdns-cleanup.yaml   the same with mode=cleanup: applied over ztdns.yaml,
#                        it removes ztdns from every node (see deploy/README.md)
#
# Usage:
#   deploy/render-manifests.sh              rewrite both files
#   deploy/render-manifests.sh --print NAME print what NAME should hold
#                                           (test/deploy compares it with the file)
#
# helm is $HELM when set, else the one scripts/build-helm.sh builds and caches.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
release="ztdns"
namespace="kube-system"

die() { printf 'render-manifests: error: %s\n' "$*" >&2; exit 1; }

helm="${HELM:-}"
if [[ -z "$helm" ]]; then
	helm="$("$repo/scripts/build-helm.sh")/helm"
fi

# render NAME prints the header and the rendered chart for one manifest file.
render() {
	local name="$1" args=()
	case "$name" in
	ztdns.yaml) ;;
	ztdns-cleanup.yaml) args=(--set mode=cleanup) ;;
	*) die "unknown manifest $name (want ztdns.yaml or ztdns-cleanup.yaml)" ;;
	esac
	local version cmd
	version="$("$helm" version --template '{{ .Version }}')"
	cmd="helm template $release deploy/charts/ztdns --namespace $namespace${args[*]:+ ${args[*]}}"
	cat <<-EOF
		# Generated from the Helm chart: do not edit. Rendered with helm $version by
		#   $cmd
		# Regenerate with deploy/render-manifests.sh; test/deploy fails when this is stale.
		# No image is published by this repository: build it with make image, push it, and
		# replace "image: ztdns:<version>" below. See deploy/README.md.
	EOF
	(cd "$repo" && "$helm" template "$release" deploy/charts/ztdns --namespace "$namespace" "${args[@]}")
}

case "${1:-}" in
"")
	for name in ztdns.yaml ztdns-cleanup.yaml; do
		out="$here/manifests/$name"
		render "$name" >"$out.tmp"
		mv -f "$out.tmp" "$out"
		printf 'render-manifests: wrote %s\n' "${out#"$repo/"}" >&2
	done
	;;
--print)
	[[ $# -eq 2 ]] || die "--print takes a file name"
	render "$2"
	;;
-h | --help)
	sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
	;;
*) die "unknown argument $1" ;;
esac
