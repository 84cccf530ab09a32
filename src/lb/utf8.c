/*
 * utf8.c - the U+FFFD sanitizer (see utf8.h).
 */
#include "lb/utf8.h"

#include <stdlib.h>

/*
 * Length of the valid sequence starting at s[0] (1..4), or 0 when s[0..)
 * starts an invalid subpart; then *bad gets how many bytes that subpart
 * covers (the lead byte and the continuation bytes that were valid so far).
 */
static size_t seq_len(const unsigned char *s, size_t n, size_t *bad) {
  unsigned char c = s[0];
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c < 0x80)
    return 1;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0)
      lo = 0xA0;
    else if (c == 0xED)
      hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0)
      lo = 0x90;
    else if (c == 0xF4)
      hi = 0x8F;
  } else {
    *bad = 1;
    return 0;
  }
  size_t i = 1;
  for (; i < len; i++) {
    if (i >= n)
      break;
    unsigned char b = s[i];
    unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
    if (b < l || b > h)
      break;
  }
  if (i == len)
    return len;
  *bad = i;
  return 0;
}

char *ms__utf8_sanitize(const char *s, size_t n, size_t *out_len) {
  /* Each input byte becomes at most 3 output bytes (one U+FFFD). */
  char *out = malloc(3 * n + 1);
  if (!out)
    return NULL;
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0, o = 0;
  while (i < n) {
    size_t bad = 0;
    size_t k = seq_len(u + i, n - i, &bad);
    if (k > 0) {
      for (size_t j = 0; j < k; j++)
        out[o++] = (char)u[i + j];
      i += k;
    } else {
      out[o++] = (char)0xEF;
      out[o++] = (char)0xBF;
      out[o++] = (char)0xBD;
      i += bad;
    }
  }
  out[o] = '\0';
  if (out_len)
    *out_len = o;
  return out;
}
