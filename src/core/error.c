/*
 * error.c - memsleep_strerror() and the thread-local last-error message.
 */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "memsleep/memsleep.h"

#define MS__ERROR_MAX 512

static _Thread_local char ms__last_error[MS__ERROR_MAX];

int ms__fail(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ms__last_error, sizeof ms__last_error, fmt, ap);
  va_end(ap);
  return code;
}

void ms__fail_append(const char *fmt, ...) {
  size_t used = strlen(ms__last_error);
  if (used + 1 >= sizeof ms__last_error)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ms__last_error + used, sizeof ms__last_error - used, fmt, ap);
  va_end(ap);
}

const char *memsleep_last_error(void) {
  return ms__last_error;
}

const char *memsleep_strerror(int err) {
  switch (err) {
  case MEMSLEEP_OK:
    return "success";
  case MEMSLEEP_EINVAL:
    return "invalid argument";
  case MEMSLEEP_ENOMEM:
    return "out of memory";
  case MEMSLEEP_ESTATE:
    return "wrong state for this operation";
  case MEMSLEEP_ENOTFOUND:
    return "no such tag or allocation";
  case MEMSLEEP_EBACKEND:
    return "backend (operating system or driver) call failed";
  case MEMSLEEP_EUNAVAIL:
    return "backend not available on this machine";
  default:
    return "unknown memsleep error code";
  }
}
