/*
 * exposure.h - the start-up warning of a server that other machines can
 * reach without a key.
 *
 * memsleep-serve and memsleep-lb bind to 127.0.0.1 unless --host says
 * otherwise. Bound to another address, anyone who can reach it may call
 * every endpoint that no key protects; this says so on stderr, once, when
 * the program starts (docs/security.md).
 */
#ifndef MEMSLEEP_COMMON_EXPOSURE_H
#define MEMSLEEP_COMMON_EXPOSURE_H

/* 1 when every address host resolves to is a loopback address
 * (127.0.0.0/8, ::1); 0 otherwise, also when it does not resolve. */
int ms__host_is_loopback(const char *host);

/*
 * Prints a warning on stderr when host is not a loopback address and
 * has_api_key / has_admin_key leave endpoints open to the network: no key
 * at all (everything open), or only an admin key (generation open). prog
 * and api_flags ("--api-key or MEMSLEEP_API_KEY") name what to set.
 */
void ms__warn_exposure(const char *prog, const char *host, int has_api_key, int has_admin_key,
                       const char *api_flags);

#endif /* MEMSLEEP_COMMON_EXPOSURE_H */
