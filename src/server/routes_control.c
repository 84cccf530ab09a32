/*
 * routes_control.c - the sleep/wake control plane over HTTP:
 * POST /release_memory_occupation, POST /resume_memory_occupation,
 * GET /is_sleeping, POST /pause_generation, POST /continue_generation,
 * POST /update_weights_from_disk, and the vLLM-style POST /sleep?level=N
 * and POST /wake_up?tags=a,b.
 *
 * Each handler checks its body strictly (control_body.c: unknown fields,
 * wrong types, bad tags are a 400 naming what is accepted), calls one
 * transition of the controller (controller.c, where the rules live) and
 * turns its result into the answer docs/control-plane.md describes. An
 * update names a directory: it must lie under an --allowed-model-dir
 * (403 otherwise, nothing loaded; docs/security.md).
 */
#include <memsleep/memsleep.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/path_guard.h"
#include "server/control_body.h"
#include "server/controller.h"
#include "server/json_util.h"
#include "server/routes.h"

/* A JSON list of the names of set, in the canonical order. */
static json_t *tags_json(unsigned set) {
  json_t *a = json_array();
  for (unsigned i = 0; i < MS__TAG_COUNT; i++)
    if (set & (1u << i))
      json_array_append_new(a, json_string(ms__tag_name(i)));
  return a;
}

/* Answers a refusal of the controller. */
static enum MHD_Result reply_refusal(ms__http_req_t *req, const ms__ctl_result_t *res) {
  req->retry_after_s = res->retry_after_s;
  return ms__reply_error(req, res->status, "%s", res->error);
}

/* The release every release-shaped endpoint shares; level > 0: /sleep. */
static enum MHD_Result do_release(ms__http_req_t *req, unsigned tags, int given, int backup,
                                  long timeout_ms, int level) {
  ms__ctl_result_t res;
  ms__ctl_release(req->srv->ctl, tags, given, backup, timeout_ms, &res);
  if (res.status != 200)
    return reply_refusal(req, &res);
  json_t *j = json_pack("{s:b,s:o,s:o,s:I,s:I,s:I}", "success", 1, "released", tags_json(res.tags),
                        "released_tags", tags_json(res.released), "drained_requests",
                        (json_int_t)res.drained_requests, "resident_bytes_before",
                        (json_int_t)res.resident_before, "resident_bytes_after",
                        (json_int_t)res.resident_after);
  if (j && level > 0)
    json_object_set_new(j, "level", json_integer(level));
  return j ? ms__reply_json(req, 200, j) : ms__reply_error(req, 500, "out of memory");
}

static enum MHD_Result do_resume(ms__http_req_t *req, unsigned tags, int given) {
  ms__ctl_result_t res;
  ms__ctl_resume(req->srv->ctl, tags, given, &res);
  if (res.status != 200)
    return reply_refusal(req, &res);
  json_t *j = json_pack("{s:b,s:o,s:o}", "success", 1, "resumed", tags_json(res.tags),
                        "released_tags", tags_json(res.released));
  return j ? ms__reply_json(req, 200, j) : ms__reply_error(req, 500, "out of memory");
}

enum MHD_Result ms__route_release_memory(ms__http_req_t *req) {
  char err[MS__ERRMSG_MAX];
  ms__release_args_t a;
  if (ms__ctlbody_release(req->body, req->body_len, &a, err, sizeof err) != 0)
    return ms__reply_error(req, 400, "%s", err);
  return do_release(req, a.tags, a.given, a.backup, a.timeout_ms, 0);
}

enum MHD_Result ms__route_resume_memory(ms__http_req_t *req) {
  char err[MS__ERRMSG_MAX];
  unsigned tags;
  int given;
  if (ms__ctlbody_resume(req->body, req->body_len, &tags, &given, err, sizeof err) != 0)
    return ms__reply_error(req, 400, "%s", err);
  return do_resume(req, tags, given);
}

enum MHD_Result ms__route_is_sleeping(ms__http_req_t *req) {
  ms__ctl_state_t st;
  ms__ctl_state(req->srv->ctl, &st);
  const char *mode = ms__pause_mode_name(st.pause);
  json_t *j = json_pack("{s:b,s:o,s:b,s:b,s:o,s:b}", "is_sleeping", st.released != 0,
                        "released_tags", tags_json(st.released), "draining", st.draining, "paused",
                        st.pause != MS__PAUSE_NONE, "pause_mode",
                        mode ? json_string(mode) : json_null(), "weights_valid", st.weights_valid);
  return j ? ms__reply_json(req, 200, j) : ms__reply_error(req, 500, "out of memory");
}

enum MHD_Result ms__route_pause_generation(ms__http_req_t *req) {
  char err[MS__ERRMSG_MAX];
  ms__pause_mode_t mode;
  if (ms__ctlbody_pause(req->body, req->body_len, &mode, err, sizeof err) != 0)
    return ms__reply_error(req, 400, "%s", err);
  ms__ctl_result_t res;
  ms__ctl_pause(req->srv->ctl, mode, &res);
  if (res.status != 200)
    return reply_refusal(req, &res);
  return ms__reply_json(req, 200,
                        json_pack("{s:b,s:s,s:I}", "success", 1, "mode", ms__pause_mode_name(mode),
                                  "aborted", (json_int_t)res.aborted));
}

enum MHD_Result ms__route_continue_generation(ms__http_req_t *req) {
  char err[MS__ERRMSG_MAX];
  if (ms__ctlbody_continue(req->body, req->body_len, err, sizeof err) != 0)
    return ms__reply_error(req, 400, "%s", err);
  ms__ctl_result_t res;
  ms__ctl_continue(req->srv->ctl, &res);
  if (res.status != 200)
    return reply_refusal(req, &res);
  const char *was = ms__pause_mode_name(res.was);
  return ms__reply_json(
      req, 200,
      json_pack("{s:b,s:o}", "success", 1, "was_paused", was ? json_string(was) : json_null()));
}

/* Checks that dir lies under an allowed model directory. Returns the
 * resolved path to load from (the caller frees it), or NULL after
 * answering: 403 outside (whatever exists there), 400 when it would be
 * inside but does not exist, 500 out of memory. */
static char *allowed_dir(ms__http_req_t *req, const char *dir, enum MHD_Result *answered) {
  const ms__path_roots_t *roots = &req->srv->opt.model_roots;
  char *real = NULL;
  int v = ms__path_resolve_inside(roots, dir, &real);
  if (v == MS__PATH_INSIDE)
    return real;
  char list[1024];
  ms__path_roots_list(roots, list, sizeof list);
  if (v == MS__PATH_MISSING)
    *answered = ms__reply_error(req, 400,
                                "cannot load the weights of %.512s: no such directory; nothing "
                                "was changed, the old weights stay",
                                dir);
  else if (v == MS__PATH_NOMEM)
    *answered = ms__reply_error(req, 500, "out of memory checking model_path");
  else
    *answered = ms__reply_error(
        req, 403,
        "model_path %.512s is not under a directory this server may load models from (%s); "
        "nothing was changed, the old weights stay; start memsleep-serve with "
        "--allowed-model-dir DIR to allow another directory",
        dir, list);
  return NULL;
}

enum MHD_Result ms__route_update_weights(ms__http_req_t *req) {
  char err[MS__ERRMSG_MAX];
  char *dir;
  int oom;
  if (ms__ctlbody_update(req->body, req->body_len, &dir, &oom, err, sizeof err) != 0)
    return ms__reply_error(req, oom ? 500 : 400, "%s", err);
  enum MHD_Result r = MHD_NO;
  char *real = allowed_dir(req, dir, &r);
  if (!real) {
    free(dir);
    return r;
  }
  ms__ctl_result_t res;
  ms__ctl_update_weights(req->srv->ctl, real, &res);
  if (res.status != 200) {
    r = reply_refusal(req, &res);
  } else {
    char msg[MS__ERRMSG_MAX];
    snprintf(msg, sizeof msg, "weights loaded from %.900s", dir);
    r = ms__reply_json(req, 200,
                       json_pack("{s:b,s:o,s:o,s:b}", "success", 1, "model_path",
                                 ms__json_text(dir, strlen(dir)), "message",
                                 ms__json_text(msg, strlen(msg)), "weights_valid", 1));
  }
  free(real);
  free(dir);
  return r;
}

enum MHD_Result ms__route_sleep(ms__http_req_t *req) {
  char err[MS__ERRMSG_MAX];
  int level;
  if (ms__ctlbody_empty(req->body, req->body_len, "/sleep", err, sizeof err) != 0 ||
      ms__ctlquery_sleep_level(ms__http_arg(req, "level"), &level, err, sizeof err) != 0)
    return ms__reply_error(req, 400, "%s", err);
  return do_release(req, 0, 0, level == 1, MS__DRAIN_TIMEOUT_DEFAULT_MS, level);
}

enum MHD_Result ms__route_wake_up(ms__http_req_t *req) {
  char err[MS__ERRMSG_MAX];
  if (ms__ctlbody_empty(req->body, req->body_len, "/wake_up", err, sizeof err) != 0)
    return ms__reply_error(req, 400, "%s", err);
  const char *q = ms__http_arg(req, "tags");
  if (!q)
    return do_resume(req, 0, 0);
  unsigned tags;
  if (ms__ctlquery_wake_tags(q, &tags, err, sizeof err) != 0)
    return ms__reply_error(req, 400, "%s", err);
  return do_resume(req, tags, 1);
}
