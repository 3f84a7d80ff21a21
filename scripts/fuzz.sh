#!/usr/bin/env bash
# Runs every fuzz target of the module, one after the other, for FUZZTIME
# each (a Go duration, default 10m), and prints a summary with each target's
# executions and whether it found a crash. A crash is saved by `go test`
# under the package's testdata/fuzz/<target>/ (commit it: it then runs as a
# seed in `make test`), and makes this script exit non-zero after the other
# targets ran.
#
#   FUZZTIME=10m    time per target
#   FUZZFLAGS=      more `go test` flags, e.g. "-parallel 1" on a shared machine
#   FUZZ=           only the targets whose name matches this regexp
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-10m}
FUZZFLAGS=${FUZZFLAGS:-}
FUZZ=${FUZZ:-.}

# Targets are found in the sources: every `func FuzzX(` of a _test.go file.
mapfile -t targets < <(grep -rlE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(' . | sort | while read -r f; do
  for name in $(grep -oE '^func Fuzz[A-Za-z0-9_]*\(' "$f" | sed -E 's/^func (Fuzz[A-Za-z0-9_]*)\(/\1/'); do
    echo "./$(dirname "${f#./}") $name"
  done
done | awk -v re="$FUZZ" '$2 ~ re')
if [ "${#targets[@]}" -eq 0 ]; then
  echo "no fuzz targets found" >&2
  exit 1
fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
summary=()
failed=0
for t in "${targets[@]}"; do
  read -r pkg name <<<"$t"
  log="$logs/$name.log"
  echo "== $pkg $name ($FUZZTIME)"
  # shellcheck disable=SC2086 # FUZZFLAGS is a list of flags
  if $GO test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" $FUZZFLAGS "$pkg" >"$log" 2>&1; then
    result="0 crashes"
  else
    result="CRASH (see testdata/fuzz/$name in $pkg)"
    failed=1
    cat "$log"
  fi
  execs=$(grep -oE 'execs: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || echo 0)
  tail -n 3 "$log"
  summary+=("$(printf '| `%s` | `%s` | %s | %s | %s |' "$pkg" "$name" "$FUZZTIME" "$execs" "$result")")
done

echo
echo "| package | target | time | executions | result |"
echo "| --- | --- | --- | --- | --- |"
printf '%s\n' "${summary[@]}"
exit "$failed"
