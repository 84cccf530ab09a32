/*
 * auth.h - API keys: who may call what on memsleep-serve and memsleep-lb.
 *
 * A program holds up to two keys: the API key (generation and the
 * read-only endpoints) and the admin key (every endpoint that changes the
 * server's state). A request shows a key with the header
 * "Authorization: Bearer KEY". Keys are compared in constant time: how long
 * the check takes depends on the key's length only, never on how much of a
 * guess was right.
 *
 * The rules, shared by both programs (docs/security.md):
 *   - the admin key is a superset: it is accepted wherever the API key is;
 *   - an endpoint of the API level is open while no API key is set;
 *   - an endpoint of the admin level needs the admin key when one is set,
 *     else the API key when that one is set, else it is open: --api-key
 *     alone therefore protects everything but the open endpoints.
 */
#ifndef MEMSLEEP_COMMON_AUTH_H
#define MEMSLEEP_COMMON_AUTH_H

#include <stddef.h>

/* What an endpoint needs. */
typedef enum ms__access {
  MS__ACCESS_OPEN,  /* anyone (GET /health) */
  MS__ACCESS_API,   /* the API key or the admin key */
  MS__ACCESS_ADMIN, /* the admin key (the API key when no admin key is set) */
} ms__access_t;

/* The keys of one program (not owned; NULL: not set). */
typedef struct ms__auth_keys {
  const char *api;
  const char *admin;
} ms__auth_keys_t;

/* How the program names its keys in messages. */
typedef struct ms__auth_names {
  const char *prog;      /* "memsleep-serve" */
  const char *api_env;   /* "MEMSLEEP_API_KEY" */
  const char *admin_env; /* "MEMSLEEP_ADMIN_API_KEY" */
} ms__auth_names_t;

typedef enum ms__auth_result {
  MS__AUTH_OK,        /* the request may go on */
  MS__AUTH_MISSING,   /* a key is needed and no Authorization header came */
  MS__AUTH_MALFORMED, /* the header is not "Bearer TOKEN" */
  MS__AUTH_WRONG,     /* the token is not a key that this endpoint accepts */
} ms__auth_result_t;

/*
 * The level a request to an endpoint of level need must really prove with
 * keys k: MS__ACCESS_OPEN when no key protects it, else MS__ACCESS_API
 * (the API key or the admin key is accepted) or MS__ACCESS_ADMIN (only the
 * admin key).
 */
ms__access_t ms__auth_effective(const ms__auth_keys_t *k, ms__access_t need);

/*
 * Checks the Authorization header value (NULL when absent) of a request to
 * an endpoint of level need.
 */
ms__auth_result_t ms__auth_check(const ms__auth_keys_t *k, ms__access_t need,
                                 const char *authorization);

/*
 * Finds the token of an "Authorization: Bearer TOKEN" value: the scheme in
 * any case, one or more spaces, then a token without spaces (trailing
 * blanks ignored). Returns 0 with *token and *len set, or -1.
 */
int ms__auth_bearer(const char *header, const char **token, size_t *len);

/*
 * 1 when given[0..given_len) equals key[0..key_len), else 0. The time it
 * takes depends on key_len (and on given_len, which the sender knows), not
 * on the contents of either.
 */
int ms__auth_equal(const char *given, size_t given_len, const char *key, size_t key_len);

/*
 * Writes the sentence of the 401 for result r on an endpoint whose
 * effective level is eff: what is missing or wrong and what to send.
 */
void ms__auth_message(ms__auth_result_t r, ms__access_t eff, const ms__auth_names_t *names,
                      char *out, size_t outlen);

#endif /* MEMSLEEP_COMMON_AUTH_H */
