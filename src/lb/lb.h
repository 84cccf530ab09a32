/*
 * lb.h - what every part of memsleep-lb shares: its options and its state.
 *
 * memsleep-lb sits in front of many memsleep-serve workers. front.c is the
 * HTTP side (libmicrohttpd, one thread per client connection), pool.c the
 * workers and their health checks, proxy.c forwards generation to one
 * worker with the answer streamed through as it arrives, fanout.c sends a
 * control request to every worker in parallel and judges the answers.
 * Every wait on a worker is bounded by a timeout given here.
 *
 * Keys (docs/security.md): the balancer checks its own keys on what
 * clients send (routes.h) and presents the workers' keys to the workers:
 * worker_keys.api on generation and the read-only fan-outs, worker_keys.admin
 * on the control fan-out (each falls back on the other when only one is
 * set; with neither, the client's own Authorization header goes through).
 */
#ifndef MEMSLEEP_LB_LB_H
#define MEMSLEEP_LB_LB_H

#include <stdatomic.h>
#include <stddef.h>

#include "common/auth.h"
#include "common/conn_guard.h"
#include "lb/pool.h"

#define MS__LB_VERSION "0.1.0"
/* Largest request body accepted by default (as memsleep-serve). */
#define MS__LB_DEFAULT_MAX_BODY_BYTES ((size_t)8 << 20)
/* Default --request-timeout, in seconds (as memsleep-serve). */
#define MS__LB_DEFAULT_REQUEST_TIMEOUT_S 30

typedef struct ms__lb_options {
  const char *host;            /* address to bind (default 127.0.0.1) */
  int port;                    /* port to bind (0: any free one) */
  long control_timeout_ms;     /* total bound of a control fan-out */
  long connect_timeout_ms;     /* bound of connecting to a worker */
  long generate_timeout_ms;    /* total bound of one forwarded generation */
  long health_interval_ms;     /* time between two health-check rounds */
  long health_timeout_ms;      /* bound of one GET /health */
  size_t max_body_bytes;       /* larger request bodies get 413 */
  unsigned max_connections;    /* client connections at most */
  unsigned idle_timeout_s;     /* idle client connections are closed after */
  unsigned request_timeout_s;  /* a request must arrive whole within it */
  ms__auth_keys_t keys;        /* the balancer's own: --api-key, --admin-api-key */
  ms__auth_keys_t worker_keys; /* the workers': --worker-api-key, --worker-admin-api-key */
} ms__lb_options_t;

typedef struct ms__lb {
  ms__lb_options_t opt;
  ms__pool_t pool;           /* the workers */
  atomic_int stopping;       /* set on SIGINT/SIGTERM: waits give up */
  int port;                  /* the port really bound */
  ms__conn_guard_t *guard;   /* the request-read deadline of client connections */
  atomic_ulong unauthorized; /* client requests refused 401 */
} ms__lb_t;

/*
 * The Authorization header value to send a worker for a request of level
 * need (MS__ACCESS_API or MS__ACCESS_ADMIN), written into out: "Bearer" and
 * the worker key of that level (or of the other level when only that one
 * is set); else the client's own value (client_auth, may be NULL). Returns
 * out, or NULL when there is nothing to send.
 */
const char *ms__lb_worker_auth(const ms__lb_t *lb, ms__access_t need, const char *client_auth,
                               char *out, size_t outlen);

#endif /* MEMSLEEP_LB_LB_H */
