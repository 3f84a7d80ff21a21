/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ztdns.h: the layout of every map the ztdns programs share with the agent.
 *
 * This header is the single definition: pkg/redirect uses the Go types that
 * bpf2go generates from it (-type ...), never hand-written copies. Every map
 * carries BTF, so `bpftool map dump pinned /sys/fs/bpf/ztdns/<map>` prints
 * these field names.
 *
 * Byte order: addresses are stored as the bytes on the wire (network order),
 * ports in host order, so that bpftool shows 53 rather than 13568.
 *
 * Changing a layout: an agent reuses a pinned map only when its BTF gives
 * key and value the layout written here (pkg/redirect/pinned.go): the same
 * members in the same order, by name, offset and size. A pad member may be
 * given a name and a meaning whose zero is what older programs did (they
 * always wrote it zero), as endpoint.flags and nameserver.flags were: such a
 * map is kept. Any other change (a member moved, renamed, resized or added)
 * replaces the map at the upgrade, and at a rollback to a release that checks
 * this, and what it held is lost. A change of ZTDNS_MAX_PODS alone replaces
 * pods, nameservers and pod_sockets with their entries copied.
 */
#ifndef ZTDNS_H
#define ZTDNS_H

#include "ztdns_uapi.h"

/* resolv.conf holds at most three nameservers (MAXNS in glibc and musl), so
 * a pod addresses at most three distinct nameservers and the resolver listens
 * on three addresses per family. */
#define ZTDNS_SLOTS 3

/* Address families as the kernel numbers them (AF_INET, AF_INET6); the libc
 * headers that define them cannot be included in a BPF program. */
#define ZTDNS_AF_INET 2
#define ZTDNS_AF_INET6 10

/* Sizes of the hash maps. Both are BPF_F_NO_PREALLOC, so memory is only
 * used for pods that are actually marked, and for the slots released pods
 * keep until the agent sweeps them (see struct nameserver). */
#define ZTDNS_MAX_PODS 16384
#define ZTDNS_MAX_NAMESERVERS (ZTDNS_MAX_PODS * ZTDNS_SLOTS)

/* pod_info.flags */
/* The pod stays known (IPs, counters, nameservers) but its queries are not
 * redirected, e.g. while the agent drains it. */
#define ZTDNS_POD_PAUSED (1U << 0)

/* An IPv4 or IPv6 socket address.
 * The programs compare and copy addr as four 32-bit words, hence aligned(4). */
struct endpoint {
	/* IPv4: the 4 address bytes followed by 12 zero bytes (an IPv4-mapped
	 * IPv6 address is stored this way too); IPv6: all 16 bytes. */
	__u8 addr[16];
	__u16 port;	/* host byte order */
	__u8 family;	/* ZTDNS_AF_INET, ZTDNS_AF_INET6, or 0 for "unset" */
	/* Zero, but in struct socket_destinations, where it may hold
	 * ZTDNS_SOCKET_COUNTED. Agents before the socket cap called it pad
	 * and always wrote zero. */
	__u8 flags;
} __attribute__((aligned(4)));

/* pods (hash): key of a marked pod. Only sockets whose network namespace
 * cookie (bpf_get_netns_cookie, SO_NETNS_COOKIE) is a key in this map are
 * ever rewritten; the host netns and unmarked pods are never touched. */
struct pod_key {
	__u64 netns_cookie;
};

/* pods (hash): value, written by the agent (Mark), counters updated by the
 * programs with atomic adds. The agent keeps the counters when it re-marks:
 * it writes the value only when flags or addresses change, since a write
 * puts back the counters it read before, without the adds in between. */
struct pod_info {
	__u32 flags;		/* ZTDNS_POD_* */
	__u8 ipv4[4];		/* pod IPv4 address, zero if none */
	__u8 ipv6[16];		/* pod IPv6 address, zero if none */
	__u64 redirected;	/* queries sent to the resolver instead */
	__u64 restored;		/* replies whose source was set back */
	__u64 skipped_stale;	/* queries left alone: agent heartbeat stale */
};

/* nameservers (hash, BPF_F_NO_PREALLOC): key. Slot 0..ZTDNS_SLOTS-1 of one
 * pod network namespace. */
struct nameserver_key {
	__u64 netns_cookie;
	__u32 slot;
	__u32 pad;		/* always zero: part of the hash key */
};

/* nameserver.flags */
/* Nothing but a UDP connect or a getpeername has gone through the slot yet:
 * no send naming the destination (sendmsg), no TCP connect, no reply read
 * asking its source (recvmsg). A connect alone may be no query at all: Go's
 * resolver sorts a multi-address answer (RFC 6724) by connecting a UDP
 * socket to port 53 of each answer address, reading its local address and
 * closing it, and glibc does the same for getaddrinfo(host, "53"). Such a
 * slot may be given to another destination once it has been idle for
 * ZTDNS_SLOT_UNCONFIRMED_IDLE_NS instead of ZTDNS_SLOT_IDLE_NS, so answer
 * addresses do not keep the pod's own nameservers out of its three slots.
 * Set only when a slot is learned; the programs clear it in place, and the
 * agent when it forwards a query that arrived on the slot. Zero in
 * slots that programs before it learned: they keep ZTDNS_SLOT_IDLE_NS. */
#define ZTDNS_NS_UNCONFIRMED (1U << 0)

/* nameservers: value. The ORIGINAL destination the pod addressed, learned by
 * connect/sendmsg. A query redirected through slot i arrives at the resolver
 * on resolver4[i] or resolver6[i] (struct redirect_config), and the
 * resolver forwards a miss to nameservers[{cookie of the pod IP, i}]. */
struct nameserver {
	struct endpoint server;
	__u32 flags;		/* ZTDNS_NS_* */
	/* bpf_ktime_get_ns of the last query through this slot (connect, or
	 * a send naming the destination) or reply restored from it (recvmsg,
	 * getpeername). A slot idle for ZTDNS_SLOT_IDLE_NS (an unconfirmed
	 * one: ZTDNS_SLOT_UNCONFIRMED_IDLE_NS) may be given to another
	 * destination; a busy one never is, so the resolver forwards what is
	 * in flight right.
	 *
	 * Released pods keep their slots: a pod's slots outlive its mark. A
	 * UDP socket connected while the pod was captured (c-ares keeps one
	 * per nameserver) stays connected to a resolver slot, and no hook sees
	 * its later sends (send, write), so its queries still reach the
	 * resolver once the pod is released. The resolver forwards them to
	 * what the slot holds, the nameserver the socket meant, and each reply
	 * restored to that socket keeps the slot busy (original_destination).
	 * The agent removes an unmarked pod's slot at its first sweep after
	 * the slot has been idle for ZTDNS_SLOT_IDLE_NS: the sweep runs with
	 * its housekeeping, every 30 s, so up to about a minute after the last
	 * use. */
	__u64 last_used_ns;
};

/* Long enough that no reply or forwarded query of the slot's previous
 * server can still be in flight (stub resolvers give up after 5 s). */
#define ZTDNS_SLOT_IDLE_NS (30ULL * 1000 * 1000 * 1000)
/* The same for a slot marked ZTDNS_NS_UNCONFIRMED. What such a slot may have
 * in flight is a query on a socket connected through it, written without
 * naming any address. Go's resolver connects a new socket per query and
 * writes at once: the resolver reads the slot's destination when the query
 * arrives, milliseconds after the connect, and the reply is restored from
 * the socket's own record (struct socket_destinations), not from the slot.
 * A socket connected once and kept (c-ares keeps one per nameserver) may
 * send its next queries seconds later, with its first reply still unread
 * (a slow upstream, a retry on the same socket): the agent confirms the
 * slot when it forwards a query that arrived on it
 * (Redirector.ConfirmNameserver), so it is not given away under the kept
 * socket. A connect refreshes last_used_ns only when it is
 * ZTDNS_SLOT_TOUCH_NS old, so a slot stays busy for at least this minus
 * ZTDNS_SLOT_TOUCH_NS, 1 s, after any connect through it. */
#define ZTDNS_SLOT_UNCONFIRMED_IDLE_NS (2ULL * 1000 * 1000 * 1000)
/* How stale a busy slot's last_used_ns may get before a query refreshes it;
 * far below ZTDNS_SLOT_IDLE_NS, so a busy slot never looks idle. */
#define ZTDNS_SLOT_TOUCH_NS (1000ULL * 1000 * 1000)

/* sockets (socket storage, one value per redirected socket): what the
 * socket addressed through each slot. recvmsg and getpeername restore from
 * here, so a reply is set back to exactly what its socket sent to (musl
 * sends to several nameservers from one socket), and only on sockets ztdns
 * redirected. Freed with the socket.
 *
 * The kernel charges socket storage to the memory cgroup of the process
 * that created the map, the agent, not to the pod's: about 450 bytes a
 * socket. So each pod holds at most redirect_config.sockets_per_pod of
 * them at once (struct pod_socket_count); a socket over that is not
 * redirected and reaches its own nameserver, as without ztdns. */
struct socket_destinations {
	/* family 0: slot unused. flags: ZTDNS_SOCKET_COUNTED in all three,
	 * the slots used or not, when the socket was added to its pod's
	 * count; zero in all three when it was not. */
	struct endpoint sent_to[ZTDNS_SLOTS];
	/* Nothing else: the layout is the one agents before the cap wrote
	 * (60 bytes), so an upgrade reuses the pinned map and every socket
	 * keeps its record (a connected socket kept open, as c-ares keeps
	 * one per nameserver, goes on getting its replies restored). */
};

/* The socket was added to its pod's pod_socket_count, and sock_release
 * takes it off when it closes. Programs before the cap made records
 * without counting them: they write whole endpoints with flags zero (pad,
 * to them), so their records never carry it, and closing such a socket
 * takes nothing off a count. It is kept in every slot because those
 * programs, after a rollback to them, may write a slot of a record made
 * here (a socket kept open across the rollback that sends through another
 * slot): only a socket that then sends through all three loses it, and is
 * not taken off its pod's count when it closes, which stays that one high.
 * The programs here write a slot keeping the mark whole. */
#define ZTDNS_SOCKET_COUNTED (1U << 0)

/* pod_sockets (hash, BPF_F_NO_PREALLOC, key struct pod_key): value. How
 * many of the network namespace's sockets hold a record in sockets that
 * is marked ZTDNS_SOCKET_COUNTED, added to with an atomic add by
 * connect/sendmsg when their own bpf_sk_storage_get made a socket's
 * record, and taken off one by sock_release when a socket with such a
 * record is closed. Exact, as the kernel runs the connect and sendmsg
 * programs of one socket under its lock (ztdns.c, socket_record). Records
 * the programs of an agent before the cap made are neither counted nor
 * taken off: a pod may hold those beyond the cap while they stay open,
 * after an upgrade from such an agent, or back to this one after a
 * rollback to it, and only those.
 *
 * The counts are only right while sock_release stays attached: a Load or
 * the agent's repair that attaches it anew (its link was detached, or
 * gone) removes them all (Redirector.forgetAllSocketCounts), since the
 * sockets closed meanwhile were never taken off. The counted sockets then
 * still open are each taken off the count their pod starts again when
 * they close, which sock_release does only while it is above zero: until
 * they have closed, a pod may hold that many over the cap. (Two sockets
 * released at the same instant may both see 1 and leave -1, which the next
 * record made brings back up.)
 *
 * Kept apart from pod_info, which the agent writes whole when it re-marks
 * a pod: the write would put back a count it read before, without the adds
 * in between. Outlives the mark, like the sockets it counts; the agent
 * removes the entry of a namespace that is not marked and holds none
 * (SweepNameservers). */
struct pod_socket_count {
	__s64 held;
};

/* Entries of pod_sockets: the marked pods, and as many released ones whose
 * sockets are still open. */
#define ZTDNS_MAX_POD_SOCKETS (ZTDNS_MAX_PODS * 2)

/* config (array, ZTDNS_CONFIG_COPIES entries): written by the agent at
 * start. The programs read the entry config_index names; the agent writes a
 * changed config whole into the other entry, then switches config_index to
 * it, so no program ever reads an entry while it is written (an array update
 * copies over the value in place). Only a program still reading the old
 * entry when the next agent switches back could: one stalled across two
 * agent starts. */
#define ZTDNS_CONFIG_COPIES 2

/* At most this many nameserver prefixes in redirect_config.capture_only:
 * a node has one cluster DNS address per family and maybe a node-local
 * cache's, so 8 leaves room, and a fixed bound keeps the match loop short
 * and verifiable. */
#define ZTDNS_MAX_CAPTURE_PREFIXES 8

/* A nameserver prefix (CIDR). addr has the layout of struct endpoint's:
 * IPv4 in the first 4 bytes, then zeros; IPv6 all 16. Bits past len are
 * zero (the agent masks them). */
struct capture_prefix {
	__u8 addr[16];
	__u8 family;	/* ZTDNS_AF_INET, ZTDNS_AF_INET6, or 0 for "unused" */
	__u8 len;	/* prefix length: 0..32 (IPv4), 0..128 (IPv6) */
	__u8 pad[2];	/* always zero */
} __attribute__((aligned(4)));

struct redirect_config {
	/* Where slot i is redirected: resolver4[i] for IPv4 and IPv4-mapped
	 * destinations (written as ::ffff:a.b.c.d in the IPv6 hooks),
	 * resolver6[i] for IPv6 destinations. A family whose resolver4[0] /
	 * resolver6[0] is unset (family 0) is not redirected. */
	struct endpoint resolver4[ZTDNS_SLOTS];
	struct endpoint resolver6[ZTDNS_SLOTS];
	/* Redirect only while the heartbeat is at most this old (fail open). */
	__u64 stale_after_ns;
	/* When capture_only[0].family is not 0, only destinations inside one
	 * of these prefixes (entries up to the first unused one) are
	 * redirected; a query to any other address is left alone and goes
	 * out under the pod's own network policy. All unused: every
	 * destination is redirected. */
	struct capture_prefix capture_only[ZTDNS_MAX_CAPTURE_PREFIXES];
	/* At most this many sockets of one pod hold a record in sockets at
	 * once (struct pod_socket_count); a query on any other socket of the
	 * pod is left alone. The agent writes it (--capture-sockets-per-pod,
	 * default redirect.DefaultSocketsPerPod). */
	__u32 sockets_per_pod;
	__u32 pad;		/* always zero */
};

/* config_index (array, 1 entry): the config entry the programs read. A
 * program reads it once and uses that entry for its whole run. Its values,
 * 0 and 1, differ in one byte, so the agent's map update cannot show a
 * reader a third value however the kernel copies it. */
struct active_config {
	__u32 index;		/* 0 .. ZTDNS_CONFIG_COPIES-1 */
};

/* heartbeat (array, 1 entry, BPF_F_MMAPABLE): the agent's liveness.
 * Kept apart from config and mmapped by the agent, which stores it with one
 * aligned 64-bit atomic store; the programs read it with one 64-bit load.
 * A map update through the bpf() syscall would memcpy the value in place,
 * which may tear against a concurrent reader. */
struct agent_heartbeat {
	/* CLOCK_MONOTONIC in ns, the clock bpf_ktime_get_ns reads; 0 = never
	 * written, which counts as stale. */
	__u64 mono_ns;
};

/* counters (per-CPU array, 1 entry): node-wide totals; the agent sums the
 * CPUs. */
struct node_counters {
	__u64 redirected;	/* destinations rewritten to a resolver */
	__u64 restored;		/* reply sources / peers set back */
	__u64 skipped_stale;	/* left alone: heartbeat stale or never written */
	__u64 skipped_paused;	/* left alone: pod has ZTDNS_POD_PAUSED */
	__u64 skipped_no_resolver; /* left alone: no resolver for that family */
	__u64 skipped_slots_full; /* left alone: every slot busy with another server */
	__u64 skipped_local;	/* left alone: is_local (pod-side, many-host) destination */
	__u64 nameserver_learned; /* a new destination took a free slot */
	__u64 nameserver_replaced; /* a new destination took an idle slot */
	__u64 nameserver_failed; /* the nameservers map refused an update */
	__u64 socket_storage_failed; /* left alone: no socket storage */
	__u64 skipped_not_listed; /* left alone: destination not in capture_only */
	__u64 skipped_sockets_full; /* left alone: the pod holds sockets_per_pod sockets with records */
};

#endif /* ZTDNS_H */
