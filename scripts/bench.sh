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
# capture   dnsperf from inside a marked pod through the eBPF redirect vs.
#           straight to the resolver vs. an iptables DNAT in the pod (issue 3;
#           not built yet).
#
# Settings (environment):
#   DURATION=20       seconds of measured load per server, pass and round
#   WARMUP=2          seconds of unmeasured load before each measurement
#   ROUNDS=1          rounds (ztdns then unbound, each pass); figures are totals
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
#   PROFILE=          perf: perf record the agent during a full-speed run (root);
#                     go: run the agent in-process under pprof (bench/agentprof,
#                     no root) and print CPU and heap profiles
#   KEEP=0            1: keep the work directory (manifests, configs, outputs)
#   BIN=bin/ztdns
#
# Everything runs on 127.0.0.1; nothing is forwarded off the machine (ztdns's
# upstream is the local unbound, whose root zone is static).
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

# dnsperf_args PORT SECONDS RATE: the command line, one word a line; RATE
# "max" sends as fast as answers come back.
dnsperf_args() {
  local port=$1 secs=$2 rate=$3
  local a=(dnsperf -s 127.0.0.1 -p "$port" -d "$work/queries.txt" -l "$secs" -c "$CLIENTS" -q "$OUTSTANDING" -T "$THREADS")
  [[ $rate != max ]] && a+=(-Q "$rate")
  # shellcheck disable=SC2206 # split on purpose: a list of flags
  [[ -n $DNSPERF_FLAGS ]] && a+=($DNSPERF_FLAGS)
  printf '%s\n' "${a[@]}"
}

# run_dnsperf PORT SECONDS RATE OUT: one run; OUT.txt is dnsperf's report,
# OUT.time its own user and system CPU seconds. dnsperf runs in the background
# and the shell waits for it: a foreground dnsperf would swallow Ctrl-C (it
# stops and reports on SIGINT) and the script would carry on.
run_dnsperf() {
  local port=$1 secs=$2 rate=$3 out=$4
  local -a args
  mapfile -t args < <(dnsperf_args "$port" "$secs" "$rate")
  times >"$out.t0" # children's CPU so far (no subshell: it must be this shell's)
  "${args[@]}" >"$out.txt" 2>"$out.err" &
  local pid=$!
  pids+=("$pid")
  wait "$pid" || die "dnsperf failed: $(cat "$out.err" "$out.txt" | tail -5)"
  times >"$out.t1"
  forget "$pid"
  # times prints "0m1.234s 0m0.567s" lines; the second is the children's.
  awk 'FNR == 2 {split($1, u, /[ms]/); split($2, s, /[ms]/); t[FILENAME] = u[1] * 60 + u[2] + s[1] * 60 + s[2]}
       END {print t[ARGV[2]] - t[ARGV[1]]}' "$out.t0" "$out.t1" >"$out.time"
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

  local agent=("$BIN" agent --capture=false --config-dir "$work/manifests" --listen "127.0.0.1:$ZTDNS_PORT"
    --upstream "127.0.0.1:$UNBOUND_PORT" --resolv-conf "$work/resolv.conf" --socket "$work/ztdns.sock" --log-level warn)
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

bench_capture() {
  say "Capture: through the eBPF redirect vs. direct vs. iptables DNAT"
  echo "  not built yet (issue 3): skipped"
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
