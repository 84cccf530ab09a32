/*
 * http.c - the libmicrohttpd daemon, body reading, routing and the reply
 * helpers (see http.h).
 */
#include "server/http.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/json_util.h"

/* Queues resp with status on req's connection, counts it, drops our
 * reference. A NULL resp (out of memory) drops the connection. */
static enum MHD_Result queue(ms__http_req_t *req, unsigned status, struct MHD_Response *resp) {
  if (!resp)
    return MHD_NO;
  if (req->retry_after_s > 0 && status >= 400) {
    char v[16];
    snprintf(v, sizeof v, "%u", req->retry_after_s);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, v);
  }
  if (req->allow)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, req->allow);
  if (req->www_authenticate)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
  enum MHD_Result r = MHD_queue_response(req->conn, status, resp);
  MHD_destroy_response(resp);
  req->answered = 1;
  ms__metrics_count(&req->srv->metrics, req->endpoint, status);
  return r;
}

enum MHD_Result ms__reply_text(ms__http_req_t *req, unsigned status, const char *content_type,
                               const char *text, size_t len) {
  struct MHD_Response *resp =
      MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_MUST_COPY);
  if (resp)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
  return queue(req, status, resp);
}

enum MHD_Result ms__reply_json(ms__http_req_t *req, unsigned status, json_t *body) {
  char *s = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
  json_decref(body);
  if (!s)
    return MHD_NO;
  size_t n = strlen(s);
  struct MHD_Response *resp = MHD_create_response_from_buffer(n, s, MHD_RESPMEM_MUST_FREE);
  if (!resp) {
    free(s);
    return MHD_NO;
  }
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
  return queue(req, status, resp);
}

enum MHD_Result ms__reply_error(ms__http_req_t *req, unsigned status, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  json_t *body = json_object();
  json_object_set_new(body, "error", ms__json_text(msg, strlen(msg)));
  return ms__reply_json(req, status, body);
}

enum MHD_Result ms__reply_stream(ms__http_req_t *req, MHD_ContentReaderCallback reader, void *cls,
                                 MHD_ContentReaderFreeCallback free_fn) {
  struct MHD_Response *resp =
      MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, reader, cls, free_fn);
  if (!resp) {
    free_fn(cls);
    return MHD_NO;
  }
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
  return queue(req, MHD_HTTP_OK, resp);
}

int ms__http_fd(ms__http_req_t *req) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  return ci ? ci->connect_fd : -1;
}

const char *ms__http_arg(ms__http_req_t *req, const char *key) {
  return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, key);
}

void ms__http_judge(const ms__server_options_t *o, const char *method, const char *path,
                    const char *authorization, ms__http_verdict_t *v) {
  static const ms__auth_names_t names = MS__SERVE_AUTH_NAMES;
  memset(v, 0, sizeof *v);
  v->endpoint = "other";
  const ms__route_t *known = NULL;
  for (const ms__route_t *r = ms__routes; r->path; r++) {
    if (strcmp(r->path, path) != 0)
      continue;
    known = r;
    if (strcmp(r->method, method) == 0) {
      v->route = r;
      break;
    }
    size_t n = strlen(v->allow);
    snprintf(v->allow + n, sizeof v->allow - n, "%s%s", n ? ", " : "", r->method);
  }
  if (!known) {
    v->status = MHD_HTTP_NOT_FOUND;
    snprintf(v->msg, sizeof v->msg,
             "no endpoint %.64s %.256s; see GET /get_server_info and docs/http-api.md", method,
             path);
    return;
  }
  v->endpoint = known->path;
  /* Every row of a path names the same key (routes.c). The key is checked
   * before the method, so that a caller without it learns nothing more
   * than that the path exists. */
  ms__auth_result_t a = ms__auth_check(&o->keys, known->access, authorization);
  if (a != MS__AUTH_OK) {
    v->route = NULL;
    v->status = MHD_HTTP_UNAUTHORIZED;
    ms__auth_message(a, ms__auth_effective(&o->keys, known->access), &names, v->msg, sizeof v->msg);
    return;
  }
  if (!v->route) {
    v->status = MHD_HTTP_METHOD_NOT_ALLOWED;
    snprintf(v->msg, sizeof v->msg, "%.64s is not allowed on %s; use %s", method, known->path,
             v->allow);
  }
}

/* Appends an upload chunk to req's body, or drops it once the body passes
 * the cap (the answer is then 413). Returns -1 only when out of memory. */
static int body_append(ms__http_req_t *req, const char *data, size_t n) {
  if (req->body_too_large)
    return 0;
  if (req->body_len + n > req->srv->opt.max_body_bytes) {
    req->body_too_large = 1;
    return 0;
  }
  if (req->body_len + n + 1 > req->body_cap) {
    size_t cap = req->body_cap ? req->body_cap : 4096;
    while (cap < req->body_len + n + 1)
      cap *= 2;
    char *b = realloc(req->body, cap);
    if (!b)
      return -1;
    req->body = b;
    req->body_cap = cap;
  }
  memcpy(req->body + req->body_len, data, n);
  req->body_len += n;
  req->body[req->body_len] = '\0';
  return 0;
}

/*
 * libmicrohttpd's access handler: called first with the headers (where the
 * request is judged), then with each chunk of the body, then once with
 * *upload_data_size == 0 when the body is complete; only that last call
 * answers. The body of a refused request is dropped as it comes.
 */
static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls) {
  (void)version;
  ms__server_t *srv = cls;
  ms__http_req_t *req = *con_cls;
  if (!req) {
    req = calloc(1, sizeof *req);
    if (!req)
      return MHD_NO;
    req->srv = srv;
    req->conn = conn;
    req->method = method;
    req->path = url;
    req->endpoint = "other";
    *con_cls = req;
    ms__http_verdict_t v;
    ms__http_judge(&srv->opt, method, url,
                   MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization"), &v);
    req->endpoint = v.endpoint;
    req->route = v.route;
    req->refused = v.status;
    if (v.status) {
      req->refusal = strdup(v.msg);
      snprintf(req->allow_buf, sizeof req->allow_buf, "%s", v.allow);
      if (!req->refusal)
        return MHD_NO;
    }
    /* A declared length over the cap is known now; the body is still read
     * (and dropped) so that the client sees the answer, not a reset. */
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    if (cl && strtoull(cl, NULL, 10) > srv->opt.max_body_bytes)
      req->body_too_large = 1;
    return MHD_YES;
  }
  if (*upload_data_size > 0) {
    if (!req->refused && body_append(req, upload_data, *upload_data_size) != 0)
      return MHD_NO;
    *upload_data_size = 0;
    return MHD_YES;
  }
  if (req->answered)
    return MHD_YES;
  ms__conn_guard_request_in(conn);
  if (req->refused == MHD_HTTP_UNAUTHORIZED) {
    ms__metrics_count_unauthorized(&srv->metrics);
    req->www_authenticate = 1;
  }
  if (req->refused == MHD_HTTP_METHOD_NOT_ALLOWED)
    req->allow = req->allow_buf;
  if (req->refused)
    return ms__reply_error(req, req->refused, "%s", req->refusal);
  if (!req->body) {
    req->body = calloc(1, 1);
    if (!req->body)
      return MHD_NO;
  }
  if (req->body_too_large)
    return ms__reply_error(req, MHD_HTTP_CONTENT_TOO_LARGE,
                           "the request body is larger than %zu bytes (--max-body-bytes); send "
                           "a shorter prompt or raise the limit",
                           srv->opt.max_body_bytes);
  return req->route->fn(req);
}

/* libmicrohttpd's request-completed callback: frees the request. A
 * streaming response's own state is freed by its free callback. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  (void)cls;
  (void)toe;
  ms__conn_guard_answer_done(conn);
  ms__http_req_t *req = *con_cls;
  if (!req)
    return;
  free(req->body);
  free(req->refusal);
  free(req);
  *con_cls = NULL;
}

struct MHD_Daemon *ms__http_start(ms__server_t *srv, char *err, size_t errlen) {
  struct addrinfo hints, *ai = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  char port[16];
  snprintf(port, sizeof port, "%d", srv->opt.port);
  int gai = getaddrinfo(srv->opt.host, port, &hints, &ai);
  if (gai != 0) {
    ms__errf(err, errlen, "cannot resolve --host %s: %s", srv->opt.host, gai_strerror(gai));
    return NULL;
  }
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
                   MHD_USE_ERROR_LOG | MHD_USE_ITC;
  if (ai->ai_family == AF_INET6)
    flags |= MHD_USE_IPv6;
  struct MHD_Daemon *d = MHD_start_daemon(
      flags, (uint16_t)srv->opt.port, NULL, NULL, on_access, srv, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
      MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv, MHD_OPTION_NOTIFY_CONNECTION,
      ms__conn_guard_notify, srv->guard, MHD_OPTION_CONNECTION_LIMIT, srv->opt.connection_limit,
      MHD_OPTION_CONNECTION_TIMEOUT, srv->opt.timeout_s, MHD_OPTION_END);
  freeaddrinfo(ai);
  if (!d) {
    ms__errf(err, errlen,
             "cannot listen on %s:%d (address in use, or not an address of this machine?)",
             srv->opt.host, srv->opt.port);
    return NULL;
  }
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
  srv->port = di ? di->port : srv->opt.port;
  return d;
}

void ms__http_stop(ms__server_t *srv, struct MHD_Daemon *d, unsigned grace_ms) {
  if (!d)
    return;
  MHD_socket ls = MHD_quiesce_daemon(d);
  if (ls != MHD_INVALID_SOCKET)
    close(ls);
  for (unsigned t = 0; t < grace_ms && atomic_load(&srv->active_gens) > 0; t += 10)
    usleep(10 * 1000);
  MHD_stop_daemon(d);
}
