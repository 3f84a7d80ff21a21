/*
 * getaddrinfo NAME [inet|inet6|any]: resolve NAME with musl's stub
 * resolver and print one address per line. Built static with musl-gcc by
 * testenv.BuildMuslGetaddrinfo. musl sends every query to all nameservers
 * of resolv.conf in parallel from one unconnected UDP socket, and uses an
 * AF_INET6 socket with IPv4-mapped addresses when any nameserver is IPv6.
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
	struct addrinfo hints, *res, *ai;
	char buf[INET6_ADDRSTRLEN];
	int err;

	if (argc < 2) {
		fprintf(stderr, "usage: %s NAME [inet|inet6|any]\n", argv[0]);
		return 2;
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	if (argc > 2 && strcmp(argv[2], "inet") == 0)
		hints.ai_family = AF_INET;
	if (argc > 2 && strcmp(argv[2], "inet6") == 0)
		hints.ai_family = AF_INET6;
	hints.ai_socktype = SOCK_STREAM;

	err = getaddrinfo(argv[1], NULL, &hints, &res);
	if (err != 0) {
		fprintf(stderr, "getaddrinfo %s: %s\n", argv[1], gai_strerror(err));
		return 1;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		const void *addr = ai->ai_family == AF_INET
			? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
			: (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
		printf("%s\n", inet_ntop(ai->ai_family, addr, buf, sizeof(buf)));
	}
	freeaddrinfo(res);
	return 0;
}
