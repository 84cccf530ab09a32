/*
 * front.h - the HTTP side of memsleep-lb (libmicrohttpd).
 *
 * One thread per client connection: a handler may block while a worker
 * answers. Routes: POST /generate and /v1/completions (proxy.c); POST
 * control endpoints and the vLLM-style aliases /sleep, /wake_up, with
 * their query strings (fanout.c); GET /is_sleeping (aggregated), GET
 * /get_server_info (each worker's), GET /health (the load balancer's own).
 * Any other path is 404, a request without the key its path needs 401
 * (routes.h), a known path with the wrong method 405, a body over
 * --max-body-bytes 413; every error is {"error": "..."}. A request must
 * arrive whole within --request-timeout (common/conn_guard.h).
 */
#ifndef MEMSLEEP_LB_FRONT_H
#define MEMSLEEP_LB_FRONT_H

#include <jansson.h>
#include <microhttpd.h>
#include <stddef.h>

#include "lb/lb.h"

#if defined(__GNUC__)
#define MS__LB_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define MS__LB_PRINTF(f, a)
#endif

/* Answers status with body (compact JSON; the reference is taken). */
enum MHD_Result ms__front_json(struct MHD_Connection *conn, unsigned status, json_t *body);

/* Answers status with {"error": message}. */
enum MHD_Result ms__front_error(struct MHD_Connection *conn, unsigned status, const char *fmt, ...)
    MS__LB_PRINTF(3, 4);

/*
 * Starts the daemon on lb->opt.host:port. Returns it (lb->port set to the
 * port bound), or NULL with a message in err.
 */
struct MHD_Daemon *ms__front_start(ms__lb_t *lb, char *err, size_t errlen);

/* Stops accepting, then ends every connection (streams give up within
 * about 100 ms once lb->stopping is set) and joins their threads. */
void ms__front_stop(struct MHD_Daemon *d);

#endif /* MEMSLEEP_LB_FRONT_H */
