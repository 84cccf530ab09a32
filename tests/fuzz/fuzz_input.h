/*
 * fuzz_input.h - how the fuzz targets cut an input into the parts of an
 * HTTP request that libmicrohttpd hands the programs.
 *
 * An input is "METHOD\nTARGET\nAUTHORIZATION\nREST": the method, the
 * request target (path and query string), the Authorization header value
 * (an empty line: no header) and the rest (a body, or what a target makes
 * of it). Missing lines are empty, so every byte string is an input.
 */
#ifndef MEMSLEEP_FUZZ_INPUT_H
#define MEMSLEEP_FUZZ_INPUT_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct fuzz_request {
  char *method;
  char *path;          /* the target without its query string */
  char *query;         /* after '?', or NULL */
  char *authorization; /* NULL when the line is empty */
  char *rest;          /* NUL-terminated copy of the rest */
  size_t rest_len;
} fuzz_request_t;

/* A NUL-terminated copy of d[*off..) up to the next '\n' (excluded);
 * *off moves past it. NULL when out of memory. */
static inline char *fuzz_line(const uint8_t *d, size_t n, size_t *off) {
  size_t s = *off, e = s;
  while (e < n && d[e] != '\n')
    e++;
  char *line = malloc(e - s + 1);
  if (line) {
    memcpy(line, d + s, e - s);
    line[e - s] = '\0';
  }
  *off = e < n ? e + 1 : n;
  return line;
}

/* Cuts d[0..n) into r. Returns 0, or -1 when out of memory. */
static inline int fuzz_request_parse(const uint8_t *d, size_t n, fuzz_request_t *r) {
  size_t off = 0;
  memset(r, 0, sizeof *r);
  r->method = fuzz_line(d, n, &off);
  r->path = fuzz_line(d, n, &off);
  r->authorization = fuzz_line(d, n, &off);
  r->rest_len = n - off;
  r->rest = malloc(r->rest_len + 1);
  if (!r->method || !r->path || !r->authorization || !r->rest)
    return -1;
  memcpy(r->rest, d + off, r->rest_len);
  r->rest[r->rest_len] = '\0';
  char *q = strchr(r->path, '?');
  if (q) {
    *q = '\0';
    r->query = q + 1;
  }
  if (!r->authorization[0]) {
    free(r->authorization);
    r->authorization = NULL;
  }
  return 0;
}

static inline void fuzz_request_free(fuzz_request_t *r) {
  free(r->method);
  free(r->path);
  free(r->authorization);
  free(r->rest);
}

/* The value of key in a query string "a=1&b=2" (a malloc'd copy, not
 * percent-decoded), or NULL. */
static inline char *fuzz_query_arg(const char *query, const char *key) {
  size_t kl = strlen(key);
  for (const char *p = query; p && *p;) {
    const char *amp = strchr(p, '&');
    size_t len = amp ? (size_t)(amp - p) : strlen(p);
    if (len > kl && strncmp(p, key, kl) == 0 && p[kl] == '=') {
      char *v = malloc(len - kl);
      if (v) {
        memcpy(v, p + kl + 1, len - kl - 1);
        v[len - kl - 1] = '\0';
      }
      return v;
    }
    p = amp ? amp + 1 : NULL;
  }
  return NULL;
}

#endif /* MEMSLEEP_FUZZ_INPUT_H */
