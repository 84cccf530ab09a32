/*
 * front.c - the libmicrohttpd daemon, routing and the handlers that are
 * not forwarding (see front.h).
 */
#include "lb/front.h"

#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lb/fanout.h"
#include "lb/proxy.h"
#include "lb/routes.h"

/* One client request: the raw URI (with its query string) and the body. */
typedef struct req {
  char *uri;  /* as the client sent it, path and query */
  char *body; /* NUL-terminated, may be NULL when empty */
  size_t body_len, body_cap;
  int body_too_large;
  int started; /* the call with the headers has been seen */
  int answered;
  ms__lb_verdict_t verdict; /* what the head decided (routes.h) */
} req_t;

/* Answers status with body (reference taken) and, when allow is set, an
 * Allow header; a 401 carries WWW-Authenticate. */
static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, json_t *body,
                             const char *allow) {
  char *s = body ? json_dumps(body, JSON_COMPACT) : NULL;
  json_decref(body);
  if (!s)
    return MHD_NO;
  struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE);
  if (!resp) {
    free(s);
    return MHD_NO;
  }
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
  if (allow)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
  if (status == MHD_HTTP_UNAUTHORIZED)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
  enum MHD_Result r = MHD_queue_response(conn, status, resp);
  MHD_destroy_response(resp);
  return r;
}

enum MHD_Result ms__front_json(struct MHD_Connection *conn, unsigned status, json_t *body) {
  return reply(conn, status, body, NULL);
}

enum MHD_Result ms__front_error(struct MHD_Connection *conn, unsigned status, const char *fmt,
                                ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return ms__front_json(conn, status,
                        json_pack("{s:o}", "error", ms__lb_text_json(msg, strlen(msg))));
}

/* GET /health: 200 while some worker is in rotation, else 503 saying so. */
static enum MHD_Result on_health(ms__lb_t *lb, struct MHD_Connection *conn) {
  size_t h = ms__pool_healthy(&lb->pool), n = lb->pool.n;
  if (h == 0)
    return ms__front_error(conn, 503,
                           "no healthy worker: none of the %zu workers answers GET /health; see "
                           "GET /get_server_info for each one's last error",
                           n);
  return ms__front_json(conn, 200,
                        json_pack("{s:s,s:I,s:I}", "status", "ok", "healthy_workers", (json_int_t)h,
                                  "workers", (json_int_t)n));
}

/* POST control endpoints: every worker, the caller's body unchanged. */
static enum MHD_Result on_fanout(ms__lb_t *lb, struct MHD_Connection *conn, const char *method,
                                 const char *path, req_t *rq) {
  const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
  char auth[4200];
  const char *a = ms__lb_worker_auth(
      lb, MS__ACCESS_ADMIN, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization"),
      auth, sizeof auth);
  ms__fanout_result_t *r = ms__fanout(lb, method, rq->uri, rq->body, rq->body_len, ct, a);
  if (!r)
    return ms__front_error(conn, 500, "out of memory starting the fan-out of %s", path);
  unsigned status;
  json_t *j = ms__fanout_reply(r, lb->pool.n, method, path, &status);
  ms__fanout_free(r, lb->pool.n);
  return ms__front_json(conn, status, j);
}

/* GET /is_sleeping: asleep when any worker is; each worker's answer. A
 * worker that fails, or answers without a boolean is_sleeping, makes it a
 * 502 like any fan-out. */
static enum MHD_Result on_is_sleeping(ms__lb_t *lb, struct MHD_Connection *conn, req_t *rq) {
  size_t n = lb->pool.n;
  char auth[4200];
  const char *a = ms__lb_worker_auth(
      lb, MS__ACCESS_API, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization"), auth,
      sizeof auth);
  ms__fanout_result_t *r = ms__fanout(lb, "GET", rq->uri, NULL, 0, NULL, a);
  if (!r)
    return ms__front_error(conn, 500, "out of memory starting the fan-out of /is_sleeping");
  unsigned status;
  json_t *j = ms__fanout_is_sleeping(r, n, &status);
  ms__fanout_free(r, n);
  return ms__front_json(conn, status, j);
}

/* GET /get_server_info: the load balancer's settings and, for each
 * worker, its state here and its own /get_server_info (or why not). */
static enum MHD_Result on_info(ms__lb_t *lb, struct MHD_Connection *conn) {
  size_t n = lb->pool.n;
  char auth[4200];
  const char *a = ms__lb_worker_auth(
      lb, MS__ACCESS_API, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization"), auth,
      sizeof auth);
  ms__fanout_result_t *r = ms__fanout(lb, "GET", "/get_server_info", NULL, 0, NULL, a);
  if (!r)
    return ms__front_error(conn, 500, "out of memory starting the fan-out of /get_server_info");
  json_t *workers = json_array();
  for (size_t i = 0; i < n; i++) {
    ms__worker_t *w = &lb->pool.w[i];
    char last[256];
    ms__pool_last_error(&lb->pool, w, last, sizeof last);
    json_t *o = json_pack(
        "{s:s,s:b,s:I,s:I}", "server", w->url, "healthy", atomic_load(&w->healthy), "in_flight",
        (json_int_t)atomic_load(&w->in_flight), "requests", (json_int_t)atomic_load(&w->requests));
    if (last[0])
      json_object_set_new(o, "health_error", json_string(last));
    if (r[i].ok) {
      json_object_set_new(o, "info", ms__fanout_answer_json(&r[i]));
    } else {
      json_t *f = ms__fanout_failure_json(&r[i]);
      json_object_update_missing(o, f);
      json_decref(f);
    }
    json_array_append_new(workers, o);
  }
  ms__fanout_free(r, n);
  const ms__lb_options_t *op = &lb->opt;
  json_t *args = json_pack(
      "{s:s,s:i,s:f,s:f,s:f,s:f,s:f,s:I}", "host", op->host, "port", lb->port, "control_timeout_s",
      op->control_timeout_ms / 1000.0, "connect_timeout_s", op->connect_timeout_ms / 1000.0,
      "generate_timeout_s", op->generate_timeout_ms / 1000.0, "health_interval_s",
      op->health_interval_ms / 1000.0, "health_timeout_s", op->health_timeout_ms / 1000.0,
      "max_body_bytes", (json_int_t)op->max_body_bytes);
  /* Whether each key is set, never the key. */
  if (args) {
    json_object_set_new(args, "max_connections", json_integer(op->max_connections));
    json_object_set_new(args, "idle_timeout_s", json_integer(op->idle_timeout_s));
    json_object_set_new(args, "request_timeout_s", json_integer(op->request_timeout_s));
    json_object_set_new(args, "api_key", json_boolean(op->keys.api != NULL));
    json_object_set_new(args, "admin_api_key", json_boolean(op->keys.admin != NULL));
    json_object_set_new(args, "worker_api_key", json_boolean(op->worker_keys.api != NULL));
    json_object_set_new(args, "worker_admin_api_key", json_boolean(op->worker_keys.admin != NULL));
  }
  json_t *counters =
      json_pack("{s:I,s:I}", "unauthorized_requests", (json_int_t)atomic_load(&lb->unauthorized),
                "request_timeouts", (json_int_t)ms__conn_guard_cut_count(lb->guard));
  return ms__front_json(conn, 200,
                        json_pack("{s:s,s:s,s:o,s:o,s:I,s:o}", "server", "memsleep-lb", "version",
                                  MS__LB_VERSION, "arguments", args, "counters", counters,
                                  "healthy_workers", (json_int_t)ms__pool_healthy(&lb->pool),
                                  "workers", workers));
}

/* Appends an upload chunk to rq's body, or drops it past the cap (the
 * answer is then 413). Returns -1 only when out of memory. */
static int body_append(ms__lb_t *lb, req_t *rq, const char *data, size_t n) {
  if (rq->body_too_large)
    return 0;
  if (rq->body_len + n > lb->opt.max_body_bytes) {
    rq->body_too_large = 1;
    return 0;
  }
  if (rq->body_len + n + 1 > rq->body_cap) {
    size_t cap = rq->body_cap ? rq->body_cap : 4096;
    while (cap < rq->body_len + n + 1)
      cap *= 2;
    char *b = realloc(rq->body, cap);
    if (!b)
      return -1;
    rq->body = b;
    rq->body_cap = cap;
  }
  memcpy(rq->body + rq->body_len, data, n);
  rq->body_len += n;
  rq->body[rq->body_len] = '\0';
  return 0;
}

/* libmicrohttpd's URI log callback: runs first for every request, so it
 * creates the request and keeps the raw URI (query string included, which
 * the fan-out forwards as it came). */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn) {
  (void)cls;
  (void)conn;
  req_t *rq = calloc(1, sizeof *rq);
  if (rq && !(rq->uri = strdup(uri))) {
    free(rq);
    rq = NULL;
  }
  return rq;
}

/* libmicrohttpd's access handler: headers first (where the request is
 * judged: routes.h), then the body in chunks (dropped for a refused
 * request), then a last call (*upload_data_size == 0) that answers. */
static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls) {
  (void)version;
  ms__lb_t *lb = cls;
  req_t *rq = *con_cls;
  if (!rq)
    return MHD_NO;
  if (!rq->started) {
    /* The first call has only the headers; the body (if any) follows. */
    rq->started = 1;
    ms__lb_judge(&lb->opt.keys, method, url,
                 MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization"), &rq->verdict);
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    if (cl && strtoull(cl, NULL, 10) > lb->opt.max_body_bytes)
      rq->body_too_large = 1;
    return MHD_YES;
  }
  if (*upload_data_size > 0) {
    if (!rq->verdict.status && body_append(lb, rq, upload_data, *upload_data_size) != 0)
      return MHD_NO;
    *upload_data_size = 0;
    return MHD_YES;
  }
  if (rq->answered)
    return MHD_YES;
  rq->answered = 1;
  ms__conn_guard_request_in(conn);
  const ms__lb_verdict_t *v = &rq->verdict;
  if (v->status == 401)
    atomic_fetch_add(&lb->unauthorized, 1);
  if (v->status)
    return reply(conn, v->status,
                 json_pack("{s:o}", "error", ms__lb_text_json(v->msg, strlen(v->msg))),
                 v->status == 405 ? v->allow : NULL);
  if (rq->body_too_large)
    return ms__front_error(conn, 413,
                           "the request body is larger than %zu bytes (--max-body-bytes of "
                           "memsleep-lb); send less or raise the limit",
                           lb->opt.max_body_bytes);
  switch (v->route->kind) {
  case MS__LB_HEALTH:
    return on_health(lb, conn);
  case MS__LB_PROXY: {
    char *body = rq->body;
    size_t len = rq->body_len;
    rq->body = NULL;
    rq->body_len = rq->body_cap = 0;
    char auth[4200];
    const char *a = ms__lb_worker_auth(
        lb, MS__ACCESS_API, MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization"),
        auth, sizeof auth);
    return ms__proxy_generate(lb, conn, url, body, len,
                              MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type"),
                              a);
  }
  case MS__LB_FANOUT:
    return on_fanout(lb, conn, method, url, rq);
  case MS__LB_IS_SLEEPING:
    return on_is_sleeping(lb, conn, rq);
  case MS__LB_INFO:
    return on_info(lb, conn);
  }
  return MHD_NO;
}

/* libmicrohttpd's request-completed callback: frees the request. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  (void)cls;
  (void)toe;
  ms__conn_guard_answer_done(conn);
  req_t *rq = *con_cls;
  if (!rq)
    return;
  free(rq->uri);
  free(rq->body);
  free(rq);
  *con_cls = NULL;
}

struct MHD_Daemon *ms__front_start(ms__lb_t *lb, char *err, size_t errlen) {
  struct addrinfo hints, *ai = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  char port[16];
  snprintf(port, sizeof port, "%d", lb->opt.port);
  int gai = getaddrinfo(lb->opt.host, port, &hints, &ai);
  if (gai != 0) {
    snprintf(err, errlen, "cannot resolve --host %s: %s", lb->opt.host, gai_strerror(gai));
    return NULL;
  }
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
                   MHD_USE_ERROR_LOG | MHD_USE_ITC;
  if (ai->ai_family == AF_INET6)
    flags |= MHD_USE_IPv6;
  struct MHD_Daemon *d = MHD_start_daemon(
      flags, (uint16_t)lb->opt.port, NULL, NULL, on_access, lb, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
      MHD_OPTION_URI_LOG_CALLBACK, on_uri, lb, MHD_OPTION_NOTIFY_COMPLETED, on_completed, lb,
      MHD_OPTION_NOTIFY_CONNECTION, ms__conn_guard_notify, lb->guard, MHD_OPTION_CONNECTION_LIMIT,
      lb->opt.max_connections, MHD_OPTION_CONNECTION_TIMEOUT, lb->opt.idle_timeout_s,
      MHD_OPTION_END);
  freeaddrinfo(ai);
  if (!d) {
    snprintf(err, errlen,
             "cannot listen on %s:%d (address in use, or not an address of this machine?)",
             lb->opt.host, lb->opt.port);
    return NULL;
  }
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
  lb->port = di ? di->port : lb->opt.port;
  return d;
}

void ms__front_stop(struct MHD_Daemon *d) {
  if (!d)
    return;
  MHD_socket ls = MHD_quiesce_daemon(d);
  if (ls != MHD_INVALID_SOCKET)
    close(ls);
  MHD_stop_daemon(d);
}
