/*
 * control_body.c - checks of the control plane's bodies and query strings
 * (see control_body.h).
 */
#include "server/control_body.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/json_util.h"

#define VALID_TAGS MS__VALID_TAGS

/* The body as a JSON object; an empty (or all-blank) body is {}. NULL with
 * the reason in err otherwise. */
static json_t *body_object(const char *body, size_t len, char *err, size_t errlen) {
  size_t i = 0;
  while (i < len && body[i] && strchr(" \t\r\n", body[i]))
    i++;
  if (i == len)
    return json_object();
  return ms__json_parse_object(body, len, err, errlen);
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

int ms__ctlbody_release(const char *body, size_t len, ms__release_args_t *out, char *err,
                        size_t errlen) {
  static const char *const allowed[] = {"tags", "backup", "timeout", NULL};
  out->tags = 0;
  out->given = 0;
  out->backup = 1;
  out->timeout_ms = MS__DRAIN_TIMEOUT_DEFAULT_MS;
  json_t *b = body_object(body, len, err, errlen);
  if (!b)
    return -1;
  double timeout_s = (double)MS__DRAIN_TIMEOUT_DEFAULT_MS / 1000.0;
  int rc = ms__json_only_keys(b, "the release body", allowed, err, errlen);
  if (rc == 0)
    rc = parse_tags(b, &out->tags, &out->given, err, errlen);
  if (rc == 0)
    rc = ms__json_get_bool(b, "backup", &out->backup, err, errlen);
  if (rc == 0) {
    json_t *t = json_object_get(b, "timeout");
    if (t && !json_is_null(t) &&
        (!json_is_number(t) || !(json_number_value(t) > 0) ||
         json_number_value(t) > (double)MS__DRAIN_TIMEOUT_MAX_MS / 1000.0))
      rc = ms__errf(err, errlen,
                    "\"timeout\" must be a number of seconds, more than 0 and at most %ld "
                    "(default %ld)",
                    MS__DRAIN_TIMEOUT_MAX_MS / 1000, MS__DRAIN_TIMEOUT_DEFAULT_MS / 1000);
    else if (t && !json_is_null(t))
      timeout_s = json_number_value(t);
  }
  json_decref(b);
  if (rc != 0)
    return -1;
  long timeout_ms = (long)(timeout_s * 1000.0 + 0.5);
  out->timeout_ms = timeout_ms < 1 ? 1 : timeout_ms;
  return 0;
}

int ms__ctlbody_resume(const char *body, size_t len, unsigned *tags, int *given, char *err,
                       size_t errlen) {
  static const char *const allowed[] = {"tags", NULL};
  *tags = 0;
  *given = 0;
  json_t *b = body_object(body, len, err, errlen);
  if (!b)
    return -1;
  int rc = ms__json_only_keys(b, "the resume body", allowed, err, errlen);
  if (rc == 0)
    rc = parse_tags(b, tags, given, err, errlen);
  json_decref(b);
  return rc;
}

int ms__ctlbody_pause(const char *body, size_t len, ms__pause_mode_t *mode, char *err,
                      size_t errlen) {
  static const char *const allowed[] = {"mode", NULL};
  *mode = MS__PAUSE_ABORT;
  json_t *b = body_object(body, len, err, errlen);
  if (!b)
    return -1;
  int rc = ms__json_only_keys(b, "the pause body", allowed, err, errlen);
  json_t *m = json_object_get(b, "mode");
  if (rc == 0 && m && !json_is_null(m)) {
    const char *s = json_is_string(m) ? json_string_value(m) : NULL;
    if (s && strcmp(s, "abort") == 0)
      *mode = MS__PAUSE_ABORT;
    else if (s && strcmp(s, "wait") == 0)
      *mode = MS__PAUSE_WAIT;
    else if (s && strcmp(s, "keep") == 0)
      *mode = MS__PAUSE_KEEP;
    else
      rc = ms__errf(err, errlen,
                    "\"mode\" must be \"abort\" (end running and waiting requests), \"wait\" "
                    "(let running ones finish) or \"keep\" (freeze them in place); got %s%.64s%s",
                    s ? "\"" : "", s ? s : ms__json_type_name(m), s ? "\"" : "");
  }
  json_decref(b);
  return rc;
}

int ms__ctlbody_continue(const char *body, size_t len, char *err, size_t errlen) {
  static const char *const allowed[] = {NULL};
  json_t *b = body_object(body, len, err, errlen);
  if (!b)
    return -1;
  int rc = ms__json_only_keys(b, "the continue body (it takes no fields)", allowed, err, errlen);
  json_decref(b);
  return rc;
}

int ms__ctlbody_update(const char *body, size_t len, char **model_path, int *oom, char *err,
                       size_t errlen) {
  static const char *const allowed[] = {"model_path", NULL};
  *model_path = NULL;
  *oom = 0;
  json_t *b = body_object(body, len, err, errlen);
  if (!b)
    return -1;
  int rc = ms__json_only_keys(b, "the update body", allowed, err, errlen);
  json_t *p = json_object_get(b, "model_path");
  if (rc == 0 && (!p || !json_is_string(p) || json_string_length(p) == 0))
    rc = ms__errf(err, errlen,
                  "\"model_path\" is required: the directory of a model with the same shapes as "
                  "the one loaded (config.json, *.safetensors)%s%s",
                  p ? ", not " : "", p ? ms__json_type_name(p) : "");
  if (rc == 0 && strlen(json_string_value(p)) != json_string_length(p))
    rc = ms__errf(err, errlen, "\"model_path\" contains a NUL character; send a directory");
  if (rc == 0) {
    *model_path = strdup(json_string_value(p));
    if (!*model_path) {
      *oom = 1;
      rc = ms__errf(err, errlen, "out of memory");
    }
  }
  json_decref(b);
  return rc;
}

int ms__ctlbody_empty(const char *body, size_t len, const char *what, char *err, size_t errlen) {
  json_t *b = body_object(body, len, err, errlen);
  if (!b)
    return -1;
  size_t n = json_object_size(b);
  json_decref(b);
  if (n)
    return ms__errf(err, errlen,
                    "%s takes its arguments in the query string and no body fields; send an "
                    "empty body or {}",
                    what);
  return 0;
}

int ms__ctlquery_sleep_level(const char *arg, int *level, char *err, size_t errlen) {
  *level = 1;
  if (!arg || strcmp(arg, "1") == 0)
    return 0;
  if (strcmp(arg, "2") == 0) {
    *level = 2;
    return 0;
  }
  return ms__errf(err, errlen,
                  "level=%.32s: the level must be 1 (release everything, keep the weights in a "
                  "backup) or 2 (release everything, discard the weights)",
                  arg);
}

int ms__ctlquery_wake_tags(const char *arg, unsigned *tags, char *err, size_t errlen) {
  *tags = 0;
  if (!*arg)
    return ms__errf(err, errlen,
                    "tags= is empty; name at least one of " VALID_TAGS
                    " (comma-separated), or leave tags out to wake every released tag");
  for (const char *s = arg;;) {
    const char *e = strchr(s, ',');
    size_t len = e ? (size_t)(e - s) : strlen(s);
    if (add_tag(s, len, "the tags= query argument", tags, err, errlen) != 0)
      return -1;
    if (!e)
      return 0;
    s = e + 1;
  }
}
