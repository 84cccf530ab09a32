/*
 * fuzz_serve.c - libFuzzer target: what memsleep-serve does with a request
 * once libmicrohttpd has parsed it, without a socket or a model.
 *
 * The input (fuzz_input.h) is judged by ms__http_judge twice, with both
 * keys set and with none; the body and query of the route it names then go
 * through their checks: the generation bodies (params.c, on a server of
 * 512 tokens without tokenizer), the control-plane bodies and arguments
 * (control_body.c) and, for an update, the allowed-directory check
 * (common/path_guard.c) against a small tree of directories and symlinks
 * made once in the working directory. Besides "no crash, no sanitizer
 * report", it checks: a verdict is 0 (with a route) or 401/404/405 (with
 * a sentence); the admin key is never refused with 401; a refused body
 * always says why; text made for JSON answers is valid UTF-8; a path found
 * inside the roots resolves under one of them.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/auth.h"
#include "common/path_guard.h"
#include "fuzz_input.h"
#include "server/control_body.h"
#include "server/http.h"
#include "server/json_util.h"
#include "server/params.h"

#define API_KEY   "api-key-for-fuzzing"
#define ADMIN_KEY "admin-key-for-fuzzing"
#define TREE      "fuzz-serve-tree"

static ms__server_t srv;               /* what params.c reads */
static ms__server_options_t open_opt;  /* no key */
static ms__server_options_t keyed_opt; /* both keys */
static ms__path_roots_t roots;         /* TREE/allowed */

/* A check that failed: a finding, reported like a crash. */
#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "fuzz_serve: check failed: %s (line %d)\n", #cond, __LINE__);                \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  mkdir(TREE, 0700);
  mkdir(TREE "/allowed", 0700);
  mkdir(TREE "/allowed/model", 0700);
  mkdir(TREE "/outside", 0700);
  symlink("../outside", TREE "/allowed/escape");
  symlink("model", TREE "/allowed/alias");
  char err[512];
  if (ms__path_roots_add(&roots, TREE "/allowed", err, sizeof err) != 0) {
    fprintf(stderr, "fuzz_serve: %s\n", err);
    abort();
  }
  srv.vocab_size = 512;
  srv.max_context = 2048;
  keyed_opt.keys.api = API_KEY;
  keyed_opt.keys.admin = ADMIN_KEY;
  return 0;
}

static void check_verdict(const ms__http_verdict_t *v) {
  if (v->status == 0) {
    CHECK(v->route != NULL);
    return;
  }
  CHECK(v->route == NULL);
  CHECK(v->status == 401 || v->status == 404 || v->status == 405);
  CHECK(v->msg[0] != '\0');
}

/* The text a client would get back for s[0..n) is valid JSON text. */
static void check_json_text(const char *s, size_t n) {
  json_t *t = ms__json_text(s, n);
  CHECK(t != NULL);
  char *dump = json_dumps(t, JSON_ENCODE_ANY);
  CHECK(dump != NULL);
  free(dump);
  json_decref(t);
  CHECK(ms__utf8_complete_prefix(s, n) <= n);
}

static void generation(const char *path, const fuzz_request_t *r) {
  char err[MS__ERRMSG_MAX] = "";
  json_t *body = ms__json_parse_object(r->rest, r->rest_len, err, sizeof err);
  if (!body) {
    CHECK(err[0] != '\0');
    return;
  }
  ms__gen_params_t p;
  memset(&p, 0, sizeof p);
  unsigned status = 400;
  int rc = strcmp(path, "/generate") == 0
               ? ms__params_generate(&srv, body, &p, &status, err, sizeof err)
               : ms__params_completions(&srv, body, &p, &status, err, sizeof err);
  if (rc == 0) {
    CHECK(p.n_prompt > 0);
    for (size_t i = 0; i < p.n_prompt; i++)
      CHECK(p.prompt[i] >= 0 && p.prompt[i] < srv.vocab_size);
  } else {
    CHECK(err[0] != '\0');
    check_json_text(err, strlen(err));
  }
  ms__params_free(&p);
  json_decref(body);
}

static void update(const fuzz_request_t *r) {
  char err[MS__ERRMSG_MAX] = "";
  char *dir = NULL;
  int oom = 0;
  if (ms__ctlbody_update(r->rest, r->rest_len, &dir, &oom, err, sizeof err) != 0) {
    CHECK(err[0] != '\0');
    return;
  }
  char *real = NULL;
  int v = ms__path_resolve_inside(&roots, dir, &real);
  CHECK(v == MS__PATH_INSIDE || v == MS__PATH_OUTSIDE || v == MS__PATH_MISSING ||
        v == MS__PATH_NOMEM);
  CHECK((v == MS__PATH_INSIDE) == (real != NULL));
  if (real) {
    size_t n = strlen(roots.dirs[0]);
    CHECK(strncmp(real, roots.dirs[0], n) == 0 && (real[n] == '\0' || real[n] == '/'));
  }
  free(real);
  free(dir);
}

static void control(const char *path, const fuzz_request_t *r) {
  char err[MS__ERRMSG_MAX] = "";
  int rc = 0;
  if (strcmp(path, "/release_memory_occupation") == 0) {
    ms__release_args_t a;
    rc = ms__ctlbody_release(r->rest, r->rest_len, &a, err, sizeof err);
    if (rc == 0)
      CHECK(a.timeout_ms >= 1 && a.timeout_ms <= MS__DRAIN_TIMEOUT_MAX_MS &&
            (a.tags & ~MS__TAG_ALL) == 0 && (!a.given || a.tags != 0));
  } else if (strcmp(path, "/resume_memory_occupation") == 0) {
    unsigned tags;
    int given;
    rc = ms__ctlbody_resume(r->rest, r->rest_len, &tags, &given, err, sizeof err);
    if (rc == 0)
      CHECK((tags & ~MS__TAG_ALL) == 0);
  } else if (strcmp(path, "/pause_generation") == 0) {
    ms__pause_mode_t m;
    rc = ms__ctlbody_pause(r->rest, r->rest_len, &m, err, sizeof err);
  } else if (strcmp(path, "/continue_generation") == 0) {
    rc = ms__ctlbody_continue(r->rest, r->rest_len, err, sizeof err);
  } else if (strcmp(path, "/update_weights_from_disk") == 0) {
    update(r);
  } else if (strcmp(path, "/sleep") == 0 || strcmp(path, "/wake_up") == 0) {
    rc = ms__ctlbody_empty(r->rest, r->rest_len, path, err, sizeof err);
    int sleep = strcmp(path, "/sleep") == 0;
    char *arg = fuzz_query_arg(r->query, sleep ? "level" : "tags");
    char qerr[MS__ERRMSG_MAX] = "";
    int level;
    unsigned tags;
    if (sleep && ms__ctlquery_sleep_level(arg, &level, qerr, sizeof qerr) != 0)
      CHECK(qerr[0] != '\0');
    if (!sleep && arg && ms__ctlquery_wake_tags(arg, &tags, qerr, sizeof qerr) != 0)
      CHECK(qerr[0] != '\0');
    if (qerr[0])
      check_json_text(qerr, strlen(qerr));
    free(arg);
  }
  if (rc != 0) {
    CHECK(err[0] != '\0');
    check_json_text(err, strlen(err));
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_request_t r;
  if (fuzz_request_parse(data, size, &r) != 0) {
    fuzz_request_free(&r);
    return 0;
  }
  ms__http_verdict_t v;
  ms__http_judge(&keyed_opt, r.method, r.path, r.authorization, &v);
  check_verdict(&v);
  if (r.authorization && strcmp(r.authorization, "Bearer " ADMIN_KEY) == 0)
    CHECK(v.status != 401);
  if (!r.authorization)
    CHECK(v.status != 0 || v.route->access == MS__ACCESS_OPEN);
  check_json_text(v.msg, strlen(v.msg));

  ms__http_verdict_t open;
  ms__http_judge(&open_opt, r.method, r.path, r.authorization, &open);
  check_verdict(&open);
  CHECK(open.status != 401);
  if (open.status == 0) {
    const char *path = open.route->path;
    if (strcmp(path, "/generate") == 0 || strcmp(path, "/v1/completions") == 0)
      generation(path, &r);
    else
      control(path, &r);
  }
  check_json_text(r.rest, r.rest_len);
  fuzz_request_free(&r);
  return 0;
}
