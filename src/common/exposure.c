/*
 * exposure.c - is the listening address loopback, and the warning when it
 * is not and no key protects the server (see exposure.h).
 */
#include "common/exposure.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

/* 1 for 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104. */
static int addr_is_loopback(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
    return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
  }
  if (sa->sa_family == AF_INET6) {
    const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(a))
      return 1;
    return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
  }
  return 0;
}

int ms__host_is_loopback(const char *host) {
  struct addrinfo hints, *ai = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  if (!host || getaddrinfo(host, "0", &hints, &ai) != 0)
    return 0;
  int all = ai != NULL;
  for (struct addrinfo *p = ai; p; p = p->ai_next)
    all &= addr_is_loopback(p->ai_addr);
  freeaddrinfo(ai);
  return all;
}

void ms__warn_exposure(const char *prog, const char *host, int has_api_key, int has_admin_key,
                       const char *api_flags) {
  if (has_api_key || ms__host_is_loopback(host))
    return;
  if (has_admin_key)
    fprintf(stderr,
            "%s: WARNING: listening on %s, which is not a loopback address, with no API key: "
            "anyone who can reach it may generate and read the server's state (only the "
            "endpoints that change it need the admin key); set %s (docs/security.md)\n",
            prog, host, api_flags);
  else
    fprintf(stderr,
            "%s: WARNING: listening on %s, which is not a loopback address, with no key at "
            "all: anyone who can reach it may generate, release and resume memory, pause the "
            "server and load other weights; set %s and --admin-api-key (docs/security.md), or "
            "bind to 127.0.0.1\n",
            prog, host, api_flags);
}
