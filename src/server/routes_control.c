/*
 * routes_control.c - the sleep/wake control plane over HTTP:
 * POST /release_memory_occupation, POST /resume_memory_occupation,
 * GET /is_sleeping, POST /pause_generation, POST /continue_generation,
 * POST /update_weights_from_disk, and the vLLM-style POST /sleep?level=N
 * and POST /wake_up?tags=a,b.
 *
 * Each handler checks its body strictly (unknown fields, wrong types, bad
 * tags: 400 naming what is accepted), calls one transition of the
 * controller (controller.c, where the rules live) and turns its result into
 * the answer docs/control-plane.md describes. An empty body counts as {}.
 */
#include <memsleep/memsleep.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/controller.h"
#include "server/json_util.h"
#include "server/routes.h"

#define VALID_TAGS "weights, kv_cache, workspace"

/* The body as a JSON object; an empty (or all-blank) body is {}. NULL with
 * the reason in err otherwise. */
static json_t *body_object(ms__http_req_t *req, char *err, size_t errlen) {
  size_t i = 0;
  while (i < req->body_len && strchr(" \t\r\n", req->body[i]) && req->body[i])
    i++;
  if (i == req->body_len)
    return json_object();
  return ms__json_parse_object(req->body, req->body_len, err, errlen);
}

/* Bit of the tag called name, or 0. */
static unsigned tag_bit(const char *name, size_t len) {
  for (unsigned i = 0; i < MS__TAG_COUNT; i++)
    if (strlen(ms__tag_name(i)) == len && memcmp(ms__tag_name(i), name, len) == 0)
      return 1u << i;
  return 0;
}

/* Adds the tag name[0..len) to *set: -1 with a message for an empty,
 * unknown or repeated name. what says where it came from. */
static int add_tag(const char *name, size_t len, const char *what, unsigned *set, char *err,
                   size_t errlen) {
  unsigned b = tag_bit(name, len);
  if (!b)
    return ms__errf(err, errlen, "unknown tag \"%.*s\" in %s; the valid tags are " VALID_TAGS,
                    (int)(len > 64 ? 64 : len), name, what);
  if (*set & b)
    return ms__errf(err, errlen,
                    "tag \"%.*s\" appears twice in %s; name each of " VALID_TAGS " at most once",
                    (int)len, name, what);
  *set |= b;
  return 0;
}

/* Reads "tags" of body: absent or null leaves *given 0; a non-empty list
 * of distinct valid names sets *set and *given. -1 with a message naming
 * the valid tags otherwise (rule 4). */
static int parse_tags(const json_t *body, unsigned *set, int *given, char *err, size_t errlen) {
  *set = 0;
  *given = 0;
  json_t *t = json_object_get(body, "tags");
  if (!t || json_is_null(t))
    return 0;
  if (!json_is_array(t))
    return ms__errf(err, errlen,
                    "\"tags\" must be a list of tag names, not %s; the valid tags are " VALID_TAGS,
                    ms__json_type_name(t));
  if (json_array_size(t) == 0)
    return ms__errf(err, errlen,
                    "\"tags\" is an empty list; name at least one of " VALID_TAGS
                    ", or leave \"tags\" out");
  size_t i;
  json_t *v;
  json_array_foreach(t, i, v) {
    if (!json_is_string(v))
      return ms__errf(err, errlen,
                      "\"tags\"[%zu] must be a tag name, not %s; the valid tags are " VALID_TAGS, i,
                      ms__json_type_name(v));
    if (add_tag(json_string_value(v), json_string_length(v), "\"tags\"", set, err, errlen) != 0)
      return -1;
  }
  *given = 1;
  return 0;
}

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
  static const char *const allowed[] = {"tags", "backup", "timeout", NULL};
  char err[MS__ERRMSG_MAX];
  json_t *body = body_object(req, err, sizeof err);
  if (!body)
    return ms__reply_error(req, 400, "%s", err);
  unsigned tags;
  int given, backup = 1;
  double timeout_s = (double)MS__DRAIN_TIMEOUT_DEFAULT_MS / 1000.0;
  int rc = ms__json_only_keys(body, "the release body", allowed, err, sizeof err);
  if (rc == 0)
    rc = parse_tags(body, &tags, &given, err, sizeof err);
  if (rc == 0)
    rc = ms__json_get_bool(body, "backup", &backup, err, sizeof err);
  if (rc == 0) {
    json_t *t = json_object_get(body, "timeout");
    if (t && !json_is_null(t) &&
        (!json_is_number(t) || !(json_number_value(t) > 0) ||
         json_number_value(t) > (double)MS__DRAIN_TIMEOUT_MAX_MS / 1000.0))
      rc = ms__errf(err, sizeof err,
                    "\"timeout\" must be a number of seconds, more than 0 and at most %ld "
                    "(default %ld)",
                    MS__DRAIN_TIMEOUT_MAX_MS / 1000, MS__DRAIN_TIMEOUT_DEFAULT_MS / 1000);
    else if (t && !json_is_null(t))
      timeout_s = json_number_value(t);
  }
  json_decref(body);
  if (rc != 0)
    return ms__reply_error(req, 400, "%s", err);
  long timeout_ms = (long)(timeout_s * 1000.0 + 0.5);
  if (timeout_ms < 1)
    timeout_ms = 1;
  return do_release(req, tags, given, backup, timeout_ms, 0);
}

enum MHD_Result ms__route_resume_memory(ms__http_req_t *req) {
  static const char *const allowed[] = {"tags", NULL};
  char err[MS__ERRMSG_MAX];
  json_t *body = body_object(req, err, sizeof err);
  if (!body)
    return ms__reply_error(req, 400, "%s", err);
  unsigned tags;
  int given;
  int rc = ms__json_only_keys(body, "the resume body", allowed, err, sizeof err);
  if (rc == 0)
    rc = parse_tags(body, &tags, &given, err, sizeof err);
  json_decref(body);
  if (rc != 0)
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
  static const char *const allowed[] = {"mode", NULL};
  char err[MS__ERRMSG_MAX];
  json_t *body = body_object(req, err, sizeof err);
  if (!body)
    return ms__reply_error(req, 400, "%s", err);
  ms__pause_mode_t mode = MS__PAUSE_ABORT;
  int rc = ms__json_only_keys(body, "the pause body", allowed, err, sizeof err);
  json_t *m = json_object_get(body, "mode");
  if (rc == 0 && m && !json_is_null(m)) {
    const char *s = json_is_string(m) ? json_string_value(m) : NULL;
    if (s && strcmp(s, "abort") == 0)
      mode = MS__PAUSE_ABORT;
    else if (s && strcmp(s, "wait") == 0)
      mode = MS__PAUSE_WAIT;
    else if (s && strcmp(s, "keep") == 0)
      mode = MS__PAUSE_KEEP;
    else
      rc = ms__errf(err, sizeof err,
                    "\"mode\" must be \"abort\" (end running and waiting requests), \"wait\" "
                    "(let running ones finish) or \"keep\" (freeze them in place); got %s%.64s%s",
                    s ? "\"" : "", s ? s : ms__json_type_name(m), s ? "\"" : "");
  }
  json_decref(body);
  if (rc != 0)
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
  static const char *const allowed[] = {NULL};
  char err[MS__ERRMSG_MAX];
  json_t *body = body_object(req, err, sizeof err);
  if (!body)
    return ms__reply_error(req, 400, "%s", err);
  int rc =
      ms__json_only_keys(body, "the continue body (it takes no fields)", allowed, err, sizeof err);
  json_decref(body);
  if (rc != 0)
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

enum MHD_Result ms__route_update_weights(ms__http_req_t *req) {
  static const char *const allowed[] = {"model_path", NULL};
  char err[MS__ERRMSG_MAX];
  json_t *body = body_object(req, err, sizeof err);
  if (!body)
    return ms__reply_error(req, 400, "%s", err);
  int rc = ms__json_only_keys(body, "the update body", allowed, err, sizeof err);
  json_t *p = json_object_get(body, "model_path");
  if (rc == 0 && (!p || !json_is_string(p) || json_string_length(p) == 0))
    rc = ms__errf(err, sizeof err,
                  "\"model_path\" is required: the directory of a model with the same shapes as "
                  "the one loaded (config.json, *.safetensors)%s%s",
                  p ? ", not " : "", p ? ms__json_type_name(p) : "");
  if (rc == 0 && strlen(json_string_value(p)) != json_string_length(p))
    rc = ms__errf(err, sizeof err, "\"model_path\" contains a NUL character; send a directory");
  char *dir = rc == 0 ? strdup(json_string_value(p)) : NULL;
  json_decref(body);
  if (rc != 0)
    return ms__reply_error(req, 400, "%s", err);
  if (!dir)
    return ms__reply_error(req, 500, "out of memory");
  ms__ctl_result_t res;
  ms__ctl_update_weights(req->srv->ctl, dir, &res);
  enum MHD_Result r;
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
  free(dir);
  return r;
}

/* The body of /sleep and /wake_up: empty or {} (their arguments are in the
 * query string). */
static int no_body_fields(ms__http_req_t *req, const char *path, char *err, size_t errlen) {
  json_t *body = body_object(req, err, errlen);
  if (!body)
    return -1;
  size_t n = json_object_size(body);
  json_decref(body);
  if (n)
    return ms__errf(err, errlen,
                    "%s takes its arguments in the query string and no body fields; send an "
                    "empty body or {}",
                    path);
  return 0;
}

enum MHD_Result ms__route_sleep(ms__http_req_t *req) {
  char err[MS__ERRMSG_MAX];
  if (no_body_fields(req, "/sleep", err, sizeof err) != 0)
    return ms__reply_error(req, 400, "%s", err);
  const char *lv = ms__http_arg(req, "level");
  int level = 1;
  if (lv && strcmp(lv, "1") == 0)
    level = 1;
  else if (lv && strcmp(lv, "2") == 0)
    level = 2;
  else if (lv)
    return ms__reply_error(req, 400,
                           "level=%.32s: the level must be 1 (release everything, keep the "
                           "weights in a backup) or 2 (release everything, discard the weights)",
                           lv);
  return do_release(req, 0, 0, level == 1, MS__DRAIN_TIMEOUT_DEFAULT_MS, level);
}

enum MHD_Result ms__route_wake_up(ms__http_req_t *req) {
  char err[MS__ERRMSG_MAX];
  if (no_body_fields(req, "/wake_up", err, sizeof err) != 0)
    return ms__reply_error(req, 400, "%s", err);
  const char *q = ms__http_arg(req, "tags");
  unsigned tags = 0;
  if (!q)
    return do_resume(req, 0, 0);
  if (!*q)
    return ms__reply_error(req, 400,
                           "tags= is empty; name at least one of " VALID_TAGS
                           " (comma-separated), or leave tags out to wake every released tag");
  for (const char *s = q;;) {
    const char *e = strchr(s, ',');
    size_t len = e ? (size_t)(e - s) : strlen(s);
    if (add_tag(s, len, "the tags= query argument", &tags, err, sizeof err) != 0)
      return ms__reply_error(req, 400, "%s", err);
    if (!e)
      break;
    s = e + 1;
  }
  return do_resume(req, tags, 1);
}
