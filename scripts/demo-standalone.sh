#!/usr/bin/env bash
# The standalone demo: Istio's "DNS Proxying" walkthrough against a ztdns agent
# that serves examples/ from a directory, no Kubernetes, no root, no eBPF.
# Queries come "from the curl pod" by binding 127.0.0.2, the IP its manifest
# claims. Unknown names go to a local unbound started here, never to the
# machine's own nameserver.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/ztdns}
# shellcheck source=scripts/lib/unbound.sh
source scripts/lib/unbound.sh
# shellcheck source=scripts/lib/check.sh
source scripts/lib/check.sh
PORT=${PORT:-5353}
UPSTREAM_PORT=${UPSTREAM_PORT:-5399}

for cmd in dig unbound; do
  command -v "$cmd" >/dev/null || { echo "missing $cmd: see the README's set-up" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
ask() { step "dig -b 127.0.0.2 $*"; dig -p "$PORT" @127.0.0.1 -b 127.0.0.2 +noall +answer +comments "$@" | grep -E 'status:|IN' || true; }
# answer NAME: what the curl pod is told, as the demo checks it: the
# addresses, or the status when there are none.
answer() {
  local out
  out=$(dig -p "$PORT" @127.0.0.1 -b 127.0.0.2 +noall +answer +comments "$1")
  awk '$4 == "A" {print $5}' <<<"$out" | sort | paste -sd' ' | grep . ||
    sed -n 's/.*status: \([A-Z]*\),.*/\1/p' <<<"$out"
}

# An upstream that knows one name and answers NXDOMAIN for the rest.
write_unbound_conf "$work/unbound.conf" "$work" 127.0.0.1 "$UPSTREAM_PORT"
unbound -c "$work/unbound.conf" >"$work/unbound.log" 2>&1 &
pids+=($!)

mkdir "$work/manifests"
cp examples/*.yaml "$work/manifests/"
"$BIN" agent --capture=false --config-dir "$work/manifests" --listen "127.0.0.1:$PORT" \
  --upstream "127.0.0.1:$UPSTREAM_PORT" --socket "$work/ztdns.sock" --log-level warn &
pids+=($!)
wait_ready "$BIN" "$work/ztdns.sock" "$!"

echo "ztdns serves examples/ on 127.0.0.1:$PORT; the curl pod is 127.0.0.2."
ask address.internal
expect "address.internal" "$(answer address.internal)" '198\.51\.100\.1'
ask auto.internal
expect "auto.internal" "$(answer auto.internal)" "$VIP"
ask tcp-echo.external-1.svc.cluster.local
ask tcp-echo.external-2.svc.cluster.local
echo1=$(answer tcp-echo.external-1.svc.cluster.local)
echo2=$(answer tcp-echo.external-2.svc.cluster.local)
expect "tcp-echo.external-1.svc.cluster.local" "$echo1" "$VIP"
expect "tcp-echo.external-2.svc.cluster.local" "$echo2" "$VIP"
[ "$echo1" != "$echo2" ] || fail "the two tcp-echo hosts share the VIP $echo1"
step "ztdns table --namespace default | grep -E 'NAME|tcp-echo|auto'"
"$BIN" table --socket "$work/ztdns.sock" --namespace default | grep -E 'NAME|tcp-echo|auto' | grep -v arpa
step "cp examples/optout/external-auto.yaml manifests/   # label enable-autoallocate-ip: \"false\""
cp examples/optout/external-auto.yaml "$work/manifests/external-auto.yaml"
# The agent sees the file change within a second or so.
for _ in $(seq 100); do [ "$(answer auto.internal)" = NXDOMAIN ] && break; sleep 0.1; done
ask auto.internal
expect "auto.internal once it opted out, forwarded" "$(answer auto.internal)" NXDOMAIN
ask example.com
expect "example.com, forwarded" "$(answer example.com)" '203\.0\.113\.10'
echo
echo "Done: address.internal from spec.addresses, auto.internal and the two tcp-echo hosts"
echo "from distinct 240.240.x.y VIPs, and auto.internal forwarded once it opted out."
