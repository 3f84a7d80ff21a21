//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * ztdns: bring the DNS traffic of marked pods to the node resolver.
 *
 * cgroup sock_addr programs, attached once at a cgroup v2 directory:
 *  - connect4/6 (UDP and TCP) and sendmsg4/6 (unconnected UDP) of a marked
 *    pod rewrite a destination on port 53 to the resolver endpoint of the
 *    slot that destination holds in the pod's nameservers (learning it into
 *    a slot when new, for the resolver to forward to), and record it on the
 *    socket (a slot learned by a UDP connect starts unconfirmed: see
 *    learn_slot). The resolver endpoints listen on a port other than 53 by
 *    default: these hooks run before the pod's netfilter rules, and a
 *    rewritten query must not match istio-cni's in-pod DNS capture (nat
 *    OUTPUT, destination port 53, REDIRECT to ztunnel's 15053), or ztunnel
 *    would answer a pod ztdns captured. A destination on the pod's own
 *    loopback, the unspecified address, an IPv6 link-local address, a
 *    multicast group or the limited broadcast is left alone (is_local), and so are a DNS server's replies
 *    (from_dns_server) and a send to the peer of a socket connected
 *    before the pod was captured (to_own_peer4/6).
 *    When the agent lists the nameservers to capture (capture_only), a
 *    destination outside them is left alone too (is_listed);
 *  - recvmsg4/6 (UDP replies) and getpeername4/6 (connected sockets) rewrite
 *    a source / peer that is a resolver slot address back to what that
 *    socket addressed through the slot, so the stub resolver accepts the
 *    reply as coming from the server it asked, and keep that slot busy
 *    (a reply read asking its source also confirms the slot).
 *
 * A cgroup sock program, attached with them:
 *  - sock_release takes a closed socket that held a record off its pod's
 *    count (struct pod_socket_count), which bounds the records a pod can
 *    make the agent pay for.
 *
 * The map layouts are in ztdns.h.
 */
#include <stdbool.h>

/* Every header below is in the repository (bpf/include): see its README. */
#include "ztdns_uapi.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ztdns.h"

/* errno values returned by map helpers; errno.h is not available here. */
#define ZTDNS_EEXIST 17

/* A cgroup sock_addr program returns 1 to let the syscall proceed (with the
 * address as the program left it). recvmsg and getpeername programs must
 * return 1, and so must sock_release. ztdns never blocks a syscall. */
#define ZTDNS_ALLOW 1

#define DNS_PORT 53

char _license[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ZTDNS_MAX_PODS);
	/* An update replaces the element instead of copying over it, so the
	 * agent re-marking a pod never tears what a program reads. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pod_key);
	__type(value, struct pod_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ZTDNS_MAX_NAMESERVERS);
	/* Same reason: a slot given to another server is replaced whole,
	 * never half-overwritten while another CPU or the resolver reads it. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct nameserver_key);
	__type(value, struct nameserver);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nameservers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ZTDNS_CONFIG_COPIES);
	__type(key, __u32);
	__type(value, struct redirect_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct active_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config_index SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	/* The agent mmaps this map to store the heartbeat atomically. */
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct agent_heartbeat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} heartbeat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	/* Required for socket storage: one element per socket, allocated
	 * on the socket's first redirect and freed with the socket. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct socket_destinations);
	/* Pinned so that replies to queries sent before an agent restart
	 * are still restored by the programs that replace these. */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ZTDNS_MAX_POD_SOCKETS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pod_key);
	__type(value, struct pod_socket_count);
	/* Pinned: the sockets it counts outlive the agent, and the programs
	 * that replace these take them off as they close. */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pod_sockets SEC(".maps");

/* Atomic because a program can be preempted by another run of itself on the
 * same CPU (PREEMPT kernels), and pod_info is shared by all CPUs. */
#define COUNT(ptr, field)                                  \
	do {                                               \
		if (ptr)                                   \
			__sync_fetch_and_add(&(ptr)->field, 1); \
	} while (0)

static __always_inline __u32 *words(const struct endpoint *ep)
{
	return (__u32 *)ep->addr;
}

/* ::ffff:a.b.c.d, how an AF_INET6 socket (musl with any IPv6 nameserver)
 * addresses an IPv4 host. */
static __always_inline bool is_v4_mapped(__u32 w0, __u32 w1, __u32 w2)
{
	return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff);
}

static __always_inline void set_v4(struct endpoint *ep, __u32 ip4, __u16 port)
{
	__u32 *w = words(ep);

	w[0] = ip4;
	w[1] = 0;
	w[2] = 0;
	w[3] = 0;
	ep->port = port;
	ep->family = ZTDNS_AF_INET;
	ep->flags = 0;
}

static __always_inline void set_v6(struct endpoint *ep, __u32 w0, __u32 w1,
				   __u32 w2, __u32 w3, __u16 port)
{
	__u32 *w = words(ep);

	w[0] = w0;
	w[1] = w1;
	w[2] = w2;
	w[3] = w3;
	ep->port = port;
	ep->family = ZTDNS_AF_INET6;
	ep->flags = 0;
}

static __always_inline bool same_addr(const struct endpoint *a,
				      const struct endpoint *b)
{
	const __u32 *x = words(a), *y = words(b);

	return a->family == b->family && x[0] == y[0] && x[1] == y[1] &&
	       x[2] == y[2] && x[3] == y[3];
}

static __always_inline bool same_endpoint(const struct endpoint *a,
					  const struct endpoint *b)
{
	return same_addr(a, b) && a->port == b->port;
}

/* The config entry config_index names (see ztdns.h). Each program run
 * calls this once and reads only the entry it returns. */
static __always_inline struct redirect_config *get_config(void)
{
	__u32 zero = 0, active;
	struct active_config *ac;

	ac = bpf_map_lookup_elem(&config_index, &zero);
	if (!ac)
		return NULL;
	active = *(volatile __u32 *)&ac->index;
	return bpf_map_lookup_elem(&config, &active);
}

static __always_inline struct node_counters *get_counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&counters, &zero);
}

static __always_inline struct pod_info *marked_pod(struct bpf_sock_addr *ctx,
						   __u64 *cookie)
{
	struct pod_key key = {};

	key.netns_cookie = bpf_get_netns_cookie(ctx);
	*cookie = key.netns_cookie;
	return bpf_map_lookup_elem(&pods, &key);
}

/* Fail open: redirect only while the agent proves it is alive. A heartbeat
 * that was never written (0) or is older than stale_after_ns means the
 * resolver may be gone, and a redirect would blackhole the pod's DNS. */
static __always_inline bool heartbeat_fresh(const struct redirect_config *cfg,
					    __u64 now)
{
	__u32 zero = 0;
	struct agent_heartbeat *hb;
	__u64 beat;

	hb = bpf_map_lookup_elem(&heartbeat, &zero);
	if (!hb)
		return false;
	/* One 64-bit load, paired with the agent's atomic store. */
	beat = *(volatile __u64 *)&hb->mono_ns;
	if (beat == 0)
		return false;
	/* The agent read the clock just before this CPU did. */
	if (now <= beat)
		return true;
	return now - beat <= cfg->stale_after_ns;
}

/* A query addressed to a resolver endpoint itself is already where it should
 * go. Address and port both count: the resolver's slots listen on a port
 * other than 53 (so that istio-cni's in-pod rules, which match destination
 * port 53, never see a redirected query), and a pod that lists the
 * resolver's address in its resolv.conf sends to port 53 of it, which is
 * redirected like any other nameserver. */
static __always_inline bool is_resolver(const struct redirect_config *cfg,
					const struct endpoint *dst)
{
	for (int i = 0; i < ZTDNS_SLOTS; i++) {
		if (same_endpoint(&cfg->resolver4[i], dst) ||
		    same_endpoint(&cfg->resolver6[i], dst))
			return true;
	}
	return false;
}

/* A destination on the pod's own host: 127.0.0.0/8, 0.0.0.0, ::1 or ::
 * (IPv4-mapped forms arrive here as IPv4: redirect6 unmaps them), or on its
 * own link: fe80::/10, and the addresses of many hosts: multicast
 * (224.0.0.0/4, ff00::/8) and the limited broadcast 255.255.255.255. Such
 * a query is for a server in the pod's own network namespace (a local
 * cache or DNS sidecar), its link neighbour, or whoever hears it on the
 * pod's link, and is never redirected nor learned into a slot:
 *  - the agent runs in the node's network namespace (hostNetwork), so a
 *    loopback nameserver learned here would have it forward the pod's
 *    query to the NODE's loopback (systemd-resolved, a node-local cache),
 *    with the node as the source, and the pod would get the node's server
 *    instead of its own;
 *  - a link-local one cannot be forwarded to at all: a slot holds no scope
 *    id, and the pod's link is none of the node's. Nor would a stub that
 *    names it with its scope accept a reply restored without one (musl
 *    compares the whole sockaddr_in6);
 *  - a multicast or broadcast query stays on the pod's link without
 *    ztdns; forwarded, it would leave from the node, onto the node's
 *    network (the resolver turns SO_BROADCAST off, which covers only a
 *    broadcast; a subnet-directed one is not known here and is refused
 *    there);
 *  - istio-cni's in-pod DNS capture leaves loopback alone too (UDP only
 *    `! -o lo`, TCP only `! -d 127.0.0.1/32` / `::1/128`: TCP to another
 *    127/8 address is the one case it sends to ztunnel and we do not).
 * IPv4 169.254.0.0/16 is captured: NodeLocal DNSCache listens there, on
 * the node, where the agent reaches it as the pod would. */
static __always_inline bool is_local(const struct endpoint *dst)
{
	const __u32 *w = words(dst);

	if (dst->family == ZTDNS_AF_INET)
		return (w[0] & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000) ||
		       w[0] == 0 || w[0] == 0xffffffff ||
		       (w[0] & bpf_htonl(0xf0000000)) == bpf_htonl(0xe0000000);
	if ((w[0] & bpf_htonl(0xffc00000)) == bpf_htonl(0xfe800000) ||
	    (w[0] & bpf_htonl(0xff000000)) == bpf_htonl(0xff000000))
		return true;
	return w[0] == 0 && w[1] == 0 && w[2] == 0 &&
	       (w[3] == 0 || w[3] == bpf_htonl(1));
}

/* Whether dst lies inside p: the prefix's first len bits equal dst's. Both
 * addresses are compared as four 32-bit words in network order, each masked
 * to the bits of the prefix it holds. The loop has a constant bound, so
 * clang unrolls it and the verifier sees straight-line code. */
static __always_inline bool in_prefix(const struct capture_prefix *p,
				      const struct endpoint *dst)
{
	const __u32 *a = words(dst), *b = (const __u32 *)p->addr;
	int bits = p->len;

	if (p->family != dst->family)
		return false;
	for (int i = 0; i < 4; i++) {
		__u32 mask;

		if (bits <= 0)
			break;
		mask = bits >= 32 ? 0xffffffff : bpf_htonl(~0U << (32 - bits));
		if ((a[i] ^ b[i]) & mask)
			return false;
		bits -= 32;
	}
	return true;
}

/* Whether dst is a nameserver the agent was told to capture: any
 * destination when capture_only is empty (its first entry unused), else one
 * inside a listed prefix. The list ends at its first unused entry; both
 * loops are bounded by constants, at most ZTDNS_MAX_CAPTURE_PREFIXES * 4
 * word compares, which the verifier accepts as is. */
static __always_inline bool is_listed(const struct redirect_config *cfg,
				      const struct endpoint *dst)
{
	if (cfg->capture_only[0].family == 0)
		return true;
	for (int i = 0; i < ZTDNS_MAX_CAPTURE_PREFIXES; i++) {
		const struct capture_prefix *p = &cfg->capture_only[i];

		if (p->family == 0)
			break;
		if (in_prefix(p, dst))
			return true;
	}
	return false;
}

/* Marks a slot busy as of now, at most once per ZTDNS_SLOT_TOUCH_NS: a write
 * per query would bounce the value's cache line between CPUs, and idleness
 * is judged in tens of seconds. */
static __always_inline void touch_slot(struct nameserver *ns, __u64 now)
{
	if (now > ns->last_used_ns + ZTDNS_SLOT_TOUCH_NS)
		ns->last_used_ns = now;
}

/* Clears ZTDNS_NS_UNCONFIRMED: real DNS traffic went through the slot. Only
 * ever cleared in place (a slot is learned with its flags whole), and only
 * written when set, so a confirmed slot's value is not written again. */
static __always_inline void confirm_slot(struct nameserver *ns)
{
	if (ns->flags & ZTDNS_NS_UNCONFIRMED)
		ns->flags &= ~ZTDNS_NS_UNCONFIRMED;
}

/* Whether a slot may be given to another destination at now: idle for
 * ZTDNS_SLOT_IDLE_NS, or ZTDNS_SLOT_UNCONFIRMED_IDLE_NS when unconfirmed.
 * last_used_ns may be a hair ahead of now when another CPU wrote it: not
 * idle then. */
static __always_inline bool slot_idle(__u64 last, __u32 flags, __u64 now)
{
	if (last >= now)
		return false;
	if (flags & ZTDNS_NS_UNCONFIRMED)
		return now - last > ZTDNS_SLOT_UNCONFIRMED_IDLE_NS;
	return now - last > ZTDNS_SLOT_IDLE_NS;
}

/* Returns the slot that holds dst for this network namespace, learning dst
 * into a free or idle slot when it is new; -1 when every slot is busy with
 * another destination or the map refused. confirm: this use of dst is real
 * DNS traffic (a send naming it, a TCP connect), not only a UDP connect; a
 * slot learned without it starts unconfirmed (ZTDNS_NS_UNCONFIRMED).
 *
 * A new destination takes a free slot, else an idle one (slot_idle),
 * unconfirmed before confirmed, the longest idle first. A busy slot is
 * never taken: the resolver would forward the queries in flight through it
 * to the wrong server. A destination that finds every slot busy is left
 * alone (not redirected).
 *
 * Concurrent first queries of one pod (glibc's A and AAAA, musl's parallel
 * sends) race for slots: BPF_NOEXIST lets exactly one insert into a free
 * slot win, the loser scans again. A replaced idle slot is scanned again
 * too, in case another CPU replaced it at the same time. Every round that
 * does not return turns a free or idle slot into a busy one, so
 * 2 * ZTDNS_SLOTS + 1 rounds always end with dst found or every slot busy. */
static __always_inline int learn_slot(__u64 cookie, const struct endpoint *dst,
				      __u64 now, bool confirm,
				      struct node_counters *cnt)
{
	struct nameserver_key key = {};
	struct nameserver fresh = {};

	key.netns_cookie = cookie;
	fresh.server = *dst;
	fresh.flags = confirm ? 0 : ZTDNS_NS_UNCONFIRMED;
	fresh.last_used_ns = now;

	for (int round = 0; round < 2 * ZTDNS_SLOTS + 1; round++) {
		int free_slot = -1, idle_slot = -1;
		/* idle_slot's rank: 2 unconfirmed, 1 confirmed, 0 none. */
		int idle_rank = 0;
		__u64 idle_since = now;

		for (__u32 i = 0; i < ZTDNS_SLOTS; i++) {
			struct nameserver *ns;
			__u64 last;
			__u32 flags;
			int rank;

			key.slot = i;
			ns = bpf_map_lookup_elem(&nameservers, &key);
			if (!ns) {
				if (free_slot < 0)
					free_slot = i;
				continue;
			}
			if (same_endpoint(&ns->server, dst)) {
				touch_slot(ns, now);
				if (confirm)
					confirm_slot(ns);
				return i;
			}
			last = ns->last_used_ns;
			flags = ns->flags;
			if (!slot_idle(last, flags, now))
				continue;
			rank = flags & ZTDNS_NS_UNCONFIRMED ? 2 : 1;
			if (rank > idle_rank ||
			    (rank == idle_rank && last < idle_since)) {
				idle_slot = i;
				idle_rank = rank;
				idle_since = last;
			}
		}

		if (free_slot >= 0) {
			key.slot = free_slot;
			long err = bpf_map_update_elem(&nameservers, &key, &fresh, BPF_NOEXIST);
			if (err == 0) {
				COUNT(cnt, nameserver_learned);
				return free_slot;
			}
			if (err != -ZTDNS_EEXIST) {
				/* Map full (E2BIG) or out of memory. */
				COUNT(cnt, nameserver_failed);
				return -1;
			}
			continue;
		}
		if (idle_slot >= 0) {
			key.slot = idle_slot;
			if (bpf_map_update_elem(&nameservers, &key, &fresh, BPF_EXIST) != 0) {
				COUNT(cnt, nameserver_failed);
				return -1;
			}
			COUNT(cnt, nameserver_replaced);
			continue;
		}
		break;
	}
	COUNT(cnt, skipped_slots_full);
	return -1;
}

/* Whether the socket's record was added to its pod's count
 * (ZTDNS_SOCKET_COUNTED, kept in every slot: see there). */
static __always_inline bool counted(const struct socket_destinations *sd)
{
	return (sd->sent_to[0].flags | sd->sent_to[1].flags |
		sd->sent_to[2].flags) & ZTDNS_SOCKET_COUNTED;
}

/* The pod's count of sockets holding a record (struct pod_socket_count),
 * created at zero when it has none yet; NULL when the map refused. */
static __always_inline struct pod_socket_count *pod_sockets_of(__u64 cookie)
{
	struct pod_key key = {};
	struct pod_socket_count zero = {};
	struct pod_socket_count *held;

	key.netns_cookie = cookie;
	held = bpf_map_lookup_elem(&pod_sockets, &key);
	if (held)
		return held;
	/* BPF_NOEXIST: another CPU may have created it just now; either way
	 * the lookup below finds the one entry. */
	bpf_map_update_elem(&pod_sockets, &key, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&pod_sockets, &key);
}

/* The socket's record (struct socket_destinations), made when it has none
 * and its pod holds fewer than cfg->sockets_per_pod: the kernel charges
 * each record to the agent's memory, so a pod opening sockets without end
 * must not make the agent pay for them all (ztdns.h). NULL, counted, when
 * the socket is to be left alone: over the cap (skipped_sockets_full), or
 * no storage (socket_storage_failed).
 *
 * The pod's count (struct pod_socket_count) goes up by one exactly when
 * this run made the record. bpf_sk_storage_get with
 * BPF_SK_STORAGE_GET_F_CREATE looks the record up first and returns one
 * that exists; only then does it create one, with BPF_NOEXIST, and a run
 * that loses a race to create it gets NULL, not the record. Between the
 * lookup here and the create no other program makes this socket's record:
 * the kernel runs the connect and sendmsg programs of a socket under the
 * socket's lock (lock_sock: BPF_CGROUP_RUN_SA_PROG_LOCK, and TCP's connect
 * with the lock already held), and only they make records. So a create
 * that returns a record made it, and is counted; one that returns NULL (a
 * lost race, which that lock rules out, or no memory for the record) is
 * the storage failure it always was: the query is not redirected, and
 * goes to the pod's own nameserver around ztdns (socket_storage_failed).
 * A socket that has its record is never counted again.
 *
 * The cap is read before the add, so CPUs making records for one pod's
 * sockets at the same moment may pass it by one each; what a pod holds
 * stays within the cap plus the number of CPUs. */
static __always_inline struct socket_destinations *
socket_record(struct bpf_sock_addr *ctx, __u64 cookie,
	      const struct redirect_config *cfg, struct node_counters *cnt)
{
	struct socket_destinations *sd;
	struct pod_socket_count *held;

	sd = bpf_sk_storage_get(&sockets, ctx->sk, 0, 0);
	if (sd)
		return sd;
	held = pod_sockets_of(cookie);
	if (!held) {
		COUNT(cnt, socket_storage_failed);
		return NULL;
	}
	if (*(volatile __s64 *)&held->held >= cfg->sockets_per_pod) {
		COUNT(cnt, skipped_sockets_full);
		return NULL;
	}
	sd = bpf_sk_storage_get(&sockets, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!sd) {
		COUNT(cnt, socket_storage_failed);
		return NULL;
	}
	/* sock_release, which takes it off, runs only once every system
	 * call on the socket has returned: after this add and the mark. */
	for (int i = 0; i < ZTDNS_SLOTS; i++)
		sd->sent_to[i].flags = ZTDNS_SOCKET_COUNTED;
	__sync_fetch_and_add(&held->held, 1);
	return sd;
}

/* Records, on the socket itself, that it addressed dst through slot idx.
 * recvmsg and getpeername restore from this record only: exactly what this
 * socket sent to, whatever the pod's slots hold by the time the reply comes,
 * and nothing for a socket ztdns did not redirect (a pod that queries a
 * resolver address directly sees it unchanged). false (counted by
 * socket_record) when the socket has no record and may not make one. */
static __always_inline bool remember_destination(struct bpf_sock_addr *ctx,
						 __u64 cookie,
						 const struct redirect_config *cfg,
						 struct node_counters *cnt,
						 __u32 idx,
						 const struct endpoint *dst)
{
	struct socket_destinations *sd;
	struct endpoint ep = *dst;

	sd = socket_record(ctx, cookie, cfg, cnt);
	if (!sd)
		return false;
	barrier_var(idx);
	if (idx >= ZTDNS_SLOTS)
		return false;
	/* The mark goes with the record, whatever the slot held. */
	ep.flags = counted(sd) ? ZTDNS_SOCKET_COUNTED : 0;
	sd->sent_to[idx] = ep;
	return true;
}

/* The decision shared by connect and sendmsg: returns the resolver endpoint
 * that dst (the destination the application gave, IPv4-mapped addresses
 * already turned into IPv4) must be rewritten to, or NULL to leave the
 * socket alone. A send naming dst and a TCP connect confirm dst's slot; a
 * UDP connect does not (learn_slot). */
static __always_inline const struct endpoint *
pick_resolver(struct bpf_sock_addr *ctx, const struct endpoint *dst,
	      bool sendmsg)
{
	const struct endpoint *resolvers;
	struct pod_info *pod;
	struct node_counters *cnt;
	struct redirect_config *cfg;
	__u64 cookie, now;
	__u32 idx;
	int slot;

	pod = marked_pod(ctx, &cookie);
	if (!pod)
		return NULL;

	cfg = get_config();
	if (!cfg)
		return NULL;
	cnt = get_counters();

	if (pod->flags & ZTDNS_POD_PAUSED) {
		COUNT(cnt, skipped_paused);
		return NULL;
	}
	if (is_local(dst)) {
		COUNT(cnt, skipped_local);
		return NULL;
	}
	if (is_resolver(cfg, dst))
		return NULL;

	resolvers = dst->family == ZTDNS_AF_INET ? cfg->resolver4 : cfg->resolver6;
	if (resolvers[0].family == 0) {
		/* The agent listens on no address of this family. */
		COUNT(cnt, skipped_no_resolver);
		return NULL;
	}
	if (!is_listed(cfg, dst)) {
		/* Not a nameserver the node captures (--capture-nameservers):
		 * neither redirected nor learned, so the query leaves the pod
		 * as it would without ztdns, under the pod's own network
		 * policy, instead of being forwarded from the node's. */
		COUNT(cnt, skipped_not_listed);
		return NULL;
	}

	now = bpf_ktime_get_ns();
	if (!heartbeat_fresh(cfg, now)) {
		COUNT(cnt, skipped_stale);
		COUNT(pod, skipped_stale);
		return NULL;
	}

	slot = learn_slot(cookie, dst, now,
			  sendmsg || ctx->protocol == IPPROTO_TCP, cnt);
	if (slot < 0)
		return NULL;
	idx = slot;
	/* learn_slot returns 0..ZTDNS_SLOTS-1, and clang knows it and drops
	 * the check below; the verifier does not, and must see the bound
	 * before the index is used on the map value. */
	barrier_var(idx);
	if (idx >= ZTDNS_SLOTS)
		return NULL;
	if (resolvers[idx].family == 0) {
		COUNT(cnt, skipped_no_resolver);
		return NULL;
	}
	if (!remember_destination(ctx, cookie, cfg, cnt, idx, dst)) {
		/* Without it the reply could not be restored, and the client
		 * would drop it: better not redirect at all. */
		return NULL;
	}

	COUNT(cnt, redirected);
	COUNT(pod, redirected);
	return &resolvers[idx];
}

/* connect covers TCP and connected UDP (glibc, Go, dig); sendmsg covers
 * unconnected UDP (musl). Other protocols on port 53 are not DNS. */
static __always_inline bool is_dns_transport(struct bpf_sock_addr *ctx)
{
	return ctx->protocol == IPPROTO_UDP || ctx->protocol == IPPROTO_TCP;
}

/* A socket on local port 53 is a DNS server's: what it sends to port 53 is
 * a reply to a client that queried from port 53 (BIND's query-source port
 * 53, another server forwarding), never a query of the pod's stub resolver.
 * Redirected, the reply would reach the resolver as a query and the client
 * would never get it. Istio's in-pod rules leave such a reply alone too: it
 * belongs to the client's conntrack flow and is not NATed. A server that
 * also sends its own queries from port 53 is not captured for them. */
static __always_inline bool from_dns_server(struct bpf_sock_addr *ctx)
{
	return ctx->sk->src_port == DNS_PORT;
}

/* sendmsg only: whether a send goes to the peer its connected socket is
 * fixed to. The kernel runs the sendmsg hooks for a connected UDP socket
 * when a destination comes with the send (sendto() naming the peer), and for
 * every send of an AF_INET6 socket connected to ::ffff:a.b.c.d (udpv6_sendmsg
 * hands udp_sendmsg the peer as a sockaddr_in, even for send() and write()).
 * Such a socket was connected while it was not redirected (the pod not yet
 * marked, the heartbeat stale): it stays connected to the nameserver, and
 * the kernel delivers it nothing but datagrams from there. Redirecting the
 * send would have the resolver answer a reply the socket never receives;
 * left alone, it goes to the nameserver the socket is connected to. A socket
 * connected while redirected has the resolver as its peer, which is no
 * destination on port 53. */
static __always_inline bool to_own_peer4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	__u32 peer;

	if (sk->state != BPF_TCP_ESTABLISHED || sk->dst_port != bpf_htons(DNS_PORT))
		return false;
	/* barrier_var: each load stays in its branch. Merged into one load
	 * through a pointer chosen by the branch, it would be pointer
	 * arithmetic on the socket, which the verifier refuses. */
	if (sk->family == ZTDNS_AF_INET6) {
		if (!is_v4_mapped(sk->dst_ip6[0], sk->dst_ip6[1], sk->dst_ip6[2]))
			return false;
		peer = sk->dst_ip6[3];
		barrier_var(peer);
	} else {
		peer = sk->dst_ip4;
		barrier_var(peer);
	}
	return peer == ctx->user_ip4;
}

static __always_inline bool to_own_peer6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;

	return sk->state == BPF_TCP_ESTABLISHED &&
	       sk->dst_port == bpf_htons(DNS_PORT) &&
	       sk->dst_ip6[0] == ctx->user_ip6[0] &&
	       sk->dst_ip6[1] == ctx->user_ip6[1] &&
	       sk->dst_ip6[2] == ctx->user_ip6[2] &&
	       sk->dst_ip6[3] == ctx->user_ip6[3];
}

static __always_inline int redirect4(struct bpf_sock_addr *ctx, bool sendmsg)
{
	const struct endpoint *res;
	struct endpoint dst;

	/* Cheapest test first: nearly every connect is not DNS. */
	if (ctx->user_port != bpf_htons(DNS_PORT))
		return ZTDNS_ALLOW;
	if (!is_dns_transport(ctx))
		return ZTDNS_ALLOW;
	if (from_dns_server(ctx) || (sendmsg && to_own_peer4(ctx)))
		return ZTDNS_ALLOW;

	/* Also reached by AF_INET6 sockets sending to ::ffff:a.b.c.d: the
	 * kernel hands those to the IPv4 path with an IPv4 address. */
	set_v4(&dst, ctx->user_ip4, DNS_PORT);
	res = pick_resolver(ctx, &dst, sendmsg);
	if (res) {
		ctx->user_ip4 = words(res)[0];
		ctx->user_port = bpf_htons(res->port);
	}
	return ZTDNS_ALLOW;
}

static __always_inline int redirect6(struct bpf_sock_addr *ctx, bool sendmsg)
{
	const struct endpoint *res;
	struct endpoint dst;
	__u32 w0, w1, w2, w3;

	if (ctx->user_port != bpf_htons(DNS_PORT))
		return ZTDNS_ALLOW;
	if (!is_dns_transport(ctx))
		return ZTDNS_ALLOW;
	if (from_dns_server(ctx) || (sendmsg && to_own_peer6(ctx)))
		return ZTDNS_ALLOW;

	w0 = ctx->user_ip6[0];
	w1 = ctx->user_ip6[1];
	w2 = ctx->user_ip6[2];
	w3 = ctx->user_ip6[3];

	if (is_v4_mapped(w0, w1, w2)) {
		/* Stored as IPv4 so that an AF_INET and an AF_INET6 socket
		 * of one pod addressing one nameserver share its slot; the
		 * redirect stays v4-mapped, as the socket requires. */
		set_v4(&dst, w3, DNS_PORT);
		res = pick_resolver(ctx, &dst, sendmsg);
		if (res) {
			ctx->user_ip6[0] = 0;
			ctx->user_ip6[1] = 0;
			ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
			ctx->user_ip6[3] = words(res)[0];
			ctx->user_port = bpf_htons(res->port);
		}
		return ZTDNS_ALLOW;
	}

	set_v6(&dst, w0, w1, w2, w3, DNS_PORT);
	res = pick_resolver(ctx, &dst, sendmsg);
	if (res) {
		const __u32 *w = words(res);

		ctx->user_ip6[0] = w[0];
		ctx->user_ip6[1] = w[1];
		ctx->user_ip6[2] = w[2];
		ctx->user_ip6[3] = w[3];
		ctx->user_port = bpf_htons(res->port);
	}
	return ZTDNS_ALLOW;
}

/* Returns what this socket originally addressed through the resolver
 * endpoint src (IPv4 or IPv6, per its family), or NULL when src is not a
 * resolver address or ztdns did not redirect this socket there. A reply
 * from a pod-local server or link neighbour (is_local) comes from its
 * loopback or link-local address, which is no resolver endpoint, and
 * nothing local is ever recorded in sent_to: its source stays as it came,
 * even on a socket ztdns redirected for another nameserver (musl with a
 * local and a remote one in resolv.conf). Restoring depends neither on the
 * heartbeat nor on the pods map: replies to queries sent before the agent
 * died, or before the pod was unmarked, are still in flight, and released
 * pods keep their slots (see struct nameserver in ztdns.h). The pods map is
 * only read to count. recvmsg: the socket reads a reply asking its source,
 * which confirms the slot (a getpeername does not: Go's resolver calls it
 * on every socket it connects, probes included). */
static __always_inline const struct endpoint *
original_destination(struct bpf_sock_addr *ctx, const struct endpoint *src,
		     bool recvmsg)
{
	const struct endpoint *resolvers, *orig;
	struct socket_destinations *sd;
	struct redirect_config *cfg;
	struct nameserver_key key = {};
	struct nameserver *ns;
	struct pod_info *pod;
	__u64 cookie;
	__u32 idx;
	int slot = -1;

	if (!is_dns_transport(ctx))
		return NULL;

	/* Match the resolver addresses first: they are in an array map, a
	 * cheap lookup, and most replies any socket receives are not from
	 * the resolver. */
	cfg = get_config();
	if (!cfg)
		return NULL;
	resolvers = src->family == ZTDNS_AF_INET ? cfg->resolver4 : cfg->resolver6;
	for (int i = 0; i < ZTDNS_SLOTS; i++) {
		if (resolvers[i].family != 0 && same_endpoint(&resolvers[i], src)) {
			slot = i;
			break;
		}
	}
	if (slot < 0)
		return NULL;

	sd = bpf_sk_storage_get(&sockets, ctx->sk, 0, 0);
	if (!sd)
		return NULL;
	idx = slot;
	barrier_var(idx);
	if (idx >= ZTDNS_SLOTS)
		return NULL;
	orig = &sd->sent_to[idx];
	if (orig->family != src->family)
		return NULL;

	COUNT(get_counters(), restored);
	/* A reply keeps its slot busy, and confirms it: a socket connected
	 * once (c-ares keeps one per server) sends with send() or write(),
	 * which no hook sees as a query to the nameserver, so without this its
	 * slot would look idle after ZTDNS_SLOT_UNCONFIRMED_IDLE_NS and could
	 * be given to another destination, and its later queries forwarded
	 * there. A getpeername keeps it busy only. Only while the slot still
	 * holds what this socket addressed: a reply to a slot given away must
	 * not keep its new holder busy. Marked or not: released pods keep
	 * their slots while their sockets use them (struct nameserver). */
	pod = marked_pod(ctx, &cookie);
	key.netns_cookie = cookie;
	key.slot = idx;
	ns = bpf_map_lookup_elem(&nameservers, &key);
	if (ns && same_endpoint(&ns->server, orig)) {
		touch_slot(ns, bpf_ktime_get_ns());
		if (recvmsg)
			confirm_slot(ns);
	}
	COUNT(pod, restored);
	return orig;
}

static __always_inline int restore4(struct bpf_sock_addr *ctx, bool recvmsg)
{
	const struct endpoint *orig;
	struct endpoint src;

	set_v4(&src, ctx->user_ip4, bpf_ntohs(ctx->user_port));
	orig = original_destination(ctx, &src, recvmsg);
	if (orig) {
		ctx->user_ip4 = words(orig)[0];
		ctx->user_port = bpf_htons(orig->port);
	}
	return ZTDNS_ALLOW;
}

static __always_inline int restore6(struct bpf_sock_addr *ctx, bool recvmsg)
{
	const struct endpoint *orig;
	struct endpoint src;
	__u32 w0, w1, w2, w3;
	__u16 port = bpf_ntohs(ctx->user_port);

	w0 = ctx->user_ip6[0];
	w1 = ctx->user_ip6[1];
	w2 = ctx->user_ip6[2];
	w3 = ctx->user_ip6[3];

	if (is_v4_mapped(w0, w1, w2)) {
		/* An IPv4 reply on an AF_INET6 socket: match it against the
		 * IPv4 resolvers and restore it v4-mapped. */
		set_v4(&src, w3, port);
		orig = original_destination(ctx, &src, recvmsg);
		if (orig) {
			ctx->user_ip6[3] = words(orig)[0];
			ctx->user_port = bpf_htons(orig->port);
		}
		return ZTDNS_ALLOW;
	}

	set_v6(&src, w0, w1, w2, w3, port);
	orig = original_destination(ctx, &src, recvmsg);
	if (orig) {
		const __u32 *w = words(orig);

		ctx->user_ip6[0] = w[0];
		ctx->user_ip6[1] = w[1];
		ctx->user_ip6[2] = w[2];
		ctx->user_ip6[3] = w[3];
		ctx->user_port = bpf_htons(orig->port);
	}
	return ZTDNS_ALLOW;
}

SEC("cgroup/connect4")
int ztdns_connect4(struct bpf_sock_addr *ctx)
{
	return redirect4(ctx, false);
}

SEC("cgroup/sendmsg4")
int ztdns_sendmsg4(struct bpf_sock_addr *ctx)
{
	return redirect4(ctx, true);
}

SEC("cgroup/recvmsg4")
int ztdns_recvmsg4(struct bpf_sock_addr *ctx)
{
	return restore4(ctx, true);
}

SEC("cgroup/getpeername4")
int ztdns_getpeername4(struct bpf_sock_addr *ctx)
{
	return restore4(ctx, false);
}

SEC("cgroup/connect6")
int ztdns_connect6(struct bpf_sock_addr *ctx)
{
	return redirect6(ctx, false);
}

SEC("cgroup/sendmsg6")
int ztdns_sendmsg6(struct bpf_sock_addr *ctx)
{
	return redirect6(ctx, true);
}

SEC("cgroup/recvmsg6")
int ztdns_recvmsg6(struct bpf_sock_addr *ctx)
{
	return restore6(ctx, true);
}

SEC("cgroup/getpeername6")
int ztdns_getpeername6(struct bpf_sock_addr *ctx)
{
	return restore6(ctx, false);
}

/* A closed socket whose record was counted (ZTDNS_SOCKET_COUNTED) is
 * taken off its pod's count, by one. The kernel runs this in inet_release
 * for every IPv4 and IPv6 socket, UDP and TCP, once its last file
 * descriptor is closed (the process exiting included), in the cgroup the
 * socket was created in: the cgroup its connect and sendmsg ran in. It is
 * attached before those, and replaced with them on an upgrade
 * (link.Update, never a moment without one), so every record counted is
 * taken off. The record itself is freed with the socket, shortly after for
 * TCP (its orphan lingers until the peer acknowledges the close).
 *
 * A record the programs of an agent before the cap made was never
 * counted, and carries no mark: it is taken off nothing. Such programs run
 * with this one after a rollback to them (they do not know its link), and
 * would otherwise wipe out the counts of the sockets counted here. The
 * count is taken off only while above zero: after the counts were
 * forgotten (struct pod_socket_count), a socket counted before closes
 * against a count that does not hold it. */
SEC("cgroup/sock_release")
int ztdns_sock_release(struct bpf_sock *ctx)
{
	struct socket_destinations *sd;
	struct pod_socket_count *held;
	struct pod_key key = {};

	sd = bpf_sk_storage_get(&sockets, ctx, 0, 0);
	if (!sd || !counted(sd))
		return ZTDNS_ALLOW;
	key.netns_cookie = bpf_get_netns_cookie(ctx);
	held = bpf_map_lookup_elem(&pod_sockets, &key);
	if (held && *(volatile __s64 *)&held->held > 0)
		__sync_fetch_and_add(&held->held, -1);
	return ZTDNS_ALLOW;
}
