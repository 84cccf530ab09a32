/*
 * json_util.c - JSON and UTF-8 helpers shared by the HTTP handlers (see
 * json_util.h).
 */
#include "server/json_util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Looks at the sequence starting at s[0] (n >= 1 bytes available).
 * Returns 1 for a valid character, 0 for invalid bytes, -1 for a sequence
 * that is valid so far but cut short by the end of the buffer. *len is the
 * character's length, or the length of the maximal invalid subpart.
 */
static int utf8_seq(const unsigned char *s, size_t n, size_t *len) {
  unsigned char b = s[0];
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */
  if (b < 0x80) {
    *len = 1;
    return 1;
  }
  if (b >= 0xC2 && b <= 0xDF) {
    need = 1;
  } else if (b >= 0xE0 && b <= 0xEF) {
    need = 2;
    if (b == 0xE0)
      lo = 0xA0;
    if (b == 0xED)
      hi = 0x9F;
  } else if (b >= 0xF0 && b <= 0xF4) {
    need = 3;
    if (b == 0xF0)
      lo = 0x90;
    if (b == 0xF4)
      hi = 0x8F;
  } else {
    *len = 1;
    return 0;
  }
  for (size_t k = 1; k <= need; k++) {
    if (k >= n) {
      *len = k;
      return -1;
    }
    unsigned char c = s[k];
    int ok = k == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
    if (!ok) {
      *len = k;
      return 0;
    }
  }
  *len = need + 1;
  return 1;
}

size_t ms__utf8_complete_prefix(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0;
  while (i < n) {
    size_t len;
    if (utf8_seq(u + i, n - i, &len) < 0)
      break;
    i += len;
  }
  return i;
}

json_t *ms__json_text(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  /* Each invalid byte grows to at most 3 bytes (U+FFFD). */
  char *buf = malloc(n * 3 + 1);
  if (!buf)
    return NULL;
  size_t i = 0, o = 0;
  while (i < n) {
    size_t len;
    int r = utf8_seq(u + i, n - i, &len);
    if (r == 1) {
      memcpy(buf + o, s + i, len);
      o += len;
    } else {
      memcpy(buf + o, "\xEF\xBF\xBD", 3);
      o += 3;
    }
    i += len;
  }
  json_t *j = json_stringn_nocheck(buf, o);
  free(buf);
  return j;
}

int ms__errf(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  return -1;
}

json_t *ms__json_parse_object(const char *body, size_t len, char *err, size_t errlen) {
  json_error_t je;
  if (len == 0) {
    ms__errf(err, errlen, "the request body is empty; send a JSON object");
    return NULL;
  }
  json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
  if (!root) {
    ms__errf(err, errlen, "malformed JSON at line %d, column %d: %s", je.line, je.column, je.text);
    return NULL;
  }
  if (!json_is_object(root)) {
    ms__errf(err, errlen, "the request body must be a JSON object, not %s",
             ms__json_type_name(root));
    json_decref(root);
    return NULL;
  }
  return root;
}

const char *ms__json_type_name(const json_t *v) {
  switch (json_typeof(v)) {
  case JSON_OBJECT:
    return "an object";
  case JSON_ARRAY:
    return "an array";
  case JSON_STRING:
    return "a string";
  case JSON_INTEGER:
    return "an integer";
  case JSON_REAL:
    return "a number";
  case JSON_TRUE:
  case JSON_FALSE:
    return "a boolean";
  case JSON_NULL:
    return "null";
  }
  return "unknown";
}

int ms__json_get_int(const json_t *obj, const char *key, long long min, long long max,
                     long long *out, char *err, size_t errlen) {
  json_t *v = json_object_get(obj, key);
  if (!v || json_is_null(v))
    return 0;
  long long x;
  if (json_is_integer(v)) {
    x = (long long)json_integer_value(v);
  } else if (json_is_real(v) && floor(json_real_value(v)) == json_real_value(v) &&
             fabs(json_real_value(v)) < 9e15) {
    x = (long long)json_real_value(v); /* 16.0 is an integer too */
  } else {
    return ms__errf(err, errlen, "\"%s\" must be an integer, not %s", key, ms__json_type_name(v));
  }
  if (x < min || x > max)
    return ms__errf(err, errlen, "\"%s\" is %lld; it must be between %lld and %lld", key, x, min,
                    max);
  *out = x;
  return 0;
}

int ms__json_get_num(const json_t *obj, const char *key, double min, double max, double *out,
                     char *err, size_t errlen) {
  json_t *v = json_object_get(obj, key);
  if (!v || json_is_null(v))
    return 0;
  if (!json_is_number(v))
    return ms__errf(err, errlen, "\"%s\" must be a number, not %s", key, ms__json_type_name(v));
  double x = json_number_value(v);
  if (!(x >= min && x <= max))
    return ms__errf(err, errlen, "\"%s\" is %g; it must be between %g and %g", key, x, min, max);
  *out = x;
  return 0;
}

int ms__json_get_bool(const json_t *obj, const char *key, int *out, char *err, size_t errlen) {
  json_t *v = json_object_get(obj, key);
  if (!v || json_is_null(v))
    return 0;
  if (!json_is_boolean(v))
    return ms__errf(err, errlen, "\"%s\" must be true or false, not %s", key,
                    ms__json_type_name(v));
  *out = json_is_true(v);
  return 0;
}

int ms__json_only_keys(const json_t *obj, const char *what, const char *const *allowed, char *err,
                       size_t errlen) {
  const char *key;
  json_t *v;
  json_object_foreach((json_t *)obj, key, v) {
    int ok = 0;
    for (size_t i = 0; allowed[i]; i++)
      if (strcmp(key, allowed[i]) == 0)
        ok = 1;
    if (ok)
      continue;
    char list[700] = "";
    size_t o = 0;
    for (size_t i = 0; allowed[i] && o < sizeof list; i++)
      o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", i ? ", " : "", allowed[i]);
    return ms__errf(err, errlen, "unknown field \"%.64s\" in %s; accepted fields: %s", key, what,
                    list);
  }
  return 0;
}
