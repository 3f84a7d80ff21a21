#!/usr/bin/env bash
# make bench: ztdns against its peers, side by side, in one run, as ratios.
#
#   scripts/bench.sh [resolver|capture|all]     (default: all as root, else resolver)
#
# resolver  dnsperf against a standalone ztdns agent holding 10,000 Services and
#           10,000 ServiceEntry hosts, then against unbound (one thread) serving
#           the 10,000 queried names from a local zone, both on 127.0.0.1.
#           Per server: answered qps, server CPU per answered query (utime+stime
#           from /proc/PID/stat around the run), RSS; then the ratios. First at
#           full speed (the issue's targets), then at fixed rates, where a node
#           resolver spends most of its life and batching cannot help.
# capture   (root) the same kind of dnsperf load (a namegen query file the agent
#           answers from its table) sent from inside a pod network namespace to
#           the agent in a node namespace, three ways: "redirect", the pod
#           marked (ztdns capture add), dnsperf in the cgroup the programs are
#           attached to, addressing the pod's nameserver, which exists nowhere;
#           "direct", an unmarked pod in the same cgroup addressing the
#           resolver (169.254.20.53) itself; "iptables", an unmarked pod in the
#           same cgroup whose netns DNATs port 53 to the resolver (what
#           istio-cni installs), addressing the nameserver. Optionally "bare":
#           the direct pod with dnsperf outside the cgroup (no program runs).
#           Per way: qps, agent CPU per answered query, dnsperf's own user and
#           system CPU per query (the sending path, BPF or conntrack and NAT,
#           is in its system time), lost queries; then the median over rounds
#           of each round's ratio to direct (issue 3's target: redirect qps >=
#           0.95 x direct), and the pooled ratio. The ways take turns in an
#           order that turns every round (rotated, then reversed), so a drifting
#           load on the shared machine favours none. Then a pass per way with
#           kernel.bpf_stats_enabled=1 (restored after) for each program's run
#           time per query.
#
# Settings (environment):
#   DURATION=20       resolver: seconds of measured load per server, pass and round
#   WARMUP=2          seconds of unmeasured load before each measurement
#   ROUNDS=1          resolver: rounds (ztdns then unbound, each pass); figures are totals
#   CAPTURE_ROUNDS=6  capture: rounds; figures are totals, ratios medians of rounds
#                     (2 x the number of ways puts each way in each slot twice)
#   CAPTURE_DURATION=10   capture: seconds of measured load per way, pass and
#                     round (short runs, many rounds: neighbours share the noise)
#   CAPTURE_WAYS="redirect direct iptables"   capture: the ways, direct
#                     required; also "bare" (direct outside the cgroup: no
#                     program runs) and "marked" (the marked pod addressing
#                     the resolver itself: the programs let it pass, the agent
#                     answers in the pod's namespace view)
#   CAPTURE_NAMESERVER=203.0.113.10   capture: the pods' nameserver (nowhere)
#   BPF_STATS=1       capture: 0 skips the bpf_stats pass
#   RATES="10000"     fixed-rate passes after the full-speed one (dnsperf -Q);
#                     "" for none
#   CLIENTS=8         dnsperf -c: source sockets (ports)
#   OUTSTANDING=200   dnsperf -q: queries in flight at once
#   THREADS=1         dnsperf -T
#   DNSPERF_FLAGS=    more dnsperf flags for both servers (e.g. -e for EDNS)
#   SERVICES=10000 ENTRIES=10000 QUERIES=10000 AAAA_EVERY=10   (bench/namegen)
#   ZTDNS_PORT=15353 UNBOUND_PORT=15354 PROF_PORT=15355
#   ZTDNS_GOMAXPROCS= GOMAXPROCS for the agent (and so its UDP socket count)
#   SPREAD=auto       count queries per ztdns UDP socket with perf's
#                     sock:sock_recv_length tracepoint (root only); 0 skips,
#                     1 insists
#   PROFILE=          perf: perf record the agent during a full-speed run (root),
#                     and, in capture, dnsperf in each way (kernel paths);
#                     go: run the agent in-process under pprof (bench/agentprof,
#                     no root) and print CPU and heap profiles
#   KEEP=0            1: keep the work directory (manifests, configs, outputs)
#   BIN=bin/ztdns
#
# Nothing leaves the machine. resolver: everything runs on 127.0.0.1 (ztdns's
# upstream is the local unbound, whose root zone is static). capture: every
# address lives in namespaces the script creates (198.51.100.0/24 on the veths,
# a nameserver from 203.0.113.0/24 that exists nowhere, the agent's upstream
# the node namespace's own loopback, where nothing listens); the programs
# attach to a cgroup made for the run; a bpffs is mounted for it alone. All of
# it (processes, namespaces with their veths and iptables rules, cgroup,
# bpffs, the bpf_stats sysctl) is undone on exit, also on Ctrl-C or failure.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-bin/ztdns}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-1}
RATES=${RATES-10000}
CLIENTS=${CLIENTS:-8}
OUTSTANDING=${OUTSTANDING:-200}
THREADS=${THREADS:-1}
DNSPERF_FLAGS=${DNSPERF_FLAGS:-}
SERVICES=${SERVICES:-10000}
ENTRIES=${ENTRIES:-10000}
QUERIES=${QUERIES:-10000}
AAAA_EVERY=${AAAA_EVERY:-10}
ZTDNS_PORT=${ZTDNS_PORT:-15353}
UNBOUND_PORT=${UNBOUND_PORT:-15354}
PROF_PORT=${PROF_PORT:-15355}
ZTDNS_GOMAXPROCS=${ZTDNS_GOMAXPROCS:-}
SPREAD=${SPREAD:-auto}
PROFILE=${PROFILE:-}
KEEP=${KEEP:-0}

# Targets from issue 2 (full speed).
TARGET_CPU_RATIO=1.0
TARGET_QPS_RATIO=1.0
TARGET_RSS_MB=40

die() { echo "bench: $*" >&2; exit 1; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cmdline() { printf '  $'; printf ' %q' "$@"; printf '\n'; }
is_root() { [[ $(id -u) == 0 ]]; }

mode=${1:-}
if [[ -z $mode ]]; then
  if is_root; then mode=all; else mode=resolver; fi
fi
case $mode in resolver | capture | all) ;; *) die "unknown mode '$mode' (want resolver, capture or all)" ;; esac
case $PROFILE in "" | perf | go) ;; *) die "PROFILE=$PROFILE: want perf or go" ;; esac

# ---- cleanup: everything started here dies, every temp file goes ----------
work=$(mktemp -d "${TMPDIR:-/tmp}/ztdns-bench.XXXXXX")
pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # Defined further down: absent when the script stops before reading it.
  if declare -F capture_cleanup >/dev/null; then capture_cleanup; fi
  if [[ $KEEP == 1 ]]; then echo "bench: kept $work" >&2; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# forget PID: drop a process that has been waited for (its number may be reused).
forget() {
  local keep=() p
  for p in "${pids[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  pids=("${keep[@]}")
}

# ---- /proc readers -----------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)

# cpu_ticks PID: utime+stime of the whole process (all threads), in ticks.
# Fields counted after the ")" that closes comm, which may hold spaces.
cpu_ticks() {
  local s
  s=$(<"/proc/$1/stat") || die "process $1 is gone"
  s=${s##*) }
  awk '{print $12 + $13}' <<<"$s"
}

# proc_cpu PID: "utime stime" in ticks, all threads; nothing when PID is gone
# or a zombie (its figures are then the shell's to collect).
proc_cpu() {
  local s
  { s=$(<"/proc/$1/stat"); } 2>/dev/null || return 0
  s=${s##*) }
  awk '$1 != "Z" {print $12, $13}' <<<"$s"
}

# ksoftirqd_ticks: utime+stime of every ksoftirqd thread. Network receive
# work the kernel defers to them (under load) is charged to no client or
# server, so the capture bench counts it apart.
ksoftirqd_ticks() {
  local p t=0
  for p in $(pgrep -x 'ksoftirqd/[0-9]+'); do t=$((t + $(cpu_ticks "$p"))); done
  echo "$t"
}

# status_kb PID FIELD: VmRSS, VmHWM… in kB.
status_kb() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }

# SO_REUSEPORT would let a server share a port someone else holds and split
# the load with it without a word: insist that the port is free.
port_free() { [[ -z $(ss -Hauln "sport = :$1") ]]; }

# wait_answer PORT NAME PID: until the server on PORT answers NAME with an address.
wait_answer() {
  local port=$1 name=$2 pid=$3
  for _ in $(seq 600); do
    kill -0 "$pid" 2>/dev/null || die "the server on port $port exited; see its log in $work (KEEP=1)"
    if dig +short +time=1 +tries=1 -p "$port" @127.0.0.1 "$name" A 2>/dev/null | grep -qE '^[0-9.]+$'; then
      return 0
    fi
    sleep 0.1
  done
  die "the server on port $port did not answer $name within 60 s"
}

# ---- dnsperf -----------------------------------------------------------------

# dnsperf_args PORT SECONDS RATE [SERVER [QUERYFILE]]: the command line, one
# word a line; RATE "max" sends as fast as answers come back.
dnsperf_args() {
  local port=$1 secs=$2 rate=$3 server=${4:-127.0.0.1} file=${5:-$work/queries.txt}
  local a=(dnsperf -s "$server" -p "$port" -d "$file" -l "$secs" -c "$CLIENTS" -q "$OUTSTANDING" -T "$THREADS")
  [[ $rate != max ]] && a+=(-Q "$rate")
  # shellcheck disable=SC2206 # split on purpose: a list of flags
  [[ -n $DNSPERF_FLAGS ]] && a+=($DNSPERF_FLAGS)
  printf '%s\n' "${a[@]}"
}

# run_timed [-w SECONDS] OUT CMD...: run CMD (a dnsperf, perhaps behind
# wrappers that exec it) with its report in OUT.txt and OUT.err; OUT.time gets
# its user+system CPU seconds, OUT.cpu "user system". With -w, those are what
# it used in its first SECONDS only, read from /proc/PID/stat then: after its
# -l seconds dnsperf spins on the CPU while it waits for any lost query to
# time out (-t, 5 s), which is no work of the query path. It runs in the
# background and the shell waits for it: a foreground dnsperf would swallow
# Ctrl-C (it stops and reports on SIGINT) and the script would carry on.
run_timed() {
  local window=""
  if [[ $1 == -w ]]; then
    window=$2
    shift 2
  fi
  local out=$1
  shift
  local launched=$EPOCHREALTIME
  times >"$out.t0" # children's CPU so far (no subshell: it must be this shell's)
  "$@" >"$out.txt" 2>"$out.err" &
  local pid=$!
  pids+=("$pid")
  local win=""
  if [[ -n $window ]]; then
    sleep "$(awk -v w="$window" -v l="$launched" -v n="$EPOCHREALTIME" 'BEGIN {d = w - (n - l); print (d > 0 ? d : 0)}')"
    win=$(proc_cpu "$pid")
  fi
  wait "$pid" || die "dnsperf failed: $(cat "$out.err" "$out.txt" | tail -5)"
  times >"$out.t1"
  forget "$pid"
  if [[ -n $win ]]; then
    awk -v hz="$CLK_TCK" '{printf "%.3f %.3f\n", $1 / hz, $2 / hz}' <<<"$win" >"$out.cpu"
  else
    # times prints "0m1.234s 0m0.567s" lines; the second is the children's.
    awk 'FNR == 2 {split($1, u, /[ms]/); split($2, s, /[ms]/); us[FILENAME] = u[1] * 60 + u[2]; sy[FILENAME] = s[1] * 60 + s[2]}
         END {printf "%.3f %.3f\n", us[ARGV[2]] - us[ARGV[1]], sy[ARGV[2]] - sy[ARGV[1]]}' "$out.t0" "$out.t1" >"$out.cpu"
  fi
  awk '{print $1 + $2}' "$out.cpu" >"$out.time"
}

# run_dnsperf PORT SECONDS RATE OUT: one run against 127.0.0.1 (see run_timed).
run_dnsperf() {
  local port=$1 secs=$2 rate=$3 out=$4
  local -a args
  mapfile -t args < <(dnsperf_args "$port" "$secs" "$rate")
  run_timed "$out" "${args[@]}"
}

# dnsperf_field FILE LABEL: the first number after "LABEL:".
dnsperf_field() { awk -v l="$2:" 'i = index($0, l) {$0 = substr($0, i + length(l)); print $1 + 0; exit}' "$1"; }

# measure NAME PID PORT RATE ROUND: warm up, then one measured run. Appends to
# $work/rows: rate name round answered seconds lost cpu_ticks rss_kb hwm_kb
# dnsperf_cpu_s noerror_pct.
measure() {
  local name=$1 pid=$2 port=$3 rate=$4 round=$5
  local out="$work/$name-$rate-$round"
  if ((WARMUP > 0)); then run_dnsperf "$port" "$WARMUP" "$rate" "$out-warmup"; fi
  local t0 t1
  t0=$(cpu_ticks "$pid")
  run_dnsperf "$port" "$DURATION" "$rate" "$out"
  t1=$(cpu_ticks "$pid")
  local answered lost qps runtime noerr noerr_pct
  answered=$(dnsperf_field "$out.txt" "Queries completed")
  lost=$(dnsperf_field "$out.txt" "Queries lost")
  qps=$(dnsperf_field "$out.txt" "Queries per second")
  runtime=$(dnsperf_field "$out.txt" "Run time (s)")
  noerr=$(awk '/Response codes:/ {for (i = 1; i <= NF; i++) if ($i == "NOERROR") {print $(i + 1); exit}}' "$out.txt")
  [[ -n $answered && $answered -gt 0 ]] || die "$name answered nothing: $(cat "$out.txt" "$out.err")"
  noerr_pct=$(awk -v n="${noerr:-0}" -v a="$answered" 'BEGIN {printf "%.2f", 100 * n / a}')
  echo "$rate $name $round $answered $runtime $lost $((t1 - t0)) $(status_kb "$pid" VmRSS) $(status_kb "$pid" VmHWM)" \
    "$(cat "$out.time") $noerr_pct" >>"$work/rows"
  printf '  %-5s %-8s round %d: %8.0f qps, %s answered, %s lost, %s%% NOERROR, server CPU %s ticks, %.2f us/query\n' \
    "$rate" "$name" "$round" "$qps" "$answered" "$lost" "$noerr_pct" "$((t1 - t0))" \
    "$(awk -v t="$((t1 - t0))" -v hz="$CLK_TCK" -v a="$answered" 'BEGIN {print t / hz / a * 1e6}')"
}

# report RATE: the table and the ratios of one pass, from $work/rows.
report() {
  local rate=$1
  awk -v rate="$rate" -v hz="$CLK_TCK" -v zr0="$z_rss0" -v zh0="$z_hwm0" -v ur0="$u_rss0" -v uh0="$u_hwm0" \
    -v tcpu="$TARGET_CPU_RATIO" -v tqps="$TARGET_QPS_RATIO" -v trss="$TARGET_RSS_MB" '
    $1 != rate { next }
    { k = $2; ans[k] += $4; secs[k] += $5; lost[k] += $6; ticks[k] += $7; rss[k] = $8; hwm[k] = $9; dcpu[k] += $10; noerr[k] = $11
      rans[k, $3] = $4; rticks[k, $3] = $7; rounds = $3 }
    END {
      r0["ztdns"] = zr0; h0["ztdns"] = zh0; r0["unbound"] = ur0; h0["unbound"] = uh0
      printf "  %-8s %9s %10s %6s %9s %8s %13s %13s %8s\n", "server", "qps", "answered", "lost", "CPU us/q", "NOERROR", "RSS loaded", "RSS after", "dnsperf"
      n = split("ztdns unbound", s, " ")
      for (i = 1; i <= n; i++) {
        k = s[i]
        qps[k] = ans[k] / secs[k]
        us[k] = ticks[k] / hz / ans[k] * 1e6
        printf "  %-8s %9.0f %10d %6d %9.2f %7s%% %5.1f/%5.1fMB %5.1f/%5.1fMB %7.0f%%\n", k, qps[k], ans[k], lost[k], us[k], noerr[k],
          r0[k] / 1024, h0[k] / 1024, rss[k] / 1024, hwm[k] / 1024, 100 * dcpu[k] / secs[k]
      }
      cr = us["ztdns"] / us["unbound"]; qr = qps["ztdns"] / qps["unbound"]
      per = ""
      if (rounds > 1) {
        for (r = 1; r <= rounds; r++) per = per sprintf(" %.2f", (rticks["ztdns", r] / rans["ztdns", r]) / (rticks["unbound", r] / rans["unbound", r]))
        per = "   per round:" per
      }
      print ""
      if (rate == "max") {
        printf "  ztdns CPU/query / unbound CPU/query  %6.2f   target <= %s   %-7s%s\n", cr, tcpu, (cr <= tcpu ? "met" : "NOT met"), per
        printf "  ztdns qps / unbound qps              %6.2f   target >= %s   %s\n", qr, tqps, (qr >= tqps ? "met" : "NOT met")
        rmb = rss["ztdns"] / 1024
        printf "  ztdns RSS serving (VmRSS) MB         %6.1f   target <= %s    %s   (peak VmHWM %.1f MB, incl. loading)\n", rmb, trss, (rmb <= trss ? "met" : "NOT met"), hwm["ztdns"] / 1024
      } else {
        printf "  ztdns CPU/query / unbound CPU/query  %6.2f   (no target at a fixed rate; 1.0 is parity)%s\n", cr, per
      }
    }' "$work/rows"
}

# ---- checks and diagnostics --------------------------------------------------

# compare_answers: the two servers give the same addresses for a sample.
compare_answers() {
  local n=0 bad=0 name type a b
  while read -r name type; do
    a=$(dig +short +time=2 +tries=1 -p "$ZTDNS_PORT" @127.0.0.1 "$name" "$type" | sort)
    b=$(dig +short +time=2 +tries=1 -p "$UNBOUND_PORT" @127.0.0.1 "$name" "$type" | sort)
    if [[ $a != "$b" || ($type == A && -z $a) ]]; then
      echo "  differ: $name $type: ztdns [${a//$'\n'/ }] unbound [${b//$'\n'/ }]"
      bad=$((bad + 1))
    fi
    n=$((n + 1))
  done < <(awk 'NR % 250 == 1 || $2 == "AAAA" && NR % 100 == 0' "$work/queries.txt")
  ((bad == 0)) || die "$bad of $n sampled answers differ between ztdns and unbound"
  echo "  $n sampled queries (A and AAAA): identical answers from both servers"
}

# socket_spread PID: which of the agent's UDP sockets get the queries. The
# sock:sock_recv_length tracepoint fires once per datagram read (recvmmsg
# included), carrying the socket's address.
socket_spread() {
  local pid=$1
  perf record -q -e sock:sock_recv_length -p "$pid" -o "$work/spread.data" -- sleep 4 2>"$work/spread.err" &
  local ppid=$!
  pids+=("$ppid")
  sleep 0.5
  run_dnsperf "$ZTDNS_PORT" 3 max "$work/spread-dnsperf"
  local ok=1
  wait "$ppid" || ok=0
  forget "$ppid"
  ((ok)) || { echo "  perf record failed: $(tail -2 "$work/spread.err")"; return 0; }
  # Lines read "... sk address = 0xffff..., family = AF_INET protocol = 0x11, length = 52, ...";
  # a negative length is recvmmsg finding the socket empty.
  perf script -i "$work/spread.data" 2>/dev/null |
    awk 'match($0, /sk address = 0x[0-9a-f]+/) { sk = substr($0, RSTART + 13, RLENGTH - 13)
           if (match($0, /length = -?[0-9]+/) && substr($0, RSTART + 9, RLENGTH - 9) + 0 > 0) { n[sk]++; total++ } }
         END { if (total == 0) { print "  no datagrams seen"; exit }
               for (s in n) printf "  socket %s: %9d datagrams (%5.1f%%)\n", s, n[s], 100 * n[s] / total }' | sort -k3 -rn
  echo "  (SO_REUSEPORT picks a socket by hashing the client's address and port: dnsperf's"
  echo "  $CLIENTS source ports land unevenly by chance; many pods' ports spread evenly)"
}

# profile_perf PID: where the running agent's CPU goes, kernel included.
profile_perf() {
  local pid=$1
  say "Profile: perf record -e cpu-clock -g on the agent during a ${DURATION}s full-speed run"
  perf record -q -e cpu-clock -F 4999 -g -p "$pid" -o "$work/profile.data" -- sleep "$((DURATION + 1))" 2>"$work/profile.err" &
  local ppid=$!
  pids+=("$ppid")
  sleep 0.5
  run_dnsperf "$ZTDNS_PORT" "$DURATION" max "$work/profile-dnsperf"
  local ok=1
  wait "$ppid" || ok=0
  forget "$ppid"
  ((ok)) || { echo "  perf record failed: $(tail -2 "$work/profile.err")"; return 0; }
  # awk, not head: head would close the pipe early and, under pipefail, fail the script.
  echo "  inclusive, selected (the kernel's share of sendmmsg includes delivering"
  echo "  each reply over loopback into dnsperf's socket):"
  perf report -i "$work/profile.data" --children --sort symbol --stdio -g none 2>/dev/null |
    awk '/^ +[0-9]/ && /__x64_sys_sendmmsg|__x64_sys_recvmmsg|__x64_sys_epoll_pwait|__x64_sys_futex|__x64_sys_nanosleep|net_rx_action|answerFast|table.\(\*Table\).Resolve|runtime.schedule$|runtime.sysmon$|runtime.gcBgMarkWorker|runtime.mallocgc$/ {print "  " $1 "  " $4}'
  echo "  self time, top 25 symbols:"
  perf report -i "$work/profile.data" --no-children --sort symbol --stdio 2>/dev/null |
    awk '/^ +[0-9]/ && n++ < 25 {print "  " $1 "  " $2 " " $3}'
}

# profile_go: the agent in-process (bench/agentprof) under Go's profilers.
profile_go() {
  say "Profile: bench/agentprof (the agent in-process with pprof) during a ${DURATION}s full-speed run"
  port_free "$PROF_PORT" || die "port $PROF_PORT is in use; set PROF_PORT"
  go build -o "$work/agentprof" ./bench/agentprof || die "building bench/agentprof failed"
  mkdir "$work/prof"
  "$work/agentprof" -config-dir "$work/manifests" -listen "127.0.0.1:$PROF_PORT" -upstream "127.0.0.1:$UNBOUND_PORT" \
    -socket "$work/prof.sock" -out "$work/prof" 2>"$work/agentprof.log" &
  local ppid=$!
  pids+=("$ppid")
  wait_answer "$PROF_PORT" "$(printf 'host-%05d.bench.internal' $((ENTRIES - 1)))" "$ppid"
  run_dnsperf "$PROF_PORT" "$WARMUP" max "$work/prof-warmup"
  kill -USR1 "$ppid"
  run_dnsperf "$PROF_PORT" "$DURATION" max "$work/prof-dnsperf"
  kill -USR2 "$ppid"
  wait "$ppid" || die "agentprof failed: $(tail -3 "$work/agentprof.log")"
  forget "$ppid"
  echo "  CPU, top 25 by self time:"
  go tool pprof -top -nodecount=25 "$work/agentprof" "$work/prof/cpu.pprof" 2>/dev/null | awk '/^ +[0-9]/ {print "  " $0}'
  echo "  allocations during the run (objects), top 10:"
  go tool pprof -sample_index=alloc_objects -diff_base "$work/prof/heap-start.pprof" -top -nodecount=10 \
    "$work/agentprof" "$work/prof/heap.pprof" 2>/dev/null | awk '/^ +-?[0-9]/ {print "  " $0}'
  echo "  live heap after the run, top 15 by cumulative size:"
  go tool pprof -sample_index=inuse_space -top -cum -nodecount=15 "$work/agentprof" "$work/prof/heap.pprof" 2>/dev/null |
    awk '/^ +[0-9]/ {print "  " substr($0, 1, 160)}'
}

# ---- resolver: ztdns vs. unbound ---------------------------------------------

bench_resolver() {
  local t
  for t in dnsperf unbound dig ss go; do command -v "$t" >/dev/null || die "$t not found (apt-get install dnsperf unbound bind9-dnsutils iproute2)"; done
  [[ -x $BIN ]] || die "$BIN not built (make build)"
  for p in "$ZTDNS_PORT" "$UNBOUND_PORT"; do
    port_free "$p" || die "port $p is in use on this machine; set ZTDNS_PORT / UNBOUND_PORT"
  done

  say "Resolver: ztdns vs. unbound, $QUERIES names queried, on 127.0.0.1"
  echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) (others' work adds noise), kernel $(uname -r)"
  local gen=(go run ./bench/namegen -out "$work" -services "$SERVICES" -entries "$ENTRIES" -queries "$QUERIES" -aaaa-every "$AAAA_EVERY")
  "${gen[@]}" || die "bench/namegen failed"
  echo "generated $SERVICES Services + $ENTRIES ServiceEntries; $(wc -l <"$work/queries.txt") query lines (A, every ${AAAA_EVERY}th AAAA);" \
    "$(grep -c 'local-data:' "$work/unbound-zone.conf") unbound records"

  cat >"$work/unbound.conf" <<CONF
server:
  interface: 127.0.0.1
  port: $UNBOUND_PORT
  num-threads: 1
  do-ip6: no
  username: ""
  chroot: ""
  directory: "$work"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  do-daemonize: no
  # Answer only from local data; never recurse anywhere.
  local-zone: "." static
  include: "$work/unbound-zone.conf"
remote-control:
  control-enable: no
CONF
  : >"$work/resolv.conf" # the agent reads no search domains from the machine

  # --pod-qps=0: dnsperf is one source asking as fast as it can, which the
  # per-pod rate limit exists to stop; here it measures the resolver.
  local agent=("$BIN" agent --capture=false --config-dir "$work/manifests" --listen "127.0.0.1:$ZTDNS_PORT"
    --upstream "127.0.0.1:$UNBOUND_PORT" --resolv-conf "$work/resolv.conf" --socket "$work/ztdns.sock" --log-level warn --pod-qps=0)
  local agent_env=(env)
  [[ -n $ZTDNS_GOMAXPROCS ]] && agent_env+=("GOMAXPROCS=$ZTDNS_GOMAXPROCS")

  # ztdns: start, wait until the last Service and the last host answer.
  local t_start t_ready
  t_start=$(date +%s.%N)
  "${agent_env[@]}" "${agent[@]}" >"$work/ztdns.log" 2>&1 &
  local zpid=$!
  pids+=("$zpid")
  wait_answer "$ZTDNS_PORT" "$(printf 'svc-%05d.ns-%03d.svc.cluster.local' $((SERVICES - 1)) $(((SERVICES - 1) % 100)))" "$zpid"
  wait_answer "$ZTDNS_PORT" "$(printf 'host-%05d.bench.internal' $((ENTRIES - 1)))" "$zpid"
  t_ready=$(date +%s.%N)
  sleep 2 # let the post-load FreeOSMemory and the scavenger settle
  z_rss0=$(status_kb "$zpid" VmRSS)
  z_hwm0=$(status_kb "$zpid" VmHWM)

  unbound -d -c "$work/unbound.conf" >"$work/unbound.log" 2>&1 &
  local upid=$!
  pids+=("$upid")
  wait_answer "$UNBOUND_PORT" "$(head -1 "$work/queries.txt" | cut -d' ' -f1)" "$upid"
  sleep 1
  u_rss0=$(status_kb "$upid" VmRSS)
  u_hwm0=$(status_kb "$upid" VmHWM)

  local nsock
  nsock=$(ss -Huanp "sport = :$ZTDNS_PORT" | grep -c "pid=$zpid,")
  printf 'ztdns loaded %s objects in %.1f s; %s UDP sockets on :%s (GOMAXPROCS %s)\n' \
    "$((SERVICES + ENTRIES))" "$(awk -v a="$t_start" -v b="$t_ready" 'BEGIN {print b - a}')" "$nsock" "$ZTDNS_PORT" "${ZTDNS_GOMAXPROCS:-default}"

  say "Same answers?"
  compare_answers

  local passes=(max)
  for r in $RATES; do passes+=("$r"); done

  say "Commands (in $work, removed on exit unless KEEP=1)"
  cmdline "${gen[@]}"
  if ((${#agent_env[@]} > 1)); then cmdline "${agent_env[@]}" "${agent[@]}"; else cmdline "${agent[@]}"; fi
  cmdline unbound -d -c "$work/unbound.conf"
  local -a args
  for rate in "${passes[@]}"; do
    for port in "$ZTDNS_PORT" "$UNBOUND_PORT"; do
      mapfile -t args < <(dnsperf_args "$port" "$DURATION" "$rate")
      cmdline "${args[@]}"
    done
  done
  echo "  (each after a ${WARMUP}s warm-up with -l $WARMUP; server CPU = utime+stime of /proc/PID/stat around the run)"
  echo "  (one dnsperf thread, $CLIENTS source ports, $OUTSTANDING in flight: enough to keep one unbound thread"
  echo "  busy on these 2 CPUs, which dnsperf and the server share; more threads only take CPU from the server)"

  say "Load: ${DURATION}s per server, pass and round; $ROUNDS round(s)"
  : >"$work/rows"
  for rate in "${passes[@]}"; do
    for round in $(seq "$ROUNDS"); do
      measure ztdns "$zpid" "$ZTDNS_PORT" "$rate" "$round"
      measure unbound "$upid" "$UNBOUND_PORT" "$rate" "$round"
    done
  done

  for rate in "${passes[@]}"; do
    if [[ $rate == max ]]; then say "Results at full speed (issue 2's targets)"; else say "Results at a fixed $rate queries/s"; fi
    report "$rate"
  done
  echo
  echo "  (RSS as VmRSS/VmHWM; dnsperf = its own user+sys CPU per wall second, over its two threads)"

  if [[ $SPREAD != 0 ]]; then
    say "Queries per ztdns UDP socket ($nsock sockets, SO_REUSEPORT, dnsperf -c $CLIENTS)"
    if ! is_root || ! command -v perf >/dev/null; then
      [[ $SPREAD == 1 ]] && die "SPREAD=1 needs root and perf"
      echo "  skipped: needs root and perf (the sock:sock_recv_length tracepoint)"
    else
      socket_spread "$zpid"
    fi
  fi

  case $PROFILE in
  perf)
    if ! is_root || ! command -v perf >/dev/null; then die "PROFILE=perf needs root and perf"; fi
    profile_perf "$zpid"
    ;;
  go) profile_go ;;
  esac
}

# ---- capture: through the eBPF redirect vs. direct vs. iptables DNAT ---------
#
# A node network namespace holds the agent and its resolver (169.254.20.53 on
# the agent's own interface); each pod is a namespace behind a veth, with a
# default route to the node and nothing beyond it. The agent enters the node
# with nsenter --net, not ip netns exec, which remounts /sys and would hide
# the cgroup tree and the bpffs. The capture programs attach to a cgroup made
# here, never the machine's root; a pod-side dnsperf joins it before it enters
# the pod (a socket belongs to its creator's cgroup), so every way but "bare"
# runs the same hooks, and an unmarked pod only pays their early exit.

CAPTURE_WAYS=${CAPTURE_WAYS:-redirect direct iptables}
CAPTURE_ROUNDS=${CAPTURE_ROUNDS:-6}
CAPTURE_DURATION=${CAPTURE_DURATION:-10}
CAPTURE_NAMESERVER=${CAPTURE_NAMESERVER:-203.0.113.10}
BPF_STATS=${BPF_STATS:-1}
# The agent's default first --listen address: where the programs send queries.
CAPTURE_RESOLVER=169.254.20.53
# Issue 3: the redirect costs at most 5% of direct qps.
TARGET_CAPTURE_QPS_RATIO=0.95

# What capture_cleanup undoes, each set just before it is made.
cap_cg="" cap_bpffs="" cap_node="" cap_stats_old=""
cap_netns=()
declare -A cap_pod=()

# capture_cleanup: every process in the test cgroup, the programs and pins,
# the namespaces (their veths, the agent's interface and the iptables rules go
# with them), the cgroup, the bpffs mount, the bpf_stats sysctl. Idempotent;
# the EXIT trap calls it after the agent (in pids) is gone.
capture_cleanup() {
  if [[ -n $cap_stats_old ]]; then
    sysctl -qw "kernel.bpf_stats_enabled=$cap_stats_old" || true
    cap_stats_old=""
  fi
  local p ns
  if [[ -n $cap_cg && -d $cap_cg ]]; then
    while read -r p; do kill -9 "$p" 2>/dev/null || true; done <"$cap_cg/cgroup.procs" || true
  fi
  if [[ -n $cap_bpffs && -n $cap_node ]]; then
    nsenter --net="/run/netns/$cap_node" "$BIN" uninstall --bpffs "$cap_bpffs/ztdns" --cgroup "$cap_cg" >/dev/null 2>&1 || true
  fi
  for ns in "${cap_netns[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  cap_netns=()
  if [[ -n $cap_cg ]]; then
    # A killed process leaves its cgroup a moment later.
    for _ in $(seq 50); do rmdir "$cap_cg" 2>/dev/null && break; [[ -d $cap_cg ]] || break; sleep 0.1; done
    [[ -d $cap_cg ]] && echo "bench: could not remove the cgroup $cap_cg" >&2
    cap_cg=""
  fi
  if [[ -n $cap_bpffs ]]; then
    umount "$cap_bpffs" 2>/dev/null || echo "bench: could not unmount $cap_bpffs" >&2
    cap_bpffs=""
  fi
}

# capture_topology DIR: the node, the pods, the cgroup and the bpffs.
capture_topology() {
  local dir=$1 cg2 n=1 pod ns veth ip
  cg2=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
  [[ -n $cg2 ]] || die "no cgroup2 mount in /proc/mounts"
  cap_cg=$cg2/ztdns-bench-$$
  mkdir "$cap_cg"
  mkdir "$dir/bpffs"
  mount -t bpf bpf "$dir/bpffs"
  cap_bpffs=$dir/bpffs

  cap_node=ztdns-bench-node-$$
  cap_netns+=("$cap_node")
  ip netns add "$cap_node"
  ip -n "$cap_node" link set lo up
  for pod in redirect direct iptables; do
    ns=ztdns-bench-$pod-$$
    veth=zb$$-$n
    ip=198.51.100.$((10 + n))
    cap_netns+=("$ns")
    ip netns add "$ns"
    ip link add "$veth" netns "$cap_node" type veth peer name eth0 netns "$ns"
    ip -n "$cap_node" addr add 198.51.100.1/32 dev "$veth"
    ip -n "$cap_node" link set "$veth" up
    ip -n "$cap_node" route add "$ip/32" dev "$veth"
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via 198.51.100.1 dev eth0 onlink
    cap_pod[$pod]=$ns
    n=$((n + 1))
  done
  # bare: the direct pod, but dnsperf stays out of the test cgroup.
  cap_pod[bare]=${cap_pod[direct]}
  # marked: the marked pod addressing the resolver itself, which the programs
  # leave alone; the agent still sees a known pod and answers in its view.
  cap_pod[marked]=${cap_pod[redirect]}
  # What istio-cni installs in an ambient pod, as a DNAT to the resolver.
  local proto
  for proto in udp tcp; do
    nsenter --net="/run/netns/${cap_pod[iptables]}" iptables -t nat -A OUTPUT -p "$proto" --dport 53 \
      -j DNAT --to-destination "$CAPTURE_RESOLVER:53"
  done
}

# capture_target WAY: the address dnsperf sends to. Redirect and iptables
# address the pod's nameserver, which exists nowhere.
capture_target() {
  case $1 in
  redirect | iptables) echo "$CAPTURE_NAMESERVER" ;;
  *) echo "$CAPTURE_RESOLVER" ;;
  esac
}

# capture_prefix WAY: the words that run a command in WAY's pod, one a line:
# join the test cgroup (except bare), then enter the pod's network namespace.
capture_prefix() {
  if [[ $1 != bare ]]; then
    # shellcheck disable=SC2016 # $$ and $0 belong to the inner sh
    printf '%s\n' sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cap_cg"
  fi
  printf '%s\n' nsenter --net="/run/netns/${cap_pod[$1]}"
}

# capture_cmd WAY SECONDS RATE: the whole dnsperf command line of WAY.
capture_cmd() {
  capture_prefix "$1"
  dnsperf_args 53 "$2" "$3" "$(capture_target "$1")" "$work/capture/queries.txt"
}

# capture_dig WAY NAME: the A records WAY's pod gets for NAME, sorted (dig
# +short prints its timeouts on stdout too: keep only addresses).
capture_dig() {
  local -a pre
  mapfile -t pre < <(capture_prefix "$1")
  "${pre[@]}" dig +short +time=1 +tries=1 @"$(capture_target "$1")" "$2" A </dev/null 2>/dev/null |
    awk '/^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$/' | sort || true
}

# capture_check: every way answers a sample the same, and an unmarked pod's
# query to the nameserver gets nothing: only the capture makes it work.
capture_check() {
  local n=0 name way want got
  while read -r name _; do
    want=$(capture_dig direct "$name")
    [[ -n $want ]] || die "the resolver gave no address for $name straight from the direct pod"
    for way in "${ways[@]}"; do
      got=$(capture_dig "$way" "$name")
      [[ $got == "$want" ]] || die "$way: $name gave [${got//$'\n'/ }], direct gave [${want//$'\n'/ }]"
    done
    n=$((n + 1))
  done < <(awk '$2 == "A" && NR % 500 == 1' "$work/capture/queries.txt")
  echo "  $n sampled A queries: the same addresses through every way (${ways[*]})"
  name=$(awk '$2 == "A" {print $1; exit}' "$work/capture/queries.txt")
  local -a pre
  mapfile -t pre < <(capture_prefix direct)
  if "${pre[@]}" dig +short +time=1 +tries=1 @"$CAPTURE_NAMESERVER" "$name" A >/dev/null 2>&1; then
    die "the unmarked pod got an answer from $CAPTURE_NAMESERVER: something else captures its DNS"
  fi
  echo "  the unmarked pod asking $CAPTURE_NAMESERVER (which exists nowhere) gets no answer, as it should"
}

# round_order ROUND WAY...: the ways in ROUND's order, one a line.
round_order() {
  local round=$1
  shift
  local n=$# k=$(((round - 1) / 2)) i
  local -a w=("$@") order=()
  for ((i = 0; i < n; i++)); do order+=("${w[$(((i + k) % n))]}"); done
  if ((round % 2 == 0)); then
    for ((i = n - 1; i >= 0; i--)); do echo "${order[$i]}"; done
  else
    printf '%s\n' "${order[@]}"
  fi
}

# measure_capture WAY AGENT_PID RATE ROUND: warm up, then one measured run.
# Appends to $work/capture/rows: rate way round answered seconds lost
# agent_ticks dnsperf_user_s dnsperf_sys_s noerror_pct ksoftirqd_ticks.
measure_capture() {
  local way=$1 pid=$2 rate=$3 round=$4
  local out="$work/capture/$way-$rate-$round" t0 t1
  local -a cmd
  if ((WARMUP > 0)); then
    mapfile -t cmd < <(capture_cmd "$way" "$WARMUP" "$rate")
    run_timed "$out-warmup" "${cmd[@]}"
  fi
  mapfile -t cmd < <(capture_cmd "$way" "$CAPTURE_DURATION" "$rate")
  local k0 k1
  t0=$(cpu_ticks "$pid")
  k0=$(ksoftirqd_ticks)
  run_timed -w "$CAPTURE_DURATION" "$out" "${cmd[@]}"
  t1=$(cpu_ticks "$pid")
  k1=$(ksoftirqd_ticks)
  local answered lost qps runtime noerr noerr_pct user sys
  answered=$(dnsperf_field "$out.txt" "Queries completed")
  lost=$(dnsperf_field "$out.txt" "Queries lost")
  qps=$(dnsperf_field "$out.txt" "Queries per second")
  runtime=$(dnsperf_field "$out.txt" "Run time (s)")
  noerr=$(awk '/Response codes:/ {for (i = 1; i <= NF; i++) if ($i == "NOERROR") {print $(i + 1); exit}}' "$out.txt")
  [[ -n $answered && $answered -gt 0 ]] || die "$way answered nothing: $(cat "$out.txt" "$out.err")"
  noerr_pct=$(awk -v n="${noerr:-0}" -v a="$answered" 'BEGIN {printf "%.2f", 100 * n / a}')
  read -r user sys <"$out.cpu"
  echo "$rate $way $round $answered $runtime $lost $((t1 - t0)) $user $sys $noerr_pct $((k1 - k0))" >>"$work/capture/rows"
  awk -v rate="$rate" -v way="$way" -v round="$round" -v qps="$qps" -v ans="$answered" -v lost="$lost" -v ne="$noerr_pct" \
    -v t="$((t1 - t0))" -v k="$((k1 - k0))" -v hz="$CLK_TCK" -v u="$user" -v s="$sys" 'BEGIN {
      printf "  %-5s %-8s round %d: %7.0f qps, %s lost, %s%% NOERROR; us/query: agent %.2f, dnsperf %.2f+%.2f (user+sys), ksoftirqd %.2f\n",
        rate, way, round, qps, lost, ne, t / hz / ans * 1e6, u / ans * 1e6, s / ans * 1e6, k / hz / ans * 1e6 }'
}

# capture_report RATE: per-way totals and the median per-round ratios to
# direct, from $work/capture/rows.
capture_report() {
  awk -v rate="$1" -v hz="$CLK_TCK" -v ways="${ways[*]}" -v tq="$TARGET_CAPTURE_QPS_RATIO" '
    function median(a, n,   i, j, t) {
      for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function pooled(k, w) {
      if (k == "qps") return ans[w] / secs[w]
      if (k == "agent CPU/query") return ticks[w] / hz / ans[w]
      if (k == "dnsperf CPU/query") return (du[w] + ds[w]) / ans[w]
      if (k == "dnsperf sys/query") return ds[w] / ans[w]
      return ((ticks[w] + ks[w]) / hz + du[w] + ds[w]) / ans[w]
    }
    $1 != rate { next }
    { w = $2; r = $3
      ans[w] += $4; secs[w] += $5; lost[w] += $6; ticks[w] += $7; du[w] += $8; ds[w] += $9; ks[w] += $11
      if (!(w in ne) || $10 < ne[w]) ne[w] = $10
      m["qps", w, r] = $4 / $5
      m["agent CPU/query", w, r] = $7 / hz / $4
      m["dnsperf CPU/query", w, r] = ($8 + $9) / $4
      m["dnsperf sys/query", w, r] = $9 / $4
      m["all CPU/query", w, r] = (($7 + $11) / hz + $8 + $9) / $4
      if (r > rounds) rounds = r }
    END {
      nw = split(ways, W, " ")
      printf "  %-9s %9s %10s %6s %8s %8s %16s %10s %8s %8s\n", "way", "qps", "answered", "lost", "NOERROR", "agent", "dnsperf usr+sys", "ksoftirqd", "all", "(us/q)"
      for (i = 1; i <= nw; i++) {
        w = W[i]
        printf "  %-9s %9.0f %10d %6d %7s%% %8.2f %7.2f + %6.2f %10.2f %8.2f\n", w, ans[w] / secs[w], ans[w], lost[w], ne[w],
          ticks[w] / hz / ans[w] * 1e6, du[w] / ans[w] * 1e6, ds[w] / ans[w] * 1e6, ks[w] / hz / ans[w] * 1e6,
          ((ticks[w] + ks[w]) / hz + du[w] + ds[w]) / ans[w] * 1e6
      }
      nm = split("qps|agent CPU/query|dnsperf CPU/query|dnsperf sys/query|all CPU/query", M, "|")
      printf "\n  ratios to direct: median of %d round(s), pooled (all rounds summed), [each round]\n", rounds
      for (i = 1; i <= nw; i++) {
        w = W[i]
        if (w == "direct") continue
        for (k = 1; k <= nm; k++) {
          per = ""; n = 0
          for (r = 1; r <= rounds; r++) {
            if (!((M[k], w, r) in m) || !((M[k], "direct", r) in m) || m[M[k], "direct", r] == 0) continue
            v[++n] = m[M[k], w, r] / m[M[k], "direct", r]
            per = per sprintf(" %.3f", v[n])
          }
          med = median(v, n)
          note = ""
          if (w == "redirect" && M[k] == "qps" && rate == "max")
            note = sprintf("   target >= %s: %s", tq, (med >= tq ? "met" : "NOT met"))
          printf "  %-20s %-18s %6.3f %6.3f  [%s ]%s\n", (k == 1 ? w " / direct" : ""), M[k], med,
            pooled(M[k], w) / pooled(M[k], "direct"), per, note
        }
      }
    }' "$work/capture/rows"
}

# bpf_prog_stats IDS...: "id name run_time_ns run_cnt" per program.
bpf_prog_stats() {
  local id
  for id in "$@"; do
    bpftool prog show id "$id" | awk -v id="$id" 'NR == 1 {
      name = "?"; ns = 0; cnt = 0
      for (i = 1; i < NF; i++) { if ($i == "name") name = $(i + 1); if ($i == "run_time_ns") ns = $(i + 1); if ($i == "run_cnt") cnt = $(i + 1) }
      print id, name, ns, cnt }'
  done
}

# capture_bpf_stats AGENT_PID: run time of each program per query, from the
# kernel's own accounting (kernel.bpf_stats_enabled, which adds two clock
# reads per run: a pass of its own, after the measured ones).
capture_bpf_stats() {
  local secs=$((CAPTURE_DURATION < 10 ? CAPTURE_DURATION : 10)) way answered out
  local -a ids cmd
  mapfile -t ids < <(bpftool cgroup show "$cap_cg" | awk '$1 ~ /^[0-9]+$/ {print $1}')
  ((${#ids[@]} > 0)) || { echo "  no programs attached to $cap_cg?"; return 0; }
  say "Where the time goes: BPF program run time (sysctl kernel.bpf_stats_enabled=1, a ${secs}s full-speed pass per way)"
  cap_stats_old=$(sysctl -n kernel.bpf_stats_enabled)
  sysctl -qw kernel.bpf_stats_enabled=1
  for way in "${ways[@]}"; do
    out=$work/capture/stats-$way
    mapfile -t cmd < <(capture_cmd "$way" "$secs" max)
    bpf_prog_stats "${ids[@]}" >"$out.before"
    run_timed -w "$secs" "$out" "${cmd[@]}"
    bpf_prog_stats "${ids[@]}" >"$out.after"
    answered=$(dnsperf_field "$out.txt" "Queries completed")
    awk -v way="$way" -v ans="$answered" -v cpu="$(cat "$out.cpu")" '
      FILENAME == ARGV[1] { ns0[$1] = $3; c0[$1] = $4; next }
      { c = $4 - c0[$1]; ns = $3 - ns0[$1]
        if (c > 0) { printf "  %-9s %-16s %6.2f runs/query %7.0f ns/run %7.0f ns/query\n", way, $2, c / ans, ns / c, ns / ans; tot += ns; any = 1 } }
      END { split(cpu, u, " ")
            if (!any) printf "  %-9s no program ran (%d queries)\n", way, ans
            else printf "  %-9s all programs: %.0f ns/query of dnsperf sys %.0f ns/query (%d queries)\n", way, tot / ans, u[2] / ans * 1e9, ans }' \
      "$out.before" "$out.after"
  done
  sysctl -qw "kernel.bpf_stats_enabled=$cap_stats_old"
  cap_stats_old=""
  echo "  (program names are cut to 15 characters by the kernel; ns/run includes the two clock reads bpf_stats adds;"
  echo "  dnsperf sends with sendto on unconnected sockets and reads with recvfrom(..., NULL, NULL): sendmsg4 runs"
  echo "  once per query, recvmsg4 never, as the counts above show)"
}

# capture_profile AGENT_PID: where dnsperf's CPU and the agent's go in each
# way (perf record, cpu-clock, kernel included), a separate pass per way. The
# agent's share matters too: its replies cross the veth into the pod in its
# own context, through the pod's conntrack in the iptables way.
capture_profile() {
  local apid=$1 secs=$((CAPTURE_DURATION < 10 ? CAPTURE_DURATION : 10)) way out ppid ok
  local -a pre args
  local pick="__x64_sys_sendto __x64_sys_sendmmsg udp_sendmsg __cgroup_bpf_run_filter_sock_addr bpf_sk_storage_get
    nf_hook_slow nf_nat_ipv4_local_fn nf_nat_ipv4_in nf_conntrack_in ip_route_me_harder ip_route_output_flow
    veth_xmit net_rx_action __x64_sys_recvfrom __x64_sys_recvmmsg __x64_sys_poll __x64_sys_epoll_pwait"
  say "Profile: perf record -e cpu-clock of dnsperf and of the agent, a ${secs}s full-speed pass per way"
  for way in "${ways[@]}"; do
    out=$work/capture/profile-$way
    mapfile -t pre < <(capture_prefix "$way")
    mapfile -t args < <(dnsperf_args 53 "$secs" max "$(capture_target "$way")" "$work/capture/queries.txt")
    perf record -q -e cpu-clock -F 4999 -g -p "$apid" -o "$out-agent.data" -- sleep "$((secs + 1))" 2>"$out-agent.err" &
    ppid=$!
    pids+=("$ppid")
    sleep 0.5
    run_timed "$out" "${pre[@]}" perf record -q -e cpu-clock -F 4999 -g -o "$out.data" -- "${args[@]}"
    ok=1
    wait "$ppid" || ok=0
    forget "$ppid"
    echo "  $way: inclusive share of samples, selected kernel paths (dnsperf | agent):"
    perf report -i "$out.data" --children --sort symbol --stdio -g none 2>/dev/null >"$out.report" || true
    if ((ok)); then
      perf report -i "$out-agent.data" --children --sort symbol --stdio -g none 2>/dev/null >"$out-agent.report" || true
    else
      echo "    (perf record of the agent failed: $(tail -1 "$out-agent.err"))"
      : >"$out-agent.report"
    fi
    awk -v pick="$pick" 'BEGIN { n = split(pick, p, " "); for (i = 1; i <= n; i++) want[p[i]] = 1 }
      /^ +[0-9]/ && ($4 in want || $4 ~ /^bpf_prog_.*ztdns|^nf_nat_/) {
        if (!($4 in seen)) { seen[$4] = 1; order[++k] = $4 }
        v[FILENAME == ARGV[1] ? "d" : "a", $4] = $1 }
      END { for (i = 1; i <= k; i++) { s = order[i]
              printf "    %7s | %7s  %s\n", (("d", s) in v ? v["d", s] : "-"), (("a", s) in v ? v["a", s] : "-"), s } }' \
      "$out.report" "$out-agent.report"
  done
}

bench_capture() {
  local t
  for t in dnsperf dig ip nsenter iptables bpftool mount sysctl; do
    command -v "$t" >/dev/null || die "$t not found (apt-get install dnsperf bind9-dnsutils iproute2 util-linux iptables bpftool)"
  done
  [[ -x $BIN ]] || die "$BIN not built (make build)"
  local -a ways
  read -ra ways <<<"$CAPTURE_WAYS"
  local w seen_direct=0
  for w in "${ways[@]}"; do
    case $w in redirect | iptables | bare | marked) ;; direct) seen_direct=1 ;; *) die "CAPTURE_WAYS: unknown way '$w' (redirect, direct, iptables, bare, marked)" ;; esac
  done
  ((seen_direct)) || die "CAPTURE_WAYS must include direct: the ratios are to it"

  say "Capture: dnsperf in a pod, through the eBPF redirect vs. straight to the resolver vs. an iptables DNAT"
  echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) (others' work adds noise), kernel $(uname -r), $(iptables -V)"
  local dir=$work/capture
  mkdir -p "$dir"
  local gen=(go run ./bench/namegen -out "$dir" -services "$SERVICES" -entries "$ENTRIES" -queries "$QUERIES" -aaaa-every "$AAAA_EVERY")
  "${gen[@]}" || die "bench/namegen failed"
  : >"$dir/resolv.conf" # no upstream or search domain from the machine

  capture_topology "$dir"

  # The upstream is the node namespace's own loopback, where nothing listens:
  # every query in the file is answered from the table.
  # (--pod-qps=0: one dnsperf pod at full speed is what is measured.)
  local agent=("$BIN" agent --config-dir "$dir/manifests" --cgroup "$cap_cg" --bpffs "$cap_bpffs/ztdns"
    --socket "$dir/ztdns.sock" --resolv-conf "$dir/resolv.conf" --upstream 127.0.0.1:53 --log-level warn --pod-qps=0)
  local agent_env=(env)
  [[ -n $ZTDNS_GOMAXPROCS ]] && agent_env+=("GOMAXPROCS=$ZTDNS_GOMAXPROCS")
  local enter=(nsenter --net="/run/netns/$cap_node")
  "${enter[@]}" "${agent_env[@]}" "${agent[@]}" >"$dir/agent.log" 2>&1 &
  local apid=$!
  pids+=("$apid")
  local last i
  last=$(printf 'host-%05d.bench.internal' $((ENTRIES - 1)))
  for i in $(seq 600); do
    kill -0 "$apid" 2>/dev/null || die "the agent exited: $(tail -5 "$dir/agent.log")"
    [[ -S $dir/ztdns.sock && -n $(capture_dig bare "$last") ]] && break
    ((i < 600)) || die "the agent did not answer $last within 60 s"
    sleep 0.1
  done
  local mark=("$BIN" capture add --socket "$dir/ztdns.sock" --netns "/run/netns/${cap_pod[redirect]}" --namespace ns-000 --name redirect)
  "${mark[@]}" >/dev/null

  say "Topology"
  echo "  node netns $cap_node: the agent (pid $apid), resolver $CAPTURE_RESOLVER:53; programs on cgroup $cap_cg"
  echo "  pods (one veth each to the node, 198.51.100.0/24): ${cap_pod[redirect]} (marked),"
  echo "  ${cap_pod[direct]} (unmarked), ${cap_pod[iptables]} (unmarked, DNAT rules below);"
  echo "  the pods' nameserver $CAPTURE_NAMESERVER exists nowhere"
  nsenter --net="/run/netns/${cap_pod[iptables]}" iptables -t nat -S OUTPUT | sed 's/^/  iptables pod: /'

  say "Same answers every way?"
  capture_check

  local passes=(max) rate
  for rate in $RATES; do passes+=("$rate"); done

  say "Commands (in $work, removed on exit unless KEEP=1)"
  cmdline "${gen[@]}"
  cmdline "${enter[@]}" "${agent_env[@]}" "${agent[@]}"
  cmdline "${mark[@]}"
  local proto
  for proto in udp tcp; do
    cmdline nsenter --net="/run/netns/${cap_pod[iptables]}" iptables -t nat -A OUTPUT -p "$proto" --dport 53 -j DNAT --to-destination "$CAPTURE_RESOLVER:53"
  done
  local -a args
  for rate in "${passes[@]}"; do
    for w in "${ways[@]}"; do
      mapfile -t args < <(capture_cmd "$w" "$CAPTURE_DURATION" "$rate")
      printf '  %-8s' "$w:"
      cmdline "${args[@]}"
    done
  done
  echo "  (each after a ${WARMUP}s warm-up with -l $WARMUP; agent CPU = utime+stime of /proc/$apid/stat around the run;"
  echo "  dnsperf CPU = utime and stime of its /proc/PID/stat at the end of its -l seconds, before it spins"
  echo "  waiting for lost queries to time out; ksoftirqd = all its threads' utime+stime around the run."
  echo "  dnsperf sends with sendto on $CLIENTS unconnected UDP sockets, so cgroup/sendmsg4 runs once per query,"
  echo "  and connect4 never; it reads with recvfrom without an address, so recvmsg4 never runs)"

  local round
  say "Load: ${CAPTURE_DURATION}s per way, pass and round; $CAPTURE_ROUNDS round(s) in turning order"
  echo "  (round 2k+1 rotates the ways by k, round 2k+2 runs that order backwards: over each pair of rounds every"
  echo "  way has the same mean position, so a load that drifts steadily favours none; $((2 * ${#ways[@]})) rounds put"
  echo "  every way in every position twice)"
  : >"$dir/rows"
  for rate in "${passes[@]}"; do
    for round in $(seq "$CAPTURE_ROUNDS"); do
      for w in $(round_order "$round" "${ways[@]}"); do
        measure_capture "$w" "$apid" "$rate" "$round"
      done
    done
  done

  for rate in "${passes[@]}"; do
    if [[ $rate == max ]]; then say "Results at full speed (issue 3's target)"; else say "Results at a fixed $rate queries/s"; fi
    capture_report "$rate"
  done
  echo
  echo "  (us/q = microseconds of CPU per answered query. dnsperf's sys time holds the sending path: the sendmsg4"
  echo "  program, or conntrack and NAT, and the veth hop into the node namespace up to the agent's socket; the"
  echo "  agent's holds its replies' way into the pod. Receive work the kernel defers to ksoftirqd is charged to"
  echo "  neither: that column (every ksoftirqd thread, so others' traffic too) and \"all\" = the three together)"

  say "The redirect pod's counters (ztdns pods)"
  "$BIN" pods --socket "$dir/ztdns.sock" | sed 's/^/  /'

  if [[ $BPF_STATS != 0 ]]; then capture_bpf_stats; fi
  if [[ $PROFILE == perf ]]; then
    command -v perf >/dev/null || die "PROFILE=perf needs perf"
    capture_profile "$apid"
  fi
}

case $mode in
resolver) bench_resolver ;;
capture)
  is_root || die "capture needs root"
  bench_capture
  ;;
all)
  bench_resolver
  if is_root; then bench_capture; else echo "bench: capture needs root; skipped" >&2; fi
  ;;
esac
