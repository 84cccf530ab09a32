/*
 * proxy.h - forwards one generation request to one worker and streams the
 * answer back as it arrives.
 *
 * The request goes to the healthy worker with the fewest requests in
 * flight. The worker's status and headers are awaited on the client's
 * thread (a worker that cannot be connected to is taken out of rotation
 * and the next one is tried: nothing was sent to it). Then the client gets
 * the same status and Content-Type, and the body through a
 * libmicrohttpd callback response: each call drains what curl's write
 * callback put in a small per-request buffer, and drives the transfer
 * (curl multi, on this thread) only when that buffer is empty. curl is
 * paused while the buffer holds MS__PROXY_BUF_MAX bytes, so nothing is
 * buffered whole: server-sent events reach the client as the worker sends
 * them. A worker that breaks off mid-answer makes the client's connection
 * end without the final chunk, so the client sees the answer is cut.
 */
#ifndef MEMSLEEP_LB_PROXY_H
#define MEMSLEEP_LB_PROXY_H

#include <microhttpd.h>
#include <stddef.h>

#include "lb/lb.h"

/* Bytes held for one client before curl is paused. */
#define MS__PROXY_BUF_MAX 65536

/*
 * Forwards POST path with body[0..body_len) (taken: freed by the proxy) on
 * conn and queues the answer: the worker's, streamed; 503 {"error"} when
 * no worker is healthy; 502 {"error","server"} when the chosen worker
 * failed before answering. content_type (may be NULL) is the client's
 * header to pass on; authorization (may be NULL) is the Authorization
 * value to send the worker (ms__lb_worker_auth). Returns what
 * MHD_queue_response returned (MHD_NO drops the connection).
 */
enum MHD_Result ms__proxy_generate(ms__lb_t *lb, struct MHD_Connection *conn, const char *path,
                                   char *body, size_t body_len, const char *content_type,
                                   const char *authorization);

#endif /* MEMSLEEP_LB_PROXY_H */
