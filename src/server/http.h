/*
 * http.h - the HTTP layer of memsleep-serve: a libmicrohttpd daemon, a
 * route table, and the helpers every handler answers with.
 *
 * The daemon runs one thread per connection, so a handler may block while
 * its request generates, and a streaming response's reader may block until
 * the next token. From the request's head alone, ms__http_judge finds the
 * route by method and path (404 for an unknown path, 405 for a known path
 * with the wrong method) and checks the key the route's access level needs
 * (401, docs/security.md); the body of a refused request is read and
 * dropped, never stored. http.c reads the body of the others (up to
 * --max-body-bytes; larger bodies are read and dropped, then answered 413)
 * and calls the handler once with the complete request. A request must
 * arrive whole within --request-timeout (common/conn_guard.h). Every error
 * answer is a JSON object {"error": "..."} built by ms__reply_error, which
 * says what was wrong and what to do.
 *
 * Adding an endpoint: write a handler (int fn(ms__http_req_t *)) in a
 * routes_*.c file, declare it in routes.h and add a row to the table in
 * routes.c with its access level: MS__ACCESS_ADMIN for anything that
 * changes the server's state.
 */
#ifndef MEMSLEEP_SERVER_HTTP_H
#define MEMSLEEP_SERVER_HTTP_H

#include <jansson.h>
#include <microhttpd.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/auth.h"
#include "core/error.h"
#include "server/server.h"

typedef struct ms__http_req {
  ms__server_t *srv;
  struct MHD_Connection *conn;
  const char *method;   /* "GET", "POST", ... (owned by libmicrohttpd) */
  const char *path;     /* the URL path without the query string */
  const char *endpoint; /* the route's path, or "other" (for metrics) */
  char *body;           /* the request body, NUL-terminated (never NULL) */
  size_t body_len;
  size_t body_cap;
  int body_too_large;            /* the body passed --max-body-bytes and was dropped */
  const struct ms__route *route; /* its route (NULL when refused) */
  unsigned refused;              /* > 0: the status ms__http_judge refused it with */
  char *refusal;                 /* the refusal's sentence (owned) */
  char allow_buf[64];            /* the refusal's Allow header (405) */
  int www_authenticate;          /* the answer carries WWW-Authenticate: Bearer (401) */
  unsigned retry_after_s;        /* > 0: error answers carry Retry-After */
  const char *allow;             /* set: the answer carries Allow (405) */
  int answered;                  /* a response has been queued */
} ms__http_req_t;

/* A route handler: answers req with one of the ms__reply_* helpers (or
 * returns MHD_NO to drop the connection) and returns what they return. */
typedef enum MHD_Result (*ms__route_fn)(ms__http_req_t *req);

typedef struct ms__route {
  const char *method;
  const char *path;
  ms__route_fn fn;
  ms__access_t access; /* the key it needs (common/auth.h) */
} ms__route_t;

/* The route table (routes.c), ended by a row with path NULL. */
extern const ms__route_t ms__routes[];

/* What the HTTP layer decides about a request from its head alone. */
typedef struct ms__http_verdict {
  const ms__route_t *route; /* the route, when status is 0 */
  const char *endpoint;     /* the metrics label: the route's path, or "other" */
  unsigned status;          /* 0: read the body, then call route->fn; else refuse with it */
  char allow[64];           /* a 405's Allow header */
  char msg[768];            /* a refusal's sentence */
} ms__http_verdict_t;

/*
 * Judges a request of method on path (without its query string) carrying
 * the Authorization header value authorization (NULL when absent), for a
 * server with options o: 404 for an unknown path, then 401 when the key
 * that the path's access level needs is missing or wrong, then 405 for the
 * wrong method; status 0 otherwise. Pure: no socket, no server state, so
 * that tests and the fuzzer (tests/fuzz) call it directly.
 */
void ms__http_judge(const ms__server_options_t *o, const char *method, const char *path,
                    const char *authorization, ms__http_verdict_t *v);

/* Answers status with body serialized compactly; takes body's reference. */
enum MHD_Result ms__reply_json(ms__http_req_t *req, unsigned status, json_t *body);

/* Answers status with {"error": message}; the message says what is wrong
 * and what to do. */
enum MHD_Result ms__reply_error(ms__http_req_t *req, unsigned status, const char *fmt, ...)
    MS__PRINTF(3, 4);

/* Answers status with text (copied) of the given content type. */
enum MHD_Result ms__reply_text(ms__http_req_t *req, unsigned status, const char *content_type,
                               const char *text, size_t len);

/*
 * Answers 200 with a server-sent-events stream (text/event-stream) whose
 * bytes come from reader (called on this connection's thread, may block).
 * free_fn(cls) runs once when the response is done, whether it ended
 * normally or the client went away.
 */
enum MHD_Result ms__reply_stream(ms__http_req_t *req, MHD_ContentReaderCallback reader, void *cls,
                                 MHD_ContentReaderFreeCallback free_fn);

/* The socket of req's connection, or -1. */
int ms__http_fd(ms__http_req_t *req);

/* A query-string argument of req, or NULL. */
const char *ms__http_arg(ms__http_req_t *req, const char *key);

/*
 * Starts the daemon on host:port serving srv. Returns it, or NULL with a
 * message in err. srv->port is set to the port really bound.
 */
struct MHD_Daemon *ms__http_start(ms__server_t *srv, char *err, size_t errlen);

/*
 * Stops the daemon: stops accepting, lets the generation requests that are
 * still answering (cancelled by srv->stopping) send their last bytes for at
 * most grace_ms, then ends every connection and joins their threads.
 */
void ms__http_stop(ms__server_t *srv, struct MHD_Daemon *d, unsigned grace_ms);

#endif /* MEMSLEEP_SERVER_HTTP_H */
