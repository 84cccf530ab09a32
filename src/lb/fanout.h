/*
 * fanout.h - one control request sent to every worker in parallel.
 *
 * The caller's method, path (with its query string) and body go unchanged
 * to every worker at once, on one curl multi handle driven by the calling
 * thread. Every transfer is bounded by the total timeout (--control-timeout)
 * and the connect timeout, so a hung worker costs the caller at most that
 * long. What each worker answered is kept, capped: at most 500 bytes of an
 * error body (the transfer is aborted past that, never read further), at
 * most MS__LB_ANSWER_MAX bytes of a success.
 */
#ifndef MEMSLEEP_LB_FANOUT_H
#define MEMSLEEP_LB_FANOUT_H

#include <jansson.h>
#include <stddef.h>

#include "lb/capture.h"
#include "lb/lb.h"

/* What one worker answered. */
typedef struct ms__fanout_result {
  const char *server; /* the worker's URL (owned by the pool) */
  long status;        /* HTTP status, 0 when none was received */
  int ok;             /* 2xx and complete (a success) */
  char error[384];    /* transport failure, "" when an answer came */
  ms__capture_t body; /* the body, capped */
} ms__fanout_result_t;

/*
 * Sends method path_query (with body[0..body_len) and content_type when
 * body is not NULL, and the header "Authorization: authorization" when that
 * is not NULL) to every worker of lb and waits for all of them, at most
 * --control-timeout. Returns an array of lb->pool.n results (free with
 * ms__fanout_free), or NULL when out of memory.
 */
ms__fanout_result_t *ms__fanout(ms__lb_t *lb, const char *method, const char *path_query,
                                const char *body, size_t body_len, const char *content_type,
                                const char *authorization);

/* A JSON string of bytes[0..n) (NULL: empty) with invalid UTF-8 replaced
 * by U+FFFD, or NULL when out of memory. */
json_t *ms__lb_text_json(const char *bytes, size_t n);

/* Frees results of n workers. */
void ms__fanout_free(ms__fanout_result_t *r, size_t n);

/*
 * The failure entry of r for a 502 body: {"server","status","detail"} for
 * an HTTP error (detail: the first 500 bytes, invalid UTF-8 replaced) or
 * {"server","error"} for a transport failure. NULL when r succeeded.
 */
json_t *ms__fanout_failure_json(const ms__fanout_result_t *r);

/* r's body as JSON when it parses, else as a (sanitized) string. */
json_t *ms__fanout_answer_json(const ms__fanout_result_t *r);

/*
 * The answer to a fan-out of method path over n workers: 200 {"success":
 * true, "answers": [...]} when every worker answered 2xx, else 502
 * {"error", "failed": "k/n", "failures": [...]}. Sets *status.
 */
json_t *ms__fanout_reply(const ms__fanout_result_t *r, size_t n, const char *method,
                         const char *path, unsigned *status);

/*
 * The answer to GET /is_sleeping over n workers: 200 {"is_sleeping": any
 * worker asleep, "workers": [{"server", "is_sleeping", "answer"}]} when
 * every worker answered 2xx with a boolean "is_sleeping"; else the 502 of
 * ms__fanout_reply, a worker whose answer has no such boolean counted as
 * failed (r is updated to say so). Sets *status.
 */
json_t *ms__fanout_is_sleeping(ms__fanout_result_t *r, size_t n, unsigned *status);

#endif /* MEMSLEEP_LB_FANOUT_H */
