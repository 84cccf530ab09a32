/*
 * fuzz_lb.c - libFuzzer target: what memsleep-lb does with a client's
 * request head and with what its workers answer, without a socket.
 *
 * The input (fuzz_input.h) is judged by ms__lb_judge with the balancer's
 * keys set and with none, and the key the workers would get is worked out
 * for each setting of worker keys. Its rest holds up to eight worker
 * answers, separated by "\n--\n", each "STATUS\nBODY"; they are stored as
 * the fan-out stores them (capped: 500 bytes of an error, 64 KiB of a
 * success) and turned into the balancer's answers: the fan-out reply, the
 * /is_sleeping aggregate, each failure's entry. Besides "no crash, no
 * sanitizer report", it checks: a verdict is 0 (with a route) or
 * 401/404/405; the admin key is never refused; a worker key is never taken
 * for the balancer's; every answer the balancer builds is JSON that
 * serializes (valid UTF-8, whatever the workers sent), with status 200 or
 * 502.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/auth.h"
#include "fuzz_input.h"
#include "lb/fanout.h"
#include "lb/lb.h"
#include "lb/routes.h"
#include "lb/utf8.h"

#define API_KEY     "lb-api-key-for-fuzzing"
#define ADMIN_KEY   "lb-admin-key-for-fuzzing"
#define WORKER_KEY  "worker-key-for-fuzzing"
#define WORKERS_MAX 8

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_lb: check failed: %s (line %d)\n", #cond, __LINE__);                   \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

static const char *const servers[WORKERS_MAX] = {
    "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3", "http://127.0.0.1:4",
    "http://127.0.0.1:5", "http://127.0.0.1:6", "http://127.0.0.1:7", "http://127.0.0.1:8"};

static void check_verdict(const ms__lb_verdict_t *v) {
  if (v->status == 0) {
    CHECK(v->route != NULL);
    return;
  }
  CHECK(v->route == NULL);
  CHECK(v->status == 401 || v->status == 404 || v->status == 405);
  CHECK(v->msg[0] != '\0');
}

/* j serializes to JSON; takes the reference. */
static void check_dumps(json_t *j) {
  CHECK(j != NULL);
  char *s = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT);
  CHECK(s != NULL);
  free(s);
  json_decref(j);
}

/* Judges r's head; returns the route it names when no key is set. */
static const ms__lb_route_t *judge(const fuzz_request_t *r) {
  ms__auth_keys_t keys = {API_KEY, ADMIN_KEY}, none = {NULL, NULL};
  ms__lb_verdict_t v;
  ms__lb_judge(&keys, r->method, r->path, r->authorization, &v);
  check_verdict(&v);
  check_dumps(json_pack("{s:o}", "error", ms__lb_text_json(v.msg, strlen(v.msg))));
  if (r->authorization && strcmp(r->authorization, "Bearer " ADMIN_KEY) == 0)
    CHECK(v.status != 401);
  if (r->authorization && strstr(r->authorization, WORKER_KEY))
    CHECK(v.status != 0 || v.route->access == MS__ACCESS_OPEN);
  ms__lb_judge(&none, r->method, r->path, r->authorization, &v);
  check_verdict(&v);
  CHECK(v.status != 401);
  const ms__lb_route_t *route = v.route;

  /* The key a worker gets: the worker key when one is set, else the
   * client's header unchanged. */
  static ms__lb_t lb;
  char out[4200];
  for (int setting = 0; setting < 3; setting++) {
    lb.opt.worker_keys.api = setting == 1 ? WORKER_KEY : NULL;
    lb.opt.worker_keys.admin = setting == 2 ? WORKER_KEY : NULL;
    for (int need = MS__ACCESS_API; need <= MS__ACCESS_ADMIN; need++) {
      const char *a =
          ms__lb_worker_auth(&lb, (ms__access_t)need, r->authorization, out, sizeof out);
      if (setting)
        CHECK(a && strcmp(a, "Bearer " WORKER_KEY) == 0);
      else if (r->authorization && strlen(r->authorization) < sizeof out)
        CHECK(a && strcmp(a, r->authorization) == 0);
      else if (!r->authorization)
        CHECK(a == NULL);
    }
  }
  return route;
}

/* Cuts the rest into worker answers and builds the balancer's answers to
 * a fan-out of route (a control endpoint when r names none). */
static void answers(const fuzz_request_t *r, const ms__lb_route_t *route) {
  ms__fanout_result_t res[WORKERS_MAX];
  memset(res, 0, sizeof res);
  size_t n = 0;
  const char *p = r->rest, *end = r->rest + r->rest_len;
  while (n < WORKERS_MAX) {
    const char *sep = memmem(p, (size_t)(end - p), "\n--\n", 4);
    const char *rec_end = sep ? sep : end;
    ms__fanout_result_t *x = &res[n++];
    x->server = servers[n - 1];
    const char *nl = memchr(p, '\n', (size_t)(rec_end - p));
    x->status = strtol(p, NULL, 10) % 1000;
    if (x->status < 0)
      x->status = -x->status;
    const char *body = nl ? nl + 1 : rec_end;
    ms__capture_init(&x->body,
                     x->status >= 200 && x->status < 300 ? MS__LB_ANSWER_MAX : MS__LB_DETAIL_MAX);
    size_t kept = ms__capture_append(&x->body, body, (size_t)(rec_end - body));
    CHECK(kept != (size_t)-1 && kept <= x->body.cap);
    x->ok = x->status >= 200 && x->status < 300;
    if (x->status == 0)
      snprintf(x->error, sizeof x->error, "could not connect: Connection refused");
    if (!sep)
      break;
    p = sep + 4;
  }
  for (size_t i = 0; i < n; i++) {
    check_dumps(ms__fanout_answer_json(&res[i]));
    json_t *f = ms__fanout_failure_json(&res[i]);
    CHECK((f == NULL) == (res[i].ok != 0));
    if (f)
      check_dumps(f);
    size_t len = 0;
    char *clean = ms__utf8_sanitize(res[i].body.buf ? res[i].body.buf : "", res[i].body.len, &len);
    CHECK(clean != NULL);
    free(clean);
  }
  unsigned status = 0;
  const char *method = route ? route->method : "POST";
  const char *path = route ? route->path : "/release_memory_occupation";
  check_dumps(ms__fanout_reply(res, n, method, path, &status));
  CHECK(status == 200 || status == 502);
  check_dumps(ms__fanout_is_sleeping(res, n, &status));
  CHECK(status == 200 || status == 502);
  for (size_t i = 0; i < n; i++)
    ms__capture_free(&res[i].body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_request_t r;
  if (fuzz_request_parse(data, size, &r) == 0)
    answers(&r, judge(&r));
  fuzz_request_free(&r);
  return 0;
}
