#!/usr/bin/env bash
# The main demo: Istio's "DNS Proxying" walkthrough with real DNS capture.
#
# It builds a tiny node out of network namespaces: a "node" namespace where the
# ztdns agent and the cluster's nameserver (an unbound playing kube-dns on
# 10.96.0.10) run, and two pods, "curl" (captured) and "other" (not), each
# behind a veth, whose resolv.conf says nameserver 10.96.0.10 as kubelet's
# would. The agent's eBPF programs attach to a cgroup made for the demo, and
# the pods' commands run in it. Then it walks the seed: address.internal,
# auto.internal, the opt-out label, the two tcp-echo VIPs, each resolved with
# the clients a user runs (curl, getent, dig) from inside the pods.
#
# Run as root. Everything is removed on exit, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${BIN:-bin/ztdns}")
# shellcheck source=scripts/lib/unbound.sh
source scripts/lib/unbound.sh
# shellcheck source=scripts/lib/check.sh
source scripts/lib/check.sh

[ "$(id -u)" = 0 ] || { echo "make demo needs root (network namespaces, cgroups, eBPF); try: sudo make demo" >&2; exit 1; }
for cmd in ip nsenter dig getent curl unbound; do
  command -v "$cmd" >/dev/null || { echo "missing $cmd: see the README's set-up" >&2; exit 1; }
done

id=$$
NODE=ztdns-demo-node-$id
CURL=ztdns-demo-curl-$id
OTHER=ztdns-demo-other-$id
CG2=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
[ -n "$CG2" ] || { echo "no cgroup2 mount in /proc/mounts" >&2; exit 1; }
CG=$CG2/ztdns-demo-$id
work=$(mktemp -d /tmp/ztdns-demo.XXXXXX)
SOCK=$work/ztdns.sock

cleanup() {
  set +e
  [ -n "${agent_pid:-}" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  [ -n "${unbound_pid:-}" ] && kill "$unbound_pid" 2>/dev/null && wait "$unbound_pid" 2>/dev/null
  if [ -d "$CG" ]; then
    while read -r p; do kill -9 "$p" 2>/dev/null; done <"$CG/cgroup.procs"
  fi
  nsenter --net="/run/netns/$NODE" "$BIN" uninstall --bpffs "$work/bpffs/ztdns" --cgroup "$CG" >/dev/null 2>&1
  for ns in "$CURL" "$OTHER" "$NODE"; do ip netns del "$ns" 2>/dev/null; rm -rf "/etc/netns/$ns"; done
  rmdir /etc/netns 2>/dev/null # only if nothing else keeps files there
  rmdir "$CG" 2>/dev/null
  umount "$work/bpffs" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
# inpod POD CMD...: run a command inside a pod, in the demo cgroup (so the
# capture programs see its sockets), with the pod's resolv.conf.
# (Join the cgroup first: ip netns exec remounts /sys, hiding the cgroup tree.)
inpod() {
  local pod=$1; shift
  sh -c 'echo $$ > "$0/cgroup.procs" && exec ip netns exec "$@"' "$CG" "$pod" "$@"
}
# show POD CMD...: print the command as typed in the pod, then its output;
# a command that resolves nothing says so.
show() {
  local pod=$1; shift
  printf '\033[36m%s$ %s\033[0m\n' "${pod#ztdns-demo-}" "$*" | sed "s/-$id\\$/\$/"
  local out
  out=$(inpod "$pod" "$@" 2>&1) || true
  [ -n "$out" ] && echo "$out" || echo "(no answer)"
}
# seed_curl POD HOST: the walkthrough's `curl -sS -v HOST`, trimmed to the line
# that shows where the name resolved to.
seed_curl() {
  local pod=$1 host=$2
  printf '\033[36m%s$ curl -sS -v %s\033[0m\n' "${pod#ztdns-demo-}" "$host" | sed "s/-$id\\$/\$/"
  inpod "$pod" curl -sS -v --connect-timeout 1 "http://$host" 2>&1 | grep -E 'Trying|resolve' | head -2 || true
}
# resolved POD HOST: the addresses HOST resolves to in the pod, as the demo
# checks them; nothing when it does not resolve.
resolved() {
  inpod "$1" getent ahostsv4 "$2" | awk '{print $1}' | sort -u | paste -sd' '
}

say "Setting up: a node namespace, two pod namespaces, a cgroup, a private bpffs"
mkdir -p "$CG" "$work/bpffs" "$work/manifests"
mount -t bpf bpf "$work/bpffs"
ip netns add "$NODE"
ip -n "$NODE" link set lo up
# kube-dns's ClusterIP, served by unbound: it knows nothing of ServiceEntries.
ip -n "$NODE" addr add 10.96.0.10/32 dev lo
n=2
for pod in "$CURL" "$OTHER"; do
  ip netns add "$pod"
  ip link add "veth$n-$id" netns "$NODE" type veth peer name eth0 netns "$pod"
  ip -n "$NODE" addr add "10.244.0.1/32" dev "veth$n-$id"
  ip -n "$NODE" link set "veth$n-$id" up
  ip -n "$NODE" route add "10.244.0.$n/32" dev "veth$n-$id"
  ip -n "$pod" link set lo up
  ip -n "$pod" addr add "10.244.0.$n/24" dev eth0
  ip -n "$pod" link set eth0 up
  ip -n "$pod" route add default via 10.244.0.1 dev eth0 onlink
  mkdir -p "/etc/netns/$pod"
  printf 'search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n' >"/etc/netns/$pod/resolv.conf"
  n=$((n + 1))
done

write_unbound_conf "$work/unbound.conf" "$work" 10.96.0.10 53 \
  "access-control: 10.0.0.0/8 allow" "access-control: 169.254.0.0/16 allow"
ip netns exec "$NODE" unbound -c "$work/unbound.conf" >"$work/unbound.log" 2>&1 &
unbound_pid=$!

cp examples/*.yaml "$work/manifests/"
# nsenter, not ip netns exec: the agent must see the real /sys (cgroups, bpffs).
nsenter --net="/run/netns/$NODE" "$BIN" agent --config-dir "$work/manifests" --cgroup "$CG" --bpffs "$work/bpffs/ztdns" \
  --socket "$SOCK" --upstream 10.96.0.10 --log-level warn &
agent_pid=$!
wait_ready "$BIN" "$SOCK" "$agent_pid"
"$BIN" capture add --socket "$SOCK" --netns "/run/netns/$CURL" --namespace default --name curl

say "The curl pod is captured; the other pod is not:"
"$BIN" pods --socket "$SOCK" | grep -E 'NAMESPACE|curl'

say "DNS capture in action: a ServiceEntry with an address"
seed_curl "$CURL" address.internal
show "$CURL" getent hosts address.internal
expect "address.internal in the curl pod" "$(resolved "$CURL" address.internal)" '198\.51\.100\.1'

say "Address auto-allocation: a ServiceEntry without addresses gets a VIP from 240.240.0.0/16"
seed_curl "$CURL" auto.internal
show "$CURL" dig +short auto.internal
expect "auto.internal in the curl pod" "$(resolved "$CURL" auto.internal)" "$VIP"

say "Without capture, the cluster's nameserver knows none of this:"
seed_curl "$OTHER" address.internal
show "$OTHER" getent hosts address.internal
show "$OTHER" dig +short auto.internal
expect "address.internal in the other pod" "$(resolved "$OTHER" address.internal)" ''

say "The opt-out label networking.istio.io/enable-autoallocate-ip: \"false\" on external-auto:"
cp examples/optout/external-auto.yaml "$work/manifests/external-auto.yaml"
# The agent sees the file change within a second or so.
for _ in $(seq 100); do [ -z "$(resolved "$CURL" auto.internal)" ] && break; sleep 0.1; done
seed_curl "$CURL" auto.internal
expect "auto.internal in the curl pod once it opted out" "$(resolved "$CURL" auto.internal)" ''

say "External TCP services without VIPs: two tcp-echo ServiceEntries on port 9000 get distinct VIPs"
show "$CURL" dig +short tcp-echo.external-1.svc.cluster.local
show "$CURL" dig +short +tcp tcp-echo.external-2.svc.cluster.local
echo1=$(resolved "$CURL" tcp-echo.external-1.svc.cluster.local)
echo2=$(resolved "$CURL" tcp-echo.external-2.svc.cluster.local)
expect "tcp-echo.external-1.svc.cluster.local in the curl pod" "$echo1" "$VIP"
expect "tcp-echo.external-2.svc.cluster.local in the curl pod" "$echo2" "$VIP"
[ "$echo1" != "$echo2" ] || fail "the two tcp-echo hosts share the VIP $echo1"
printf '\033[36mnode$ ztdns table --namespace default | grep tcp-echo\033[0m\n'
"$BIN" table --socket "$SOCK" --namespace default | grep -E '^tcp-echo' || true

say "Names ztdns does not know go to the nameserver the pod asked:"
show "$CURL" getent hosts example.com
expect "example.com in the curl pod" "$(resolved "$CURL" example.com)" '203\.0\.113\.10'

say "Counters, and what bpftool sees:"
"$BIN" pods --socket "$SOCK" | grep -E 'NAMESPACE|curl'
if command -v bpftool >/dev/null; then
  bpftool map dump pinned "$work/bpffs/ztdns/pods" | head -20
fi
say "Done; cleaning up."
