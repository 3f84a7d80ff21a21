#!/usr/bin/env bash
# A build script whose build fails, as scripts/build-kube.sh does with no
# network and an empty module cache: --check says a build is needed, and the
# build exits 1.
if [ "${1:-}" = --check ]; then
	echo /nonexistent
	exit 3
fi
echo "build-fails.sh: cannot download the modules" >&2
exit 1
