package redirect

// The programs and maps live in bpf/; bpf2go compiles them and generates
// ztdns_bpfel.go (loaders and the Go twins of every struct in bpf/ztdns.h)
// next to the committed ztdns_bpfel.o. TestGeneratedObjectsMatchSources
// re-runs this exact line and fails when the committed files are stale.
//
// -target bpfel: the programs use no architecture-specific kernel layouts,
// so one little-endian object serves amd64 and arm64 alike.
// -nostdlibinc: every header comes from bpf/ and bpf/include/ (clang's own
// stdbool.h aside), so any host generates the same bytes with the same clang.
//go:generate go tool bpf2go -tags linux -target bpfel -type pod_key -type pod_info -type nameserver_key -type nameserver -type endpoint -type socket_destinations -type redirect_config -type capture_prefix -type active_config -type agent_heartbeat -type node_counters -type pod_socket_count ztdns ../../bpf/ztdns.c -- -nostdlibinc -I../../bpf -I../../bpf/include -Wall -Werror
