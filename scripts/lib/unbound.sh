# shellcheck shell=bash
# unbound.sh is sourced by the demos: an unbound that plays the cluster's
# nameserver, knows one external name and answers NXDOMAIN for the rest, so
# nothing is ever asked of the machine's own resolver.

# write_unbound_conf FILE DIR INTERFACE PORT [SERVER-LINE...] writes a config
# that serves on INTERFACE:PORT, keeps its files in DIR and runs in the
# foreground as the current user; extra lines go in the server section.
write_unbound_conf() {
	local file="$1" dir="$2" iface="$3" port="$4"
	shift 4
	{
		printf 'server:\n'
		printf '  interface: %s@%s\n  port: %s\n' "$iface" "$port" "$port"
		printf '  %s\n' "$@"
		printf '  username: ""\n  chroot: ""\n  directory: "%s"\n  pidfile: ""\n' "$dir"
		printf '  use-syslog: no\n  do-daemonize: no\n'
		printf '  local-zone: "." static\n'
		printf '  local-data: "example.com. 60 IN A 203.0.113.10"\n'
	} >"$file"
}
