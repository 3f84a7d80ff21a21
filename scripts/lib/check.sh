# shellcheck shell=bash
# check.sh is sourced by the demos: wait for the agent's first table, and
# fail the demo when an answer is not what it goes on to claim.

# wait_ready BIN SOCKET PID waits up to 60 s for the agent PID, on SOCKET,
# to be ready, its first table served (`ztdns status`: Ready: yes), and
# fails, showing the status, if it is not or has exited. Its control socket
# answers before (`ztdns pods`; `ztdns table` says "no table yet"), and so
# does the resolver, with SERVFAIL.
wait_ready() {
	local bin="$1" sock="$2" pid="$3"
	for _ in $(seq 600); do
		"$bin" status --socket "$sock" -o yaml 2>/dev/null | grep -qx 'ready: true' && return 0
		kill -0 "$pid" 2>/dev/null || fail "the agent exited"
		sleep 0.1
	done
	"$bin" status --socket "$sock" >&2 || true
	fail "the agent is not ready after 60 s"
}

# fail MESSAGE ends the demo, saying what was wrong.
fail() {
	printf '\033[31mdemo failed: %s\033[0m\n' "$1" >&2
	exit 1
}

# expect WHAT GOT PATTERN fails the demo, saying what was wrong, unless GOT
# is matched whole by the extended regular expression PATTERN.
expect() {
	local what="$1" got="$2" pattern="$3"
	[[ $got =~ ^($pattern)$ ]] || fail "$what: got \"$got\", want $pattern"
}

# VIP matches an address auto-allocated from 240.240.0.0/16.
VIP='240\.240\.[0-9]+\.[0-9]+'
