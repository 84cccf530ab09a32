/*
 * capture.c - the capped byte buffer (see capture.h).
 */
#include "lb/capture.h"

#include <stdlib.h>
#include <string.h>

void ms__capture_init(ms__capture_t *c, size_t cap) {
  memset(c, 0, sizeof *c);
  c->cap = cap;
}

size_t ms__capture_append(ms__capture_t *c, const char *data, size_t n) {
  size_t room = c->cap - c->len;
  size_t take = n < room ? n : room;
  if (take < n)
    c->truncated = 1;
  if (take == 0)
    return 0;
  if (!c->buf) {
    /* Small caps are allocated whole; large ones grow as bytes come. */
    size_t first = c->cap <= 4096 ? c->cap : (take > 4096 ? take : 4096);
    c->buf = malloc(first + 1);
    if (!c->buf)
      return (size_t)-1;
    c->buf[0] = '\0';
    c->alloc_ = first;
  }
  if (c->len + take > c->alloc_) {
    size_t a = c->alloc_ * 2;
    while (a < c->len + take)
      a *= 2;
    if (a > c->cap)
      a = c->cap;
    char *b = realloc(c->buf, a + 1);
    if (!b)
      return (size_t)-1;
    c->buf = b;
    c->alloc_ = a;
  }
  memcpy(c->buf + c->len, data, take);
  c->len += take;
  c->buf[c->len] = '\0';
  return take;
}

void ms__capture_free(ms__capture_t *c) {
  free(c->buf);
  size_t cap = c->cap;
  ms__capture_init(c, cap);
}
