/*
 * cli_args.c - command-line value parsing shared by memsleep's programs
 * (see cli_args.h).
 */
#include "common/cli_args.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

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
