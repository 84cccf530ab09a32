/*
 * fanout.c - the parallel control fan-out (see fanout.h) and the JSON of
 * its answer.
 */
#include "lb/fanout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lb/utf8.h"

/* One transfer of the fan-out. */
typedef struct call {
  ms__fanout_result_t *r;
  CURL *e;
  char url[MS__LB_URL_MAX + 1024];
  int capped; /* the write callback aborted the transfer at the cap */
} call_t;

/* Stores a worker's body: the cap is fixed by the status of the first
 * bytes (500 for an error, MS__LB_ANSWER_MAX for a success); past it the
 * transfer is aborted so that nothing more is read. */
static size_t on_body(char *data, size_t size, size_t nmemb, void *ud) {
  call_t *c = ud;
  size_t n = size * nmemb;
  if (!c->r->body.buf && c->r->body.len == 0 && !c->r->body.truncated) {
    long status = 0;
    curl_easy_getinfo(c->e, CURLINFO_RESPONSE_CODE, &status);
    c->r->body.cap = status >= 200 && status < 300 ? MS__LB_ANSWER_MAX : MS__LB_DETAIL_MAX;
  }
  size_t kept = ms__capture_append(&c->r->body, data, n);
  if (kept == (size_t)-1 || kept < n) {
    c->capped = 1;
    return 0;
  }
  return n;
}

static long now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Records how c's transfer ended. */
static void finish(ms__lb_t *lb, call_t *c, CURLcode rc) {
  ms__fanout_result_t *r = c->r;
  curl_easy_getinfo(c->e, CURLINFO_RESPONSE_CODE, &r->status);
  int aborted_at_cap = rc == CURLE_WRITE_ERROR && c->capped;
  if (r->status >= 300 || (r->status > 0 && r->status < 200)) {
    /* An HTTP error: the status and the first bytes are the story, even
     * when the connection then broke. */
    r->ok = 0;
    return;
  }
  if (rc == CURLE_OK || (aborted_at_cap && r->status >= 200)) {
    r->ok = r->status >= 200 && r->status < 300;
    if (!r->ok)
      snprintf(r->error, sizeof r->error, "the worker answered with status %ld", r->status);
    return;
  }
  r->ok = 0;
  ms__lb_transport_error(c->e, rc, lb->opt.control_timeout_ms, lb->opt.connect_timeout_ms,
                         "--control-timeout", r->error, sizeof r->error);
}

ms__fanout_result_t *ms__fanout(ms__lb_t *lb, const char *method, const char *path_query,
                                const char *body, size_t body_len, const char *content_type,
                                const char *authorization) {
  size_t n = lb->pool.n;
  ms__fanout_result_t *r = calloc(n, sizeof *r);
  call_t *c = calloc(n, sizeof *c);
  CURLM *m = curl_multi_init();
  struct curl_slist *hdrs = NULL;
  char ct[256];
  snprintf(ct, sizeof ct, "Content-Type: %s", content_type ? content_type : "application/json");
  hdrs = curl_slist_append(hdrs, ct);
  struct curl_slist *h2 = hdrs ? curl_slist_append(hdrs, "Expect:") : NULL;
  if (h2 && authorization) {
    size_t an = strlen(authorization) + 32;
    char *auth = malloc(an);
    if (auth)
      snprintf(auth, an, "Authorization: %s", authorization);
    hdrs = h2;
    h2 = auth ? curl_slist_append(hdrs, auth) : NULL;
    free(auth);
  }
  if (!r || !c || !m || !h2) {
    free(r);
    free(c);
    curl_multi_cleanup(m);
    curl_slist_free_all(hdrs);
    return NULL;
  }
  hdrs = h2;
  for (size_t i = 0; i < n; i++) {
    r[i].server = lb->pool.w[i].url;
    ms__capture_init(&r[i].body, MS__LB_DETAIL_MAX);
    c[i].r = &r[i];
    snprintf(c[i].url, sizeof c[i].url, "%s%s", lb->pool.w[i].url, path_query);
    c[i].e = ms__lb_easy(c[i].url, lb->opt.control_timeout_ms, lb->opt.connect_timeout_ms);
    if (!c[i].e) {
      snprintf(r[i].error, sizeof r[i].error, "out of memory starting the request");
      continue;
    }
    curl_easy_setopt(c[i].e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c[i].e, CURLOPT_WRITEDATA, &c[i]);
    curl_easy_setopt(c[i].e, CURLOPT_PRIVATE, (char *)&c[i]);
    curl_easy_setopt(c[i].e, CURLOPT_HTTPHEADER, hdrs);
    if (strcmp(method, "GET") == 0) {
      curl_easy_setopt(c[i].e, CURLOPT_HTTPGET, 1L);
    } else {
      curl_easy_setopt(c[i].e, CURLOPT_POST, 1L);
      curl_easy_setopt(c[i].e, CURLOPT_POSTFIELDS, body ? body : "");
      curl_easy_setopt(c[i].e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? body_len : 0));
      if (strcmp(method, "POST") != 0)
        curl_easy_setopt(c[i].e, CURLOPT_CUSTOMREQUEST, method);
    }
    curl_multi_add_handle(m, c[i].e);
  }
  /* curl enforces each transfer's timeout; this deadline only guards
   * against a loop that would outlive them. */
  long deadline = now_ms() + lb->opt.control_timeout_ms + 1000;
  int running = 1;
  while (running) {
    if (curl_multi_perform(m, &running) != CURLM_OK)
      break;
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left))) {
      if (msg->msg != CURLMSG_DONE)
        continue;
      char *priv = NULL;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
      finish(lb, (call_t *)priv, msg->data.result);
    }
    if (!running)
      break;
    if (atomic_load(&lb->stopping) || now_ms() > deadline) {
      for (size_t i = 0; i < n; i++)
        if (c[i].e && !r[i].ok && r[i].status == 0 && !r[i].error[0])
          snprintf(r[i].error, sizeof r[i].error, "%s",
                   atomic_load(&lb->stopping) ? "the load balancer is shutting down"
                                              : "no answer before the fan-out's deadline");
      break;
    }
    curl_multi_poll(m, NULL, 0, 200, NULL);
  }
  for (size_t i = 0; i < n; i++) {
    if (!c[i].e)
      continue;
    curl_multi_remove_handle(m, c[i].e);
    curl_easy_cleanup(c[i].e);
  }
  curl_multi_cleanup(m);
  curl_slist_free_all(hdrs);
  free(c);
  return r;
}

void ms__fanout_free(ms__fanout_result_t *r, size_t n) {
  if (!r)
    return;
  for (size_t i = 0; i < n; i++)
    ms__capture_free(&r[i].body);
  free(r);
}

json_t *ms__lb_text_json(const char *bytes, size_t n) {
  size_t len = 0;
  char *s = ms__utf8_sanitize(bytes ? bytes : "", bytes ? n : 0, &len);
  if (!s)
    return NULL;
  json_t *j = json_stringn(s, len);
  free(s);
  return j;
}

json_t *ms__fanout_failure_json(const ms__fanout_result_t *r) {
  if (r->ok)
    return NULL;
  if (r->status >= 300 || (r->status > 0 && r->status < 200))
    return json_pack("{s:s,s:I,s:o}", "server", r->server, "status", (json_int_t)r->status,
                     "detail", ms__lb_text_json(r->body.buf, r->body.len));
  return json_pack("{s:s,s:s}", "server", r->server, "error",
                   r->error[0] ? r->error : "the worker did not answer");
}

json_t *ms__fanout_answer_json(const ms__fanout_result_t *r) {
  if (r->body.len > 0 && !r->body.truncated) {
    json_t *j = json_loadb(r->body.buf, r->body.len, JSON_DECODE_ANY, NULL);
    if (j)
      return j;
  }
  return ms__lb_text_json(r->body.buf, r->body.len);
}

json_t *ms__fanout_reply(const ms__fanout_result_t *r, size_t n, const char *method,
                         const char *path, unsigned *status) {
  size_t failed = 0;
  for (size_t i = 0; i < n; i++)
    failed += r[i].ok ? 0 : 1;
  if (failed == 0) {
    json_t *answers = json_array();
    for (size_t i = 0; i < n; i++)
      json_array_append_new(answers, json_pack("{s:s,s:I,s:o}", "server", r[i].server, "status",
                                               (json_int_t)r[i].status, "answer",
                                               ms__fanout_answer_json(&r[i])));
    *status = 200;
    return json_pack("{s:b,s:o}", "success", 1, "answers", answers);
  }
  json_t *failures = json_array();
  for (size_t i = 0; i < n; i++)
    if (!r[i].ok)
      json_array_append_new(failures, ms__fanout_failure_json(&r[i]));
  char msg[512], k[64];
  snprintf(msg, sizeof msg, "%zu of %zu workers failed %s %s; see failures", failed, n, method,
           path);
  snprintf(k, sizeof k, "%zu/%zu", failed, n);
  *status = 502;
  return json_pack("{s:s,s:s,s:o}", "error", msg, "failed", k, "failures", failures);
}

json_t *ms__fanout_is_sleeping(ms__fanout_result_t *r, size_t n, unsigned *status) {
  json_t *workers = json_array();
  int any = 0;
  for (size_t i = 0; i < n; i++) {
    if (!r[i].ok)
      continue;
    json_t *a = ms__fanout_answer_json(&r[i]);
    json_t *s = json_is_object(a) ? json_object_get(a, "is_sleeping") : NULL;
    if (!json_is_boolean(s)) {
      /* Not an answer we understand: report it as that worker's failure. */
      r[i].ok = 0;
      if (r[i].status < 300)
        snprintf(r[i].error, sizeof r[i].error,
                 "the answer (status %ld) has no boolean \"is_sleeping\"", r[i].status);
      json_decref(a);
      continue;
    }
    any |= json_is_true(s);
    json_array_append_new(workers, json_pack("{s:s,s:b,s:o}", "server", r[i].server, "is_sleeping",
                                             json_is_true(s), "answer", a));
  }
  json_t *j = ms__fanout_reply(r, n, "GET", "/is_sleeping", status);
  if (*status != 200) {
    json_decref(workers);
    return j;
  }
  json_decref(j);
  return json_pack("{s:b,s:o}", "is_sleeping", any, "workers", workers);
}
