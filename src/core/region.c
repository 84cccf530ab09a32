/*
 * region.c - thread-local, nestable regions (memsleep_region_push/pop).
 *
 * A region names the tag and flags that allocations made on this thread
 * without an explicit tag should use; the cudaMalloc interposer reads the
 * innermost one. Nothing here takes a lock: the stack is the thread's own.
 */
#include <string.h>

#include "error.h"
#include "state.h"

typedef struct ms__region {
  char tag[MEMSLEEP_TAG_MAX + 1];
  unsigned flags;
} ms__region_t;

static _Thread_local ms__region_t ms__regions[MEMSLEEP_REGION_DEPTH_MAX];
static _Thread_local size_t ms__region_depth;

int memsleep_region_push(const char *tag, unsigned flags) {
  int rc = ms__tag_check(tag);
  if (rc != 0)
    return rc;
  rc = ms__flags_check(flags);
  if (rc != 0) {
    ms__fail_append(" (memsleep_region_push(\"%s\"))", tag);
    return rc;
  }
  if (ms__region_depth >= MEMSLEEP_REGION_DEPTH_MAX)
    return ms__fail(MEMSLEEP_EINVAL,
                    "memsleep_region_push(\"%s\"): regions nest at most %d deep on a thread", tag,
                    MEMSLEEP_REGION_DEPTH_MAX);
  ms__region_t *r = &ms__regions[ms__region_depth++];
  strcpy(r->tag, tag);
  r->flags = flags;
  return 0;
}

int memsleep_region_pop(void) {
  if (ms__region_depth == 0)
    return ms__fail(MEMSLEEP_ESTATE, "memsleep_region_pop: no region is open on this thread");
  ms__region_depth--;
  return 0;
}

int memsleep_region_current(char *tag_out, unsigned *flags) {
  if (tag_out == NULL)
    return ms__fail(MEMSLEEP_EINVAL, "memsleep_region_current: tag_out is NULL");
  if (ms__region_depth == 0) {
    tag_out[0] = '\0';
    if (flags != NULL)
      *flags = 0;
    return 0;
  }
  const ms__region_t *r = &ms__regions[ms__region_depth - 1];
  memcpy(tag_out, r->tag, sizeof r->tag);
  if (flags != NULL)
    *flags = r->flags;
  return 1;
}
