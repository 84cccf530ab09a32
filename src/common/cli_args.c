/*
 * cli_args.c - command-line value parsing shared by memsleep's programs
 * (see cli_args.h).
 */
#include "common/cli_args.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_MAX_CHARS  4096
#define KEY_WARN_CHARS 16

long long ms__cli_num(const char *prog, const char *name, const char *arg, long long min,
                      long long max) {
  char *end;
  errno = 0;
  long long v = strtoll(arg, &end, 10);
  if (errno || end == arg || *end || v < min || v > max) {
    fprintf(stderr, "%s: --%s '%s' is not a number from %lld to %lld\n", prog, name, arg, min, max);
    exit(2);
  }
  return v;
}

const char *ms__cli_key(const char *prog, const char *name, const char *arg, const char *env) {
  const char *key = arg;
  char from[128];
  snprintf(from, sizeof from, "--%s", name);
  if (!key) {
    key = getenv(env);
    if (!key || !*key)
      return NULL;
    snprintf(from, sizeof from, "$%s", env);
  }
  size_t n = strlen(key);
  if (n == 0 || n > KEY_MAX_CHARS) {
    fprintf(stderr, "%s: the key in %s is %s; give 1 to %d visible ASCII characters\n", prog, from,
            n == 0 ? "empty" : "too long", KEY_MAX_CHARS);
    exit(2);
  }
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)key[i];
    if (c <= ' ' || c >= 0x7f) {
      fprintf(stderr,
              "%s: the key in %s has a space, a control or a non-ASCII character at position "
              "%zu; a key is visible ASCII only (it is sent as \"Authorization: Bearer KEY\")\n",
              prog, from, i + 1);
      exit(2);
    }
  }
  if (n < KEY_WARN_CHARS)
    fprintf(stderr,
            "%s: warning: the key in %s has only %zu characters; a key that cannot be guessed "
            "has 32 or more random ones (openssl rand -hex 32)\n",
            prog, from, n);
  return key;
}
