/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * ztdns_uapi.h: the few definitions of the Linux UAPI headers (linux/types.h,
 * linux/bpf.h, linux/in.h) that the ztdns programs use, copied from Linux
 * 6.1's headers. They are kernel ABI and never change meaning.
 *
 * Kept in the repository instead of included from the host, so that `make
 * generate` compiles the same source on any host and architecture: the
 * host's <linux/types.h> pulls in an architecture directory
 * (/usr/include/x86_64-linux-gnu/asm on Debian amd64) that a BPF target does
 * not have. The compiler is run with -nostdlibinc: nothing comes from
 * /usr/include.
 */
#ifndef ZTDNS_UAPI_H
#define ZTDNS_UAPI_H

/* linux/types.h, asm-generic/int-ll64.h */
typedef signed char __s8;
typedef unsigned char __u8;
typedef signed short __s16;
typedef unsigned short __u16;
typedef signed int __s32;
typedef unsigned int __u32;
typedef signed long long __s64;
typedef unsigned long long __u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

/* linux/in.h */
enum {
	IPPROTO_TCP = 6,
	IPPROTO_UDP = 17,
};

/* linux/bpf.h: map types */
enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_SK_STORAGE = 24,
};

/* linux/bpf.h: map_flags at creation */
#define BPF_F_NO_PREALLOC (1U << 0)
#define BPF_F_MMAPABLE (1U << 10)

/* linux/bpf.h: flags of bpf_map_update_elem */
#define BPF_ANY 0
#define BPF_NOEXIST 1
#define BPF_EXIST 2

/* linux/bpf.h: flags of bpf_sk_storage_get */
#define BPF_SK_STORAGE_GET_F_CREATE (1ULL << 0)

/* linux/bpf.h */
#define __bpf_md_ptr(type, name)	\
union {					\
	type name;			\
	__u64 :64;			\
} __attribute__((aligned(8)))

/* linux/bpf.h: the socket a sock_addr program sees as ctx->sk (read only).
 * dst_port was a __u32 holding the port in its first two bytes before
 * Linux 5.18 (and its stable backports): a 2-byte read of it, the only kind
 * the programs do, reads the same on either layout. */
struct bpf_sock {
	__u32 bound_dev_if;
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 mark;
	__u32 priority;
	/* IP address also allows 1 and 2 bytes access */
	__u32 src_ip4;
	__u32 src_ip6[4];
	__u32 src_port;		/* host byte order */
	__be16 dst_port;	/* network byte order */
	__u16 :16;		/* zero padding */
	__u32 dst_ip4;
	__u32 dst_ip6[4];
	__u32 state;
	__s32 rx_queue_mapping;
};

/* linux/bpf.h: bpf_sock.state, the kernel's TCP states; a connected UDP
 * socket is in BPF_TCP_ESTABLISHED too. */
enum {
	BPF_TCP_ESTABLISHED = 1,
};

/* linux/bpf.h: the context of cgroup sock_addr programs. The kernel maps
 * these offsets to the socket's fields; which accesses are allowed is noted
 * per field. */
struct bpf_sock_addr {
	__u32 user_family;	/* Allows 4-byte read, but no write. */
	__u32 user_ip4;		/* Allows 1,2,4-byte read and 4-byte write.
				 * Stored in network byte order.
				 */
	__u32 user_ip6[4];	/* Allows 1,2,4,8-byte read and 4,8-byte write.
				 * Stored in network byte order.
				 */
	__u32 user_port;	/* Allows 1,2,4-byte read and 4-byte write.
				 * Stored in network byte order
				 */
	__u32 family;		/* Allows 4-byte read, but no write */
	__u32 type;		/* Allows 4-byte read, but no write */
	__u32 protocol;		/* Allows 4-byte read, but no write */
	__u32 msg_src_ip4;	/* Allows 1,2,4-byte read and 4-byte write.
				 * Stored in network byte order.
				 */
	__u32 msg_src_ip6[4];	/* Allows 1,2,4,8-byte read and 4,8-byte write.
				 * Stored in network byte order.
				 */
	__bpf_md_ptr(struct bpf_sock *, sk);
};

#endif /* ZTDNS_UAPI_H */
