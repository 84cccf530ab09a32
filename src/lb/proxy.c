/*
 * proxy.c - generation forwarding with streaming pass-through (see
 * proxy.h).
 */
#include "lb/proxy.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "lb/front.h"

/* One forwarded request: the transfer to the worker and the bytes it has
 * sent that the client has not had yet. */
typedef struct proxy {
  ms__lb_t *lb;
  ms__worker_t *w; /* counted in flight until proxy_free */
  CURLM *multi;
  CURL *easy;
  struct curl_slist *hdrs;
  char *body; /* the request body (owned) */
  char url[MS__LB_URL_MAX + 64];
  char *buf; /* answer bytes buf[off..len) not yet sent */
  size_t off, len, cap;
  int paused;       /* curl is paused because buf is full */
  int headers_done; /* the final status and headers are in */
  int done;         /* the transfer ended (result says how) */
  int oom;          /* out of memory while storing bytes */
  CURLcode result;
  long status;
  char content_type[128];
  char retry_after[32];
} proxy_t;

/* Frees p and counts the end of its request. */
static void proxy_free(proxy_t *p) {
  if (!p)
    return;
  if (p->easy) {
    if (p->multi)
      curl_multi_remove_handle(p->multi, p->easy);
    curl_easy_cleanup(p->easy);
  }
  curl_multi_cleanup(p->multi);
  curl_slist_free_all(p->hdrs);
  if (p->w)
    ms__pool_done(p->w);
  free(p->body);
  free(p->buf);
  free(p);
}

/* curl's write callback: appends to buf, or pauses the transfer while buf
 * already holds MS__PROXY_BUF_MAX bytes (curl offers the same bytes again
 * after the unpause). */
static size_t on_body(char *data, size_t size, size_t nmemb, void *ud) {
  proxy_t *p = ud;
  size_t n = size * nmemb;
  if (p->off == p->len)
    p->off = p->len = 0;
  if (p->len - p->off > 0 && p->len - p->off + n > MS__PROXY_BUF_MAX) {
    p->paused = 1;
    return CURL_WRITEFUNC_PAUSE;
  }
  if (p->len + n > p->cap) {
    if (p->off > 0) {
      memmove(p->buf, p->buf + p->off, p->len - p->off);
      p->len -= p->off;
      p->off = 0;
    }
    if (p->len + n > p->cap) {
      size_t cap = p->cap ? p->cap : 16384;
      while (cap < p->len + n)
        cap *= 2;
      char *b = realloc(p->buf, cap);
      if (!b) {
        p->oom = 1;
        return 0;
      }
      p->buf = b;
      p->cap = cap;
    }
  }
  memcpy(p->buf + p->len, data, n);
  p->len += n;
  return n;
}

/* Copies the value of header line h (of length n) named name into out. */
static void header_value(const char *h, size_t n, const char *name, char *out, size_t outlen) {
  size_t k = strlen(name);
  if (n <= k || strncasecmp(h, name, k) != 0 || h[k] != ':')
    return;
  const char *v = h + k + 1;
  size_t vn = n - k - 1;
  while (vn > 0 && (*v == ' ' || *v == '\t'))
    v++, vn--;
  while (vn > 0 && (v[vn - 1] == '\r' || v[vn - 1] == '\n' || v[vn - 1] == ' '))
    vn--;
  if (vn >= outlen)
    vn = outlen - 1;
  memcpy(out, v, vn);
  out[vn] = '\0';
}

/* curl's header callback: keeps Content-Type and Retry-After; the blank
 * line after a final (non-1xx) status ends the headers. */
static size_t on_header(char *h, size_t size, size_t nmemb, void *ud) {
  proxy_t *p = ud;
  size_t n = size * nmemb;
  if (n >= 5 && strncmp(h, "HTTP/", 5) == 0) {
    p->content_type[0] = '\0';
    p->retry_after[0] = '\0';
  }
  header_value(h, n, "Content-Type", p->content_type, sizeof p->content_type);
  header_value(h, n, "Retry-After", p->retry_after, sizeof p->retry_after);
  if ((n == 2 && h[0] == '\r') || (n == 1 && h[0] == '\n')) {
    long status = 0;
    curl_easy_getinfo(p->easy, CURLINFO_RESPONSE_CODE, &status);
    if (status >= 200) {
      p->status = status;
      p->headers_done = 1;
    }
  }
  return n;
}

/* Moves the transfer on: at most one wait of wait_ms for the worker. */
static void pump(proxy_t *p, int wait_ms) {
  int running = 0;
  if (curl_multi_perform(p->multi, &running) != CURLM_OK) {
    p->done = 1;
    p->result = CURLE_FAILED_INIT;
    return;
  }
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(p->multi, &left))) {
    if (msg->msg == CURLMSG_DONE) {
      p->done = 1;
      p->result = msg->data.result;
    }
  }
  if (!p->done && running && p->len == p->off)
    curl_multi_poll(p->multi, NULL, 0, wait_ms, NULL);
}

/* Starts the transfer of p to worker w. Returns 0 or -1 (out of memory). */
static int proxy_start(proxy_t *p, const char *path, size_t body_len, const char *content_type,
                       const char *authorization) {
  snprintf(p->url, sizeof p->url, "%s%s", p->w->url, path);
  p->multi = curl_multi_init();
  p->easy = ms__lb_easy(p->url, p->lb->opt.generate_timeout_ms, p->lb->opt.connect_timeout_ms);
  if (!p->multi || !p->easy)
    return -1;
  char h[512];
  snprintf(h, sizeof h, "Content-Type: %s", content_type ? content_type : "application/json");
  struct curl_slist *s = curl_slist_append(NULL, h);
  if (!s)
    return -1;
  p->hdrs = s;
  if (!(s = curl_slist_append(p->hdrs, "Expect:")))
    return -1;
  if (authorization) {
    size_t an = strlen(authorization) + 32;
    char *a = malloc(an);
    if (!a)
      return -1;
    snprintf(a, an, "Authorization: %s", authorization);
    s = curl_slist_append(p->hdrs, a);
    free(a);
    if (!s)
      return -1;
  }
  curl_easy_setopt(p->easy, CURLOPT_HTTPHEADER, p->hdrs);
  curl_easy_setopt(p->easy, CURLOPT_POST, 1L);
  curl_easy_setopt(p->easy, CURLOPT_POSTFIELDS, p->body ? p->body : "");
  curl_easy_setopt(p->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
  curl_easy_setopt(p->easy, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(p->easy, CURLOPT_WRITEDATA, p);
  curl_easy_setopt(p->easy, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(p->easy, CURLOPT_HEADERDATA, p);
  if (curl_multi_add_handle(p->multi, p->easy) != CURLM_OK)
    return -1;
  return 0;
}

/* libmicrohttpd's content reader: hands out buffered bytes, driving the
 * transfer while there are none. Blocks (this connection's thread) until
 * bytes come, the answer ends, or the load balancer stops. */
static ssize_t reader(void *cls, uint64_t pos, char *out, size_t max) {
  (void)pos;
  proxy_t *p = cls;
  for (;;) {
    if (p->len > p->off) {
      size_t n = p->len - p->off;
      if (n > max)
        n = max;
      memcpy(out, p->buf + p->off, n);
      p->off += n;
      return (ssize_t)n;
    }
    if (p->paused) {
      p->paused = 0;
      curl_easy_pause(p->easy, CURLPAUSE_CONT);
      continue;
    }
    if (p->done || p->oom)
      return p->result == CURLE_OK && !p->oom ? MHD_CONTENT_READER_END_OF_STREAM
                                              : MHD_CONTENT_READER_END_WITH_ERROR;
    if (atomic_load(&p->lb->stopping))
      return MHD_CONTENT_READER_END_WITH_ERROR;
    pump(p, 100);
  }
}

static void reader_free(void *cls) {
  proxy_free(cls);
}

/* Queues the worker's status and headers with the body streamed from p
 * (which the response then owns). */
static enum MHD_Result answer_stream(struct MHD_Connection *conn, proxy_t *p) {
  struct MHD_Response *resp =
      MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, reader, p, reader_free);
  if (!resp) {
    proxy_free(p);
    return MHD_NO;
  }
  if (p->content_type[0])
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, p->content_type);
  if (strncmp(p->content_type, "text/event-stream", 17) == 0)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
  if (p->retry_after[0])
    MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, p->retry_after);
  MHD_add_response_header(resp, "X-Memsleep-Worker", p->w->url);
  enum MHD_Result r = MHD_queue_response(conn, (unsigned)p->status, resp);
  MHD_destroy_response(resp);
  return r;
}

/* True when a transfer that ended with rc before any answer never reached
 * the worker, so that the request may go to another one. */
static int never_reached(CURL *e, CURLcode rc) {
  curl_off_t connect_us = 0;
  curl_easy_getinfo(e, CURLINFO_CONNECT_TIME_T, &connect_us);
  return rc == CURLE_COULDNT_CONNECT || (rc == CURLE_OPERATION_TIMEDOUT && connect_us == 0);
}

/* The socket of conn's client, or -1. */
static int client_fd(struct MHD_Connection *conn) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  return ci ? ci->connect_fd : -1;
}

/* True when the client has closed its connection (it waits for no answer
 * any more). Bytes it may have sent ahead are left unread. */
static int client_gone(int fd) {
  if (fd < 0)
    return 0;
  struct pollfd pfd = {.fd = fd, .events = POLLIN | POLLRDHUP};
  if (poll(&pfd, 1, 0) <= 0)
    return 0;
  if (pfd.revents & (POLLHUP | POLLERR | POLLRDHUP))
    return 1;
  char b;
  return recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

enum MHD_Result ms__proxy_generate(ms__lb_t *lb, struct MHD_Connection *conn, const char *path,
                                   char *body, size_t body_len, const char *content_type,
                                   const char *authorization) {
  ms__pool_t *pool = &lb->pool;
  unsigned char skip[MS__LB_MAX_WORKERS];
  memset(skip, 0, sizeof skip);
  char tried[1024] = "";
  for (;;) {
    ms__worker_t *w = ms__pool_acquire(pool, skip);
    if (!w)
      break;
    proxy_t *p = calloc(1, sizeof *p);
    if (!p) {
      ms__pool_done(w);
      free(body);
      return MHD_NO;
    }
    p->lb = lb;
    p->w = w;
    p->body = body;
    if (proxy_start(p, path, body_len, content_type, authorization) != 0) {
      proxy_free(p);
      return ms__front_error(conn, 500, "out of memory forwarding %s", path);
    }
    int fd = client_fd(conn);
    while (!p->headers_done && !p->done && !p->oom && !atomic_load(&lb->stopping)) {
      pump(p, 100);
      if (client_gone(fd)) {
        /* Closing our connection to the worker cancels its request. */
        proxy_free(p);
        return MHD_NO;
      }
    }
    if (p->headers_done)
      return answer_stream(conn, p);
    char why[384];
    if (atomic_load(&lb->stopping))
      snprintf(why, sizeof why, "the load balancer is shutting down");
    else
      ms__lb_transport_error(p->easy, p->result, lb->opt.generate_timeout_ms,
                             lb->opt.connect_timeout_ms, "--generate-timeout", why, sizeof why);
    if (!atomic_load(&lb->stopping) && never_reached(p->easy, p->result)) {
      /* Nothing reached that worker: take it out and try the next. */
      ms__pool_mark_down(pool, w, why);
      skip[w - pool->w] = 1;
      size_t o = strlen(tried);
      snprintf(tried + o, sizeof tried - o, "%s%s: %s", o ? "; " : "", w->url, why);
      p->body = NULL; /* keep the body for the next try */
      proxy_free(p);
      continue;
    }
    char url[MS__LB_URL_MAX];
    snprintf(url, sizeof url, "%s", w->url);
    proxy_free(p);
    json_t *j = json_pack("{s:s,s:s}", "error", "", "server", url);
    char msg[768];
    snprintf(msg, sizeof msg, "worker %s failed before answering %s: %s", url, path, why);
    json_object_set_new(j, "error", json_string(msg));
    return ms__front_json(conn, 502, j);
  }
  free(body);
  size_t n = pool->n;
  char reasons[1536] = "";
  if (tried[0]) {
    snprintf(reasons, sizeof reasons, "%s", tried);
  } else {
    for (size_t i = 0; i < n; i++) {
      char e[256];
      ms__pool_last_error(pool, &pool->w[i], e, sizeof e);
      size_t o = strlen(reasons);
      snprintf(reasons + o, sizeof reasons - o, "%s%s: %s", o ? "; " : "", pool->w[i].url,
               e[0] ? e : "out of rotation");
    }
  }
  return ms__front_error(conn, 503,
                         "no healthy worker to send %s to: all %zu workers are out of rotation "
                         "(%s); retry when one answers GET /health",
                         path, n, reasons);
}
