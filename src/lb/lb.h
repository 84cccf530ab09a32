/*
 * lb.h - what every part of memsleep-lb shares: its options and its state.
 *
 * memsleep-lb sits in front of many memsleep-serve workers. front.c is the
 * HTTP side (libmicrohttpd, one thread per client connection), pool.c the
 * workers and their health checks, proxy.c forwards generation to one
 * worker with the answer streamed through as it arrives, fanout.c sends a
 * control request to every worker in parallel and judges the answers.
 * Every wait on a worker is bounded by a timeout given here.
 */
#ifndef MEMSLEEP_LB_LB_H
#define MEMSLEEP_LB_LB_H

#include <stdatomic.h>
#include <stddef.h>

#include "lb/pool.h"

#define MS__LB_VERSION "0.1.0"
/* Largest request body accepted by default (as memsleep-serve). */
#define MS__LB_DEFAULT_MAX_BODY_BYTES ((size_t)8 << 20)

typedef struct ms__lb_options {
  const char *host;         /* address to bind (default 127.0.0.1) */
  int port;                 /* port to bind (0: any free one) */
  long control_timeout_ms;  /* total bound of a control fan-out */
  long connect_timeout_ms;  /* bound of connecting to a worker */
  long generate_timeout_ms; /* total bound of one forwarded generation */
  long health_interval_ms;  /* time between two health-check rounds */
  long health_timeout_ms;   /* bound of one GET /health */
  size_t max_body_bytes;    /* larger request bodies get 413 */
  unsigned max_connections; /* client connections at most */
  unsigned idle_timeout_s;  /* idle client connections are closed after */
} ms__lb_options_t;

typedef struct ms__lb {
  ms__lb_options_t opt;
  ms__pool_t pool;     /* the workers */
  atomic_int stopping; /* set on SIGINT/SIGTERM: waits give up */
  int port;            /* the port really bound */
} ms__lb_t;

#endif /* MEMSLEEP_LB_LB_H */
