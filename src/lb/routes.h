/*
 * routes.h - what memsleep-lb does with each method and path, and the key
 * each one needs.
 *
 * The table is the balancer's whole surface: generation is forwarded to
 * one worker, the control endpoints fan out to every worker, /is_sleeping
 * and /get_server_info aggregate, /health is the balancer's own. Its keys
 * follow common/auth.h: only /health is open, generation and the
 * read-only endpoints need the balancer's API key, the control endpoints
 * its admin key. ms__lb_judge decides from a request's head alone, without
 * a socket, so that the fuzzer (tests/fuzz) calls it directly.
 */
#ifndef MEMSLEEP_LB_ROUTES_H
#define MEMSLEEP_LB_ROUTES_H

#include "common/auth.h"

typedef enum ms__lb_kind {
  MS__LB_HEALTH,      /* GET /health: the balancer's own */
  MS__LB_PROXY,       /* generation: one worker, streamed through */
  MS__LB_FANOUT,      /* a control endpoint: every worker */
  MS__LB_IS_SLEEPING, /* GET /is_sleeping: every worker, aggregated */
  MS__LB_INFO,        /* GET /get_server_info: the balancer and every worker */
} ms__lb_kind_t;

typedef struct ms__lb_route {
  const char *method;
  const char *path;
  ms__lb_kind_t kind;
  ms__access_t access;
} ms__lb_route_t;

/* The route table, ended by a row with path NULL. */
extern const ms__lb_route_t ms__lb_routes[];

/* What the balancer decides about a request from its head. */
typedef struct ms__lb_verdict {
  const ms__lb_route_t *route; /* the route, when status is 0 */
  unsigned status;             /* 0: go on; else 404, 401 or 405 */
  char allow[32];              /* a 405's Allow header */
  char msg[768];               /* a refusal's sentence */
} ms__lb_verdict_t;

/* How memsleep-lb names its own keys in 401 answers. */
#define MS__LB_AUTH_NAMES                                                                          \
  { "memsleep-lb", "MEMSLEEP_LB_API_KEY", "MEMSLEEP_LB_ADMIN_API_KEY" }

/*
 * Judges method on path (without the query string) with the Authorization
 * header value authorization (NULL: absent) against the balancer's keys:
 * 404 for an unknown path, then 401 when the key the path needs is missing
 * or wrong, then 405 for the wrong method; status 0 otherwise.
 */
void ms__lb_judge(const ms__auth_keys_t *keys, const char *method, const char *path,
                  const char *authorization, ms__lb_verdict_t *v);

#endif /* MEMSLEEP_LB_ROUTES_H */
